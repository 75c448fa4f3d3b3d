// AVX-512 bf16 GEMV, two variants: AVX-512F widening bf16 to float32 for FMA, and AVX-512 BF16
// (vdpbf16ps: bf16 pairs multiplied exactly, summed into float32 lanes). Four rows per pass,
// masked loads for a K tail; while a group of rows streams in, the same columns of the next
// group are prefetched (the hardware prefetcher alone leaves bandwidth unused).
// This file uses no standard-library templates: see the note in quant/blocks.h.
#include <immintrin.h>

#include "dense/decode_ops.h"
#include "dense/dense.h"

namespace helexa::dense::avx512 {
namespace {

inline __m512 widen(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline __m512 widen_masked(const uint16_t* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <int R>
void fma_rows(const uint16_t* w, int64_t k, const uint16_t* x, float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const int64_t k16 = k / 16 * 16;
  for (int64_t i = 0; i < k16; i += 16) {
    const __m512 xv = widen(x + i);
    for (int r = 0; r < R; ++r) {
      if ((i & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(w + (r + R) * k + i), _MM_HINT_T0);
      acc[r] = _mm512_fmadd_ps(widen(w + r * k + i), xv, acc[r]);
    }
  }
  if (k16 < k) {
    const __mmask16 m = static_cast<__mmask16>((1u << (k - k16)) - 1);
    const __m512 xv = widen_masked(x + k16, m);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(widen_masked(w + r * k + k16, m), xv, acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
}

void rows_fma(const uint16_t* w, int64_t k, int64_t nrows, const uint16_t* x, float* out) {
  int64_t r = 0;
  for (; r + 4 <= nrows; r += 4) fma_rows<4>(w + r * k, k, x, out + r);
  for (; r < nrows; ++r) fma_rows<1>(w + r * k, k, x, out + r);
}

#if defined(HELEXA_AVX512BF16)
__attribute__((target("avx512bf16"))) inline __m512 dot32(__m512 acc, __m512i wv, __m512i xv) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh&>(wv), reinterpret_cast<__m512bh&>(xv));
}

template <int R>
__attribute__((target("avx512bf16"))) void dot_rows(const uint16_t* w, int64_t k, const uint16_t* x, float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const int64_t k32 = k / 32 * 32;
  for (int64_t i = 0; i < k32; i += 32) {
    const __m512i xv = _mm512_loadu_si512(x + i);
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + (r + R) * k + i), _MM_HINT_T0);
      acc[r] = dot32(acc[r], _mm512_loadu_si512(w + r * k + i), xv);
    }
  }
  if (k32 < k) {
    const __mmask32 m = static_cast<__mmask32>((1ull << (k - k32)) - 1);
    const __m512i xv = _mm512_maskz_loadu_epi16(m, x + k32);
    for (int r = 0; r < R; ++r) acc[r] = dot32(acc[r], _mm512_maskz_loadu_epi16(m, w + r * k + k32), xv);
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
}

__attribute__((target("avx512bf16"))) void rows_dot(const uint16_t* w, int64_t k, int64_t nrows, const uint16_t* x,
                                                    float* out) {
  int64_t r = 0;
  for (; r + 4 <= nrows; r += 4) dot_rows<4>(w + r * k, k, x, out + r);
  for (; r < nrows; ++r) dot_rows<1>(w + r * k, k, x, out + r);
}

// R weight rows against M activation rows at once: each weight vector, loaded once, meets every
// activation row in registers (R * M accumulators), so M rows cost about one pass over W.
template <int R, int M>
__attribute__((target("avx512bf16"))) void dot_block(const uint16_t* w, int64_t k, const uint16_t* x, float* out,
                                                     int64_t out_stride) {
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < M; ++j) acc[r][j] = _mm512_setzero_ps();
  const int64_t k32 = k / 32 * 32;
  for (int64_t i = 0; i < k32; i += 32) {
    __m512i wv[R];
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + (r + R) * k + i), _MM_HINT_T0);
      wv[r] = _mm512_loadu_si512(w + r * k + i);
    }
    for (int j = 0; j < M; ++j) {
      const __m512i xv = _mm512_loadu_si512(x + j * k + i);
      for (int r = 0; r < R; ++r) acc[r][j] = dot32(acc[r][j], wv[r], xv);
    }
  }
  if (k32 < k) {
    const __mmask32 m = static_cast<__mmask32>((1ull << (k - k32)) - 1);
    __m512i wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_maskz_loadu_epi16(m, w + r * k + k32);
    for (int j = 0; j < M; ++j) {
      const __m512i xv = _mm512_maskz_loadu_epi16(m, x + j * k + k32);
      for (int r = 0; r < R; ++r) acc[r][j] = dot32(acc[r][j], wv[r], xv);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < M; ++j) out[j * out_stride + r] = _mm512_reduce_add_ps(acc[r][j]);
}

template <int M>
__attribute__((target("avx512bf16"))) void block_rows(const uint16_t* w, int64_t k, int64_t nrows, const uint16_t* x,
                                                      float* out, int64_t out_stride) {
  constexpr int R = M <= 4 ? 4 : 3;  // R * M <= 24 accumulators, beside R weight vectors and one x
  int64_t r = 0;
  for (; r + R <= nrows; r += R) dot_block<R, M>(w + r * k, k, x, out + r, out_stride);
  for (; r < nrows; ++r) dot_block<1, M>(w + r * k, k, x, out + r, out_stride);
}

constexpr int64_t kStep = 8;

__attribute__((target("avx512bf16"))) void multi_dot(const uint16_t* w, int64_t k, int64_t nrows, const uint16_t* x,
                                                     int64_t m, float* out, int64_t out_stride) {
  for (int64_t j = 0; j < m; j += kStep) {  // a few activation rows at a time: at most 16 accumulators
    const uint16_t* xj = x + j * k;
    float* oj = out + j * out_stride;
    switch (m - j < kStep ? m - j : kStep) {
      case 1: block_rows<1>(w, k, nrows, xj, oj, out_stride); break;
      case 2: block_rows<2>(w, k, nrows, xj, oj, out_stride); break;
      case 3: block_rows<3>(w, k, nrows, xj, oj, out_stride); break;
      case 4: block_rows<4>(w, k, nrows, xj, oj, out_stride); break;
      case 5: block_rows<5>(w, k, nrows, xj, oj, out_stride); break;
      case 6: block_rows<6>(w, k, nrows, xj, oj, out_stride); break;
      case 7: block_rows<7>(w, k, nrows, xj, oj, out_stride); break;
      default: block_rows<8>(w, k, nrows, xj, oj, out_stride); break;
    }
  }
}
#endif

}  // namespace

DecodeOps decode_ops() { return {rms_norm_rows}; }

RowsFn rows_kernel() { return rows_fma; }

RowsFn rows_kernel_bf16dot() {
#if defined(HELEXA_AVX512BF16)
  return __builtin_cpu_supports("avx512bf16") ? rows_dot : nullptr;
#else
  return nullptr;
#endif
}

MultiRowsFn multi_rows_kernel_bf16dot() {
#if defined(HELEXA_AVX512BF16)
  return __builtin_cpu_supports("avx512bf16") ? multi_dot : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace helexa::dense::avx512
