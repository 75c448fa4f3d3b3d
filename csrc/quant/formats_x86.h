// How the blocks of the 32-element formats and of Q2_K / Q3_K / IQ4_XS unpack into bytes in
// natural element order, with AVX2 instructions. Included only by the AVX2 and AVX-512 translation
// units (each compiles its own private copy: the helpers are static, see quant/blocks.h), whose
// generic kernels (Q32Kernel, SuperKernel) take one of these descriptions as a parameter.
//
// A description gives the block struct, where the fp16 fields sit (offsetof), the quants as 32-byte
// vectors (unsigned, or signed when kSigned), and the integer terms of the dot product:
//   32-element: y = d * (q + kOffset) [+ m]             -> d * (q . x + kOffset * sum x) [+ m * sum x]
//   super-block: y = d * sc_j * (q + kOffset) [- dmin * mn_j], with a scale (and min) per 16.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstring>

#include "quant/blocks.h"

namespace helexa::quant {

static inline __m256i fmt_load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 32 nibbles of 16 bytes: element j is the low nibble of byte j, element j + 16 its high nibble.
static inline __m256i fmt_nibbles32(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
}

// 0x10 in byte j where bit j of the little-endian 32-bit word at p is set, else 0.
static inline __m256i fmt_fifth_bits(const uint8_t* p) {
  uint32_t bits;
  std::memcpy(&bits, p, 4);
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(bits)),
      _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i mask = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask), _mm256_set1_epi8(0x10));
}

// The signed IQ4 levels of 32 nibble indices.
static inline __m256i fmt_iq4_levels(__m256i indices) {
  const __m256i table = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
  return _mm256_shuffle_epi8(table, indices);
}

// --- 32-element formats ------------------------------------------------------------------------

struct FmtQ4_1 {
  using Block = BlockQ4_1;
  static constexpr bool kSigned = false, kMin = true;
  static constexpr int kOffset = 0;
  static __m256i quants(const uint8_t* blk) { return fmt_nibbles32(blk + offsetof(Block, qs)); }
};

struct FmtQ5_0 {
  using Block = BlockQ5_0;
  static constexpr bool kSigned = false, kMin = false;
  static constexpr int kOffset = -16;
  static __m256i quants(const uint8_t* blk) {
    return _mm256_or_si256(fmt_nibbles32(blk + offsetof(Block, qs)), fmt_fifth_bits(blk + offsetof(Block, qh)));
  }
};

struct FmtQ5_1 {
  using Block = BlockQ5_1;
  static constexpr bool kSigned = false, kMin = true;
  static constexpr int kOffset = 0;
  static __m256i quants(const uint8_t* blk) {
    return _mm256_or_si256(fmt_nibbles32(blk + offsetof(Block, qs)), fmt_fifth_bits(blk + offsetof(Block, qh)));
  }
};

struct FmtIQ4_NL {
  using Block = BlockIQ4_NL;
  static constexpr bool kSigned = true, kMin = false;
  static constexpr int kOffset = 0;
  static __m256i quants(const uint8_t* blk) { return fmt_iq4_levels(fmt_nibbles32(blk + offsetof(Block, qs))); }
};

// --- super-block formats (256 elements, a scale per 16) ----------------------------------------

// Q2_K / Q3_K low two bits: chunk 4h + s (elements 128h + 32s ..) sits at bits 2s of qs[32h ..].
static inline __m256i fmt_two_bits(const uint8_t* qs, int chunk) {
  const __m256i raw = fmt_load256(qs + 32 * (chunk / 4));
  return _mm256_and_si256(_mm256_srli_epi16(raw, 2 * (chunk % 4)), _mm256_set1_epi8(3));
}

struct FmtQ2_K {
  using Block = BlockQ2_K;
  static constexpr bool kSigned = false, kMin = true;
  static constexpr int kOffset = 0;
  static float d(const uint8_t* blk) { return load_half(blk + offsetof(Block, d)); }
  static float dmin(const uint8_t* blk) { return load_half(blk + offsetof(Block, dmin)); }
  static void quants(const uint8_t* blk, __m256i q[8]) {
    for (int k = 0; k < 8; ++k) q[k] = fmt_two_bits(blk + offsetof(Block, qs), k);
  }
  static void scales(const uint8_t* blk, int16_t sc[16], int16_t mn[16]) {
    const uint8_t* s = blk + offsetof(Block, scales);
    for (int j = 0; j < 16; ++j) {
      sc[j] = static_cast<int16_t>(s[j] & 0xF);
      mn[j] = static_cast<int16_t>(s[j] >> 4);
    }
  }
};

struct FmtQ3_K {
  using Block = BlockQ3_K;
  static constexpr bool kSigned = false, kMin = false;
  static constexpr int kOffset = -4;  // q = low | high << 2 in 0..7 stands for q - 4
  static float d(const uint8_t* blk) { return load_half(blk + offsetof(Block, d)); }
  static float dmin(const uint8_t*) { return 0.0f; }
  static void quants(const uint8_t* blk, __m256i q[8]) {
    const __m256i hm = fmt_load256(blk + offsetof(Block, hmask));
    for (int k = 0; k < 8; ++k) {
      const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << k));  // chunk 4h + s: bit 4h + s
      const __m256i high = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit), _mm256_set1_epi8(4));
      q[k] = _mm256_or_si256(fmt_two_bits(blk + offsetof(Block, qs), k), high);
    }
  }
  static void scales(const uint8_t* blk, int16_t sc[16], int16_t mn[16]) {
    int8_t s[16];
    unpack_q3k_scales(blk + offsetof(Block, scales), s);
    for (int j = 0; j < 16; ++j) {
      sc[j] = s[j];
      mn[j] = 0;
    }
  }
};

struct FmtIQ4_XS {
  using Block = BlockIQ4_XS;
  static constexpr bool kSigned = true, kMin = false;
  static constexpr int kOffset = 0;
  static float d(const uint8_t* blk) { return load_half(blk + offsetof(Block, d)); }
  static float dmin(const uint8_t*) { return 0.0f; }
  static void quants(const uint8_t* blk, __m256i q[8]) {
    for (int k = 0; k < 8; ++k) q[k] = fmt_iq4_levels(fmt_nibbles32(blk + offsetof(Block, qs) + 16 * k));
  }
  static void scales(const uint8_t* blk, int16_t sc[16], int16_t mn[16]) {
    uint16_t high;
    std::memcpy(&high, blk + offsetof(Block, scales_h), 2);
    for (int j = 0; j < 8; ++j) {
      sc[2 * j] = sc[2 * j + 1] = static_cast<int16_t>(iq4xs_scale(blk + offsetof(Block, scales_l), high, j));
      mn[2 * j] = mn[2 * j + 1] = 0;
    }
  }
};

}  // namespace helexa::quant
