// Portable integer dot products of ggml blocks with int8 activations: the reference for the SIMD
// variants (same integer sums, so every ISA agrees up to float summation order).
#include <cmath>
#include <cstddef>

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
