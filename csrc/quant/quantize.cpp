// Reference quantizers: float32 rows -> ggml blocks, following ggml's reference algorithms
// (quantize_row_*_ref in ggml-quants.c), so files we write match what llama.cpp would write.
// Q8_0 and Q4_0 are byte-identical to gguf.quants.quantize. The K-quants fit each sub-block's
// scale and min with ggml's iterative weighted search, then quantize the scales to 6 / 8 bits.
// Built without FMA contraction (-ffp-contract=off), as the reference is.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "common/check.h"
#include "common/thread_pool.h"
#include "quant/quant.h"
#include "quant/rows.h"
#include "quant/traits.h"

namespace helexa::quant {

constexpr float kGroupMaxEps = 1e-15f;

// Round half to even, as ggml's nearest_int (valid for |x| < 2^22).
static inline int nearest_int(float x) { return static_cast<int>(std::nearbyintf(x)); }

// The value of largest magnitude among x[0..n), sign kept (the first of equal magnitudes).
static inline float signed_amax(const float* x, int n) {
  float amax = 0.0f, value = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      value = x[j];
    }
  }
  return value;
}

void quantize_row_q8_0(const float* x, uint8_t* out, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += 32) {
    auto* blk = reinterpret_cast<BlockQ8_0*>(out + b * sizeof(BlockQ8_0));
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_half(&blk->d, d);
    for (int j = 0; j < 32; ++j) blk->qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
  }
}

void quantize_row_q4_0(const float* x, uint8_t* out, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += 32) {
    auto* blk = reinterpret_cast<BlockQ4_0*>(out + b * sizeof(BlockQ4_0));
    const float d = signed_amax(x, 32) / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_half(&blk->d, d);
    for (int j = 0; j < 16; ++j) {
      const int lo = std::min(15, static_cast<int>(x[j] * id + 8.5f));
      const int hi = std::min(15, static_cast<int>(x[j + 16] * id + 8.5f));
      blk->qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

// Fits x ~ scale * L - min with L in [0, nmax] for one sub-block, minimising the weighted squared
// (or, with use_mad, absolute) error over a sweep of candidate scales (ggml's make_qkx2_quants).
// Returns scale; *neg_min = min.
static float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min,
                           float rmin, float rdelta, int nstep, bool use_mad = false) {
  float lo = x[0], hi = x[0];
  float sum_w = w[0], sum_x = w[0] * x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (lo > 0) lo = 0;
  if (hi == lo) {
    std::fill(L, L + n, uint8_t{0});
    *neg_min = -lo;
    return 0.0f;
  }
  float iscale = nmax / (hi - lo);
  float scale = 1 / iscale;
  float best = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * (x[i] - lo)), 0, nmax);
    L[i] = static_cast<uint8_t>(l);
    const float diff = scale * L[i] + lo - x[i];
    best += w[i] * (use_mad ? std::fabs(diff) : diff * diff);
  }
  uint8_t trial[32];
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (hi - lo);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - lo)), 0, nmax);
      trial[i] = static_cast<uint8_t>(l);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float err = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * trial[i] + this_min - x[i];
        err += w[i] * (use_mad ? std::fabs(diff) : diff * diff);
      }
      if (err < best) {
        std::memcpy(L, trial, static_cast<size_t>(n));
        best = err;
        scale = this_scale;
        lo = this_min;
      }
    }
  }
  *neg_min = -lo;
  return scale;
}

// Packs the eight 6-bit scales and mins of a Q4_K / Q5_K block (inverse of unpack_k4_scales).
static void pack_k4_scales(const uint8_t sc[8], const uint8_t mn[8], uint8_t packed[12]) {
  for (int j = 0; j < 4; ++j) {
    packed[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    packed[j + 4] = static_cast<uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6));
    packed[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4));
  }
}

// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): per 32-element sub-block scale/min fit, the
// scales and mins quantized to 6 bits against the block maxima, then every element requantized
// with the final scales. L receives the 256 quantized levels.
static void quantize_k4_block(const float* x, int nmax, float rmin, float rdelta, int nstep, uint16_t* d_out,
                       uint16_t* dmin_out, uint8_t packed[12], uint8_t L[kQK]) {
  float scales[8], mins[8], weights[32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xs[l]);
    scales[j] = fit_scale_min(32, nmax, xs, weights, L + 32 * j, &mins[j], rmin, rdelta, nstep);
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = static_cast<uint8_t>(std::min(63, nearest_int(inv_scale * scales[j])));
    lm[j] = static_cast<uint8_t>(std::min(63, nearest_int(inv_min * mins[j])));
  }
  pack_k4_scales(ls, lm, packed);
  *d_out = fp32_to_fp16(max_scale / 63.f);
  *dmin_out = fp32_to_fp16(max_min / 63.f);
  const float d = fp16_to_fp32(*d_out), dmin = fp16_to_fp32(*dmin_out);
  for (int j = 0; j < 8; ++j) {
    const float ds = d * ls[j];
    if (ds == 0.0f) continue;
    const float dm = dmin * lm[j];
    for (int i = 0; i < 32; ++i) {
      L[32 * j + i] = static_cast<uint8_t>(std::clamp(nearest_int((x[32 * j + i] + dm) / ds), 0, nmax));
    }
  }
}

