// Gated DeltaNet kernels with AVX-512F: 16 float lanes; exp by Cephes' polynomial and scalef,
// log by getmant / getexp. Tiles: the recurrence takes 64 columns of S at a time (32 KiB for 128
// key rows), the matrix products 4 rows x 64 columns of registers.
// This file uses no standard-library templates: see the note in quant/blocks.h.
#include <immintrin.h>

#include "gdn/kernels.h"

namespace helexa::gdn::avx512 {
namespace {

struct Vec {
  using T = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kRecNV = 4;
  static constexpr int kMR = 4;
  static constexpr int kNV = 4;
  static constexpr int kSolveNV = 8;

  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T set1(float x) { return _mm512_set1_ps(x); }
  static T zero() { return _mm512_setzero_ps(); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T div(T a, T b) { return _mm512_div_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T min(T a, T b) { return _mm512_min_ps(a, b); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static float hsum(T v) { return _mm512_reduce_add_ps(v); }
  static T round(T x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T ldexp(T p, T n) { return _mm512_scalef_ps(p, n); }
  static T frexp(T x, T* e) {
    *e = _mm512_add_ps(_mm512_getexp_ps(x), _mm512_set1_ps(1.0f));
    return _mm512_getmant_ps(x, _MM_MANT_NORM_p5_1, _MM_MANT_SIGN_src);
  }
  static T gt_select(T x, T y, T a, T b) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, y, _CMP_GT_OQ), b, a); }
  static T eq_select(T x, T y, T a, T b) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, y, _CMP_EQ_OQ), b, a); }
  static T exp(T x) { return exp_poly<Vec>(x); }
  static T log(T x) { return log_poly<Vec>(x); }
};

}  // namespace

Kernels kernels() { return make_kernels<Vec>(); }

}  // namespace helexa::gdn::avx512
