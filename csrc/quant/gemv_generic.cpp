// Portable integer dot products of ggml blocks with int8 activations: the reference for the SIMD
// variants (same integer sums, so every ISA agrees up to float summation order).
#include <cmath>
#include <cstddef>
#include <cstring>

#include "quant/kernels.h"

namespace helexa::quant::generic {
namespace {

float dot_q4_0(const uint8_t* row, int64_t nb, const ActView& a) {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const auto* blk = reinterpret_cast<const BlockQ4_0*>(row + b * sizeof(BlockQ4_0));
    const int8_t* x = a.qs + b * 32;
    int sum = 0;
    for (int j = 0; j < 16; ++j) {
      sum += ((blk->qs[j] & 0xF) - 8) * x[j] + ((blk->qs[j] >> 4) - 8) * x[j + 16];
    }
    acc += load_half(&blk->d) * a.d[b] * static_cast<float>(sum);
  }
  return acc;
}

float dot_q8_0(const uint8_t* row, int64_t nb, const ActView& a) {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const auto* blk = reinterpret_cast<const BlockQ8_0*>(row + b * sizeof(BlockQ8_0));
    const int8_t* x = a.qs + b * 32;
    int sum = 0;
    for (int j = 0; j < 32; ++j) sum += blk->qs[j] * x[j];
    acc += load_half(&blk->d) * a.d[b] * static_cast<float>(sum);
  }
  return acc;
}

// Q4_K / Q5_K: d * sum_j sc_j * (q . x)_j - dmin * sum_j m_j * (sum of x over sub-block j).
template <class Block, bool kFive>
float dot_k4(const uint8_t* row, int64_t nb, const ActView& a) {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = row + b * sizeof(Block);
    const uint8_t* qh = kFive ? blk + offsetof(BlockQ5_K, qh) : nullptr;
    const uint8_t* qs = blk + offsetof(Block, qs);
    uint8_t sc[8], mn[8];
    unpack_k4_scales(blk + offsetof(Block, scales), sc, mn);
    const int8_t* x = a.qs + b * kQK;
    const int16_t* bs = a.bsums + b * 16;
    int sum = 0, summ = 0;
    for (int g = 0; g < 4; ++g) {
      int lo_sum = 0, hi_sum = 0;
      for (int l = 0; l < 32; ++l) {
        int lo = qs[32 * g + l] & 0xF, hi = qs[32 * g + l] >> 4;
        if (kFive) {
          lo |= ((qh[l] >> (2 * g)) & 1) << 4;
          hi |= ((qh[l] >> (2 * g + 1)) & 1) << 4;
        }
        lo_sum += lo * x[64 * g + l];
        hi_sum += hi * x[64 * g + 32 + l];
      }
      sum += sc[2 * g] * lo_sum + sc[2 * g + 1] * hi_sum;
    }
    for (int j = 0; j < 8; ++j) summ += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
    acc += a.d[b] * (load_half(blk + offsetof(Block, d)) * static_cast<float>(sum) -
                     load_half(blk + offsetof(Block, dmin)) * static_cast<float>(summ));
  }
  return acc;
}

float dot_q6_k(const uint8_t* row, int64_t nb, const ActView& a) {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const auto* blk = reinterpret_cast<const BlockQ6_K*>(row + b * sizeof(BlockQ6_K));
    const int8_t* x = a.qs + b * kQK;
    int sum = 0;
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = blk->ql + 64 * h;
      const uint8_t* qh = blk->qh + 32 * h;
      const int8_t* xh = x + 128 * h;
      int part[8] = {0};  // per 16-element sub-block of this half
      for (int l = 0; l < 32; ++l) {
        const int s = l / 16;
        part[s] += (((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32) * xh[l];
        part[s + 2] += (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32) * xh[l + 32];
        part[s + 4] += (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32) * xh[l + 64];
        part[s + 6] += (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32) * xh[l + 96];
      }
      for (int s = 0; s < 8; ++s) sum += blk->scales[8 * h + s] * part[s];
    }
    acc += load_half(&blk->d) * a.d[b] * static_cast<float>(sum);
  }
  return acc;
}

// The sum of the activations over 32-element block b (two sums of 16).
static inline int block_sum32(const ActView& a, int64_t b) { return a.bsums[2 * b] + a.bsums[2 * b + 1]; }

