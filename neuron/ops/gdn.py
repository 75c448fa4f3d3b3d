"""The gated DeltaNet family: the linear-attention layers of Qwen3-Next / Qwen3.5 (upstream-neuron.md
§8.8, anchors-kernels.md §3).

Three ops, each over the engine's flat rows: the T new tokens of B sequences concatenated, sequence
``i`` owning rows ``query_starts[i]:query_starts[i + 1]`` (``query_starts`` int64 ``[B + 1]``, a CPU
tensor or a list), its states in slot ``slots[i]`` of a pool and ``fresh[i]`` saying it starts from
zeros (the slot's contents are ignored, then written). Decodes (one row) and prefill chunks mix in
one call. A sequence of no rows leaves its slot as it was, unless it is fresh: then the slot is
zeroed (it has started, with nothing seen yet). Slots must be distinct within a call.

- ``gdn_gating``: ``beta = sigmoid(b)``, ``g = -exp(A_log) * softplus(a + dt_bias)`` (torch's
  softplus: x > 20 gives x), float32.
- ``causal_conv1d``: the depthwise causal conv over the q/k/v channels, then SiLU; each slot keeps
  the last K - 1 inputs of its sequence.
- ``gated_delta_rule``: per value head h (key head ``h // (Hv // Hk)``), q and k l2-normalised,
  q scaled, then per token ``S <- exp(g) S; u = beta (v - S^T k); S <- S + k u^T; o = S^T q``.
  Long sequences take the chunked (WY) form in chunks of 64 tokens, short ones the token
  recurrence (``mode``); both compute in float32 and give the same values to float32 rounding.

Numerics: float32 everywhere inside, outputs rounded once to the input dtype. The references
(``*_ref``) are float64 and return ``(output, new_states)``: they copy the pool rather than write it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from neuron.ops import _lib

_DTYPES = {torch.float32: _lib.DType.f32, torch.bfloat16: _lib.DType.bf16}

CHUNK_TOKENS = 64  # tokens per chunk of the chunked form
MAX_HEAD_DIM = 256  # key_dim and value_dim
MAX_CONV_TAPS = 8
# mode="auto": sequences at least this long take the chunked form. Measured on a 2-core AVX-512 EPYC
# (bench/kernels_gdn.py, Qwen3-Next's shapes): the recurrence is faster below ~16 tokens (1.6x at 1),
# the two forms tie within a few per cent from 16 to 1024 tokens; from one whole chunk on, the
# chunked form's register-blocked products are the better bet on cores with more FMA throughput.
AUTO_CHUNKED_MIN_TOKENS = CHUNK_TOKENS
_MODES = {"recurrent": 1 << 62, "chunked": 1}

IntList = torch.Tensor | Sequence[int]


def _check_float(t: object, name: str, dtypes: tuple[torch.dtype, ...], ndim: int, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be {' or '.join(str(d).removeprefix('torch.') for d in dtypes)}, got {t.dtype}")
    if t.dim() != ndim or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"{name} must be a contiguous {what} CPU tensor, got shape {tuple(t.shape)} on {t.device}")
    return t


def _check_shape(t: torch.Tensor, name: str, shape: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must be {what} = {list(shape)}, got {list(t.shape)}")


def _int_tensor(v: IntList, name: str, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        v = torch.tensor([int(x) for x in v], dtype=torch.int64)
    if v.dtype not in dtypes:
        raise TypeError(f"{name} must be {' or '.join(str(d).removeprefix('torch.') for d in dtypes)}, got {v.dtype}")
    if v.dim() != 1 or not v.is_contiguous() or v.device.type != "cpu":
        raise ValueError(f"{name} must be a contiguous 1-D CPU tensor, got shape {tuple(v.shape)} on {v.device}")
    return v


def _batch(query_starts: IntList, slots: IntList, fresh: IntList) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch description as the kernels take it: int64 starts and slots, uint8 fresh flags."""
    qs = _int_tensor(query_starts, "query_starts", (torch.int64,))
    if qs.numel() < 1:
        raise ValueError("query_starts must have B + 1 entries, got none")
    seqs = qs.numel() - 1
    sl = _int_tensor(slots, "slots", (torch.int64,))
    fr = _int_tensor(fresh, "fresh", (torch.bool, torch.int64))
    if sl.numel() != seqs or fr.numel() != seqs:
        raise ValueError(
            f"slots ({sl.numel()}) and fresh ({fr.numel()}) must have one entry per sequence: "
            f"B = {seqs} from query_starts"
        )
    fr = fr.view(torch.uint8) if fr.dtype == torch.bool else (fr != 0).view(torch.uint8)
    return qs, sl, fr


