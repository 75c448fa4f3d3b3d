// Paged decode attention with AVX-512F: 16 float lanes per step over head_dim (a multiple of 16),
// bf16 widened by shifting. Per tile of keys: scores for every query head of the group (the key
// rows stay in L1 across the group), one softmax rescale, then the weighted sum of the value rows
// with each head's accumulator chunk held in a register across the tile.
// This file uses no standard-library templates: see the note in quant/blocks.h.
#include <immintrin.h>

#include <cmath>

#include "attention/attention.h"

namespace helexa::attention::avx512 {
namespace {

inline __m512 load16(const void* base, int64_t offset, DType t) {
  if (t == DType::f32) return _mm512_loadu_ps(static_cast<const float*>(base) + offset);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + offset));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

void item(const DecodeArgs& a, int64_t b, int64_t kvh) {
  const int64_t g = a.heads / a.kv_heads, d = a.head_dim, len = a.context_lens[b], chunks = d / 16;
  const int64_t token_stride = a.kv_heads * d;
  alignas(64) float q[kMaxGroup * kMaxHeadDim];
  alignas(64) float acc[kMaxGroup * kMaxHeadDim];
  float m[kMaxGroup], l[kMaxGroup], s[kMaxGroup * kTile];
  int64_t rows[kTile];  // element offsets of this tile's token rows in the pool
  for (int64_t h = 0; h < g; ++h) {
    const int64_t at = (b * a.heads + kvh * g + h) * d;
    for (int64_t c = 0; c < chunks; ++c) {
      _mm512_store_ps(q + h * d + c * 16, load16(a.q, at + c * 16, a.dtype));
      _mm512_store_ps(acc + h * d + c * 16, _mm512_setzero_ps());
    }
    m[h] = -INFINITY;
    l[h] = 0.0f;
  }
  const int64_t* table = a.block_tables + b * a.max_blocks;
  for (int64_t t0 = 0; t0 < len; t0 += kTile) {
    const int64_t n = len - t0 < kTile ? len - t0 : kTile;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t t = t0 + j;
      rows[j] = (table[t / a.block_tokens] * a.block_tokens + t % a.block_tokens) * token_stride + kvh * d;
    }
    for (int64_t h = 0; h < g; ++h) {
      const float* qh = q + h * d;
      float top = m[h];
      for (int64_t j = 0; j < n; ++j) {
        __m512 dot = _mm512_setzero_ps();
        for (int64_t c = 0; c < chunks; ++c) {
          dot = _mm512_fmadd_ps(_mm512_load_ps(qh + c * 16), load16(a.k_pool, rows[j] + c * 16, a.dtype), dot);
        }
        const float sc = _mm512_reduce_add_ps(dot) * a.scale;
        s[h * kTile + j] = sc;
        top = sc > top ? sc : top;
      }
      const float fix = std::exp(m[h] - top);  // exp(-inf) = 0 on the first tile
      float sum = l[h] * fix;
      for (int64_t j = 0; j < n; ++j) {
        const float p = std::exp(s[h * kTile + j] - top);
        s[h * kTile + j] = p;
        sum += p;
      }
      l[h] = sum;
      m[h] = top;
      const __m512 fixv = _mm512_set1_ps(fix);
      float* ah = acc + h * d;
      for (int64_t c = 0; c < chunks; ++c) {
        __m512 av = _mm512_mul_ps(_mm512_load_ps(ah + c * 16), fixv);
        for (int64_t j = 0; j < n; ++j) {
          av = _mm512_fmadd_ps(_mm512_set1_ps(s[h * kTile + j]), load16(a.v_pool, rows[j] + c * 16, a.dtype), av);
        }
        _mm512_store_ps(ah + c * 16, av);
      }
    }
  }
  alignas(64) float row[kMaxHeadDim];
  for (int64_t h = 0; h < g; ++h) {
    const __m512 inv = _mm512_set1_ps(1.0f / l[h]);
    for (int64_t c = 0; c < chunks; ++c) _mm512_store_ps(row + c * 16, _mm512_mul_ps(_mm512_load_ps(acc + h * d + c * 16), inv));
    const int64_t at = (b * a.heads + kvh * g + h) * d;
    store_from_f32(static_cast<uint8_t*>(a.out) + at * dtype_size(a.dtype), row, d, a.dtype);
  }
}

}  // namespace

ItemFn decode_item() { return &item; }

}  // namespace helexa::attention::avx512
