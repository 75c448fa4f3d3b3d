// Entry points of the quant family (GGUF block formats on the CPU). Pointers are raw addresses
// of caller-owned memory; nothing here allocates tensors. Argument errors throw
// std::invalid_argument naming the argument.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "quant/blocks.h"

namespace helexa::quant {

// out[rows, cols] (type out_t) = the values of `rows` rows of ggml blocks at w.
void dequantize_cpu(void* out, const uint8_t* w, int64_t rows, int64_t cols, QuantType t, DType out_t);

// Quantizes x[rows, cols] (float32) into ggml blocks with ggml's reference quantizers.
void quantize_cpu(uint8_t* out, const float* x, int64_t rows, int64_t cols, QuantType t);

// Workspace bytes qmatmul_cpu needs for m activation rows of length k.
int64_t qmatmul_workspace_bytes(int64_t m, int64_t k, QuantType t);

// y[m, n] = x[m, k] @ W[n, k]^T with W quantized; x and y have type xt. Activations are
// quantized to int8 in `workspace` (qmatmul_workspace_bytes, 64-byte aligned).
void qmatmul_cpu(void* y, const void* x, const uint8_t* w, uint8_t* workspace, int64_t m, int64_t n,
                 int64_t k, QuantType t, DType xt);

}  // namespace helexa::quant
