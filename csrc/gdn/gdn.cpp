// Gated DeltaNet drivers: argument checks, the per-sequence spans of the flat rows, then work items
// over the thread pool. Items are (sequence, value head) for the delta rule and (sequence, block of
// channels) for the conv; long sequences' items come first and threads take the next free item, so
// a batch mixing prefills and decodes keeps every thread busy to the end.
#include "gdn/gdn.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "common/check.h"
#include "common/cpu_isa.h"
#include "common/thread_pool.h"

namespace helexa::gdn {
namespace {

Kernels isa_kernels() {
  switch (active_isa()) {
#if defined(HELEXA_X86)
    case Isa::avx512_vnni: return avx512::kernels();
    case Isa::avx2: return avx2::kernels();
#endif
    default: return generic::kernels();
  }
}

void check_dtype(DType t, const char* name) {
  HELEXA_CHECK(t == DType::f32 || t == DType::bf16, name, " must be float32 or bfloat16, got ", dtype_name(t));
}

// The spans of a call, after checking query_starts (0 .. rows, non-decreasing) and slots (in range,
// distinct). A fresh sequence of no rows gets its slot zeroed here (`zero_slot`), others no work.
template <class ZeroSlot>
std::vector<Span> make_spans(const int64_t* query_starts, const int64_t* slots, const uint8_t* fresh, int64_t seqs,
                             int64_t rows, int64_t num_slots, ZeroSlot&& zero_slot) {
  HELEXA_CHECK(seqs >= 0 && rows >= 0 && num_slots >= 0, "bad sizes: seqs=", seqs, " rows=", rows,
               " num_slots=", num_slots);
  HELEXA_CHECK(query_starts[0] == 0, "query_starts[0] must be 0, got ", query_starts[0]);
  HELEXA_CHECK(query_starts[seqs] == rows, "query_starts[", seqs, "] (the last) must be T = ", rows, ", got ",
               query_starts[seqs]);
  std::vector<int64_t> owner(static_cast<size_t>(num_slots), -1);
  std::vector<Span> spans;
  spans.reserve(static_cast<size_t>(seqs));
  for (int64_t i = 0; i < seqs; ++i) {
    const int64_t r0 = query_starts[i], r1 = query_starts[i + 1];
    HELEXA_CHECK(r0 <= r1, "query_starts must be non-decreasing: query_starts[", i, "] = ", r0, " > query_starts[",
                 i + 1, "] = ", r1);
    const int64_t slot = slots[i];
    HELEXA_CHECK(slot >= 0 && slot < num_slots, "slots[", i, "] = ", slot, " is outside the pool's slots [0, ",
                 num_slots, ")");
    HELEXA_CHECK(owner[slot] < 0, "slots[", i, "] = ", slot, " repeats slots[", owner[slot],
                 "]: each sequence needs its own slot");
    owner[slot] = i;
    spans.push_back(Span{r0, r1 - r0, slot, fresh[i] != 0});
  }
  std::vector<Span> work;
  for (const Span& s : spans) {
    if (s.len > 0) {
      work.push_back(s);
    } else if (s.fresh) {
      zero_slot(s.slot);
    }
  }
  std::stable_sort(work.begin(), work.end(), [](const Span& a, const Span& b) { return a.len > b.len; });
  return work;
}

// Runs f(i) for i in [0, n), each thread taking the next item not yet taken.
template <class F>
void run_items(int64_t n, F&& f) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t parts = std::min<int64_t>(n, num_threads());
  parallel_for(parts, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      f(i);
    }
  });
}

// Per-thread scratch, 64-byte aligned, grown on demand and kept for the thread's next call.
float* thread_scratch(int64_t floats) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats + 16) buf.resize(static_cast<size_t>(floats + 16));
  const uintptr_t at = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((at + 63) & ~uintptr_t{63});
}

int64_t padded(int64_t floats) { return (floats + 15) / 16 * 16; }

}  // namespace

int64_t rule_scratch_floats(int64_t key_dim, int64_t value_dim) {
  const int64_t tb = kRecTokens, c = kChunk;
  const int64_t rec = 2 * padded(tb * key_dim) + 2 * padded(tb * value_dim) + 5 * padded(tb);
  const int64_t chunk = padded(2 * c * key_dim) + padded(key_dim * c) + 4 * padded(c * c) + padded(2 * c * value_dim) +
                        padded(c * value_dim) + 4 * padded(c);
  return std::max(rec, chunk);
}

void gdn_gating_cpu(float* g, float* beta, const void* a, const void* b, const float* a_log, const float* dt_bias,
                    int64_t rows, int64_t heads, DType dtype) {
  HELEXA_CHECK(rows >= 0 && heads > 0, "bad sizes: rows=", rows, " heads=", heads);
  check_dtype(dtype, "a and b");
  if (rows == 0) return;
  const Kernels k = isa_kernels();
  const GatingArgs args{g, beta, a, b, a_log, dt_bias, heads, dtype};
  // ~16k elements per thread before the pool is woken: a decode step's gates stay on the caller
  parallel_for(rows, std::max<int64_t>(1, 16384 / heads), [&](int64_t r0, int64_t r1) { k.gating(args, r0, r1); });
}

