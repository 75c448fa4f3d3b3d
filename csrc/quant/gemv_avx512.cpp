// AVX-512 (F/BW/VL/DQ + VNNI) dot kernels. Compiled with those flags only in this file and run
// only when the CPU has them (common/cpu_isa.cpp). Weight nibbles are unpacked into natural
// element order, so the activations need no per-type reordering.
//   K-quants: maddubs (u8 weight x s8 activation -> pairs) then vpdpwssd against the sub-block
//   scales, one int32 sum per super-block, scaled once; the min / offset term comes from the
//   activation sums per 16 elements.
//   Q8_0 / Q4_0: vpdpbusd per two blocks, |w| against sign-adjusted activations (Q8_0) or nibbles
//   with the -8 offset injected as an int32 bias per block (Q4_0).
// This file uses no standard-library templates: see the note in quant/blocks.h.
#include <immintrin.h>

#include <cstddef>
#include <cstring>

#include "quant/formats_x86.h"
#include "quant/kernels.h"

namespace helexa::quant::avx512 {
namespace {

inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// The hardware prefetcher alone leaves half the memory bandwidth unused on a streamed GEMV:
// ask for the lines of the block kPrefetchBytes ahead (the rest of this row, then the next row).
inline void prefetch_ahead(const uint8_t* p, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + off), _MM_HINT_T0);
  }
}

inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

struct Args {
  const uint8_t* w;
  int64_t row_bytes, nrows, nb;
  const ActView* a;
  float* y;
  int64_t ldy;
};

// Q4_K and Q5_K (kFive adds the fifth bit from qh).
template <class Block, bool kFive>
struct K4 {
  template <int C>
  static void run(const Args& p) {
    constexpr int64_t kQs = offsetof(Block, qs);
    constexpr int64_t kBytes = sizeof(Block);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i sixteen = _mm512_set1_epi8(16);
    const __m256i dup = _mm256_setr_epi16(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    __m512i idx[4], hbit[4];
    for (int g = 0; g < 4; ++g) {
      idx[g] = _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16(static_cast<short>(2 * g)),
                                       _mm512_set1_epi16(static_cast<short>(2 * g + 1)));
      hbit[g] = _mm512_mask_blend_epi8(0xFFFFFFFF00000000ull, _mm512_set1_epi8(static_cast<char>(1 << (2 * g))),
                                       _mm512_set1_epi8(static_cast<char>(1 << (2 * g + 1))));
    }
    for (int64_t r = 0; r < p.nrows; ++r) {
      const uint8_t* row = p.w + r * p.row_bytes;
      __m512 acc[C];
      for (int c = 0; c < C; ++c) acc[c] = _mm512_setzero_ps();
      for (int64_t b = 0; b < p.nb; ++b) {
        const uint8_t* blk = row + b * kBytes;
        prefetch_ahead(blk, kBytes);
        const float d = half(blk + offsetof(Block, d)), dmin = half(blk + offsetof(Block, dmin));
        uint8_t sc[8], mn[8];
        unpack_k4_scales(blk + offsetof(Block, scales), sc, mn);
        const __m512i scz = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc))));
        const __m256i mdup = _mm256_permutexvar_epi16(
            dup, _mm256_castsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn)))));
        __m512i q[4], s[4];
        __m512i qh = _mm512_setzero_si512();
        if (kFive) qh = _mm512_broadcast_i64x4(load256(blk + offsetof(BlockQ5_K, qh)));
        for (int g = 0; g < 4; ++g) {
          const __m256i raw = load256(blk + kQs + 32 * g);
          q[g] = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1), m4);
          if (kFive) q[g] = _mm512_mask_add_epi8(q[g], _mm512_test_epi8_mask(qh, hbit[g]), q[g], sixteen);
          s[g] = _mm512_permutexvar_epi16(idx[g], scz);
        }
        for (int c = 0; c < C; ++c) {
          const int8_t* x = p.a[c].qs + b * kQK;
          __m512i sum = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_maddubs_epi16(q[0], load512(x)), s[0]);
          sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(q[1], load512(x + 64)), s[1]);
          sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(q[2], load512(x + 128)), s[2]);
          sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(q[3], load512(x + 192)), s[3]);
          const __m256i mins = _mm256_madd_epi16(load256(p.a[c].bsums + b * 16), mdup);
          const float dx = p.a[c].d[b];
          acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(d * dx), acc[c]);
          acc[c] = _mm512_fmadd_ps(_mm512_zextps256_ps512(_mm256_cvtepi32_ps(mins)), _mm512_set1_ps(-dmin * dx), acc[c]);
        }
      }
      for (int c = 0; c < C; ++c) p.y[c * p.ldy + r] = _mm512_reduce_add_ps(acc[c]);
    }
  }
};

