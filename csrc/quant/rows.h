// Row converters of each block type, named in the trait table (quant/traits.cpp):
// dequantize.cpp defines the dequantizers (bit-exact with ggml's dequantize_row_*), quantize.cpp
// the reference quantizers (ggml's quantize_row_*_ref). Signatures: quant/traits.h.
#pragma once

#include <cstdint>

namespace helexa::quant {

void dequantize_row_q4_0(const uint8_t* blocks, float* y, int64_t nblocks);
void dequantize_row_q8_0(const uint8_t* blocks, float* y, int64_t nblocks);
void dequantize_row_q4_k(const uint8_t* blocks, float* y, int64_t nblocks);
void dequantize_row_q5_k(const uint8_t* blocks, float* y, int64_t nblocks);
void dequantize_row_q6_k(const uint8_t* blocks, float* y, int64_t nblocks);
void dequantize_row_q4_1(const uint8_t* blocks, float* y, int64_t nblocks);
void dequantize_row_q5_0(const uint8_t* blocks, float* y, int64_t nblocks);
void dequantize_row_q5_1(const uint8_t* blocks, float* y, int64_t nblocks);
void dequantize_row_q2_k(const uint8_t* blocks, float* y, int64_t nblocks);
void dequantize_row_q3_k(const uint8_t* blocks, float* y, int64_t nblocks);
void dequantize_row_iq4_nl(const uint8_t* blocks, float* y, int64_t nblocks);
void dequantize_row_iq4_xs(const uint8_t* blocks, float* y, int64_t nblocks);

void quantize_row_q4_0(const float* x, uint8_t* blocks, int64_t nblocks);
void quantize_row_q8_0(const float* x, uint8_t* blocks, int64_t nblocks);
void quantize_row_q4_k(const float* x, uint8_t* blocks, int64_t nblocks);
void quantize_row_q5_k(const float* x, uint8_t* blocks, int64_t nblocks);
void quantize_row_q6_k(const float* x, uint8_t* blocks, int64_t nblocks);
void quantize_row_q4_1(const float* x, uint8_t* blocks, int64_t nblocks);
void quantize_row_q5_0(const float* x, uint8_t* blocks, int64_t nblocks);
void quantize_row_q5_1(const float* x, uint8_t* blocks, int64_t nblocks);
void quantize_row_q2_k(const float* x, uint8_t* blocks, int64_t nblocks);
void quantize_row_q3_k(const float* x, uint8_t* blocks, int64_t nblocks);
void quantize_row_iq4_nl(const float* x, uint8_t* blocks, int64_t nblocks);
void quantize_row_iq4_xs(const float* x, uint8_t* blocks, int64_t nblocks);

}  // namespace helexa::quant
