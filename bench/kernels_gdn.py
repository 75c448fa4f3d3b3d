#!/usr/bin/env python3
"""CPU gated DeltaNet: neuron.ops.gated_delta_rule / causal_conv1d / gdn_gating against torch (and
numpy) float32 baselines, at Qwen3-Next's linear-attention shapes (Hk = 16, Hv = 32, 128 x 128,
conv over 8192 channels with 4 taps).

Rows: a decode step (B = 1 and 8) against a torch recurrent step; a 1024-token prefill in the
chunked form against torch's chunked form (HF ``torch_chunk_gated_delta_rule``'s algorithm) and
against a numpy token recurrence; the recurrent form at 1024 tokens against torch's token loop;
conv1d and the gates. Then our recurrent and chunked forms side by side over lengths (the
``mode="auto"`` crossover). Fixed seeds, warm-up, medians (± half the 10-90% spread); never asserts.

    python bench/kernels_gdn.py                 # every row (about a minute)
    python bench/kernels_gdn.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

# bench/ is on sys.path when a script here runs: the machine, commit and timing helpers are kernels_cpu's
from kernels_cpu import cpu_model, git_commit, summary
from kernels_cpu import timed as call_times

from neuron import ops

HK, HV, DK, DV = 16, 32, 128, 128
CONV_CHANNELS, CONV_TAPS = 2 * HK * DK + HV * DV, 4
MODES = ("recurrent", "chunked")


def timed(fn: Callable[[], object], reps: int, min_secs: float, warmup: int = 2) -> tuple[float, float]:
    """Median seconds per call and half the 10-90 percentile spread as a fraction of it."""
    for _ in range(warmup):
        fn()
    return summary(call_times(lambda _i: fn(), reps, min_secs))


# --- baselines ------------------------------------------------------------------------------------


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + 1e-6)


def split_heads(qkv: torch.Tensor, b: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B * L, width] rows -> q, k [B, Hv, L, Dk] (normalised, q scaled; key heads repeated), v [B, Hv, L, Dv]."""
    kd = HK * DK
    x = qkv.float().reshape(b, length, -1)
    q = _l2norm(x[..., :kd].reshape(b, length, HK, DK)).repeat_interleave(HV // HK, dim=2) * DK**-0.5
    k = _l2norm(x[..., kd : 2 * kd].reshape(b, length, HK, DK)).repeat_interleave(HV // HK, dim=2)
    v = x[..., 2 * kd :].reshape(b, length, HV, DV)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def torch_recurrent(qkv, g, beta, state: torch.Tensor, b: int, length: int) -> torch.Tensor:
    """HF ``torch_recurrent_gated_delta_rule``: the token loop over [B, Hv, Dk, Dv] states."""
    q, k, v = split_heads(qkv, b, length)
    g = g.reshape(b, length, HV).transpose(1, 2)
    beta = beta.reshape(b, length, HV).transpose(1, 2)
    out = torch.empty_like(v)
    s = state
    for t in range(length):
        s = s * g[:, :, t].exp()[..., None, None]
        kv_mem = (s * k[:, :, t, :, None]).sum(dim=-2)
        delta = (v[:, :, t] - kv_mem) * beta[:, :, t, None]
        s = s + k[:, :, t, :, None] * delta[:, :, None, :]
        out[:, :, t] = (s * q[:, :, t, :, None]).sum(dim=-2)
    state.copy_(s)
    return out


def torch_chunked(qkv, g, beta, state: torch.Tensor, length: int, chunk: int = 64) -> torch.Tensor:
    """HF ``torch_chunk_gated_delta_rule``'s algorithm (one sequence): padded chunks, the UT solve by
    ``solve_triangular``, then the sequential pass over chunks."""
    q, k, v = split_heads(qkv, 1, length)
    g = g.reshape(1, length, HV).transpose(1, 2)
    beta = beta.reshape(1, length, HV).transpose(1, 2)
    pad = (chunk - length % chunk) % chunk
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    beta, g = F.pad(beta, (0, pad)), F.pad(g, (0, pad))
    v_beta, k_beta = v * beta[..., None], k * beta[..., None]
    q, k, k_beta, v_beta = (x.reshape(1, HV, -1, chunk, x.shape[-1]) for x in (q, k, k_beta, v_beta))
    g = g.reshape(1, HV, -1, chunk).cumsum(dim=-1)
    upper = torch.ones(chunk, chunk, dtype=torch.bool).triu(1)
    decay = (g[..., :, None] - g[..., None, :]).masked_fill(upper, float("-inf")).exp()
    ut = (k_beta @ k.transpose(-1, -2)) * decay
    attn = (q @ k.transpose(-1, -2)) * decay
    # unitriangular: the solve reads ut's strict lower triangle as A in (I + A) X = rhs
    new_values = torch.linalg.solve_triangular(ut, v_beta, upper=False, unitriangular=True)
    k_cum = torch.linalg.solve_triangular(ut, k_beta * g.exp()[..., None], upper=False, unitriangular=True)
    q = q * g.exp()[..., None]
    k = k * (g[..., -1:] - g).exp()[..., None]
    out = torch.zeros_like(new_values)
    s = state
    for i in range(new_values.shape[2]):
        v_new = new_values[:, :, i] - k_cum[:, :, i] @ s
        out[:, :, i] = q[:, :, i] @ s + attn[:, :, i] @ v_new
        s = s * g[:, :, i, -1].exp()[..., None, None] + k[:, :, i].transpose(-1, -2) @ v_new
    state.copy_(s)
    return out.reshape(1, HV, -1, DV)[:, :, :length]


def numpy_recurrent(qkv: np.ndarray, g: np.ndarray, beta: np.ndarray, state: np.ndarray) -> np.ndarray:
    """The token recurrence in numpy float32, every head at once per token."""
    length, kd = qkv.shape[0], HK * DK
    q = qkv[:, :kd].reshape(length, HK, DK)
    k = qkv[:, kd : 2 * kd].reshape(length, HK, DK)
    q = np.repeat(q / np.sqrt((q * q).sum(-1, keepdims=True) + 1e-6), HV // HK, axis=1) * np.float32(DK**-0.5)
    k = np.repeat(k / np.sqrt((k * k).sum(-1, keepdims=True) + 1e-6), HV // HK, axis=1)
    v = qkv[:, 2 * kd :].reshape(length, HV, DV)
    decay = np.exp(g)
    out = np.empty((length, HV, DV), dtype=np.float32)
    s = state
    for t in range(length):
        s *= decay[t, :, None, None]
        kv_mem = np.einsum("hkv,hk->hv", s, k[t])
        s += k[t, :, :, None] * ((v[t] - kv_mem) * beta[t, :, None])[:, None, :]
        out[t] = np.einsum("hkv,hk->hv", s, q[t])
    return out


def torch_conv(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """One sequence: the state's columns then the new rows, F.conv1d + SiLU, the state rolled."""
    u = torch.cat([state, x.T], dim=1)
    y = F.silu(F.conv1d(u[None], weight[:, None, :], groups=weight.shape[0])[0]).T
    state.copy_(u[:, u.shape[1] - state.shape[1] :])
    return y


def torch_gating(a, b, a_log, dt_bias) -> tuple[torch.Tensor, torch.Tensor]:
    return -a_log.exp() * F.softplus(a.float() + dt_bias), torch.sigmoid(b.float())


# --- rows -----------------------------------------------------------------------------------------


class Table:
    def __init__(self, isa: str) -> None:
        self.isa = isa
        self.rows: dict[str, float] = {}
        print("| op | shape | dtype | isa | baseline | baseline µs | ours µs | speedup |")
        print("|---|---|---|---|---|---|---|---|")

    def row(self, op: str, shape: str, dtype: str, baseline: str, base: tuple[float, float], ours: tuple[float, float]):
        (tb, sb), (to, so) = base, ours
        self.rows[f"{op} {shape} {dtype}"] = to
        print(
            f"| {op} | {shape} | {dtype} | {self.isa} | {baseline} | {tb * 1e6:,.0f} ±{sb:.0%} | "
            f"{to * 1e6:,.1f} ±{so:.0%} | {tb / to:.1f} |",
            flush=True,
        )


def rule_inputs(gen: torch.Generator, rows: int, dtype: torch.dtype = torch.float32):
    qkv = F.silu(torch.randn(rows, 2 * HK * DK + HV * DV, generator=gen)).to(dtype)
    g = -F.softplus(torch.randn(rows, HV, generator=gen) - 2.0)  # mostly mild decay, some strong
    beta = torch.sigmoid(torch.randn(rows, HV, generator=gen))
    return qkv, g, beta


def bench_decode(table: Table, gen: torch.Generator, b: int, dtype: torch.dtype, reps: int) -> None:
    qkv, g, beta = rule_inputs(gen, b, dtype)
    states = torch.randn(b, HV, DK, DV, generator=gen) * 0.05
    starts, slots, fresh = list(range(b + 1)), torch.arange(b), torch.zeros(b, dtype=torch.bool)
    out = torch.empty(b, HV, DV, dtype=dtype)
    kw = {"key_heads": HK, "key_dim": DK, "value_dim": DV, "out": out}
    ours = timed(lambda: ops.gated_delta_rule(qkv, g, beta, states, starts, slots, fresh, **kw), reps, 1.0)
    base_state = states.clone()
    base = timed(lambda: torch_recurrent(qkv, g, beta, base_state, b, 1), reps, 1.0)
    name, shape = str(dtype).removeprefix("torch."), f"B={b} Hv={HV} Hk={HK} {DK}x{DV}"
    table.row("gated_delta_rule decode step", shape, name, "torch f32 step", base, ours)


def bench_prefill(table: Table, gen: torch.Generator, length: int, numpy_rows: bool) -> None:
    qkv, g, beta = rule_inputs(gen, length)
    states = torch.zeros(1, HV, DK, DV)
    kw = {"key_heads": HK, "key_dim": DK, "value_dim": DV, "out": torch.empty(length, HV, DV)}
    shape = f"T={length} Hv={HV} Hk={HK} {DK}x{DV}"

    def ours(mode: str):
        return lambda: ops.gated_delta_rule(qkv, g, beta, states, [0, length], [0], [True], mode=mode, **kw)

    chunked = timed(ours("chunked"), 10, 2.0)
    recurrent = timed(ours("recurrent"), 10, 2.0)
    torch_chunk = timed(lambda: torch_chunked(qkv, g, beta, torch.zeros(1, HV, DK, DV), length), 3, 1.0, warmup=1)
    table.row("gated_delta_rule chunked prefill", shape, "float32", "torch f32 chunked", torch_chunk, chunked)
    if numpy_rows:
        qn, gn, bn = qkv.numpy(), g.numpy(), beta.numpy()
        numpy_rec = timed(lambda: numpy_recurrent(qn, gn, bn, np.zeros((HV, DK, DV), np.float32)), 1, 0.0, warmup=1)
        table.row("gated_delta_rule chunked prefill", shape, "float32", "numpy f32 recurrent", numpy_rec, chunked)
    torch_rec = timed(lambda: torch_recurrent(qkv, g, beta, torch.zeros(1, HV, DK, DV), 1, length), 1, 0.0, warmup=1)
    table.row("gated_delta_rule recurrent prefill", shape, "float32", "torch f32 recurrent", torch_rec, recurrent)


def bench_conv(table: Table, gen: torch.Generator, length: int, reps: int) -> None:
    x = F.silu(torch.randn(length, CONV_CHANNELS, generator=gen))
    w = torch.randn(CONV_CHANNELS, CONV_TAPS, generator=gen) * 0.3
    states = torch.randn(1, CONV_CHANNELS, CONV_TAPS - 1, generator=gen)
    out = torch.empty_like(x)
    ours = timed(lambda: ops.causal_conv1d(x, w, states, [0, length], [0], [False], out=out), reps, 1.0)
    base_state = states[0].clone()
    base = timed(lambda: torch_conv(x, w, base_state), reps, 1.0)
    table.row("causal_conv1d", f"T={length} C={CONV_CHANNELS} K={CONV_TAPS}", "float32", "torch f32", base, ours)


def bench_gating(table: Table, gen: torch.Generator, length: int, reps: int) -> None:
    a, b = torch.randn(length, HV, generator=gen), torch.randn(length, HV, generator=gen)
    a_log, dt_bias = torch.randn(HV, generator=gen), torch.randn(HV, generator=gen)
    ours = timed(lambda: ops.gdn_gating(a, b, a_log, dt_bias), reps, 0.5)
    base = timed(lambda: torch_gating(a, b, a_log, dt_bias), reps, 0.5)
    table.row("gdn_gating", f"T={length} Hv={HV}", "float32", "torch f32", base, ours)


def bench_crossover(gen: torch.Generator, lengths: list[int], reps: int) -> dict[int, float]:
    """Our two forms timed call by call in turn (so a noisy neighbour slows both alike); returns the
    recurrent / chunked ratio of the medians per length."""
    print('\nOurs, recurrent against chunked, one sequence of T tokens (the `mode="auto"` crossover):\n')
    print("| T | recurrent µs | chunked µs | recurrent / chunked |")
    print("|---|---|---|---|")
    ratios = {}
    for length in lengths:
        qkv, g, beta = rule_inputs(gen, length)
        states = torch.zeros(1, HV, DK, DV)
        kw = {"key_heads": HK, "key_dim": DK, "value_dim": DV, "out": torch.empty(length, HV, DV)}
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for i in range(2 + max(3, reps * 64 // (length + 63))):
            for mode in MODES:
                t0 = time.perf_counter_ns()
                ops.gated_delta_rule(qkv, g, beta, states, [0, length], [0], [True], mode=mode, **kw)
                if i >= 2:  # the first two rounds warm up
                    times[mode].append((time.perf_counter_ns() - t0) / 1e9)
        rec, chunk = (statistics.median(times[m]) for m in MODES)
        ratios[length] = rec / chunk
        print(f"| {length} | {rec * 1e6:,.0f} | {chunk * 1e6:,.0f} | {rec / chunk:.2f} |", flush=True)
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="threads for ours and torch (default: %(default)s)")
    ap.add_argument("--prefill", type=int, default=1024, help="prefill length (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=200, help="timed calls per decode-sized row (default: %(default)s)")
    ap.add_argument("--no-numpy", action="store_true", help="skip the (slow) numpy recurrent baseline")
    ap.add_argument("--crossover", default="2,8,16,32,64,128,256,512,1024", help="lengths for the mode table")
    args = ap.parse_args()
    ops.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)

    print("# neuron.ops gated DeltaNet on the CPU\n")
    print(f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; {args.threads} threads for every contender")
    print(f"- ours: helexa {ops.build_info()['version']} ({git_commit()}), ISA {ops.cpu_isa()}")
    print(f"- torch {torch.__version__}, numpy {np.__version__}")
    print("- baselines: float32; torch rows follow HF's torch_recurrent / torch_chunk_gated_delta_rule")
    print("- times: medians (± half the 10-90% spread); speedup = baseline / ours\n")

    table = Table(ops.cpu_isa())
    for b in (1, 8):
        for dtype in (torch.float32, torch.bfloat16):
            bench_decode(table, gen, b, dtype, args.reps)
    bench_prefill(table, gen, args.prefill, not args.no_numpy)
    for length in (1, args.prefill):
        bench_conv(table, gen, length, args.reps if length == 1 else 20)
    for length in (1, args.prefill):
        bench_gating(table, gen, length, args.reps)
    bench_crossover(gen, [int(v) for v in args.crossover.split(",") if v], 20)

    decode = table.rows.get(f"gated_delta_rule decode step B=1 Hv={HV} Hk={HK} {DK}x{DV} float32")
    prefill = table.rows.get(f"gated_delta_rule chunked prefill T={args.prefill} Hv={HV} Hk={HK} {DK}x{DV} float32")
    print()
    if decode is not None:
        print(f"- decode step, B=1: {decode * 1e6:.0f} µs (bar: <= 150 µs on 2 threads; ggml's CPU op ~430 µs)")
    if prefill is not None and args.prefill == 1024:
        print(f"- chunked prefill, T=1024: {prefill * 1e3:.1f} ms (bar: <= 45 ms on 2 threads; ggml ~141 ms)")


if __name__ == "__main__":
    main()