void quantize_row_q4_k(const float* x, uint8_t* out, int64_t nblocks) {
  uint8_t L[kQK];
  for (int64_t b = 0; b < nblocks; ++b, x += kQK) {
    BlockQ4_K blk;
    quantize_k4_block(x, 15, -1.f, 0.1f, 20, &blk.d, &blk.dmin, blk.scales, L);
    for (int g = 0; g < 4; ++g) {
      for (int l = 0; l < 32; ++l) {
        blk.qs[32 * g + l] = static_cast<uint8_t>(L[64 * g + l] | (L[64 * g + l + 32] << 4));
      }
    }
    std::memcpy(out + b * sizeof(BlockQ4_K), &blk, sizeof(blk));
  }
}

void quantize_row_q5_k(const float* x, uint8_t* out, int64_t nblocks) {
  uint8_t L[kQK];
  for (int64_t b = 0; b < nblocks; ++b, x += kQK) {
    BlockQ5_K blk;
    quantize_k4_block(x, 31, -0.5f, 0.1f, 15, &blk.d, &blk.dmin, blk.scales, L);
    std::memset(blk.qh, 0, sizeof(blk.qh));
    for (int g = 0; g < 4; ++g) {
      for (int l = 0; l < 32; ++l) {
        const int lo = L[64 * g + l], hi = L[64 * g + l + 32];
        blk.qs[32 * g + l] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
        blk.qh[l] |= static_cast<uint8_t>(((lo >> 4) << (2 * g)) | ((hi >> 4) << (2 * g + 1)));
      }
    }
    std::memcpy(out + b * sizeof(BlockQ5_K), &blk, sizeof(blk));
  }
}

