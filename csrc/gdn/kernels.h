// The gated DeltaNet kernels, written once over a vector type `V` that each ISA translation unit
// defines (generic.cpp: one float; avx2.cpp: __m256; avx512.cpp: __m512) and then instantiates.
// Everything here has internal linkage, and uses no standard-library templates or inline library
// functions (expf, sqrtf are C functions): see the note in quant/blocks.h.
//
// V provides: T (the register type), kLanes, the block sizes kRecNV (vectors per column tile of
// the recurrence), kMR x kNV (rows x vectors of the matrix-product register block), kSolveNV;
// load, store, set1, zero, add, sub, mul, div, fma (a * b + c), min, max, hsum; exp, log (the SIMD
// types build these from exp_poly / log_poly below, which need round, ldexp and frexp);
// gt_select(x, y, a, b) = x > y ? a : b and eq_select(x, y, a, b) = x == y ? a : b, lane by lane.
//
// Recurrence (per sequence and value head, columns of S in tiles that stay in L1): with S the
// state before token t, a = S^T k_t and b = S^T q_t come from the previous pass, then
//     u = beta (v - alpha a);  o = alpha b + (k . q) u;  S <- alpha S + k u^T
// and the same pass over S accumulates a, b for token t + 1: one read and one write of S per
// token (two passes for a single token: a decode step reads S, then updates it). o equals
// (alpha S + k u^T)^T q exactly in real numbers. Within a block of tokens the decay is carried as a
// scalar instead of multiplied into S at every token (rec_tile).
//
// Chunked form (anchors-kernels.md 3.2), per chunk of n <= 64 tokens, G the running sum of g:
//     A = strict_lower(diag(beta) K K^T * Gamma), Gamma_ij = exp(G_i - G_j) on the lower triangle
//     V_new = U - W S with U = T beta V, W = T beta e^G K, T = (I + A)^-1, which is
//     V_new = T (beta (V - e^G K S)): one product [K; Q] S, then one forward substitution
//     O = e^G Q S + (Q K^T * Gamma * causal) V_new
//     S <- e^{G_n-1} S + K^T (e^{G_n-1 - G} V_new)
// with every product a register-blocked loop over row-major buffers. K K^T and Q K^T are computed
// once for all the value heads of a key head that one work item takes.
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

#include "common/dtype.h"
#include "gdn/gdn.h"