struct Q6K {
  template <int C>
  static void run(const Args& p) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i three = _mm512_set1_epi8(3);
    const __m512i shift_lo = _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16(0), _mm512_set1_epi16(2));
    const __m512i shift_hi = _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16(4), _mm512_set1_epi16(6));
    __m512i idx[4];
    for (int k = 0; k < 4; ++k) {
      alignas(64) short lanes[32];
      for (int i = 0; i < 32; ++i) lanes[i] = static_cast<short>(4 * k + i / 8);
      idx[k] = _mm512_load_si512(lanes);
    }
    for (int64_t r = 0; r < p.nrows; ++r) {
      const uint8_t* row = p.w + r * p.row_bytes;
      __m512 acc[C];
      for (int c = 0; c < C; ++c) acc[c] = _mm512_setzero_ps();
      for (int64_t b = 0; b < p.nb; ++b) {
        const uint8_t* blk = row + b * sizeof(BlockQ6_K);
        prefetch_ahead(blk, sizeof(BlockQ6_K));
        const float d = half(blk + offsetof(BlockQ6_K, d));
        const __m256i sc16 = _mm256_cvtepi8_epi16(load128(blk + offsetof(BlockQ6_K, scales)));
        const __m512i scz = _mm512_castsi256_si512(sc16);
        __m512i q[4], s[4];
        for (int h = 0; h < 2; ++h) {
          const __m512i lo = load512(blk + offsetof(BlockQ6_K, ql) + 64 * h);
          const __m512i hi = _mm512_broadcast_i64x4(load256(blk + offsetof(BlockQ6_K, qh) + 32 * h));
          const __m512i h0 = _mm512_and_si512(_mm512_srlv_epi16(hi, shift_lo), three);
          const __m512i h1 = _mm512_and_si512(_mm512_srlv_epi16(hi, shift_hi), three);
          q[2 * h] = _mm512_or_si512(_mm512_and_si512(lo, m4), _mm512_slli_epi16(h0, 4));
          q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(lo, 4), m4), _mm512_slli_epi16(h1, 4));
        }
        for (int k = 0; k < 4; ++k) s[k] = _mm512_permutexvar_epi16(idx[k], scz);
        for (int c = 0; c < C; ++c) {
          const int8_t* x = p.a[c].qs + b * kQK;
          __m512i sum = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_maddubs_epi16(q[0], load512(x)), s[0]);
          sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(q[1], load512(x + 64)), s[1]);
          sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(q[2], load512(x + 128)), s[2]);
          sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(q[3], load512(x + 192)), s[3]);
          const __m256i offs = _mm256_madd_epi16(load256(p.a[c].bsums + b * 16), sc16);
          const float dd = d * p.a[c].d[b];
          acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(dd), acc[c]);
          acc[c] = _mm512_fmadd_ps(_mm512_zextps256_ps512(_mm256_cvtepi32_ps(offs)), _mm512_set1_ps(-32.0f * dd), acc[c]);
        }
      }
      for (int c = 0; c < C; ++c) p.y[c * p.ldy + r] = _mm512_reduce_add_ps(acc[c]);
    }
  }
};

struct Q8_0 {
  static constexpr int64_t kBytes = sizeof(BlockQ8_0);
  static constexpr int64_t kQs = offsetof(BlockQ8_0, qs), kD = offsetof(BlockQ8_0, d);
  template <int C>
  static void run(const Args& p) {
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t r = 0; r < p.nrows; ++r) {
      const uint8_t* row = p.w + r * p.row_bytes;
      __m512 acc[C];
      for (int c = 0; c < C; ++c) acc[c] = _mm512_setzero_ps();
      int64_t b = 0;
      for (; b + 1 < p.nb; b += 2) {
        const uint8_t* b0 = row + b * kBytes;
        const uint8_t* b1 = b0 + kBytes;
        prefetch_ahead(b0, 2 * kBytes);
        const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(load256(b0 + kQs)), load256(b1 + kQs), 1);
        const __mmask64 neg = _mm512_movepi8_mask(w);
        const __m512i aw = _mm512_abs_epi8(w);  // |-128| reads as 128 unsigned
        const float d0 = half(b0 + kD), d1 = half(b1 + kD);
        for (int c = 0; c < C; ++c) {
          const __m512i x = load512(p.a[c].qs + b * 32);
          const __m512i sum = _mm512_dpbusd_epi32(zero, aw, _mm512_mask_sub_epi8(x, neg, zero, x));
          const __m512 dd = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0 * p.a[c].d[b]), _mm512_set1_ps(d1 * p.a[c].d[b + 1]));
          acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), dd, acc[c]);
        }
      }
      if (b < p.nb) {
        const uint8_t* b0 = row + b * kBytes;
        const __m256i w = load256(b0 + kQs);
        const __mmask32 neg = _mm256_movepi8_mask(w);
        const __m256i aw = _mm256_abs_epi8(w);
        const float d0 = half(b0 + kD);
        for (int c = 0; c < C; ++c) {
          const __m256i x = load256(p.a[c].qs + b * 32);
          const __m256i xs = _mm256_mask_sub_epi8(x, neg, _mm256_setzero_si256(), x);
          const __m256i sum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, xs);
          acc[c] = _mm512_fmadd_ps(_mm512_zextps256_ps512(_mm256_cvtepi32_ps(sum)), _mm512_set1_ps(d0 * p.a[c].d[b]), acc[c]);
        }
      }
      for (int c = 0; c < C; ++c) p.y[c * p.ldy + r] = _mm512_reduce_add_ps(acc[c]);
    }
  }
};

