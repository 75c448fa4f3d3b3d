// Paged decode attention, portable C++: float32 math, loops the compiler may vectorise
// (omp simd reductions), one softmax rescale per tile of keys.
// This file uses no standard-library templates: see the note in quant/blocks.h.
#include <cmath>

#include "attention/attention.h"

namespace helexa::attention::generic {
namespace {

inline void load_row(float* dst, const void* base, int64_t offset, int64_t n, DType t) {
  if (t == DType::f32) {
    const float* src = static_cast<const float*>(base) + offset;
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = bits_float(static_cast<uint32_t>(src[i]) << 16);
  }
}

void item(const DecodeArgs& a, int64_t b, int64_t kvh) {
  const int64_t g = a.heads / a.kv_heads, d = a.head_dim, len = a.context_lens[b];
  const int64_t token_stride = a.kv_heads * d;  // elements from one token of a block to the next
  float q[kMaxGroup * kMaxHeadDim], acc[kMaxGroup * kMaxHeadDim];
  float m[kMaxGroup], l[kMaxGroup], s[kMaxGroup * kTile], row[kMaxHeadDim];
  for (int64_t h = 0; h < g; ++h) {
    load_row(q + h * d, a.q, (b * a.heads + kvh * g + h) * d, d, a.dtype);
    for (int64_t i = 0; i < d; ++i) acc[h * d + i] = 0.0f;
    m[h] = -INFINITY;
    l[h] = 0.0f;
  }
  const int64_t* table = a.block_tables + b * a.max_blocks;
  for (int64_t t0 = 0; t0 < len; t0 += kTile) {
    const int64_t n = len - t0 < kTile ? len - t0 : kTile;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t t = t0 + j;
      const int64_t at = (table[t / a.block_tokens] * a.block_tokens + t % a.block_tokens) * token_stride + kvh * d;
      load_row(row, a.k_pool, at, d, a.dtype);
      for (int64_t h = 0; h < g; ++h) {
        const float* qh = q + h * d;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < d; ++i) dot += qh[i] * row[i];
        s[h * kTile + j] = dot * a.scale;
      }
    }
    for (int64_t h = 0; h < g; ++h) {
      float top = m[h];
      for (int64_t j = 0; j < n; ++j) top = s[h * kTile + j] > top ? s[h * kTile + j] : top;
      const float fix = std::exp(m[h] - top);  // exp(-inf) = 0 on the first tile
      l[h] *= fix;
      for (int64_t i = 0; i < d; ++i) acc[h * d + i] *= fix;
      for (int64_t j = 0; j < n; ++j) {
        const float p = std::exp(s[h * kTile + j] - top);
        s[h * kTile + j] = p;
        l[h] += p;
      }
      m[h] = top;
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t t = t0 + j;
      const int64_t at = (table[t / a.block_tokens] * a.block_tokens + t % a.block_tokens) * token_stride + kvh * d;
      load_row(row, a.v_pool, at, d, a.dtype);
      for (int64_t h = 0; h < g; ++h) {
        const float p = s[h * kTile + j];
        float* ah = acc + h * d;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) ah[i] += p * row[i];
      }
    }
  }
  for (int64_t h = 0; h < g; ++h) {
    const float inv = 1.0f / l[h];
    const int64_t at = (b * a.heads + kvh * g + h) * d;
    for (int64_t i = 0; i < d; ++i) row[i] = acc[h * d + i] * inv;
    store_from_f32(static_cast<uint8_t*>(a.out) + at * dtype_size(a.dtype), row, d, a.dtype);
  }
}

}  // namespace

ItemFn decode_item() { return &item; }

}  // namespace helexa::attention::generic