// Q4_1 / Q5_1: d * (q . x) + m * (sum of x); Q5_0: d * (q . x - 16 * sum of x).
template <class Block>
float dot_q32_affine(const uint8_t* row, int64_t nb, const ActView& a) {
  constexpr bool kFive = sizeof(Block) != sizeof(BlockQ4_1);
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const auto* blk = reinterpret_cast<const Block*>(row + b * sizeof(Block));
    const int8_t* x = a.qs + b * 32;
    uint32_t qh = 0;
    if constexpr (kFive) std::memcpy(&qh, blk->qh, 4);
    int sum = 0;
    for (int j = 0; j < 16; ++j) {
      const int lo = (blk->qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1) << 4);
      const int hi = (blk->qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
      sum += lo * x[j] + hi * x[j + 16];
    }
    acc += a.d[b] * (load_half(&blk->d) * static_cast<float>(sum) +
                     load_half(&blk->m) * static_cast<float>(block_sum32(a, b)));
  }
  return acc;
}

float dot_q5_0(const uint8_t* row, int64_t nb, const ActView& a) {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const auto* blk = reinterpret_cast<const BlockQ5_0*>(row + b * sizeof(BlockQ5_0));
    const int8_t* x = a.qs + b * 32;
    uint32_t qh;
    std::memcpy(&qh, blk->qh, 4);
    int sum = 0;
    for (int j = 0; j < 16; ++j) {
      const int lo = (blk->qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1) << 4);
      const int hi = (blk->qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
      sum += lo * x[j] + hi * x[j + 16];
    }
    acc += load_half(&blk->d) * a.d[b] * static_cast<float>(sum - 16 * block_sum32(a, b));
  }
  return acc;
}

float dot_iq4_nl(const uint8_t* row, int64_t nb, const ActView& a) {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const auto* blk = reinterpret_cast<const BlockIQ4_NL*>(row + b * sizeof(BlockIQ4_NL));
    const int8_t* x = a.qs + b * 32;
    int sum = 0;
    for (int j = 0; j < 16; ++j) {
      sum += kIq4nlValues[blk->qs[j] & 0xF] * x[j] + kIq4nlValues[blk->qs[j] >> 4] * x[j + 16];
    }
    acc += load_half(&blk->d) * a.d[b] * static_cast<float>(sum);
  }
  return acc;
}

// Q2_K: d * sum_j sc_j * (q . x)_j - dmin * sum_j m_j * (sum of x over sub-block j), j per 16.
float dot_q2_k(const uint8_t* row, int64_t nb, const ActView& a) {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const auto* blk = reinterpret_cast<const BlockQ2_K*>(row + b * sizeof(BlockQ2_K));
    const int8_t* x = a.qs + b * kQK;
    const int16_t* bs = a.bsums + b * 16;
    int sum = 0, summ = 0;
    for (int j = 0; j < 16; ++j) {
      const int h = j / 8, s = (j % 8) / 2, l0 = 16 * (j % 2);
      int part = 0;
      for (int l = l0; l < l0 + 16; ++l) part += ((blk->qs[32 * h + l] >> (2 * s)) & 3) * x[16 * j + l - l0];
      sum += (blk->scales[j] & 0xF) * part;
      summ += (blk->scales[j] >> 4) * bs[j];
    }
    acc += a.d[b] * (load_half(&blk->d) * static_cast<float>(sum) - load_half(&blk->dmin) * static_cast<float>(summ));
  }
  return acc;
}

// Q3_K: d * sum_j sc_j * (q . x)_j with q in -4..3 and signed 6-bit scales, j per 16.
float dot_q3_k(const uint8_t* row, int64_t nb, const ActView& a) {
  float acc = 0.0f;
  int8_t sc[16];
  for (int64_t b = 0; b < nb; ++b) {
    const auto* blk = reinterpret_cast<const BlockQ3_K*>(row + b * sizeof(BlockQ3_K));
    const int8_t* x = a.qs + b * kQK;
    unpack_q3k_scales(blk->scales, sc);
    int sum = 0;
    for (int j = 0; j < 16; ++j) {
      const int h = j / 8, s = (j % 8) / 2, l0 = 16 * (j % 2);
      int part = 0;
      for (int l = l0; l < l0 + 16; ++l) {
        const int q = ((blk->qs[32 * h + l] >> (2 * s)) & 3) - (((blk->hmask[l] >> (4 * h + s)) & 1) ? 0 : 4);
        part += q * x[16 * j + l - l0];
      }
      sum += sc[j] * part;
    }
    acc += load_half(&blk->d) * a.d[b] * static_cast<float>(sum);
  }
  return acc;
}

