// Portable bf16 GEMV: the reference the SIMD variants are checked against.
#include "dense/decode_ops.h"
#include "dense/dense.h"

namespace helexa::dense::generic {
namespace {

void rows(const uint16_t* w, int64_t k, int64_t nrows, const uint16_t* x, float* out) {
  for (int64_t r = 0; r < nrows; ++r) {
    const uint16_t* row = w + r * k;
    float acc = 0.0f;
    for (int64_t i = 0; i < k; ++i) acc += bf16_to_fp32(row[i]) * bf16_to_fp32(x[i]);
    out[r] = acc;
  }
}

}  // namespace

DecodeOps decode_ops() { return {rms_norm_rows}; }

RowsFn rows_kernel() { return rows; }

}  // namespace helexa::dense::generic
