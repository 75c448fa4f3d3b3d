// AVX2 + FMA bf16 GEMV: bf16 widened to float32 by a 16-bit shift, four rows per pass so each
// activation load serves four weight streams; the next group of rows is prefetched meanwhile.
// This file uses no standard-library templates: see the note in quant/blocks.h.
#include <immintrin.h>

#include "dense/decode_ops.h"
#include "dense/dense.h"

namespace helexa::dense::avx2 {
namespace {

inline __m256 widen(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R>
void rows_r(const uint16_t* w, int64_t k, const uint16_t* x, float* out) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const int64_t k8 = k / 8 * 8;
  for (int64_t i = 0; i < k8; i += 8) {
    const __m256 xv = widen(x + i);
    for (int r = 0; r < R; ++r) {
      if ((i & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(w + (r + R) * k + i), _MM_HINT_T0);
      acc[r] = _mm256_fmadd_ps(widen(w + r * k + i), xv, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(acc[r]);
    for (int64_t i = k8; i < k; ++i) s += bf16_to_fp32(w[r * k + i]) * bf16_to_fp32(x[i]);
    out[r] = s;
  }
}

void rows(const uint16_t* w, int64_t k, int64_t nrows, const uint16_t* x, float* out) {
  int64_t r = 0;
  for (; r + 4 <= nrows; r += 4) rows_r<4>(w + r * k, k, x, out + r);
  for (; r < nrows; ++r) rows_r<1>(w + r * k, k, x, out + r);
}

}  // namespace

DecodeOps decode_ops() { return {rms_norm_rows}; }

RowsFn rows_kernel() { return rows; }

}  // namespace helexa::dense::avx2
