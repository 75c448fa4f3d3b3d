// Loop implementations (vectorised through `omp simd`, -fopenmp-simd: no OpenMP runtime) of the small decode-step ops (RMSNorm),
// written so the compiler vectorises them; each ISA translation unit includes this header and
// gets its own build (everything here has internal linkage: see the note in quant/blocks.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/dtype.h"

namespace helexa::dense {
namespace {

// HF RMSNorm on bf16: h = bf16(x * rsqrt(mean(x^2) + eps)) in float32, out = bf16(w * h).
// Rows of `dim` elements; row (o, i) of x starts at o * outer_stride + i * inner_stride (the q / k
// heads of a fused projection are such a view); out is dense.
inline void rms_norm_rows(uint16_t* out, const uint16_t* x, const uint16_t* w, int64_t outer, int64_t inner,
                          int64_t dim, int64_t outer_stride, int64_t inner_stride, float eps) {
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t in = 0; in < inner; ++in) {
      const uint16_t* xr = x + o * outer_stride + in * inner_stride;
      uint16_t* yr = out + (o * inner + in) * dim;
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < dim; ++i) {
        const float v = bf16_to_fp32(xr[i]);
        ss += v * v;
      }
      const float scale = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) {
        const float h = bf16_to_fp32(fp32_to_bf16(bf16_to_fp32(xr[i]) * scale));
        yr[i] = fp32_to_bf16(bf16_to_fp32(w[i]) * h);
      }
    }
  }
}

}  // namespace
}  // namespace helexa::dense