def _out(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=dtype)
    if not isinstance(out, torch.Tensor) or out.dtype != dtype or tuple(out.shape) != shape:
        raise ValueError(f"out must be a contiguous {dtype} CPU tensor of shape {list(shape)}")
    if not out.is_contiguous() or out.device.type != "cpu":
        raise ValueError(f"out must be a contiguous {dtype} CPU tensor of shape {list(shape)}")
    return out


# --- gates ----------------------------------------------------------------------------------------


def gdn_gating(
    a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, beta)`` float32 ``[T, Hv]`` from ``a``, ``b`` ``[T, Hv]`` (float32 or bfloat16) and the
    per-head ``A_log``, ``dt_bias`` ``[Hv]`` float32: ``g = -exp(A_log) * softplus(a + dt_bias)``,
    ``beta = sigmoid(b)``."""
    _check_float(a, "a", tuple(_DTYPES), 2, "[T, Hv]")
    _check_float(b, "b", (a.dtype,), 2, "[T, Hv]")
    _check_shape(b, "b", tuple(a.shape), "a's shape")
    rows, heads = a.shape
    for name, t in (("A_log", A_log), ("dt_bias", dt_bias)):
        _check_float(t, name, (torch.float32,), 1, "[Hv]")
        _check_shape(t, name, (heads,), "[Hv]")
    g = torch.empty(rows, heads, dtype=torch.float32)
    beta = torch.empty(rows, heads, dtype=torch.float32)
    if heads == 0:
        return g, beta
    _lib.native.gdn_gating_cpu(
        g.data_ptr(),
        beta.data_ptr(),
        a.data_ptr(),
        b.data_ptr(),
        A_log.data_ptr(),
        dt_bias.data_ptr(),
        rows,
        heads,
        _DTYPES[a.dtype],
    )
    return g, beta


def gdn_gating_ref(
    a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(g, beta)``, torch's softplus (threshold 20)."""
    g = -A_log.double().exp() * torch.nn.functional.softplus(a.double() + dt_bias.double())
    return g, torch.sigmoid(b.double())


