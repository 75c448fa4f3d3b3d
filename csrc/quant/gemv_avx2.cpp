// AVX2 + FMA dot kernels (every x86-64 CPU since Haswell / Zen). Same integer sums as the generic
// and AVX-512 paths: maddubs pairs u8 weights with s8 activations, madd applies the sub-block
// scales, one float conversion per block. Signed formats use the sign trick (|w| x sign(w)*x).
// This file uses no standard-library templates: see the note in quant/blocks.h.
#include <immintrin.h>

#include <cstddef>
#include <cstring>

#include "quant/formats_x86.h"
#include "quant/kernels.h"

namespace helexa::quant::avx2 {
namespace {

inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// See gemv_avx512.cpp: software prefetch doubles the streamed GEMV rate over the hardware one.
inline void prefetch_ahead(const uint8_t* p, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + off), _MM_HINT_T0);
  }
}

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct Args {
  const uint8_t* w;
  int64_t row_bytes, nrows, nb;
  const ActView* a;
  float* y;
  int64_t ldy;
};

template <class Block, bool kFive>
struct K4 {
  template <int C>
  static void run(const Args& p) {
    constexpr int64_t kQs = offsetof(Block, qs);
    constexpr int64_t kBytes = sizeof(Block);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i one = _mm256_set1_epi8(1);
    for (int64_t r = 0; r < p.nrows; ++r) {
      const uint8_t* row = p.w + r * p.row_bytes;
      __m256 acc[C];
      for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
      for (int64_t b = 0; b < p.nb; ++b) {
        const uint8_t* blk = row + b * kBytes;
        prefetch_ahead(blk, kBytes);
        const float d = half(blk + offsetof(Block, d)), dmin = half(blk + offsetof(Block, dmin));
        uint8_t sc[8], mn[8];
        unpack_k4_scales(blk + offsetof(Block, scales), sc, mn);
        const __m128i mn16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn)));
        const __m256i mdup = _mm256_set_m128i(_mm_unpackhi_epi16(mn16, mn16), _mm_unpacklo_epi16(mn16, mn16));
        __m256i qh = kFive ? load256(blk + offsetof(BlockQ5_K, qh)) : _mm256_setzero_si256();
        __m256i isum[C];
        for (int c = 0; c < C; ++c) isum[c] = _mm256_setzero_si256();
        for (int g = 0; g < 4; ++g) {
          const __m256i raw = load256(blk + kQs + 32 * g);
          __m256i lo = _mm256_and_si256(raw, m4);
          __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
          if (kFive) {
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), one), 4));
            qh = _mm256_srli_epi16(qh, 2);
          }
          const __m256i s_lo = _mm256_set1_epi16(sc[2 * g]);
          const __m256i s_hi = _mm256_set1_epi16(sc[2 * g + 1]);
          for (int c = 0; c < C; ++c) {
            const int8_t* x = p.a[c].qs + b * kQK + 64 * g;
            const __m256i plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(x)), s_lo);
            const __m256i phi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(x + 32)), s_hi);
            isum[c] = _mm256_add_epi32(isum[c], _mm256_add_epi32(plo, phi));
          }
        }
        for (int c = 0; c < C; ++c) {
          const __m256i mins = _mm256_madd_epi16(load256(p.a[c].bsums + b * 16), mdup);
          const float dx = p.a[c].d[b];
          acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), _mm256_set1_ps(d * dx), acc[c]);
          acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_set1_ps(-dmin * dx), acc[c]);
        }
      }
      for (int c = 0; c < C; ++c) p.y[c * p.ldy + r] = hsum(acc[c]);
    }
  }
};