namespace helexa::gdn {
namespace {

inline int64_t min_i(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

constexpr float kRecMinDecay = 1e-18f;  // the recurrence makes S whole again before its decay drops below

// --- math on vectors: Cephes expf / logf, shared by the SIMD types ----------------------------

// exp(x) = 2^n p(r), r = x - n ln 2; V::ldexp(p, n) scales by 2^n (n a whole float), giving inf
// above the range and 0 (or a subnormal) below it.
template <class V>
typename V::T exp_poly(typename V::T x) {
  using T = typename V::T;
  x = V::min(V::max(x, V::set1(-104.0f)), V::set1(100.0f));
  const T n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  T r = V::fma(n, V::set1(-0.693359375f), x);
  r = V::fma(n, V::set1(2.12194440e-4f), r);
  T p = V::set1(1.9875691500e-4f);
  p = V::fma(p, r, V::set1(1.3981999507e-3f));
  p = V::fma(p, r, V::set1(8.3334519073e-3f));
  p = V::fma(p, r, V::set1(4.1665795894e-2f));
  p = V::fma(p, r, V::set1(1.6666665459e-1f));
  p = V::fma(p, r, V::set1(5.0000001201e-1f));
  p = V::add(V::fma(p, V::mul(r, r), r), V::set1(1.0f));
  return V::ldexp(p, n);
}

// log(x) for normal x > 0: V::frexp gives m in [0.5, 1) and e (a float) with x = m 2^e.
template <class V>
typename V::T log_poly(typename V::T x) {
  using T = typename V::T;
  T e;
  T m = V::frexp(x, &e);
  const T one = V::set1(1.0f);
  const T small = V::gt_select(V::set1(0.707106781186547524f), m, one, V::zero());  // m < sqrt(1/2)
  e = V::sub(e, small);
  m = V::sub(V::add(m, V::mul(small, m)), one);  // 2m - 1 or m - 1
  const T z = V::mul(m, m);
  T y = V::set1(7.0376836292e-2f);
  y = V::fma(y, m, V::set1(-1.1514610310e-1f));
  y = V::fma(y, m, V::set1(1.1676998740e-1f));
  y = V::fma(y, m, V::set1(-1.2420140846e-1f));
  y = V::fma(y, m, V::set1(1.4249322787e-1f));
  y = V::fma(y, m, V::set1(-1.6668057665e-1f));
  y = V::fma(y, m, V::set1(2.0000714765e-1f));
  y = V::fma(y, m, V::set1(-2.4999993993e-1f));
  y = V::fma(y, m, V::set1(3.3333331174e-1f));
  y = V::mul(V::mul(y, m), z);
  y = V::fma(e, V::set1(-2.12194440e-4f), y);
  y = V::fma(z, V::set1(-0.5f), y);
  return V::fma(e, V::set1(0.693359375f), V::add(m, y));
}

// log(1 + y) for y >= 0, accurate for tiny y: log(u) * y / (u - 1) with u = 1 + y.
template <class V>
typename V::T log1p_pos(typename V::T y) {
  const typename V::T u = V::add(y, V::set1(1.0f));
  const typename V::T d = V::sub(u, V::set1(1.0f));
  return V::eq_select(d, V::zero(), y, V::div(V::mul(V::log(u), y), d));
}

template <class V>
typename V::T silu(typename V::T x) {
  return V::div(x, V::add(V::set1(1.0f), V::exp(V::sub(V::zero(), x))));
}

// --- rows ------------------------------------------------------------------------------------

inline void load_row(float* dst, const void* base, int64_t offset, int64_t n, DType t) {
  if (t == DType::f32) {
    std::memcpy(dst, static_cast<const float*>(base) + offset, static_cast<size_t>(n) * 4);
    return;
  }
  const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
  if (t == DType::bf16) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = bits_float(static_cast<uint32_t>(src[i]) << 16);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
  }
}

inline void store_row(void* base, int64_t offset, const float* src, int64_t n, DType t) {
  store_from_f32(static_cast<uint8_t*>(base) + offset * dtype_size(t), src, n, t);
}

// Asks for [p, p + bytes) in L2 ahead of use (`write`: about to be stored to).
inline void prefetch_bytes(const void* p, int64_t bytes, bool write) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) {
    if (write) {
      __builtin_prefetch(c + i, 1, 2);
    } else {
      __builtin_prefetch(c + i, 0, 2);
    }
  }
}

template <class V>
float dot(const float* a, const float* b, int64_t n) {  // n a multiple of V::kLanes
  typename V::T acc = V::zero();
  for (int64_t i = 0; i < n; i += V::kLanes) acc = V::fma(V::load(a + i), V::load(b + i), acc);
  return V::hsum(acc);
}

template <class V>
void scale_row(float* x, int64_t n, float s) {
  const typename V::T sv = V::set1(s);
  for (int64_t i = 0; i < n; i += V::kLanes) V::store(x + i, V::mul(V::load(x + i), sv));
}

// x <- x * s / sqrt(sum x^2 + 1e-6), HF's l2norm (eps 1e-6) times s.
template <class V>
void l2_normalise(float* x, int64_t n, float s) {
  scale_row<V>(x, n, s / sqrtf(dot<V>(x, x, n) + 1e-6f));
}

// --- gates -----------------------------------------------------------------------------------