# --- causal conv1d --------------------------------------------------------------------------------


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    conv_states: torch.Tensor,
    query_starts: IntList,
    slots: IntList,
    fresh: IntList,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depthwise causal conv + SiLU of ``x`` ``[T, C]`` (float32 or bfloat16) with taps ``weight``
    ``[C, K]`` (float32 or x's dtype, K <= 8, no bias): with ``u`` = the slot's K - 1 previous inputs
    (zeros if fresh) followed by the sequence's rows, ``y[t, c] = silu(sum_i weight[c, i] u[t + i, c])``
    (the window ends at token t), summed in float32. ``conv_states`` float32 ``[N, C, K - 1]`` is
    updated in place: each slot then holds the last K - 1 columns of its ``u``. Returns ``y`` in x's
    dtype."""
    _check_float(x, "x", tuple(_DTYPES), 2, "[T, C]")
    _check_float(weight, "weight", tuple(dict.fromkeys((torch.float32, x.dtype))), 2, "[C, K]")
    rows, channels = x.shape
    taps = weight.shape[1]
    if weight.shape[0] != channels or not 1 <= taps <= MAX_CONV_TAPS:
        raise ValueError(f"weight must be [C = {channels}, K] with 1 <= K <= {MAX_CONV_TAPS}, got {list(weight.shape)}")
    _check_float(conv_states, "conv_states", (torch.float32,), 3, "[N, C, K - 1]")
    if tuple(conv_states.shape[1:]) != (channels, taps - 1):
        raise ValueError(
            f"conv_states must be [N, C, K - 1] = [N, {channels}, {taps - 1}], got {list(conv_states.shape)}"
        )
    qs, sl, fr = _batch(query_starts, slots, fresh)
    y = _out(out, (rows, channels), x.dtype)
    if channels == 0:
        return y
    _lib.native.causal_conv1d_cpu(
        y.data_ptr(),
        conv_states.data_ptr(),
        x.data_ptr(),
        weight.data_ptr(),
        qs.data_ptr(),
        sl.data_ptr(),
        fr.data_ptr(),
        qs.numel() - 1,
        rows,
        channels,
        taps,
        conv_states.shape[0],
        _DTYPES[x.dtype],
        _DTYPES[weight.dtype],
    )
    return y


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    conv_states: torch.Tensor,
    query_starts: IntList,
    slots: IntList,
    fresh: IntList,
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(y, new_states)``, one sequence at a time with ``torch.nn.functional.conv1d``;
    ``new_states`` is a float64 copy of the whole pool (``conv_states`` itself is not written)."""
    starts = [int(v) for v in query_starts]
    states = conv_states.double().clone()
    w = weight.double()
    channels, taps = w.shape
    y = torch.empty(x.shape, dtype=torch.float64)
    for i, slot in enumerate(int(s) for s in slots):
        r0, r1 = starts[i], starts[i + 1]
        prev = torch.zeros(channels, taps - 1, dtype=torch.float64) if bool(fresh[i]) else states[slot]
        u = torch.cat([prev, x[r0:r1].double().T], dim=1)  # [C, K - 1 + L]
        if r1 > r0:
            conv = torch.nn.functional.conv1d(u[None], w[:, None, :], groups=channels)[0]  # [C, L]
            y[r0:r1] = torch.nn.functional.silu(conv).T
        states[slot] = u[:, u.shape[1] - (taps - 1) :]
    return y, states


# --- gated delta rule -----------------------------------------------------------------------------


def _rule_shapes(qkv, g, beta, states, key_heads, key_dim, value_dim) -> tuple[int, int]:
    """Checks the delta rule's tensors; returns (T, Hv)."""
    _check_float(qkv, "qkv", tuple(_DTYPES), 2, "[T, 2 * Hk * Dk + Hv * Dv]")
    _check_float(g, "g", (torch.float32,), 2, "[T, Hv]")
    rows, heads = g.shape
    for name, v in (("key_heads", key_heads), ("key_dim", key_dim), ("value_dim", value_dim)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
    if key_dim > MAX_HEAD_DIM or value_dim > MAX_HEAD_DIM:
        raise ValueError(f"key_dim and value_dim must be <= {MAX_HEAD_DIM}, got {key_dim} and {value_dim}")
    if heads % key_heads != 0:
        raise ValueError(f"the value heads Hv = g.shape[1] = {heads} must be a multiple of key_heads = {key_heads}")
    _check_float(beta, "beta", (torch.float32,), 2, "[T, Hv]")
    _check_shape(beta, "beta", (rows, heads), "g's shape")
    width = 2 * key_heads * key_dim + heads * value_dim
    _check_shape(qkv, "qkv", (rows, width), "[T, 2 * Hk * Dk + Hv * Dv]")
    _check_float(states, "states", (torch.float32,), 4, "[N, Hv, Dk, Dv]")
    if tuple(states.shape[1:]) != (heads, key_dim, value_dim):
        raise ValueError(
            f"states must be [N, Hv, Dk, Dv] = [N, {heads}, {key_dim}, {value_dim}], got {list(states.shape)}"
        )
    return rows, heads


def gated_delta_rule(
    qkv: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    states: torch.Tensor,
    query_starts: IntList,
    slots: IntList,
    fresh: IntList,
    *,
    key_heads: int,
    key_dim: int,
    value_dim: int,
    scale: float | None = None,
    mode: str = "auto",
    value_heads_tiled: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The gated delta rule over the conv output ``qkv`` ``[T, 2 * Hk * Dk + Hv * Dv]`` (rows laid out
    ``[Q | K | V]``, head-major; float32 or bfloat16), gates ``g``, ``beta`` float32 ``[T, Hv]``, and
    the recurrent ``states`` float32 ``[N, Hv, Dk, Dv]`` (key rows, value columns), updated in place.
    ``scale`` defaults to ``Dk ** -0.5``. ``mode``: ``"recurrent"`` (the token recurrence),
    ``"chunked"`` (the chunked form, 64 tokens a chunk, for any length) or ``"auto"`` (chunked for
    sequences of at least ``AUTO_CHUNKED_MIN_TOKENS`` rows). Value head ``h`` reads key head
    ``h // (Hv // Hk)`` (HF's grouped order), or ``h % Hk`` with ``value_heads_tiled`` (the order
    llama.cpp's Qwen3.5 GGUF files keep the value heads in). Returns ``o`` ``[T, Hv, Dv]`` in qkv's
    dtype."""
    rows, heads = _rule_shapes(qkv, g, beta, states, key_heads, key_dim, value_dim)
    if mode == "auto":
        chunked_min_len = AUTO_CHUNKED_MIN_TOKENS
    elif mode in _MODES:
        chunked_min_len = _MODES[mode]
    else:
        raise ValueError(f"mode must be 'auto', 'recurrent' or 'chunked', got {mode!r}")
    qs, sl, fr = _batch(query_starts, slots, fresh)
    o = _out(out, (rows, heads, value_dim), qkv.dtype)
    _lib.native.gated_delta_rule_cpu(
        o.data_ptr(),
        states.data_ptr(),
        qkv.data_ptr(),
        g.data_ptr(),
        beta.data_ptr(),
        qs.data_ptr(),
        sl.data_ptr(),
        fr.data_ptr(),
        qs.numel() - 1,
        rows,
        key_heads,
        heads,
        key_dim,
        value_dim,
        states.shape[0],
        float(key_dim**-0.5 if scale is None else scale),
        chunked_min_len,
        _DTYPES[qkv.dtype],
        bool(value_heads_tiled),
    )
    return o


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + 1e-6)  # HF's l2norm, eps 1e-6


def gated_delta_rule_ref(
    qkv: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    states: torch.Tensor,
    query_starts: IntList,
    slots: IntList,
    fresh: IntList,
    *,
    key_heads: int,
    key_dim: int,
    value_dim: int,
    scale: float | None = None,
    value_heads_tiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(o, new_states)`` by HF's ``torch_recurrent_gated_delta_rule`` (l2norm of q and k
    included), token by token; ``new_states`` is a float64 copy of the whole pool."""
    rows, heads = g.shape
    group = heads // key_heads
    scale = key_dim**-0.5 if scale is None else scale
    kd = key_heads * key_dim
    x = qkv.double()
    if value_heads_tiled:  # value head h reads key head h % Hk

        def spread(t: torch.Tensor) -> torch.Tensor:
            return t.repeat(1, group, 1)
    else:  # HF's repeat_interleave: h // group

        def spread(t: torch.Tensor) -> torch.Tensor:
            return t.repeat_interleave(group, dim=1)

    q = spread(_l2norm(x[:, :kd].reshape(rows, key_heads, key_dim))) * scale
    k = spread(_l2norm(x[:, kd : 2 * kd].reshape(rows, key_heads, key_dim)))
    v = x[:, 2 * kd :].reshape(rows, heads, value_dim)
    decay, b = g.double().exp(), beta.double()
    new_states = states.double().clone()
    o = torch.empty(rows, heads, value_dim, dtype=torch.float64)
    starts = [int(s) for s in query_starts]
    for i, slot in enumerate(int(s) for s in slots):
        s = torch.zeros(heads, key_dim, value_dim, dtype=torch.float64) if bool(fresh[i]) else new_states[slot]
        for t in range(starts[i], starts[i + 1]):
            s = s * decay[t, :, None, None]
            kv_mem = torch.einsum("hkv,hk->hv", s, k[t])
            delta = (v[t] - kv_mem) * b[t, :, None]
            s = s + k[t, :, :, None] * delta[:, None, :]
            o[t] = torch.einsum("hkv,hk->hv", s, q[t])
        new_states[slot] = s
    return o, new_states