// Symmetric fit of 16 values to L in [-nmax, nmax-1] weighted by x^2, sweeping 19 candidate
// scales around nmax/max (ggml's make_qx_quants with rmse_type 1). L receives l + nmax.
static float fit_symmetric(int n, int nmax, const float* x, int8_t* L) {
  const float signed_max = signed_amax(x, n);
  if (std::fabs(signed_max) < kGroupMaxEps) {
    std::fill(L, L + n, int8_t{0});
    return 0.f;
  }
  float iscale = -nmax / signed_max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / signed_max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        L[i] = static_cast<int8_t>(nmax + std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

void quantize_row_q6_k(const float* x, uint8_t* out, int64_t nblocks) {
  int8_t L[kQK];
  float scales[16];
  for (int64_t b = 0; b < nblocks; ++b, x += kQK) {
    BlockQ6_K blk;
    std::memset(&blk, 0, sizeof(blk));
    for (int s = 0; s < 16; ++s) scales[s] = fit_symmetric(16, 32, x + 16 * s, L + 16 * s);
    const float max_scale = signed_amax(scales, 16);
    if (std::fabs(max_scale) >= kGroupMaxEps) {
      const float iscale = -128.f / max_scale;
      blk.d = fp32_to_fp16(1 / iscale);
      for (int s = 0; s < 16; ++s) {
        blk.scales[s] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[s])));
      }
      const float d = fp16_to_fp32(blk.d);
      for (int s = 0; s < 16; ++s) {
        const float ds = d * blk.scales[s];
        if (ds == 0.0f) continue;
        for (int i = 0; i < 16; ++i) {
          L[16 * s + i] = static_cast<int8_t>(std::clamp(nearest_int(x[16 * s + i] / ds), -32, 31) + 32);
        }
      }
      for (int h = 0; h < 2; ++h) {
        const int8_t* Lh = L + 128 * h;
        for (int l = 0; l < 32; ++l) {
          blk.ql[64 * h + l] = static_cast<uint8_t>((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
          blk.ql[64 * h + l + 32] = static_cast<uint8_t>((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
          blk.qh[32 * h + l] = static_cast<uint8_t>((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) |
                                                    ((Lh[l + 64] >> 4) << 4) | ((Lh[l + 96] >> 4) << 6));
        }
      }
    }
    std::memcpy(out + b * sizeof(BlockQ6_K), &blk, sizeof(blk));
  }
}

// --- 32-element affine and offset formats (quantize_row_q4_1 / q5_0 / q5_1_ref) ---------------

void quantize_row_q4_1(const float* x, uint8_t* out, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += 32) {
    auto* blk = reinterpret_cast<BlockQ4_1*>(out + b * sizeof(BlockQ4_1));
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < 32; ++j) {
      lo = std::min(lo, x[j]);
      hi = std::max(hi, x[j]);
    }
    const float d = (hi - lo) / 15;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_half(&blk->d, d);
    store_half(&blk->m, lo);
    for (int j = 0; j < 16; ++j) {
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>((x[j] - lo) * id + 0.5f)));
      const int q1 = std::min(15, static_cast<int>(static_cast<int8_t>((x[j + 16] - lo) * id + 0.5f)));
      blk->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

// Packs 32 five-bit quants into the qs nibbles and qh bits of a Q5_0 / Q5_1 block.
static void pack_q5(const int q[32], uint8_t qh_out[4], uint8_t qs[16]) {
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
    qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((q[j + 16] >> 4) & 1) << (j + 16);
  }
  std::memcpy(qh_out, &qh, 4);
}

void quantize_row_q5_0(const float* x, uint8_t* out, int64_t nblocks) {
  int q[32];
  for (int64_t b = 0; b < nblocks; ++b, x += 32) {
    auto* blk = reinterpret_cast<BlockQ5_0*>(out + b * sizeof(BlockQ5_0));
    const float d = signed_amax(x, 32) / -16;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_half(&blk->d, d);
    for (int j = 0; j < 32; ++j) q[j] = std::min(31, static_cast<int>(static_cast<int8_t>(x[j] * id + 16.5f)));
    pack_q5(q, blk->qh, blk->qs);
  }
}

void quantize_row_q5_1(const float* x, uint8_t* out, int64_t nblocks) {
  int q[32];
  for (int64_t b = 0; b < nblocks; ++b, x += 32) {
    auto* blk = reinterpret_cast<BlockQ5_1*>(out + b * sizeof(BlockQ5_1));
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < 32; ++j) {
      lo = std::min(lo, x[j]);
      hi = std::max(hi, x[j]);
    }
    const float d = (hi - lo) / 31;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_half(&blk->d, d);
    store_half(&blk->m, lo);
    for (int j = 0; j < 32; ++j) q[j] = static_cast<uint8_t>((x[j] - lo) * id + 0.5f);
    pack_q5(q, blk->qh, blk->qs);
  }
}

// --- Q2_K / Q3_K (quantize_row_q2_K / q3_K_ref) -----------------------------------------------

// Packs 256 two-bit levels as Q2_K / Q3_K store them: element 128h + 32s + l at bits 2s of
// qs[32h + l].
static void pack_2bit(const uint8_t L[kQK], uint8_t qs[64]) {
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      const uint8_t* Lh = L + 128 * h;
      qs[32 * h + l] = static_cast<uint8_t>(Lh[l] | (Lh[l + 32] << 2) | (Lh[l + 64] << 4) | (Lh[l + 96] << 6));
    }
  }
}

void quantize_row_q2_k(const float* x, uint8_t* out, int64_t nblocks) {
  uint8_t L[kQK];
  float weights[16], scales[16], mins[16];
  for (int64_t b = 0; b < nblocks; ++b, x += kQK) {
    BlockQ2_K blk;
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = fit_scale_min(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, true);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    if (max_scale > 0) {
      const float iscale = 15.f / max_scale;
      for (int j = 0; j < 16; ++j) blk.scales[j] = static_cast<uint8_t>(nearest_int(iscale * scales[j]));
      blk.d = fp32_to_fp16(max_scale / 15.f);
    } else {
      std::memset(blk.scales, 0, sizeof(blk.scales));
      blk.d = fp32_to_fp16(0.f);
    }
    if (max_min > 0) {
      const float iscale = 15.f / max_min;
      for (int j = 0; j < 16; ++j) blk.scales[j] |= static_cast<uint8_t>(nearest_int(iscale * mins[j]) << 4);
      blk.dmin = fp32_to_fp16(max_min / 15.f);
    } else {
      blk.dmin = fp32_to_fp16(0.f);
    }
    const float d = fp16_to_fp32(blk.d), dmin = fp16_to_fp32(blk.dmin);
    for (int j = 0; j < 16; ++j) {
      const float ds = d * (blk.scales[j] & 0xF);
      if (ds == 0.0f) continue;
      const float dm = dmin * (blk.scales[j] >> 4);
      for (int i = 0; i < 16; ++i) {
        L[16 * j + i] = static_cast<uint8_t>(std::clamp(nearest_int((x[16 * j + i] + dm) / ds), 0, 3));
      }
    }
    pack_2bit(L, blk.qs);
    std::memcpy(out + b * sizeof(BlockQ2_K), &blk, sizeof(blk));
  }
}