template <class V>
void gating_rows(const GatingArgs& a, int64_t r0, int64_t r1) {
  using T = typename V::T;
  constexpr int64_t kSeg = 64;
  alignas(64) float av[kSeg], bv[kSeg], neg_a[kSeg], bias[kSeg], gv[kSeg], betav[kSeg];
  const int64_t heads = a.heads;
  for (int64_t h0 = 0; h0 < heads; h0 += kSeg) {
    const int64_t hn = min_i(kSeg, heads - h0), hw = round_up(hn, V::kLanes);
    for (int64_t j = 0; j < hw; ++j) {
      neg_a[j] = j < hn ? -expf(a.a_log[h0 + j]) : 0.0f;
      bias[j] = j < hn ? a.dt_bias[h0 + j] : 0.0f;
      av[j] = bv[j] = 0.0f;
    }
    for (int64_t r = r0; r < r1; ++r) {
      load_row(av, a.a, r * heads + h0, hn, a.dtype);
      load_row(bv, a.b, r * heads + h0, hn, a.dtype);
      for (int64_t j = 0; j < hw; j += V::kLanes) {
        const T x = V::add(V::load(av + j), V::load(bias + j));
        const T ax = V::max(x, V::sub(V::zero(), x));
        const T soft = V::add(V::max(x, V::zero()), log1p_pos<V>(V::exp(V::sub(V::zero(), ax))));
        const T sp = V::gt_select(x, V::set1(20.0f), x, soft);  // torch's threshold
        V::store(gv + j, V::mul(V::load(neg_a + j), sp));
        const T eb = V::exp(V::sub(V::zero(), V::load(bv + j)));
        V::store(betav + j, V::div(V::set1(1.0f), V::add(V::set1(1.0f), eb)));
      }
      std::memcpy(a.g + r * heads + h0, gv, static_cast<size_t>(hn) * 4);
      std::memcpy(a.beta + r * heads + h0, betav, static_cast<size_t>(hn) * 4);
    }
  }
}

// --- causal conv1d ---------------------------------------------------------------------------

// Channels [c0, c1) of one sequence: a window of the K-1 previous inputs and up to kConvRows new
// rows (float32, channels padded to whole vectors), slid down the sequence; the state is read at
// the start and written at the end, so one work item owns its slot's channels. K is a template
// argument so the transposes of the taps and the state (channel-major) vectorise.
template <class V, int K>
void conv_item_k(const ConvArgs& a, const Span& s, int64_t c0, int64_t c1) {
  using T = typename V::T;
  constexpr int64_t CB = kConvChannels, H = K - 1;
  alignas(64) float taps[K * CB];
  alignas(64) float win[(H + kConvRows) * CB];
  alignas(64) float yrow[CB];
  const int64_t cn = c1 - c0, cw = round_up(cn, V::kLanes), ch = a.channels;
  if (a.w_dtype == DType::f32) {
    const float* w = static_cast<const float*>(a.weight) + c0 * K;
    for (int64_t c = 0; c < cn; ++c)
      for (int i = 0; i < K; ++i) taps[i * CB + c] = w[c * K + i];
  } else {
    for (int64_t c = 0; c < cn; ++c)
      for (int i = 0; i < K; ++i) taps[i * CB + c] = load_as_f32(a.weight, (c0 + c) * K + i, a.w_dtype);
  }
  for (int i = 0; i < K; ++i)
    for (int64_t c = cn; c < cw; ++c) taps[i * CB + c] = 0.0f;
  float* state = a.states + (s.slot * ch + c0) * H;
  if (s.fresh) {
    std::memset(win, 0, sizeof(float) * H * CB);
  } else {
    for (int64_t c = 0; c < cn; ++c)
      for (int i = 0; i < H; ++i) win[i * CB + c] = state[c * H + i];
    for (int i = 0; i < H; ++i)
      for (int64_t c = cn; c < cw; ++c) win[i * CB + c] = 0.0f;
  }
  for (int64_t t0 = 0; t0 < s.len; t0 += kConvRows) {
    const int64_t n = min_i(kConvRows, s.len - t0);
    for (int64_t r = 0; r < n; ++r) {
      float* row = win + (H + r) * CB;
      load_row(row, a.x, (s.row0 + t0 + r) * ch + c0, cn, a.x_dtype);
      for (int64_t c = cn; c < cw; ++c) row[c] = 0.0f;
    }
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t c = 0; c < cw; c += V::kLanes) {
        T acc = V::zero();
        for (int i = 0; i < K; ++i) acc = V::fma(V::load(taps + i * CB + c), V::load(win + (r + i) * CB + c), acc);
        V::store(yrow + c, silu<V>(acc));
      }
      store_row(a.y, (s.row0 + t0 + r) * ch + c0, yrow, cn, a.x_dtype);
    }
    std::memmove(win, win + n * CB, sizeof(float) * H * CB);
  }
  for (int64_t c = 0; c < cn; ++c)
    for (int i = 0; i < H; ++i) state[c * H + i] = win[i * CB + c];
}