struct Q4_0 {
  static constexpr int64_t kBytes = sizeof(BlockQ4_0);
  static constexpr int64_t kQs = offsetof(BlockQ4_0, qs), kD = offsetof(BlockQ4_0, d);
  template <int C>
  static void run(const Args& p) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m128i minus8 = _mm_set1_epi16(-8);
    for (int64_t r = 0; r < p.nrows; ++r) {
      const uint8_t* row = p.w + r * p.row_bytes;
      __m512 acc[C];
      for (int c = 0; c < C; ++c) acc[c] = _mm512_setzero_ps();
      int64_t b = 0;
      for (; b + 1 < p.nb; b += 2) {
        const uint8_t* b0 = row + b * kBytes;
        const uint8_t* b1 = b0 + kBytes;
        prefetch_ahead(b0, 2 * kBytes);
        const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(load128(b0 + kQs)), load128(b1 + kQs), 1);
        __m512i u = _mm512_inserti64x4(_mm512_castsi256_si512(both), _mm256_srli_epi16(both, 4), 1);
        u = _mm512_and_si512(_mm512_shuffle_i64x2(u, u, _MM_SHUFFLE(3, 1, 2, 0)), m4);  // [lo0 hi0 lo1 hi1]
        const float d0 = half(b0 + kD), d1 = half(b1 + kD);
        for (int c = 0; c < C; ++c) {
          // -8 * (sum of x) per block, placed in lane 0 of each block's eight int32 lanes.
          const __m128i sums = _mm_madd_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p.a[c].bsums + 2 * b)), minus8);
          const __m512i bias = _mm512_maskz_expand_epi32(0x0101, _mm512_castsi128_si512(sums));
          const __m512i sum = _mm512_dpbusd_epi32(bias, u, load512(p.a[c].qs + b * 32));
          const __m512 dd = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0 * p.a[c].d[b]), _mm512_set1_ps(d1 * p.a[c].d[b + 1]));
          acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), dd, acc[c]);
        }
      }
      if (b < p.nb) {
        const uint8_t* b0 = row + b * kBytes;
        const __m128i raw = load128(b0 + kQs);
        const __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
        const float d0 = half(b0 + kD);
        for (int c = 0; c < C; ++c) {
          int32_t pair;  // the block's two sums of 16; reading four would run past the last block
          std::memcpy(&pair, p.a[c].bsums + 2 * b, 4);
          const __m128i sums = _mm_madd_epi16(_mm_cvtsi32_si128(pair), minus8);
          const __m256i bias = _mm256_maskz_expand_epi32(0x01, _mm256_castsi128_si256(sums));
          const __m256i sum = _mm256_dpbusd_epi32(bias, u, load256(p.a[c].qs + b * 32));
          acc[c] = _mm512_fmadd_ps(_mm512_zextps256_ps512(_mm256_cvtepi32_ps(sum)), _mm512_set1_ps(d0 * p.a[c].d[b]), acc[c]);
        }
      }
      for (int c = 0; c < C; ++c) p.y[c * p.ldy + r] = _mm512_reduce_add_ps(acc[c]);
    }
  }
};

