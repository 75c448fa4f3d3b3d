// Gated DeltaNet kernels with AVX2 + FMA: 8 float lanes and 16 registers, so smaller tiles than
// AVX-512's (32 columns of S in the recurrence, 4 rows x 16 columns in the matrix products); exp by
// Cephes' polynomial with 2^n built in the exponent bits, log by splitting the exponent bits off.
// This file uses no standard-library templates: see the note in quant/blocks.h.
#include <immintrin.h>

#include "gdn/kernels.h"

namespace helexa::gdn::avx2 {
namespace {

struct Vec {
  using T = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kRecNV = 4;
  static constexpr int kMR = 4;
  static constexpr int kNV = 2;
  static constexpr int kSolveNV = 8;

  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T set1(float x) { return _mm256_set1_ps(x); }
  static T zero() { return _mm256_setzero_ps(); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T div(T a, T b) { return _mm256_div_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T min(T a, T b) { return _mm256_min_ps(a, b); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static float hsum(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static T round(T x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p * 2^n, n whole: 2^n from its exponent bits, n clamped to [-127, 128] (0 and inf at the ends).
  static T ldexp(T p, T n) {
    const __m256 nc = _mm256_min_ps(_mm256_max_ps(n, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(128.0f));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(nc), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  }
  // x = m 2^e, m in [0.5, 1), for normal x > 0.
  static T frexp(T x, T* e) {
    const __m256i bits = _mm256_castps_si256(x);
    const __m256i ex = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126));
    *e = _mm256_cvtepi32_ps(ex);
    const __m256i m = _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f000000));
    return _mm256_castsi256_ps(m);
  }
  static T gt_select(T x, T y, T a, T b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, y, _CMP_GT_OQ)); }
  static T eq_select(T x, T y, T a, T b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, y, _CMP_EQ_OQ)); }
  static T exp(T x) { return exp_poly<Vec>(x); }
  static T log(T x) { return log_poly<Vec>(x); }
};

}  // namespace

Kernels kernels() { return make_kernels<Vec>(); }

}  // namespace helexa::gdn::avx2