template <class V>
void conv_item(const ConvArgs& a, const Span& s, int64_t c0, int64_t c1) {
  switch (a.kernel) {
    case 1: return conv_item_k<V, 1>(a, s, c0, c1);
    case 2: return conv_item_k<V, 2>(a, s, c0, c1);
    case 3: return conv_item_k<V, 3>(a, s, c0, c1);
    case 4: return conv_item_k<V, 4>(a, s, c0, c1);
    case 5: return conv_item_k<V, 5>(a, s, c0, c1);
    case 6: return conv_item_k<V, 6>(a, s, c0, c1);
    case 7: return conv_item_k<V, 7>(a, s, c0, c1);
    default: return conv_item_k<V, 8>(a, s, c0, c1);
  }
}

// --- gated delta rule: shared pieces ---------------------------------------------------------

struct HeadView {
  float* state;  // [key_dim, value_dim]
  const void* q;  // element offsets into qkv are row * stride + these
  int64_t q_off, k_off, v_off, stride;
};

inline HeadView head_view(const RuleArgs& a, const Span& s, int64_t h) {
  const int64_t dk = a.key_dim, dv = a.value_dim;
  const int64_t kh = a.tiled ? h % a.key_heads : h / (a.value_heads / a.key_heads);
  HeadView hv;
  hv.state = a.states + (s.slot * a.value_heads + h) * dk * dv;
  hv.q = a.qkv;
  hv.stride = 2 * a.key_heads * dk + a.value_heads * dv;
  hv.q_off = kh * dk;
  hv.k_off = a.key_heads * dk + kh * dk;
  hv.v_off = 2 * a.key_heads * dk + h * dv;
  if (s.fresh) std::memset(hv.state, 0, static_cast<size_t>(dk * dv) * 4);
  return hv;
}

// Scratch: consecutive buffers, each starting on a 64-byte boundary (the base is aligned).
struct Carver {
  float* at;
  float* take(int64_t floats) {
    float* p = at;
    at += round_up(floats, 16);
    return p;
  }
};

// --- recurrence ------------------------------------------------------------------------------

