// Block -> float32 dequantization, written to match ggml's dequantize_row_* (and therefore
// gguf.quants.dequantize) bit for bit: products are formed in the same order and never fused
// (-ffp-contract=off for the whole module).
#include <cstring>
#include <vector>

#include "common/check.h"
#include "common/thread_pool.h"
#include "quant/quant.h"
#include "quant/rows.h"
#include "quant/traits.h"

namespace helexa::quant {
namespace {

// Q4_K and Q5_K share scales; q5 adds the fifth bit from qh when it is given.
void dequantize_k4(const uint8_t* scales, const uint8_t* qs, const uint8_t* qh, float d, float dmin,
                   float* y) {
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

}  // namespace

void dequantize_row_q4_0(const uint8_t* src, float* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += 32) {
    const auto* blk = reinterpret_cast<const BlockQ4_0*>(src + b * sizeof(BlockQ4_0));
    const float d = load_half(&blk->d);
    for (int j = 0; j < 16; ++j) {
      y[j] = d * static_cast<float>((blk->qs[j] & 0xF) - 8);
      y[j + 16] = d * static_cast<float>((blk->qs[j] >> 4) - 8);
    }
  }
}

void dequantize_row_q4_1(const uint8_t* src, float* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += 32) {
    const auto* blk = reinterpret_cast<const BlockQ4_1*>(src + b * sizeof(BlockQ4_1));
    const float d = load_half(&blk->d), m = load_half(&blk->m);
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>(blk->qs[j] & 0xF) * d + m;
      y[j + 16] = static_cast<float>(blk->qs[j] >> 4) * d + m;
    }
  }
}

// The 32 five-bit quants of a Q5_0 / Q5_1 block, 0..31.
static void unpack_q5(const uint8_t qh_bytes[4], const uint8_t qs[16], int q[32]) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  for (int j = 0; j < 16; ++j) {
    q[j] = (qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1) << 4);
    q[j + 16] = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
  }
}

void dequantize_row_q5_0(const uint8_t* src, float* y, int64_t nblocks) {
  int q[32];
  for (int64_t b = 0; b < nblocks; ++b, y += 32) {
    const auto* blk = reinterpret_cast<const BlockQ5_0*>(src + b * sizeof(BlockQ5_0));
    const float d = load_half(&blk->d);
    unpack_q5(blk->qh, blk->qs, q);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(q[j] - 16) * d;
  }
}

void dequantize_row_q5_1(const uint8_t* src, float* y, int64_t nblocks) {
  int q[32];
  for (int64_t b = 0; b < nblocks; ++b, y += 32) {
    const auto* blk = reinterpret_cast<const BlockQ5_1*>(src + b * sizeof(BlockQ5_1));
    const float d = load_half(&blk->d), m = load_half(&blk->m);
    unpack_q5(blk->qh, blk->qs, q);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(q[j]) * d + m;
  }
}

void dequantize_row_iq4_nl(const uint8_t* src, float* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += 32) {
    const auto* blk = reinterpret_cast<const BlockIQ4_NL*>(src + b * sizeof(BlockIQ4_NL));
    const float d = load_half(&blk->d);
    for (int j = 0; j < 16; ++j) {
      y[j] = d * static_cast<float>(kIq4nlValues[blk->qs[j] & 0xF]);
      y[j + 16] = d * static_cast<float>(kIq4nlValues[blk->qs[j] >> 4]);
    }
  }
}

void dequantize_row_q2_k(const uint8_t* src, float* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQK) {
    const auto* blk = reinterpret_cast<const BlockQ2_K*>(src + b * sizeof(BlockQ2_K));
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
}

void dequantize_row_q3_k(const uint8_t* src, float* y, int64_t nblocks) {
  int8_t sc[16];
  for (int64_t b = 0; b < nblocks; ++b, y += kQK) {
    const auto* blk = reinterpret_cast<const BlockQ3_K*>(src + b * sizeof(BlockQ3_K));
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
}

void dequantize_row_iq4_xs(const uint8_t* src, float* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b) {
    const auto* blk = reinterpret_cast<const BlockIQ4_XS*>(src + b * sizeof(BlockIQ4_XS));
    const float d = load_half(&blk->d);
    uint16_t scales_h;
    std::memcpy(&scales_h, &blk->scales_h, 2);
    for (int j = 0; j < 8; ++j, y += 32) {
      const float dl = d * static_cast<float>(iq4xs_scale(blk->scales_l, scales_h, j));
      const uint8_t* qs = blk->qs + 16 * j;
      for (int l = 0; l < 16; ++l) {
        y[l] = dl * static_cast<float>(kIq4nlValues[qs[l] & 0xF]);
        y[l + 16] = dl * static_cast<float>(kIq4nlValues[qs[l] >> 4]);
      }
    }
  }
}

void dequantize_row_q8_0(const uint8_t* src, float* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += 32) {
    const auto* blk = reinterpret_cast<const BlockQ8_0*>(src + b * sizeof(BlockQ8_0));
    const float d = load_half(&blk->d);
    for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(blk->qs[j]);
  }
}

void dequantize_row_q4_k(const uint8_t* src, float* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQK) {
    const auto* blk = reinterpret_cast<const BlockQ4_K*>(src + b * sizeof(BlockQ4_K));
    dequantize_k4(blk->scales, blk->qs, nullptr, load_half(&blk->d), load_half(&blk->dmin), y);
  }
}

void dequantize_row_q5_k(const uint8_t* src, float* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQK) {
    const auto* blk = reinterpret_cast<const BlockQ5_K*>(src + b * sizeof(BlockQ5_K));
    dequantize_k4(blk->scales, blk->qs, blk->qh, load_half(&blk->d), load_half(&blk->dmin), y);
  }
}

void dequantize_row_q6_k(const uint8_t* src, float* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQK) {
    const auto* blk = reinterpret_cast<const BlockQ6_K*>(src + b * sizeof(BlockQ6_K));
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
}

void dequantize_cpu(void* out, const uint8_t* w, int64_t rows, int64_t cols, QuantType t, DType out_t) {
  const QuantTraits& tr = quant_traits(t);
  HELEXA_CHECK(rows >= 0 && cols >= 0, "rows and cols must be >= 0, got ", rows, " x ", cols);
  HELEXA_CHECK(cols % tr.block_elems == 0, tr.name, ": row length ", cols,
               " is not a multiple of the block size ", tr.block_elems);
  const int64_t nb = cols / tr.block_elems;
  const int64_t row_bytes = nb * tr.block_bytes;
  const DequantizeRowFn fn = tr.dequantize_row;
  const int esize = dtype_size(out_t);
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> row;
    if (out_t != DType::f32) row.resize(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      auto* dst = static_cast<uint8_t*>(out) + r * cols * esize;
      if (out_t == DType::f32) {
        fn(w + r * row_bytes, reinterpret_cast<float*>(dst), nb);
      } else {
        fn(w + r * row_bytes, row.data(), nb);
        store_from_f32(dst, row.data(), cols, out_t);
      }
    }
  });
}

}  // namespace helexa::quant
