// The gated DeltaNet family (the linear-attention layers of Qwen3-Next / Qwen3.5): the gates, the
// causal depthwise conv1d with its rolling state, and the gated delta rule with its recurrent state.
//
// Every op works on the engine's flat rows: the T new tokens of `seqs` sequences concatenated,
// sequence i owning rows query_starts[i] .. query_starts[i + 1]. Its states live in slot slots[i]
// of a state pool; fresh[i] != 0 means "start from zeros" (the slot's contents are ignored, then
// written). A sequence of no rows leaves its slot as it was, unless it is fresh: then the slot is
// zeroed. Slots must be distinct within a call (each is written by one sequence).
//
// gdn_gating:      beta = sigmoid(b), g = -exp(a_log) * softplus(a + dt_bias) (softplus as torch's:
//                  x > 20 gives x); a, b [rows, heads] f32 or bf16, g and beta f32.
// causal_conv1d:   y[t, c] = silu(sum_{i<K} w[c, i] * u[t + i, c]), u = the slot's K-1 previous
//                  inputs (zeros if fresh) followed by the sequence's rows; the slot then holds the
//                  last K-1 columns of u. x, y [rows, channels] in x's dtype; weight [channels, K] in
//                  f32 or x's dtype; conv_states [num_slots, channels, K-1] f32. float32 sums.
// gated_delta_rule: per sequence and value head h (key head h / (value_heads / key_heads), HF's
//                  grouped order; h % key_heads with value_heads_tiled, llama.cpp's Qwen3.5 order), with
//                  q, k l2-normalised (x / sqrt(sum x^2 + 1e-6)) and q scaled:
//                      S <- exp(g_t) S;  u = beta_t (v_t - S^T k_t);  S <- S + k_t u^T;  o_t = S^T q_t
//                  qkv [rows, 2 * key_heads * key_dim + value_heads * value_dim] ([Q | K | V], head
//                  major), g, beta [rows, value_heads] f32, states [num_slots, value_heads, key_dim,
//                  value_dim] f32 (updated in place), out [rows, value_heads, value_dim] in qkv's dtype.
//                  A sequence of at least chunked_min_len rows takes the chunked (WY) form, chunks of
//                  64 tokens; shorter ones the token recurrence. Both are float32 throughout.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace helexa::gdn {

void gdn_gating_cpu(float* g, float* beta, const void* a, const void* b, const float* a_log, const float* dt_bias,
                    int64_t rows, int64_t heads, DType dtype);

void causal_conv1d_cpu(void* y, float* conv_states, const void* x, const void* weight, const int64_t* query_starts,
                       const int64_t* slots, const uint8_t* fresh, int64_t seqs, int64_t rows, int64_t channels,
                       int64_t kernel, int64_t num_slots, DType x_dtype, DType w_dtype);

void gated_delta_rule_cpu(void* out, float* states, const void* qkv, const float* g, const float* beta,
                          const int64_t* query_starts, const int64_t* slots, const uint8_t* fresh, int64_t seqs,
                          int64_t rows, int64_t key_heads, int64_t value_heads, int64_t key_dim, int64_t value_dim,
                          int64_t num_slots, float scale, int64_t chunked_min_len, DType dtype,
                          bool value_heads_tiled = false);

constexpr int64_t kChunk = 64;          // tokens per chunk of the chunked form
constexpr int64_t kMaxHeadDim = 256;    // key_dim and value_dim
constexpr int64_t kMaxConvKernel = 8;   // conv taps
constexpr int64_t kConvChannels = 256;  // channels per conv work item
constexpr int64_t kConvRows = 16;       // rows of x staged at once by a conv work item
constexpr int64_t kRecTokens = 32;      // tokens staged at once by the recurrence

struct GatingArgs {
  float* g;
  float* beta;
  const void* a;
  const void* b;
  const float* a_log;
  const float* dt_bias;
  int64_t heads;
  DType dtype;
};

struct ConvArgs {
  void* y;
  float* states;
  const void* x;
  const void* weight;
  int64_t channels, kernel;
  DType x_dtype, w_dtype;
};

struct RuleArgs {
  void* out;
  float* states;
  const void* qkv;
  const float* g;
  const float* beta;
  int64_t key_heads, value_heads, key_dim, value_dim;
  float scale;
  DType dtype;
  bool tiled;  // value head h reads key head h % key_heads (else h / (value_heads / key_heads))
};

// One sequence's part of a call: rows [row0, row0 + len) of the flat inputs, state slot `slot`.
struct Span {
  int64_t row0, len, slot;
  bool fresh;
};

// Scratch floats one work item of the chunked form needs (the recurrence needs fewer).
int64_t rule_scratch_floats(int64_t key_dim, int64_t value_dim);

// Per-ISA kernels (kernels.h built with each ISA's flags). `lanes` floats per vector: the rule
// kernels need key_dim and value_dim to be multiples of it (else the driver takes generic's).
struct Kernels {
  int64_t lanes;
  void (*gating)(const GatingArgs& a, int64_t row0, int64_t row1);
  void (*conv)(const ConvArgs& a, const Span& s, int64_t c0, int64_t c1);
  void (*recurrent)(const RuleArgs& a, const Span& s, int64_t head, float* scratch);
  // value heads [head0, head1), all reading one key head
  void (*chunked)(const RuleArgs& a, const Span& s, int64_t head0, int64_t head1, float* scratch);
};

namespace generic {
Kernels kernels();
}
namespace avx2 {
Kernels kernels();
}
namespace avx512 {
Kernels kernels();
}

}  // namespace helexa::gdn