struct Q6K {
  template <int C>
  static void run(const Args& p) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i three = _mm256_set1_epi8(3);
    __m128i pick[8];  // pick[k]: bytes 0-7 select scale 2k, bytes 8-15 scale 2k+1
    for (int k = 0; k < 8; ++k) {
      pick[k] = _mm_set_epi64x(0x0101010101010101ll * (2 * k + 1), 0x0101010101010101ll * (2 * k));
    }
    for (int64_t r = 0; r < p.nrows; ++r) {
      const uint8_t* row = p.w + r * p.row_bytes;
      __m256 acc[C];
      for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
      for (int64_t b = 0; b < p.nb; ++b) {
        const uint8_t* blk = row + b * sizeof(BlockQ6_K);
        prefetch_ahead(blk, sizeof(BlockQ6_K));
        const float d = half(blk + offsetof(BlockQ6_K, d));
        const __m128i sc8 = load128(blk + offsetof(BlockQ6_K, scales));
        __m256i isum[C];
        for (int c = 0; c < C; ++c) isum[c] = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
          const __m256i l0 = load256(blk + offsetof(BlockQ6_K, ql) + 64 * h), l1 = load256(blk + offsetof(BlockQ6_K, ql) + 64 * h + 32);
          const __m256i hb = load256(blk + offsetof(BlockQ6_K, qh) + 32 * h);
          __m256i q[4];
          q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, three), 4));
          q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                 _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), three), 4));
          q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                 _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), three), 4));
          q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                 _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), three), 4));
          for (int j = 0; j < 4; ++j) {
            const __m256i scv = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, pick[4 * h + j]));
            for (int c = 0; c < C; ++c) {
              const __m256i x = load256(p.a[c].qs + b * kQK + 128 * h + 32 * j);
              isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], x), scv));
            }
          }
        }
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
        for (int c = 0; c < C; ++c) {
          const __m256i offs = _mm256_madd_epi16(load256(p.a[c].bsums + b * 16), sc16);
          const float dd = d * p.a[c].d[b];
          acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), _mm256_set1_ps(dd), acc[c]);
          acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(offs), _mm256_set1_ps(-32.0f * dd), acc[c]);
        }
      }
      for (int c = 0; c < C; ++c) p.y[c * p.ldy + r] = hsum(acc[c]);
    }
  }
};

// Q8_0 and Q4_0 share the signed 32-element block dot; they differ in how the weights unpack.
template <class Block, bool kNibbles>
struct Q32 {
  template <int C>
  static void run(const Args& p) {
    constexpr int64_t kBytes = sizeof(Block);
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i eight = _mm256_set1_epi8(8);
    for (int64_t r = 0; r < p.nrows; ++r) {
      const uint8_t* row = p.w + r * p.row_bytes;
      __m256 acc[C];
      for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
      for (int64_t b = 0; b < p.nb; ++b) {
        const uint8_t* blk = row + b * kBytes;
        if (kNibbles ? (b & 1) == 0 : true) prefetch_ahead(blk, kNibbles ? 2 * kBytes : kBytes);
        __m256i w;
        if (kNibbles) {
          const __m128i raw = load128(blk + offsetof(Block, qs));
          w = _mm256_sub_epi8(_mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), m4), eight);
        } else {
          w = load256(blk + offsetof(Block, qs));
        }
        const __m256i aw = _mm256_sign_epi8(w, w);
        const float dw = half(blk + offsetof(Block, d));
        for (int c = 0; c < C; ++c) {
          const __m256i xs = _mm256_sign_epi8(load256(p.a[c].qs + b * 32), w);
          const __m256i sum = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs), ones);
          acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(dw * p.a[c].d[b]), acc[c]);
        }
      }
      for (int c = 0; c < C; ++c) p.y[c * p.ldy + r] = hsum(acc[c]);
    }
  }
};

