// Per-block dequantization of every type of the trait table, written once for both devices:
// dequantize.cpp's row functions and kernels/quant.cu call these same functions. Each one writes the
// kBlockElems<Block> float32 values of one block to y, and matches ggml's dequantize_row_* (and
// therefore gguf.quants.dequantize) bit for bit: products are formed in ggml's order and never
// fused. That needs -ffp-contract=off from the host compiler and -fmad=false from nvcc, which
// CMakeLists.txt sets for every source that includes this header.
//
// One overload per block struct (quant/blocks.h), so a template over the block type picks its math.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/hd.h"
#include "quant/blocks.h"

namespace helexa::quant {

// Elements of one block of each type.
template <class Block>
constexpr int kBlockElems = 32;
template <>
constexpr int kBlockElems<BlockQ2_K> = kQK;
template <>
constexpr int kBlockElems<BlockQ3_K> = kQK;
template <>
constexpr int kBlockElems<BlockQ4_K> = kQK;
template <>
constexpr int kBlockElems<BlockQ5_K> = kQK;
template <>
constexpr int kBlockElems<BlockQ6_K> = kQK;
template <>
constexpr int kBlockElems<BlockIQ4_XS> = kQK;

// Q4_K and Q5_K share scales; q5 adds the fifth bit from qh when it is given.
HELEXA_HD static inline void dequantize_k4(const uint8_t* scales, const uint8_t* qs, const uint8_t* qh, float d,
                                           float dmin, float* y) {
  uint8_t sc[8], mn[8];
  unpack_k4_scales(scales, sc, mn);
  for (int g = 0; g < 4; ++g) {
    const float d1 = d * sc[2 * g], m1 = dmin * mn[2 * g];
    const float d2 = d * sc[2 * g + 1], m2 = dmin * mn[2 * g + 1];
    for (int l = 0; l < 32; ++l) {
      int lo = qs[32 * g + l] & 0xF, hi = qs[32 * g + l] >> 4;
      if (qh != nullptr) {
        lo |= ((qh[l] >> (2 * g)) & 1) << 4;
        hi |= ((qh[l] >> (2 * g + 1)) & 1) << 4;
      }
      y[64 * g + l] = d1 * static_cast<float>(lo) - m1;
      y[64 * g + l + 32] = d2 * static_cast<float>(hi) - m2;
    }
  }
}

// The 32 five-bit quants of a Q5_0 / Q5_1 block, 0..31.
HELEXA_HD static inline void unpack_q5(const uint8_t qh_bytes[4], const uint8_t qs[16], int q[32]) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  for (int j = 0; j < 16; ++j) {
    q[j] = (qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1) << 4);
    q[j + 16] = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
  }
}

HELEXA_HD static inline void dequantize_block(const BlockQ4_0* blk, float* y) {
  const float d = load_half(&blk->d);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((blk->qs[j] & 0xF) - 8);
    y[j + 16] = d * static_cast<float>((blk->qs[j] >> 4) - 8);
  }
}

HELEXA_HD static inline void dequantize_block(const BlockQ4_1* blk, float* y) {
  const float d = load_half(&blk->d), m = load_half(&blk->m);
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(blk->qs[j] & 0xF) * d + m;
    y[j + 16] = static_cast<float>(blk->qs[j] >> 4) * d + m;
  }
}

HELEXA_HD static inline void dequantize_block(const BlockQ5_0* blk, float* y) {
  int q[32];
  const float d = load_half(&blk->d);
  unpack_q5(blk->qh, blk->qs, q);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(q[j] - 16) * d;
}

HELEXA_HD static inline void dequantize_block(const BlockQ5_1* blk, float* y) {
  int q[32];
  const float d = load_half(&blk->d), m = load_half(&blk->m);
  unpack_q5(blk->qh, blk->qs, q);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(q[j]) * d + m;
}