// IQ4_XS: d * sum_j ls_j * (levels . x)_j, j per 32.
float dot_iq4_xs(const uint8_t* row, int64_t nb, const ActView& a) {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const auto* blk = reinterpret_cast<const BlockIQ4_XS*>(row + b * sizeof(BlockIQ4_XS));
    const int8_t* x = a.qs + b * kQK;
    uint16_t scales_h;
    std::memcpy(&scales_h, &blk->scales_h, 2);
    int sum = 0;
    for (int j = 0; j < 8; ++j) {
      const uint8_t* qs = blk->qs + 16 * j;
      const int8_t* xj = x + 32 * j;
      int part = 0;
      for (int l = 0; l < 16; ++l) part += kIq4nlValues[qs[l] & 0xF] * xj[l] + kIq4nlValues[qs[l] >> 4] * xj[l + 16];
      sum += iq4xs_scale(blk->scales_l, scales_h, j) * part;
    }
    acc += load_half(&blk->d) * a.d[b] * static_cast<float>(sum);
  }
  return acc;
}

// One GEMV per dot: every row against every activation column.
template <float (*Dot)(const uint8_t*, int64_t, const ActView&)>
void gemv(const uint8_t* w, int64_t row_bytes, int64_t nrows, int64_t nb, const ActView* acts, int ncols,
          float* y, int64_t ldy) {
  for (int64_t r = 0; r < nrows; ++r) {
    for (int c = 0; c < ncols; ++c) y[c * ldy + r] = Dot(w + r * row_bytes, nb, acts[c]);
  }
}

const GemvKernel kKernels[] = {
    {QuantType::q4_0, gemv<dot_q4_0>},
    {QuantType::q8_0, gemv<dot_q8_0>},
    {QuantType::q4_k, gemv<dot_k4<BlockQ4_K, false>>},
    {QuantType::q5_k, gemv<dot_k4<BlockQ5_K, true>>},
    {QuantType::q6_k, gemv<dot_q6_k>},
    {QuantType::q4_1, gemv<dot_q32_affine<BlockQ4_1>>},
    {QuantType::q5_0, gemv<dot_q5_0>},
    {QuantType::q5_1, gemv<dot_q32_affine<BlockQ5_1>>},
    {QuantType::iq4_nl, gemv<dot_iq4_nl>},
    {QuantType::q2_k, gemv<dot_q2_k>},
    {QuantType::q3_k, gemv<dot_q3_k>},
    {QuantType::iq4_xs, gemv<dot_iq4_xs>},
};

}  // namespace

void quantize_activation(const void* x, DType xt, int64_t k, int act_block, uint8_t* column) {
  const ActView v = act_view(column, k, act_block);
  auto* qs = const_cast<int8_t*>(v.qs);
  auto* d = const_cast<float*>(v.d);
  auto* sums = const_cast<int16_t*>(v.bsums);
  float buf[kQK];
  for (int64_t b = 0; b < k / act_block; ++b) {
    const int64_t base = b * act_block;
    float amax = 0.0f;
    for (int i = 0; i < act_block; ++i) {
      buf[i] = load_as_f32(x, base + i, xt);
      amax = std::fmax(amax, std::fabs(buf[i]));
    }
    const float scale = amax / 127.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    d[b] = scale;
    for (int s = 0; s < act_block / 16; ++s) {
      int sum = 0;
      for (int i = 16 * s; i < 16 * s + 16; ++i) {
        int q = static_cast<int>(std::nearbyintf(buf[i] * inv));
        q = q > 127 ? 127 : (q < -127 ? -127 : q);
        qs[base + i] = static_cast<int8_t>(q);
        sum += q;
      }
      sums[(base >> 4) + s] = static_cast<int16_t>(sum);
    }
  }
}

GemvColumn gemv_kernels() { return {kKernels, static_cast<int>(sizeof(kKernels) / sizeof(kKernels[0]))}; }

}  // namespace helexa::quant::generic