// The 32-element formats of quant/formats_x86.h: one maddubs + madd per block (signed levels by
// the sign trick), the block's offset term added to its integer sum, the min term in float.
template <class F>
struct Q32Kernel {
  using Block = typename F::Block;
  template <int C>
  static void run(const Args& p) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t r = 0; r < p.nrows; ++r) {
      const uint8_t* row = p.w + r * p.row_bytes;
      __m256 acc[C];
      float min_acc[C];
      for (int c = 0; c < C; ++c) {
        acc[c] = _mm256_setzero_ps();
        min_acc[c] = 0.0f;
      }
      for (int64_t b = 0; b < p.nb; ++b) {
        const uint8_t* blk = row + b * static_cast<int64_t>(sizeof(Block));
        prefetch_ahead(blk, sizeof(Block));
        const __m256i w = F::quants(blk);
        const __m256i aw = F::kSigned ? _mm256_sign_epi8(w, w) : w;
        const float d = half(blk + offsetof(Block, d));
        for (int c = 0; c < C; ++c) {
          const __m256i x = load256(p.a[c].qs + b * 32);
          __m256i sum = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, F::kSigned ? _mm256_sign_epi8(x, w) : x), ones);
          const int xsum = p.a[c].bsums[2 * b] + p.a[c].bsums[2 * b + 1];
          if (F::kOffset != 0) sum = _mm256_add_epi32(sum, _mm256_zextsi128_si256(_mm_cvtsi32_si128(F::kOffset * xsum)));
          const float dx = p.a[c].d[b];
          acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d * dx), acc[c]);
          if constexpr (F::kMin) min_acc[c] += dx * half(blk + offsetof(Block, m)) * static_cast<float>(xsum);
        }
      }
      for (int c = 0; c < C; ++c) p.y[c * p.ldy + r] = hsum(acc[c]) + min_acc[c];
    }
  }
};

// The super-block formats of quant/formats_x86.h (a scale, and maybe a min, per 16 elements):
// maddubs per 32 elements, madd against the two sub-block scales, one int32 sum per super-block
// with the offset term (kOffset * sum_j sc_j * sum of x_j) folded in; the min term from the
// activation sums per 16.
template <class F>
struct SuperKernel {
  using Block = typename F::Block;
  template <int C>
  static void run(const Args& p) {
    for (int64_t r = 0; r < p.nrows; ++r) {
      const uint8_t* row = p.w + r * p.row_bytes;
      __m256 acc[C];
      for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
      for (int64_t b = 0; b < p.nb; ++b) {
        const uint8_t* blk = row + b * static_cast<int64_t>(sizeof(Block));
        prefetch_ahead(blk, sizeof(Block));
        __m256i q[8];
        alignas(32) int16_t sc[16];
        alignas(32) int16_t mn[16];
        F::quants(blk, q);
        F::scales(blk, sc, mn);
        __m256i isum[C];
        for (int c = 0; c < C; ++c) isum[c] = _mm256_setzero_si256();
        for (int k = 0; k < 8; ++k) {
          const __m256i s = _mm256_set_m128i(_mm_set1_epi16(sc[2 * k + 1]), _mm_set1_epi16(sc[2 * k]));
          const __m256i aq = F::kSigned ? _mm256_sign_epi8(q[k], q[k]) : q[k];
          for (int c = 0; c < C; ++c) {
            __m256i x = load256(p.a[c].qs + b * kQK + 32 * k);
            if (F::kSigned) x = _mm256_sign_epi8(x, q[k]);
            isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(_mm256_maddubs_epi16(aq, x), s));
          }
        }
        const float d = F::d(blk), dmin = F::dmin(blk);
        for (int c = 0; c < C; ++c) {
          const __m256i bs = load256(p.a[c].bsums + b * 16);
          if (F::kOffset != 0) {
            const __m256i offs = _mm256_madd_epi16(bs, load256(sc));
            isum[c] = _mm256_add_epi32(isum[c], _mm256_mullo_epi32(offs, _mm256_set1_epi32(F::kOffset)));
          }
          const float dx = p.a[c].d[b];
          acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), _mm256_set1_ps(d * dx), acc[c]);
          if (F::kMin) {
            const __m256i mins = _mm256_madd_epi16(bs, load256(mn));
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_set1_ps(-dmin * dx), acc[c]);
          }
        }
      }
      for (int c = 0; c < C; ++c) p.y[c * p.ldy + r] = hsum(acc[c]);
    }
  }
};

