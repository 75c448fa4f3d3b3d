// Gated DeltaNet kernels in portable C++: the "vector" is one float, exp and log are libm's. The
// reference the SIMD variants are checked against, and the path for head sizes that are not a
// whole number of SIMD vectors.
// This file uses no standard-library templates: see the note in quant/blocks.h.
#include "gdn/kernels.h"

namespace helexa::gdn::generic {
namespace {

struct Vec {
  using T = float;
  static constexpr int kLanes = 1;
  static constexpr int kRecNV = 16;
  static constexpr int kMR = 4;
  static constexpr int kNV = 8;
  static constexpr int kSolveNV = 16;

  static T load(const float* p) { return *p; }
  static void store(float* p, T v) { *p = v; }
  static T set1(float x) { return x; }
  static T zero() { return 0.0f; }
  static T add(T a, T b) { return a + b; }
  static T sub(T a, T b) { return a - b; }
  static T mul(T a, T b) { return a * b; }
  static T div(T a, T b) { return a / b; }
  static T fma(T a, T b, T c) { return a * b + c; }  // not fused: no FMA unit assumed
  static T min(T a, T b) { return a < b ? a : b; }
  static T max(T a, T b) { return a > b ? a : b; }
  static float hsum(T v) { return v; }
  static T gt_select(T x, T y, T a, T b) { return x > y ? a : b; }
  static T eq_select(T x, T y, T a, T b) { return x == y ? a : b; }
  static T exp(T x) { return expf(x); }
  static T log(T x) { return logf(x); }
};

}  // namespace

Kernels kernels() { return make_kernels<Vec>(); }

}  // namespace helexa::gdn::generic
