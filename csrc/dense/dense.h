// The dense family: GEMV over bf16 weights (a decode step of an unquantized bf16 model).
// y[n] = sum_k W[n, k] * x[k], W row-major [N, K] bf16, x bf16, float32 accumulation, y in y_t.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace helexa::dense {

void gemv_bf16_cpu(void* y, const uint16_t* x, const uint16_t* w, int64_t n, int64_t k, DType y_t);

// Y[m, n] = X[m, :] . W[n, :] for a few activation rows (a decode step of several sequences):
// W is streamed from memory about once whatever m is. X row-major [M, K] bf16, Y [M, N] in y_t.
void matmul_bf16_cpu(void* y, const uint16_t* x, const uint16_t* w, int64_t m, int64_t n, int64_t k, DType y_t);

// out[outer, inner, dim] = bf16(w * bf16(x * rsqrt(mean(x^2) + eps))), as HF's RMSNorm on bf16;
// row (o, i) of x starts at o * outer_stride + i * inner_stride elements.
void rms_norm_bf16_cpu(uint16_t* out, const uint16_t* x, const uint16_t* w, int64_t outer, int64_t inner, int64_t dim,
                       int64_t outer_stride, int64_t inner_stride, float eps);

// Per-ISA row kernel: out[r] = dot(W row r, x) for r < rows, float32.
using RowsFn = void (*)(const uint16_t* w, int64_t k, int64_t rows, const uint16_t* x, float* out);

// Per-ISA kernel for m activation rows: out[j * out_stride + r] = dot(W row r, x row j).
using MultiRowsFn = void (*)(const uint16_t* w, int64_t k, int64_t rows, const uint16_t* x, int64_t m, float* out,
                             int64_t out_stride);

// Per-ISA small decode ops (decode_ops.h built with each ISA's flags).
struct DecodeOps {
  void (*rms_norm)(uint16_t* out, const uint16_t* x, const uint16_t* w, int64_t outer, int64_t inner, int64_t dim,
                   int64_t outer_stride, int64_t inner_stride, float eps);
};

namespace generic {
RowsFn rows_kernel();
DecodeOps decode_ops();
}
namespace avx2 {
RowsFn rows_kernel();
DecodeOps decode_ops();
}
namespace avx512 {
RowsFn rows_kernel();          // AVX-512F: bf16 -> f32 by shifting, then FMA
RowsFn rows_kernel_bf16dot();  // AVX-512 BF16: vdpbf16ps (nullptr when not built)
MultiRowsFn multi_rows_kernel_bf16dot();  // several activation rows per weight load (nullptr when not built)
DecodeOps decode_ops();
}


}  // namespace helexa::dense