template <class K>
void gemv(const uint8_t* w, int64_t row_bytes, int64_t nrows, int64_t nb, const ActView* a, int ncols, float* y,
          int64_t ldy) {
  const Args p{w, row_bytes, nrows, nb, a, y, ldy};
  switch (ncols) {
    case 1: K::template run<1>(p); break;
    case 2: K::template run<2>(p); break;
    case 3: K::template run<3>(p); break;
    default: K::template run<4>(p); break;
  }
}

// 8 elements of x as float32.
inline __m256 load8(const void* x, DType xt, int64_t i) {
  switch (xt) {
    case DType::f16: return _mm256_cvtph_ps(load128(static_cast<const uint16_t*>(x) + i));
    case DType::bf16:
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load128(static_cast<const uint16_t*>(x) + i)), 16));
    default: return _mm256_loadu_ps(static_cast<const float*>(x) + i);
  }
}

inline int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

}  // namespace

void quantize_activation(const void* x, DType xt, int64_t k, int act_block, uint8_t* column) {
  const ActView v = act_view(column, k, act_block);
  auto* qs = const_cast<int8_t*>(v.qs);
  auto* d = const_cast<float*>(v.d);
  auto* sums = const_cast<int16_t*>(v.bsums);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i lim = _mm256_set1_epi32(127);
  const __m256i neg_lim = _mm256_set1_epi32(-127);
  const int groups = act_block / 8;
  __m256 vals[kQK / 8];
  for (int64_t b = 0; b < k / act_block; ++b) {
    const int64_t base = b * act_block;
    __m256 amax = _mm256_setzero_ps();
    for (int g = 0; g < groups; ++g) {
      vals[g] = load8(x, xt, base + 8 * g);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, vals[g]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float scale = _mm_cvtss_f32(m) / 127.0f;
    const __m256 inv = _mm256_set1_ps(scale != 0.0f ? 1.0f / scale : 0.0f);
    d[b] = scale;
    for (int g = 0; g < groups; g += 2) {
      __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(vals[g], inv));  // MXCSR: round to nearest even
      __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(vals[g + 1], inv));
      q0 = _mm256_max_epi32(_mm256_min_epi32(q0, lim), neg_lim);
      q1 = _mm256_max_epi32(_mm256_min_epi32(q1, lim), neg_lim);
      // int32 x 16 -> int8 x 16 in element order (packs interleave 128-bit lanes; undo it).
      const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), _MM_SHUFFLE(3, 1, 2, 0));
      const __m128i b8 = _mm_packs_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + base + 8 * g), b8);
      sums[(base >> 4) + g / 2] = static_cast<int16_t>(hsum_epi32(_mm256_add_epi32(q0, q1)));
    }
  }
}

GemvColumn gemv_kernels() {
  static const GemvKernel kernels[] = {
      {QuantType::q4_0, gemv<Q32<BlockQ4_0, true>>},
      {QuantType::q8_0, gemv<Q32<BlockQ8_0, false>>},
      {QuantType::q4_k, gemv<K4<BlockQ4_K, false>>},
      {QuantType::q5_k, gemv<K4<BlockQ5_K, true>>},
      {QuantType::q6_k, gemv<Q6K>},
      {QuantType::q4_1, gemv<Q32Kernel<FmtQ4_1>>},
      {QuantType::q5_0, gemv<Q32Kernel<FmtQ5_0>>},
      {QuantType::q5_1, gemv<Q32Kernel<FmtQ5_1>>},
      {QuantType::iq4_nl, gemv<Q32Kernel<FmtIQ4_NL>>},
      {QuantType::q2_k, gemv<SuperKernel<FmtQ2_K>>},
      {QuantType::q3_k, gemv<SuperKernel<FmtQ3_K>>},
      {QuantType::iq4_xs, gemv<SuperKernel<FmtIQ4_XS>>},
  };
  return {kernels, static_cast<int>(sizeof(kernels) / sizeof(kernels[0]))};
}

}  // namespace helexa::quant::avx2