void causal_conv1d_cpu(void* y, float* conv_states, const void* x, const void* weight, const int64_t* query_starts,
                       const int64_t* slots, const uint8_t* fresh, int64_t seqs, int64_t rows, int64_t channels,
                       int64_t kernel, int64_t num_slots, DType x_dtype, DType w_dtype) {
  HELEXA_CHECK(channels > 0, "channels must be > 0, got ", channels);
  HELEXA_CHECK(kernel >= 1 && kernel <= kMaxConvKernel, "the conv kernel must have 1 to ", kMaxConvKernel,
               " taps, got ", kernel);
  check_dtype(x_dtype, "x");
  HELEXA_CHECK(w_dtype == DType::f32 || w_dtype == x_dtype, "weight must be float32 or x's dtype, got ",
               dtype_name(w_dtype));
  const int64_t slot_floats = channels * (kernel - 1);
  const std::vector<Span> spans =
      make_spans(query_starts, slots, fresh, seqs, rows, num_slots, [&](int64_t slot) {
        std::memset(conv_states + slot * slot_floats, 0, static_cast<size_t>(slot_floats) * 4);
      });
  const Kernels k = isa_kernels();
  const ConvArgs args{y, conv_states, x, weight, channels, kernel, x_dtype, w_dtype};
  const int64_t blocks = (channels + kConvChannels - 1) / kConvChannels;
  const int64_t items = static_cast<int64_t>(spans.size()) * blocks;
  auto item = [&](int64_t i) {
    const int64_t c0 = (i % blocks) * kConvChannels;
    k.conv(args, spans[static_cast<size_t>(i / blocks)], c0, std::min(channels, c0 + kConvChannels));
  };
  if (rows * channels * kernel < (1 << 17)) {  // a decode step: less work than waking the pool
    for (int64_t i = 0; i < items; ++i) item(i);
  } else {
    run_items(items, item);
  }
}

void gated_delta_rule_cpu(void* out, float* states, const void* qkv, const float* g, const float* beta,
                          const int64_t* query_starts, const int64_t* slots, const uint8_t* fresh, int64_t seqs,
                          int64_t rows, int64_t key_heads, int64_t value_heads, int64_t key_dim, int64_t value_dim,
                          int64_t num_slots, float scale, int64_t chunked_min_len, DType dtype,
                          bool value_heads_tiled) {
  HELEXA_CHECK(key_heads > 0 && value_heads > 0, "bad head counts: key_heads=", key_heads,
               " value_heads=", value_heads);
  HELEXA_CHECK(value_heads % key_heads == 0, "value_heads (", value_heads, ") must be a multiple of key_heads (",
               key_heads, ")");
  HELEXA_CHECK(key_dim > 0 && key_dim <= kMaxHeadDim && value_dim > 0 && value_dim <= kMaxHeadDim,
               "key_dim and value_dim must be in [1, ", kMaxHeadDim, "], got ", key_dim, " and ", value_dim);
  HELEXA_CHECK(chunked_min_len >= 1, "chunked_min_len must be >= 1, got ", chunked_min_len);
  check_dtype(dtype, "qkv");
  const int64_t slot_floats = value_heads * key_dim * value_dim;
  const std::vector<Span> spans =
      make_spans(query_starts, slots, fresh, seqs, rows, num_slots, [&](int64_t slot) {
        std::memset(states + slot * slot_floats, 0, static_cast<size_t>(slot_floats) * 4);
      });
  Kernels k = isa_kernels();
  if (key_dim % k.lanes != 0 || value_dim % k.lanes != 0) k = generic::kernels();
  const RuleArgs args{out,     states,    qkv,       g,     beta,  key_heads, value_heads,
                      key_dim, value_dim, scale, dtype, value_heads_tiled};
  // Work items: one value head of a sequence for the recurrence; for the chunked form, all the
  // value heads of one key head (they share K K^T and Q K^T, and are neighbours unless tiled)
  // unless that leaves threads idle.
  const int64_t group = value_heads / key_heads;
  int64_t long_spans = 0;
  for (const Span& s : spans) long_spans += s.len >= chunked_min_len ? 1 : 0;
  const int64_t heads_per_item = !value_heads_tiled && long_spans * key_heads >= num_threads() ? group : 1;
  struct Item {
    const Span* span;
    int64_t head0, head1;
  };
  std::vector<Item> items;
  for (const Span& s : spans) {  // longest first
    const int64_t step = s.len >= chunked_min_len ? heads_per_item : 1;
    for (int64_t h = 0; h < value_heads; h += step) items.push_back(Item{&s, h, h + step});
  }
  const int64_t scratch = rule_scratch_floats(key_dim, value_dim);
  run_items(static_cast<int64_t>(items.size()), [&](int64_t i) {
    const Item& it = items[static_cast<size_t>(i)];
    float* buf = thread_scratch(scratch);
    if (it.span->len >= chunked_min_len) {
      k.chunked(args, *it.span, it.head0, it.head1, buf);
    } else {
      k.recurrent(args, *it.span, it.head0, buf);
    }
  });
}

}  // namespace helexa::gdn