HELEXA_HD static inline void dequantize_block(const BlockIQ4_NL* blk, float* y) {
  const float d = load_half(&blk->d);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(iq4nl_value(blk->qs[j] & 0xF));
    y[j + 16] = d * static_cast<float>(iq4nl_value(blk->qs[j] >> 4));
  }
}

HELEXA_HD static inline void dequantize_block(const BlockQ8_0* blk, float* y) {
  const float d = load_half(&blk->d);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(blk->qs[j]);
}

HELEXA_HD static inline void dequantize_block(const BlockQ2_K* blk, float* y) {
  const float d = load_half(&blk->d), dmin = load_half(&blk->dmin);
  for (int e0 = 0; e0 < kQK; e0 += 16) {  // one 16-element sub-block at a time
    const uint8_t sc = blk->scales[e0 / 16];
    const float dl = d * static_cast<float>(sc & 0xF), ml = dmin * static_cast<float>(sc >> 4);
    const int h = e0 / 128, s = (e0 % 128) / 32, l0 = e0 % 32;
    for (int l = l0; l < l0 + 16; ++l) {
      y[e0 + l - l0] = dl * static_cast<float>((blk->qs[32 * h + l] >> (2 * s)) & 3) - ml;
    }
  }
}

HELEXA_HD static inline void dequantize_block(const BlockQ3_K* blk, float* y) {
  int8_t sc[16];
  const float d = load_half(&blk->d);
  unpack_q3k_scales(blk->scales, sc);
  for (int e0 = 0; e0 < kQK; e0 += 16) {
    const float dl = d * static_cast<float>(sc[e0 / 16]);
    const int h = e0 / 128, s = (e0 % 128) / 32, l0 = e0 % 32;
    for (int l = l0; l < l0 + 16; ++l) {
      const int lo = (blk->qs[32 * h + l] >> (2 * s)) & 3;
      const int q = lo - (((blk->hmask[l] >> (4 * h + s)) & 1) ? 0 : 4);
      y[e0 + l - l0] = dl * static_cast<float>(q);
    }
  }
}

HELEXA_HD static inline void dequantize_block(const BlockQ4_K* blk, float* y) {
  dequantize_k4(blk->scales, blk->qs, nullptr, load_half(&blk->d), load_half(&blk->dmin), y);
}

HELEXA_HD static inline void dequantize_block(const BlockQ5_K* blk, float* y) {
  dequantize_k4(blk->scales, blk->qs, blk->qh, load_half(&blk->d), load_half(&blk->dmin), y);
}

HELEXA_HD static inline void dequantize_block(const BlockQ6_K* blk, float* y) {
  const float d = load_half(&blk->d);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = blk->ql + 64 * h;
    const uint8_t* qh = blk->qh + 32 * h;
    const int8_t* sc = blk->scales + 8 * h;
    float* yh = y + 128 * h;
    for (int l = 0; l < 32; ++l) {
      const int s = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      yh[l] = d * static_cast<float>(sc[s]) * static_cast<float>(q1);
      yh[l + 32] = d * static_cast<float>(sc[s + 2]) * static_cast<float>(q2);
      yh[l + 64] = d * static_cast<float>(sc[s + 4]) * static_cast<float>(q3);
      yh[l + 96] = d * static_cast<float>(sc[s + 6]) * static_cast<float>(q4);
    }
  }
}

HELEXA_HD static inline void dequantize_block(const BlockIQ4_XS* blk, float* y) {
  const float d = load_half(&blk->d);
  uint16_t scales_h;
  std::memcpy(&scales_h, &blk->scales_h, 2);
  for (int j = 0; j < 8; ++j, y += 32) {
    const float dl = d * static_cast<float>(iq4xs_scale(blk->scales_l, scales_h, j));
    const uint8_t* qs = blk->qs + 16 * j;
    for (int l = 0; l < 16; ++l) {
      y[l] = dl * static_cast<float>(iq4nl_value(qs[l] & 0xF));
      y[l + 16] = dl * static_cast<float>(iq4nl_value(qs[l] >> 4));
    }
  }
}

}  // namespace helexa::quant