// The 32-element formats of quant/formats_x86.h, two blocks per vpdpbusd (signed levels by the
// sign trick); the blocks' offset terms start their int32 lanes, the min term is added in float.
template <class F>
struct Q32Kernel {
  using Block = typename F::Block;
  static constexpr int64_t kBytes = sizeof(Block);
  template <int C>
  static void run(const Args& p) {
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t r = 0; r < p.nrows; ++r) {
      const uint8_t* row = p.w + r * p.row_bytes;
      __m512 acc[C];
      float min_acc[C];
      for (int c = 0; c < C; ++c) {
        acc[c] = _mm512_setzero_ps();
        min_acc[c] = 0.0f;
      }
      int64_t b = 0;
      for (; b + 1 < p.nb; b += 2) {
        const uint8_t* b0 = row + b * kBytes;
        const uint8_t* b1 = b0 + kBytes;
        prefetch_ahead(b0, 2 * kBytes);
        __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(F::quants(b0)), F::quants(b1), 1);
        const __mmask64 neg = F::kSigned ? _mm512_movepi8_mask(w) : 0;
        if (F::kSigned) w = _mm512_abs_epi8(w);
        const float d0 = half(b0 + offsetof(Block, d)), d1 = half(b1 + offsetof(Block, d));
        for (int c = 0; c < C; ++c) {
          __m512i x = load512(p.a[c].qs + b * 32);
          if (F::kSigned) x = _mm512_mask_sub_epi8(x, neg, zero, x);
          const int16_t* bs = p.a[c].bsums + 2 * b;
          const int xs0 = bs[0] + bs[1], xs1 = bs[2] + bs[3];
          __m512i bias = zero;
          if (F::kOffset != 0) {
            bias = _mm512_mask_set1_epi32(_mm512_maskz_set1_epi32(0x0001, F::kOffset * xs0), 0x0100, F::kOffset * xs1);
          }
          const __m512i sum = _mm512_dpbusd_epi32(bias, w, x);
          const float dx0 = p.a[c].d[b], dx1 = p.a[c].d[b + 1];
          const __m512 dd = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0 * dx0), _mm512_set1_ps(d1 * dx1));
          acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), dd, acc[c]);
          if constexpr (F::kMin) {
            min_acc[c] += dx0 * half(b0 + offsetof(Block, m)) * static_cast<float>(xs0) +
                          dx1 * half(b1 + offsetof(Block, m)) * static_cast<float>(xs1);
          }
        }
      }
      if (b < p.nb) {
        const uint8_t* b0 = row + b * kBytes;
        __m256i w = F::quants(b0);
        const __mmask32 neg = F::kSigned ? _mm256_movepi8_mask(w) : 0;
        if (F::kSigned) w = _mm256_abs_epi8(w);
        const float d0 = half(b0 + offsetof(Block, d));
        for (int c = 0; c < C; ++c) {
          __m256i x = load256(p.a[c].qs + b * 32);
          if (F::kSigned) x = _mm256_mask_sub_epi8(x, neg, _mm256_setzero_si256(), x);
          const int xs0 = p.a[c].bsums[2 * b] + p.a[c].bsums[2 * b + 1];
          const __m256i bias = _mm256_maskz_set1_epi32(0x01, F::kOffset * xs0);
          const __m256i sum = _mm256_dpbusd_epi32(bias, w, x);
          const float dx0 = p.a[c].d[b];
          acc[c] = _mm512_fmadd_ps(_mm512_zextps256_ps512(_mm256_cvtepi32_ps(sum)), _mm512_set1_ps(d0 * dx0), acc[c]);
          if constexpr (F::kMin) min_acc[c] += dx0 * half(b0 + offsetof(Block, m)) * static_cast<float>(xs0);
        }
      }
      for (int c = 0; c < C; ++c) p.y[c * p.ldy + r] = _mm512_reduce_add_ps(acc[c]) + min_acc[c];
    }
  }
};