// Symmetric fit of 16 values to L in [-nmax, nmax-1], weighted by x^2: start from nmax/max, then
// move single levels while that raises (sum w x l)^2 / (sum w l^2) (ggml's make_q3_quants with
// do_rmse). Returns the scale; L receives l + nmax.
static float fit_q3(int n, int nmax, const float* x, int8_t* L) {
  const float signed_max = signed_amax(x, n);
  if (std::fabs(signed_max) < kGroupMaxEps) {
    std::fill(L, L + n, int8_t{0});
    return 0.f;
  }
  const float iscale = -nmax / signed_max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int itry = 0; itry < 5; ++itry) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx > 0) {
        float sl2 = suml2 - w * L[i] * L[i];
        const int l = std::clamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (l != L[i]) {
          slx += w * x[i] * l;
          sl2 += w * l * l;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(l);
            sumlx = slx;
            suml2 = sl2;
            ++changed;
          }
        }
      }
    }
    if (changed == 0) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

void quantize_row_q3_k(const float* x, uint8_t* out, int64_t nblocks) {
  int8_t L[kQK];
  float scales[16];
  for (int64_t b = 0; b < nblocks; ++b, x += kQK) {
    BlockQ3_K blk;
    for (int j = 0; j < 16; ++j) scales[j] = fit_q3(16, 4, x + 16 * j, L + 16 * j);
    const float max_scale = signed_amax(scales, 16);
    std::memset(blk.scales, 0, sizeof(blk.scales));
    if (max_scale != 0.0f) {
      const float iscale = -32.f / max_scale;
      for (int j = 0; j < 16; ++j) {
        const int l = std::clamp(static_cast<int>(static_cast<int8_t>(nearest_int(iscale * scales[j]))), -32, 31) + 32;
        if (j < 8) {
          blk.scales[j] = static_cast<uint8_t>(l & 0xF);
        } else {
          blk.scales[j - 8] |= static_cast<uint8_t>((l & 0xF) << 4);
        }
        blk.scales[8 + j % 4] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
      }
      blk.d = fp32_to_fp16(1 / iscale);
    } else {
      blk.d = fp32_to_fp16(0.f);
    }
    int8_t sc[16];
    unpack_q3k_scales(blk.scales, sc);
    const float d_all = fp16_to_fp32(blk.d);
    for (int j = 0; j < 16; ++j) {
      const float d = d_all * sc[j];
      if (d == 0.0f) continue;
      for (int i = 0; i < 16; ++i) {
        L[16 * j + i] = static_cast<int8_t>(std::clamp(nearest_int(x[16 * j + i] / d), -4, 3) + 4);
      }
    }
    // The high bit of level e goes to bit e / 32 of hmask[e % 32]; qs keeps the low two bits.
    std::memset(blk.hmask, 0, sizeof(blk.hmask));
    uint8_t low[kQK];
    for (int e = 0; e < kQK; ++e) {
      int l = L[e];
      if (l > 3) {
        blk.hmask[e % 32] |= static_cast<uint8_t>(1 << (e / 32));
        l -= 4;
      }
      low[e] = static_cast<uint8_t>(l);
    }
    pack_2bit(low, blk.qs);
    std::memcpy(out + b * sizeof(BlockQ3_K), &blk, sizeof(blk));
  }
}

// --- IQ4_NL / IQ4_XS (quantize_row_iq4_nl_ref / iq4_xs_ref) -----------------------------------

// Index of the kIq4nlValues level nearest to x (ties to the lower one), by bisection.
static int nearest_iq4nl(float x) {
  if (x <= kIq4nlValues[0]) return 0;
  if (x >= kIq4nlValues[15]) return 15;
  int lo = 0, hi = 15;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (x < kIq4nlValues[mid]) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return x - kIq4nlValues[hi - 1] < kIq4nlValues[hi] - x ? hi - 1 : hi;
}