// Columns [c0, c0 + NV lanes) of S over n staged tokens (see the top of the file). Inside the
// block S is held as S' = S / c, c the product of the decays so far (`decay[t]` after token t), so
// a token's pass is S' += k (u / c) with no multiply by the decay; a token marked `whole` (the
// block's last, or one where c got small) writes S = c S' + k u^T back and starts c again at 1.
template <class V, int NV>
void rec_tile(float* S, int64_t dk, int64_t dv, int64_t c0, int64_t n, const float* kn, const float* qn,
              const float* vf, const float* decay, const uint8_t* whole, const float* beta, const float* kq,
              float* ob) {
  using T = typename V::T;
  constexpr int W = V::kLanes;
  T acc_a[NV], acc_b[NV], u[NV];
  for (int v = 0; v < NV; ++v) acc_a[v] = acc_b[v] = V::zero();
  for (int64_t i = 0; i < dk; ++i) {
    const T ki = V::set1(kn[i]), qi = V::set1(qn[i]);
    const float* row = S + i * dv + c0;
    for (int v = 0; v < NV; ++v) {
      const T sv = V::load(row + v * W);
      acc_a[v] = V::fma(ki, sv, acc_a[v]);
      acc_b[v] = V::fma(qi, sv, acc_b[v]);
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    const T c = V::set1(decay[t]), be = V::set1(beta[t]), kqt = V::set1(kq[t]);
    for (int v = 0; v < NV; ++v) {
      u[v] = V::mul(be, V::sub(V::load(vf + t * dv + c0 + v * W), V::mul(c, acc_a[v])));
      V::store(ob + t * dv + c0 + v * W, V::fma(c, acc_b[v], V::mul(kqt, u[v])));
    }
    const float* kt = kn + t * dk;
    if (!whole[t]) {
      const T inv = V::set1(1.0f / decay[t]);
      for (int v = 0; v < NV; ++v) u[v] = V::mul(u[v], inv);
    }
    if (t + 1 < n) {
      const float* kn1 = kt + dk;
      const float* qn1 = qn + (t + 1) * dk;
      for (int v = 0; v < NV; ++v) acc_a[v] = acc_b[v] = V::zero();
      if (whole[t]) {
        for (int64_t i = 0; i < dk; ++i) {
          const T ki = V::set1(kt[i]), k1 = V::set1(kn1[i]), q1 = V::set1(qn1[i]);
          float* row = S + i * dv + c0;
          for (int v = 0; v < NV; ++v) {
            const T sv = V::fma(ki, u[v], V::mul(c, V::load(row + v * W)));
            V::store(row + v * W, sv);
            acc_a[v] = V::fma(k1, sv, acc_a[v]);
            acc_b[v] = V::fma(q1, sv, acc_b[v]);
          }
        }
      } else {
        for (int64_t i = 0; i < dk; ++i) {
          const T ki = V::set1(kt[i]), k1 = V::set1(kn1[i]), q1 = V::set1(qn1[i]);
          float* row = S + i * dv + c0;
          for (int v = 0; v < NV; ++v) {
            const T sv = V::fma(ki, u[v], V::load(row + v * W));
            V::store(row + v * W, sv);
            acc_a[v] = V::fma(k1, sv, acc_a[v]);
            acc_b[v] = V::fma(q1, sv, acc_b[v]);
          }
        }
      }
    } else {  // the block's last token is always `whole`
      for (int64_t i = 0; i < dk; ++i) {
        const T ki = V::set1(kt[i]);
        float* row = S + i * dv + c0;
        for (int v = 0; v < NV; ++v) V::store(row + v * W, V::fma(ki, u[v], V::mul(c, V::load(row + v * W))));
      }
    }
  }
}

template <class V, int NV>
void rec_tile_any(int nv, float* S, int64_t dk, int64_t dv, int64_t c0, int64_t n, const float* kn,
                  const float* qn, const float* vf, const float* decay, const uint8_t* whole, const float* beta,
                  const float* kq, float* ob) {
  if constexpr (NV > 1) {
    if (nv < NV) return rec_tile_any<V, NV - 1>(nv, S, dk, dv, c0, n, kn, qn, vf, decay, whole, beta, kq, ob);
  }
  rec_tile<V, NV>(S, dk, dv, c0, n, kn, qn, vf, decay, whole, beta, kq, ob);
}

template <class V>
void recurrent_item(const RuleArgs& a, const Span& s, int64_t h, float* scratch) {
  constexpr int64_t TB = kRecTokens;
  const int64_t dk = a.key_dim, dv = a.value_dim, hv = a.value_heads;
  const HeadView view = head_view(a, s, h);
  Carver c{scratch};
  float* kn = c.take(TB * dk);
  float* qn = c.take(TB * dk);
  float* vf = c.take(TB * dv);
  float* ob = c.take(TB * dv);
  float* alpha = c.take(TB);
  float* beta = c.take(TB);
  float* kq = c.take(TB);
  float* decay = c.take(TB);
  uint8_t* whole = reinterpret_cast<uint8_t*>(c.take(TB));
  for (int64_t t0 = 0; t0 < s.len; t0 += TB) {
    const int64_t n = min_i(TB, s.len - t0);
    for (int64_t t = 0; t < n; ++t) {
      const int64_t row = s.row0 + t0 + t;
      if (t0 + TB + t < s.len) {  // the same token of the next block
        const int64_t esize = dtype_size(a.dtype);
        const uint8_t* base = static_cast<const uint8_t*>(view.q) + (row + TB) * view.stride * esize;
        prefetch_bytes(base + view.q_off * esize, dk * esize, false);
        prefetch_bytes(base + view.k_off * esize, dk * esize, false);
        prefetch_bytes(base + view.v_off * esize, dv * esize, false);
        prefetch_bytes(static_cast<uint8_t*>(a.out) + ((row + TB) * hv + h) * dv * esize, dv * esize, true);
      }
      float* kt = kn + t * dk;
      float* qt = qn + t * dk;
      load_row(kt, view.q, row * view.stride + view.k_off, dk, a.dtype);
      load_row(qt, view.q, row * view.stride + view.q_off, dk, a.dtype);
      load_row(vf + t * dv, view.q, row * view.stride + view.v_off, dv, a.dtype);
      l2_normalise<V>(kt, dk, 1.0f);
      l2_normalise<V>(qt, dk, a.scale);
      kq[t] = dot<V>(kt, qt, dk);
      alpha[t] = expf(a.g[row * hv + h]);
      beta[t] = a.beta[row * hv + h];
    }
    float run = 1.0f;  // the decay since S was last whole; 1 / run must stay finite
    for (int64_t t = 0; t < n; ++t) {
      run *= alpha[t];
      decay[t] = run;
      whole[t] = t + 1 == n || run < kRecMinDecay;
      if (whole[t]) run = 1.0f;
    }
    constexpr int64_t tile = V::kRecNV * V::kLanes;
    for (int64_t c0 = 0; c0 < dv; c0 += tile) {
      const int nv = static_cast<int>(min_i(tile, dv - c0) / V::kLanes);
      rec_tile_any<V, V::kRecNV>(nv, view.state, dk, dv, c0, n, kn, qn, vf, decay, whole, beta, kq, ob);
    }
    for (int64_t t = 0; t < n; ++t) store_row(a.out, ((s.row0 + t0 + t) * hv + h) * dv, ob + t * dv, dv, a.dtype);
  }
}

// --- chunked form ----------------------------------------------------------------------------

// C[MR rows, NV vectors] = c0 * C + A[MR rows, :kd] B[:kd, NV vectors] (c0 == 0: C is not read).
template <class V, int MR, int NV>
void micro(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t kd, float c0) {
  using T = typename V::T;
  constexpr int W = V::kLanes;
  T acc[MR][NV];
  if (c0 == 0.0f) {
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  } else {
    const T cv = V::set1(c0);
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = V::mul(cv, V::load(C + r * ldc + v * W));
  }
  for (int64_t p = 0; p < kd; ++p) {
    T b[NV];
    for (int v = 0; v < NV; ++v) b[v] = V::load(B + p * ldb + v * W);
    for (int r = 0; r < MR; ++r) {
      const T av = V::set1(A[r * lda + p]);
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(av, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) V::store(C + r * ldc + v * W, acc[r][v]);
}

template <class V, int MR, int NV>
void micro_any(int mr, int nv, float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb,
               int64_t kd, float c0) {
  if constexpr (MR > 1) {
    if (mr < MR) return micro_any<V, MR - 1, NV>(mr, nv, C, ldc, A, lda, B, ldb, kd, c0);
  }
  if constexpr (NV > 1) {
    if (nv < NV) return micro_any<V, MR, NV - 1>(mr, nv, C, ldc, A, lda, B, ldb, kd, c0);
  }
  micro<V, MR, NV>(C, ldc, A, lda, B, ldb, kd, c0);
}

enum class Tri { none, k_lower, cols_lower };

// C[m, ncols] = c0 * C + A[m, kd] B[kd, ncols], row-major, ncols a multiple of V::kLanes.
// Tri::k_lower: rows [r0, r1) sum only over p < r1 (A is lower triangular, zero above);
// Tri::cols_lower: rows [r0, r1) need only columns < r1 (C's lower triangle).
template <class V>
void gemm(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t m, int64_t ncols,
          int64_t kd, float c0, Tri tri) {
  constexpr int64_t MR = V::kMR, CW = V::kNV * V::kLanes;
  for (int64_t r0 = 0; r0 < m; r0 += MR) {
    const int64_t mr = min_i(MR, m - r0);
    const int64_t k_end = tri == Tri::k_lower ? min_i(kd, r0 + mr) : kd;
    const int64_t c_end = tri == Tri::cols_lower ? min_i(ncols, round_up(r0 + mr, V::kLanes)) : ncols;
    for (int64_t j0 = 0; j0 < c_end; j0 += CW) {
      const int nv = static_cast<int>(min_i(CW, c_end - j0) / V::kLanes);
      micro_any<V, V::kMR, V::kNV>(static_cast<int>(mr), nv, C + r0 * ldc + j0, ldc, A + r0 * lda, lda, B + j0, ldb,
                                   k_end, c0);
    }
  }
}

// Rows i = 0 .. n-1 of X (columns [c0, c0 + NV lanes)) <- X_i - sum_{j<i} A_ij X_j, in order.
template <class V, int NV>
void solve_tile(float* X, int64_t ldx, int64_t c0, const float* A, int64_t n) {
  using T = typename V::T;
  constexpr int W = V::kLanes;
  for (int64_t i = 0; i < n; ++i) {
    T acc[NV];
    float* xi = X + i * ldx + c0;
    for (int v = 0; v < NV; ++v) acc[v] = V::load(xi + v * W);
    for (int64_t j = 0; j < i; ++j) {
      const T aij = V::set1(-A[i * kChunk + j]);
      const float* xj = X + j * ldx + c0;
      for (int v = 0; v < NV; ++v) acc[v] = V::fma(aij, V::load(xj + v * W), acc[v]);
    }
    for (int v = 0; v < NV; ++v) V::store(xi + v * W, acc[v]);
  }
}

template <class V, int NV>
void solve_tile_any(int nv, float* X, int64_t ldx, int64_t c0, const float* A, int64_t n) {
  if constexpr (NV > 1) {
    if (nv < NV) return solve_tile_any<V, NV - 1>(nv, X, ldx, c0, A, n);
  }
  solve_tile<V, NV>(X, ldx, c0, A, n);
}

template <class V>
void solve_lower(float* X, int64_t ldx, int64_t cols, const float* A, int64_t n) {
  constexpr int64_t CW = V::kSolveNV * V::kLanes;
  for (int64_t c0 = 0; c0 < cols; c0 += CW) {
    solve_tile_any<V, V::kSolveNV>(static_cast<int>(min_i(CW, cols - c0) / V::kLanes), X, ldx, c0, A, n);
  }
}

template <class V>
void chunked_item(const RuleArgs& a, const Span& s, int64_t h0, int64_t h1, float* scratch) {
  using T = typename V::T;
  constexpr int64_t C = kChunk;
  const int64_t dk = a.key_dim, dv = a.value_dim, hv = a.value_heads;
  const HeadView first = head_view(a, s, h0);  // h0 .. h1 - 1 share its key head
  for (int64_t h = h0 + 1; h < h1; ++h) head_view(a, s, h);
  Carver cv{scratch};
  float* kq = cv.take(2 * C * dk);  // normalised keys (rows past the chunk zero), then scaled queries
  float* kt = cv.take(dk * C);      // the keys transposed
  float* kk = cv.take(C * C);       // K K^T and Q K^T, lower triangles (blocks of them)
  float* qk = cv.take(C * C);
  float* am = cv.take(C * C);  // A
  float* pm = cv.take(C * C);  // Q K^T * Gamma * causal
  float* xs = cv.take(2 * C * dv);  // [K; Q] S, then the Q rows become the output
  float* vn = cv.take(C * dv);      // the right-hand side, then V_new, then V_new scaled for the state
  float* gc = cv.take(C);           // G
  float* bt = cv.take(C);
  float* gam = cv.take(C);
  float* eg = cv.take(C);
  float* qc = kq + C * dk;
  const int64_t esize = dtype_size(a.dtype), obytes = (h1 - h0) * dv * esize;
  std::memset(kq, 0, static_cast<size_t>(C * dk) * 4);
  for (int64_t t0 = 0; t0 < s.len; t0 += C) {
    const int64_t n = min_i(C, s.len - t0);
    for (int64_t t = 0; t < n; ++t) {
      const int64_t row = s.row0 + t0 + t;
      if (t0 + C + t < s.len) {  // the same token of the next chunk, wanted some 100k cycles from now
        const int64_t ahead = row + C;
        const uint8_t* base = static_cast<const uint8_t*>(first.q) + ahead * first.stride * esize;
        prefetch_bytes(base + first.q_off * esize, dk * esize, false);
        prefetch_bytes(base + first.k_off * esize, dk * esize, false);
        prefetch_bytes(base + first.v_off * esize, (h1 - h0) * dv * esize, false);
        prefetch_bytes(static_cast<uint8_t*>(a.out) + (ahead * hv + h0) * dv * esize, obytes, true);
      }
      load_row(kq + t * dk, first.q, row * first.stride + first.k_off, dk, a.dtype);
      load_row(qc + t * dk, first.q, row * first.stride + first.q_off, dk, a.dtype);
      l2_normalise<V>(kq + t * dk, dk, 1.0f);
      l2_normalise<V>(qc + t * dk, dk, a.scale);
    }
    if (n < C) std::memset(kq + n * dk, 0, static_cast<size_t>((C - n) * dk) * 4);
    for (int64_t t = 0; t < C; ++t)
      for (int64_t d = 0; d < dk; ++d) kt[d * C + t] = kq[t * dk + d];
    gemm<V>(kk, C, kq, dk, kt, C, n, C, dk, 0.0f, Tri::cols_lower);
    gemm<V>(qk, C, qc, dk, kt, C, n, C, dk, 0.0f, Tri::cols_lower);
    for (int64_t h = h0; h < h1; ++h) {
      float* S = first.state + (h - h0) * dk * dv;
      const int64_t v_off = first.v_off + (h - h0) * dv;
      float run = 0.0f;
      for (int64_t t = 0; t < n; ++t) {
        run += a.g[(s.row0 + t0 + t) * hv + h];
        gc[t] = run;
        bt[t] = a.beta[(s.row0 + t0 + t) * hv + h];
        eg[t] = expf(run);
      }
      // Gamma (exponents G_i - G_j <= 0 on the lower triangle; above it clamped to 0, then masked)
      for (int64_t i = 0; i < n; ++i) {
        const int64_t jw = round_up(i + 1, V::kLanes);
        const T gi = V::set1(gc[i]);
        for (int64_t j = 0; j < jw; j += V::kLanes) {
          V::store(gam + j, V::exp(V::min(V::sub(gi, V::load(gc + j)), V::zero())));
        }
        const float* kki = kk + i * C;
        const float* qki = qk + i * C;
        float* ai = am + i * C;
        float* pi = pm + i * C;
        for (int64_t j = 0; j < i; ++j) {
          ai[j] = bt[i] * kki[j] * gam[j];
          pi[j] = qki[j] * gam[j];
        }
        pi[i] = qki[i];
        for (int64_t j = i; j < C; ++j) ai[j] = 0.0f;
        for (int64_t j = i + 1; j < C; ++j) pi[j] = 0.0f;
      }
      gemm<V>(xs, dv, kq, dk, S, dv, n, dv, dk, 0.0f, Tri::none);            // K S
      gemm<V>(xs + C * dv, dv, qc, dk, S, dv, n, dv, dk, 0.0f, Tri::none);  // Q S
      for (int64_t t = 0; t < n; ++t) {
        // right-hand side beta (v - e^G S^T k), and the state's part of the output e^G S^T q
        float* r = vn + t * dv;
        load_row(r, first.q, (s.row0 + t0 + t) * first.stride + v_off, dv, a.dtype);
        const T e = V::set1(eg[t]), b = V::set1(bt[t]);
        const float* ks = xs + t * dv;
        float* qs = xs + (C + t) * dv;
        for (int64_t c = 0; c < dv; c += V::kLanes) {
          V::store(r + c, V::mul(b, V::sub(V::load(r + c), V::mul(e, V::load(ks + c)))));
          V::store(qs + c, V::mul(e, V::load(qs + c)));
        }
      }
      solve_lower<V>(vn, dv, dv, am, n);                                   // V_new = (I + A)^-1 rhs
      gemm<V>(xs + C * dv, dv, pm, C, vn, dv, n, dv, n, 1.0f, Tri::k_lower);  // O += P V_new
      for (int64_t t = 0; t < n; ++t) {
        store_row(a.out, ((s.row0 + t0 + t) * hv + h) * dv, xs + (C + t) * dv, dv, a.dtype);
      }
      const float last = gc[n - 1];
      for (int64_t t = 0; t < n; ++t) scale_row<V>(vn + t * dv, dv, expf(last - gc[t]));
      gemm<V>(S, dv, kt, C, vn, dv, dk, dv, n, eg[n - 1], Tri::none);  // S <- e^G_last S + K^T V_new'
    }
  }
}

template <class V>
Kernels make_kernels() {
  Kernels k;
  k.lanes = V::kLanes;
  k.gating = &gating_rows<V>;
  k.conv = &conv_item<V>;
  k.recurrent = &recurrent_item<V>;
  k.chunked = &chunked_item<V>;
  return k;
}

}  // namespace
}  // namespace helexa::gdn