// The super-block formats of quant/formats_x86.h (a scale, and maybe a min, per 16 elements):
// 64 elements per maddubs, vpdpwssd against the four sub-block scales, one int32 sum per
// super-block with the offset term folded in; the min term from the activation sums per 16.
template <class F>
struct SuperKernel {
  using Block = typename F::Block;
  template <int C>
  static void run(const Args& p) {
    const __m512i zero = _mm512_setzero_si512();
    __m512i idx[4];  // lanes 8i..8i+7 of chunk k take the scale of sub-block 4k + i
    for (int k = 0; k < 4; ++k) {
      alignas(64) short lanes[32];
      for (int i = 0; i < 32; ++i) lanes[i] = static_cast<short>(4 * k + i / 8);
      idx[k] = _mm512_load_si512(lanes);
    }
    for (int64_t r = 0; r < p.nrows; ++r) {
      const uint8_t* row = p.w + r * p.row_bytes;
      __m512 acc[C];
      for (int c = 0; c < C; ++c) acc[c] = _mm512_setzero_ps();
      for (int64_t b = 0; b < p.nb; ++b) {
        const uint8_t* blk = row + b * static_cast<int64_t>(sizeof(Block));
        prefetch_ahead(blk, sizeof(Block));
        __m256i q8[8];
        alignas(32) int16_t sc[16];
        alignas(32) int16_t mn[16];
        F::quants(blk, q8);
        F::scales(blk, sc, mn);
        const __m256i sc16 = load256(sc);
        const __m512i scz = _mm512_castsi256_si512(sc16);
        __m512i q[4], s[4];
        __mmask64 neg[4];
        for (int k = 0; k < 4; ++k) {
          q[k] = _mm512_inserti64x4(_mm512_castsi256_si512(q8[2 * k]), q8[2 * k + 1], 1);
          neg[k] = F::kSigned ? _mm512_movepi8_mask(q[k]) : 0;
          if (F::kSigned) q[k] = _mm512_abs_epi8(q[k]);
          s[k] = _mm512_permutexvar_epi16(idx[k], scz);
        }
        const float d = F::d(blk), dmin = F::dmin(blk);
        for (int c = 0; c < C; ++c) {
          const int8_t* x = p.a[c].qs + b * kQK;
          __m512i sum = zero;
          for (int k = 0; k < 4; ++k) {
            __m512i xv = load512(x + 64 * k);
            if (F::kSigned) xv = _mm512_mask_sub_epi8(xv, neg[k], zero, xv);
            sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(q[k], xv), s[k]);
          }
          const __m256i bs = load256(p.a[c].bsums + b * 16);
          if (F::kOffset != 0) {
            const __m256i offs = _mm256_mullo_epi32(_mm256_madd_epi16(bs, sc16), _mm256_set1_epi32(F::kOffset));
            sum = _mm512_add_epi32(sum, _mm512_zextsi256_si512(offs));
          }
          const float dx = p.a[c].d[b];
          acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(d * dx), acc[c]);
          if (F::kMin) {
            const __m256i mins = _mm256_madd_epi16(bs, load256(mn));
            acc[c] = _mm512_fmadd_ps(_mm512_zextps256_ps512(_mm256_cvtepi32_ps(mins)), _mm512_set1_ps(-dmin * dx), acc[c]);
          }
        }
      }
      for (int c = 0; c < C; ++c) p.y[c * p.ldy + r] = _mm512_reduce_add_ps(acc[c]);
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

// 16 elements of x as float32.
inline __m512 load16(const void* x, DType xt, int64_t i) {
  switch (xt) {
    case DType::f16: return _mm512_cvtph_ps(load256(static_cast<const uint16_t*>(x) + i));
    case DType::bf16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(load256(static_cast<const uint16_t*>(x) + i)), 16));
    default: return _mm512_loadu_ps(static_cast<const float*>(x) + i);
  }
}

}  // namespace

void quantize_activation(const void* x, DType xt, int64_t k, int act_block, uint8_t* column) {
  const ActView v = act_view(column, k, act_block);
  auto* qs = const_cast<int8_t*>(v.qs);
  auto* d = const_cast<float*>(v.d);
  auto* sums = const_cast<int16_t*>(v.bsums);
  const __m512i lim = _mm512_set1_epi32(127);
  const __m512i neg_lim = _mm512_set1_epi32(-127);
  const int groups = act_block / 16;
  __m512 vals[kQK / 16];
  for (int64_t b = 0; b < k / act_block; ++b) {
    const int64_t base = b * act_block;
    __m512 amax = _mm512_setzero_ps();
    for (int g = 0; g < groups; ++g) {
      vals[g] = load16(x, xt, base + 16 * g);
      amax = _mm512_max_ps(amax, _mm512_abs_ps(vals[g]));
    }
    const float scale = _mm512_reduce_max_ps(amax) / 127.0f;
    const __m512 inv = _mm512_set1_ps(scale != 0.0f ? 1.0f / scale : 0.0f);
    d[b] = scale;
    for (int g = 0; g < groups; ++g) {
      __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(vals[g], inv));  // MXCSR: round to nearest even
      q = _mm512_max_epi32(_mm512_min_epi32(q, lim), neg_lim);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + base + 16 * g), _mm512_cvtepi32_epi8(q));
      sums[(base >> 4) + g] = static_cast<int16_t>(_mm512_reduce_add_epi32(q));
    }
  }
}

GemvColumn gemv_kernels() {
  static const GemvKernel kernels[] = {
      {QuantType::q4_0, gemv<Q4_0>},
      {QuantType::q8_0, gemv<Q8_0>},
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

}  // namespace helexa::quant::avx512
