// Paged decode attention driver: checks, then one work item per (sequence, kv head) over the
// thread pool (a sequence's keys and values are read once per kv head, by one thread).
#include "attention/attention.h"

#include "common/check.h"
#include "common/cpu_isa.h"
#include "common/thread_pool.h"

namespace helexa::attention {
namespace {

ItemFn select_item(int64_t head_dim) {
#if defined(HELEXA_X86)
  if (active_isa() == Isa::avx512_vnni && head_dim % 16 == 0) return avx512::decode_item();
#endif
  (void)head_dim;
  return generic::decode_item();
}

}  // namespace

void paged_decode_cpu(void* out, const void* q, const void* k_pool, const void* v_pool, const int64_t* block_tables,
                      const int64_t* context_lens, int64_t seqs, int64_t heads, int64_t kv_heads, int64_t head_dim,
                      int64_t block_tokens, int64_t max_blocks, float scale, DType dtype) {
  HELEXA_CHECK(seqs >= 0 && heads > 0 && kv_heads > 0 && head_dim > 0 && block_tokens > 0 && max_blocks > 0,
               "bad sizes: seqs=", seqs, " heads=", heads, " kv_heads=", kv_heads, " head_dim=", head_dim,
               " block_tokens=", block_tokens, " max_blocks=", max_blocks);
  HELEXA_CHECK(heads % kv_heads == 0, "heads (", heads, ") must be a multiple of kv_heads (", kv_heads, ")");
  HELEXA_CHECK(heads / kv_heads <= kMaxGroup, "at most ", kMaxGroup, " query heads per kv head, got ",
               heads / kv_heads);
  HELEXA_CHECK(head_dim <= kMaxHeadDim, "head_dim must be <= ", kMaxHeadDim, ", got ", head_dim);
  HELEXA_CHECK(dtype == DType::f32 || dtype == DType::bf16, "dtype must be float32 or bfloat16, got ",
               dtype_name(dtype));
  for (int64_t b = 0; b < seqs; ++b) {
    const int64_t len = context_lens[b];
    HELEXA_CHECK(len >= 1 && len <= max_blocks * block_tokens, "context_lens[", b, "] = ", len,
                 " is outside [1, max_blocks * block_tokens = ", max_blocks * block_tokens, "]");
  }
  if (seqs == 0) return;
  const DecodeArgs args{out,      q,        k_pool,       v_pool,     block_tables, context_lens, heads,
                        kv_heads, head_dim, block_tokens, max_blocks, scale,        dtype};
  const ItemFn item = select_item(head_dim);
  parallel_for(seqs * kv_heads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) item(args, i / kv_heads, i % kv_heads);
  });
}

}  // namespace helexa::attention