// Least-squares scale of 32 values onto the non-linear levels, weighted by x^2: levels picked for
// the starting scale max / v0 (ntry < 0: that scale only, else also (v0 + t) / max for |t| <= ntry,
// keeping the best). Returns the scale (0 for an all-zero group); L receives the starting levels.
static float fit_iq4(const float* x, int ntry, uint8_t L[32]) {
  float weight[32];
  for (int j = 0; j < 32; ++j) weight[j] = x[j] * x[j];
  const float signed_max = signed_amax(x, 32);
  if (std::fabs(signed_max) < kGroupMaxEps) return 0.0f;
  const float v0 = kIq4nlValues[0];
  float d = ntry > 0 ? -signed_max / v0 : signed_max / v0;
  float id = 1 / d;
  float sumqx = 0, sumq2 = 0;
  for (int j = 0; j < 32; ++j) {
    const int l = nearest_iq4nl(id * x[j]);
    L[j] = static_cast<uint8_t>(l);
    const float q = kIq4nlValues[l];
    sumqx += weight[j] * q * x[j];
    sumq2 += weight[j] * q * q;
  }
  d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
  float best = d * sumqx;
  for (int t = -ntry; t <= ntry; ++t) {
    id = (t + v0) / signed_max;
    sumqx = sumq2 = 0;
    for (int j = 0; j < 32; ++j) {
      const float q = kIq4nlValues[nearest_iq4nl(id * x[j])];
      sumqx += weight[j] * q * x[j];
      sumq2 += weight[j] * q * q;
    }
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      d = sumqx / sumq2;
      best = d * sumqx;
    }
  }
  return d;
}

// Nibbles of 32 levels: element j low nibble of qs[j], element j + 16 high nibble.
static void pack_nibbles32(const uint8_t L[32], uint8_t qs[16]) {
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>(L[j] | (L[j + 16] << 4));
}

void quantize_row_iq4_nl(const float* x, uint8_t* out, int64_t nblocks) {
  uint8_t L[32] = {0};  // an all-zero block keeps the previous block's levels, as ggml's does
  for (int64_t b = 0; b < nblocks; ++b, x += 32) {
    auto* blk = reinterpret_cast<BlockIQ4_NL*>(out + b * sizeof(BlockIQ4_NL));
    store_half(&blk->d, fit_iq4(x, -1, L));
    pack_nibbles32(L, blk->qs);
  }
}

void quantize_row_iq4_xs(const float* x, uint8_t* out, int64_t nblocks) {
  uint8_t L[32];
  float scales[8];
  for (int64_t b = 0; b < nblocks; ++b, x += kQK) {
    BlockIQ4_XS blk;
    for (int j = 0; j < 8; ++j) scales[j] = fit_iq4(x + 32 * j, 7, L);
    const float max_scale = signed_amax(scales, 8);
    const float d = -max_scale / 32;
    blk.d = fp32_to_fp16(d);
    const float id = d != 0.0f ? 1 / d : 0.f;
    uint16_t scales_h = 0;
    for (int j = 0; j < 8; ++j) {
      const int l = std::clamp(nearest_int(id * scales[j]), -32, 31);
      const float dl = d * l;
      const float idl = dl != 0.0f ? 1 / dl : 0.f;
      for (int i = 0; i < 32; ++i) L[i] = static_cast<uint8_t>(nearest_iq4nl(idl * x[32 * j + i]));
      pack_nibbles32(L, blk.qs + 16 * j);
      const int u = l + 32;
      if (j % 2 == 0) {
        blk.scales_l[j / 2] = static_cast<uint8_t>(u & 0xF);
      } else {
        blk.scales_l[j / 2] |= static_cast<uint8_t>((u & 0xF) << 4);
      }
      scales_h |= static_cast<uint16_t>((u >> 4) << (2 * j));
    }
    std::memcpy(&blk.scales_h, &scales_h, 2);
    std::memcpy(out + b * sizeof(BlockIQ4_XS), &blk, sizeof(blk));
  }
}

void quantize_cpu(uint8_t* out, const float* x, int64_t rows, int64_t cols, QuantType t) {
  const QuantTraits& tr = quant_traits(t);
  HELEXA_CHECK(tr.quantize_row != nullptr, tr.name, ": ggml has no reference quantizer for this type");
  HELEXA_CHECK(rows >= 0 && cols >= 0, "rows and cols must be >= 0, got ", rows, " x ", cols);
  HELEXA_CHECK(cols % tr.block_elems == 0, tr.name, ": row length ", cols,
               " is not a multiple of the block size ", tr.block_elems);
  const int64_t nb = cols / tr.block_elems;
  const int64_t row_bytes = nb * tr.block_bytes;
  const QuantizeRowFn fn = tr.quantize_row;
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(x + r * cols, out + r * row_bytes, nb);
  });
}

}  // namespace helexa::quant
