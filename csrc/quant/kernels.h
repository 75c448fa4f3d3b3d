// The per-ISA kernels of the quant family. Every ISA namespace implements the same signatures;
// its GEMV kernels form that ISA's column of the trait table (quant/traits.h), and matmul.cpp
// picks the column of the ISA in use at run time (common/cpu_isa.h).
//
// Activations are quantized once per call to int8 with one float scale per `act_block` elements
// (32 for Q4_0/Q8_0, 256 for K-quants) plus int16 sums per 16 elements, which the affine formats
// need for their min / offset terms. Layout: natural element order, structure of arrays.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "quant/blocks.h"

namespace helexa::quant {

constexpr int kMaxCols = 4;  // activation columns sharing one pass over a weight row
constexpr int64_t kPrefetchBytes = 2048;  // how far ahead the SIMD kernels prefetch weight bytes

struct ActView {
  const int8_t* qs;      // [K]
  const float* d;        // [K / act_block]
  const int16_t* bsums;  // [K / 16]
};

// Bytes of workspace one activation column needs, and where its parts sit inside it.
static inline int64_t act_column_bytes(int64_t k, int act_block) {
  const int64_t qs = (k + 63) / 64 * 64;
  const int64_t d = (k / act_block * 4 + 63) / 64 * 64;
  const int64_t sums = (k / 16 * 2 + 63) / 64 * 64;
  return qs + d + sums;
}

static inline ActView act_view(const uint8_t* column, int64_t k, int act_block) {
  const int64_t qs = (k + 63) / 64 * 64;
  const int64_t d = (k / act_block * 4 + 63) / 64 * 64;
  return {reinterpret_cast<const int8_t*>(column), reinterpret_cast<const float*>(column + qs),
          reinterpret_cast<const int16_t*>(column + qs + d)};
}

// Quantizes `k` elements of x (type xt) into one activation column of the workspace:
// d = amax / 127 per act_block elements, q = x * (1 / d) rounded to nearest even. Every ISA
// produces the same bytes, so every ISA's integer sums agree.
using ActQuantFn = void (*)(const void* x, DType xt, int64_t k, int act_block, uint8_t* column);

// y[c * ldy + r] = dot(weight row r, activation column c) for r < nrows, c < ncols <= kMaxCols.
using GemvFn = void (*)(const uint8_t* w, int64_t row_bytes, int64_t nrows, int64_t nblocks,
                        const ActView* acts, int ncols, float* y, int64_t ldy);

// One ISA's column of the trait table: the types it has a GEMV kernel for. Each ISA translation
// unit defines gemv_kernels() for its own namespace; quant/traits.cpp reads them once.
struct GemvKernel {
  QuantType type;
  GemvFn gemv;
};
struct GemvColumn {
  const GemvKernel* kernels;
  int count;
};

namespace generic {
GemvColumn gemv_kernels();
void quantize_activation(const void* x, DType xt, int64_t k, int act_block, uint8_t* column);
}
namespace avx2 {
GemvColumn gemv_kernels();
void quantize_activation(const void* x, DType xt, int64_t k, int act_block, uint8_t* column);
}
namespace avx512 {
GemvColumn gemv_kernels();
void quantize_activation(const void* x, DType xt, int64_t k, int act_block, uint8_t* column);
}

}  // namespace helexa::quant
