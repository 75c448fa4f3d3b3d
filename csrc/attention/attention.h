// The attention family: decode attention through the paged KV cache (one new token per sequence,
// reading its keys and values in place, block by block: no gather copy).
//
// For sequence b and query head h (kv head h / (heads / kv_heads)):
//   out[b, h, :] = sum_t softmax_t(scale * q[b, h, :] . K_t) V_t   over t < context_lens[b],
// where token t of sequence b lives in block block_tables[b * max_blocks + t / block_tokens] at
// offset t % block_tokens, and a block is [block_tokens, kv_heads, head_dim] of the pool's layer.
// q and out are [seqs, heads, head_dim]; q, out and the pool share one dtype (f32 or bf16);
// the softmax and the sums are float32.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace helexa::attention {

void paged_decode_cpu(void* out, const void* q, const void* k_pool, const void* v_pool, const int64_t* block_tables,
                      const int64_t* context_lens, int64_t seqs, int64_t heads, int64_t kv_heads, int64_t head_dim,
                      int64_t block_tokens, int64_t max_blocks, float scale, DType dtype);

// What one work item needs: the shapes, the pools and the query and output rows.
struct DecodeArgs {
  void* out;
  const void* q;
  const void* k_pool;
  const void* v_pool;
  const int64_t* block_tables;
  const int64_t* context_lens;
  int64_t heads, kv_heads, head_dim, block_tokens, max_blocks;
  float scale;
  DType dtype;
};

constexpr int64_t kMaxGroup = 16;     // query heads per kv head
constexpr int64_t kMaxHeadDim = 512;  // elements per head
constexpr int64_t kTile = 32;         // keys scored at once (one softmax rescale per tile)

// Per-ISA kernel: every query head of kv head `kvh` of sequence `b`.
using ItemFn = void (*)(const DecodeArgs& a, int64_t b, int64_t kvh);

namespace generic {
ItemFn decode_item();
}
namespace avx512 {
ItemFn decode_item();  // head_dim a multiple of 16 (else nullptr is never returned: the driver checks)
}

}  // namespace helexa::attention
