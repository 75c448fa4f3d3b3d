#!/usr/bin/env python3
"""CPU quantized matmul: neuron.ops.qmatmul against its baselines, in one run, on one thread count.

Baselines per row: numpy (gguf.quants.dequantize + matmul, what a pure-Python loader would do),
torch float32 matmul on the already dequantized weight, and ggml's own CPU kernel as bundled by
llama-cpp-python (when that package is installed in the bench environment; never a dependency).
Weights rotate through enough distinct matrices that the working set exceeds the last-level cache,
so GEMV timings are memory timings, not cache timings. Prints a markdown table; never asserts.

    python bench/kernels_cpu.py                 # all shapes and types, M = 1 and 128 (a few minutes)
    python bench/kernels_cpu.py --quick         # Q4_K and Q8_0 at 4096x14336, M = 1
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import gguf
import numpy as np
import torch

from neuron import ops
from neuron.ops.quant import random_quant_tensor

SHAPES = ["4096x4096", "14336x4096", "4096x14336", "151936x1024"]  # N x K (out x in)
TYPES = list(ops.QUANT_TYPES)


def llc_bytes() -> int:
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
        best = max(best, int(size.rstrip("KMG")) * scale)
    return best or 64 << 20


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def timed(fn: Callable[[int], object], reps: int, min_secs: float = 0.0) -> list[float]:
    """Runs fn(i) for i = 0, 1, ... and returns the seconds of each call (at least `reps` calls)."""
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while i < reps or time.perf_counter() - start < min_secs:
        t0 = time.perf_counter_ns()
        fn(i)
        times.append((time.perf_counter_ns() - t0) / 1e9)
        i += 1
    return times


def summary(times: list[float]) -> tuple[float, float]:
    """Median and half the 10-90 percentile spread, as a fraction of the median."""
    med = statistics.median(times)
    if len(times) < 3:
        return med, 0.0
    q = statistics.quantiles(times, n=10)
    return med, (q[-1] - q[0]) / 2 / med


class GgmlMulMat:
    """ggml's CPU mul_mat through llama-cpp-python's bundled libraries, with a persistent
    threadpool as llama.cpp itself runs it."""

    class InitParams(ctypes.Structure):
        _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]

    class CPlan(ctypes.Structure):  # struct ggml_cplan of ggml-cpu.h (llama-cpp-python 0.3.x)
        _fields_ = [
            ("work_size", ctypes.c_size_t),
            ("work_data", ctypes.c_void_p),
            ("n_threads", ctypes.c_int),
            ("threadpool", ctypes.c_void_p),
            ("abort_callback", ctypes.c_void_p),
            ("abort_callback_data", ctypes.c_void_p),
            ("use_ref", ctypes.c_bool),
        ]

    def __init__(self, threads: int) -> None:
        import llama_cpp  # the bench environment's, never a dependency of helexa

        self.version = getattr(llama_cpp, "__version__", "?")
        libdir = Path(llama_cpp.__file__).parent / "lib"
        self.base = ctypes.CDLL(str(libdir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(str(libdir / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
        vp, b, c = ctypes.c_void_p, self.base, self.cpu
        b.ggml_init.restype, b.ggml_init.argtypes = vp, [self.InitParams]
        b.ggml_new_tensor_2d.restype = vp
        b.ggml_new_tensor_2d.argtypes = [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        b.ggml_mul_mat.restype, b.ggml_mul_mat.argtypes = vp, [vp, vp, vp]
        b.ggml_new_graph.restype, b.ggml_new_graph.argtypes = vp, [vp]
        b.ggml_build_forward_expand.argtypes = [vp, vp]
        b.ggml_get_data.restype, b.ggml_get_data.argtypes = vp, [vp]
        b.ggml_free.argtypes = [vp]
        b.ggml_tensor_overhead.restype = ctypes.c_size_t
        b.ggml_graph_overhead.restype = ctypes.c_size_t
        b.ggml_threadpool_params_init.argtypes = [vp, ctypes.c_int]
        c.ggml_threadpool_new.restype, c.ggml_threadpool_new.argtypes = vp, [vp]
        c.ggml_graph_plan.restype = self.CPlan
        c.ggml_graph_plan.argtypes = [vp, ctypes.c_int, vp]
        c.ggml_graph_compute.argtypes = [vp, ctypes.POINTER(self.CPlan)]
        self.threads = threads
        params = ctypes.create_string_buffer(8192)  # struct ggml_threadpool_params, filled by ggml
        b.ggml_threadpool_params_init(params, threads)
        self.pool = c.ggml_threadpool_new(params)

    def time(self, mats: list[ops.QuantTensor], x: torch.Tensor, reps: int, min_secs: float) -> list[float]:
        b, c = self.base, self.cpu
        (n, k), m = mats[0].shape, x.shape[0]
        gtype = gguf.GGMLQuantizationType[mats[0].qtype.upper()].value
        mem = (
            sum(w.nbytes for w in mats)
            + len(mats) * (n * m * 4 + b.ggml_graph_overhead() + 2 * b.ggml_tensor_overhead())
            + m * k * 4
            + (16 << 20)
        )
        ctx = b.ggml_init(self.InitParams(mem, None, False))
        try:
            xt = b.ggml_new_tensor_2d(ctx, 0, k, m)  # GGML_TYPE_F32
            ctypes.memmove(b.ggml_get_data(xt), x.float().contiguous().data_ptr(), m * k * 4)
            runs = []
            for w in mats:
                wt = b.ggml_new_tensor_2d(ctx, gtype, k, n)
                ctypes.memmove(b.ggml_get_data(wt), w.data.data_ptr(), w.nbytes)
                graph = b.ggml_new_graph(ctx)
                b.ggml_build_forward_expand(graph, b.ggml_mul_mat(ctx, wt, xt))
                plan = c.ggml_graph_plan(graph, self.threads, self.pool)
                work = ctypes.create_string_buffer(max(plan.work_size, 1))
                plan.work_data = ctypes.cast(work, ctypes.c_void_p)
                runs.append((graph, plan, work))
            for graph, plan, _ in runs:  # warm up: every matrix once
                c.ggml_graph_compute(graph, ctypes.byref(plan))
            return timed(
                lambda i: c.ggml_graph_compute(runs[i % len(runs)][0], ctypes.byref(runs[i % len(runs)][1])),
                reps,
                min_secs,
            )
        finally:
            b.ggml_free(ctx)


def copies(t: torch.Tensor, count: int) -> list[torch.Tensor]:
    """Distinct memory, same values: as cold to the cache as distinct random matrices."""
    return [t] + [t.clone() for _ in range(count - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES), help="N x K weight shapes (default: %(default)s)")
    ap.add_argument("--types", default=",".join(TYPES), help="quant types (default: %(default)s)")
    ap.add_argument("--m", default="1,128", help="activation rows M (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=ops.num_threads(), help="threads for every contender")
    ap.add_argument("--working-set-mb", type=int, default=0, help="default: 2 x the last-level cache")
    ap.add_argument("--reps", type=int, default=30, help="timed calls per GEMV contender (default: %(default)s)")
    ap.add_argument("--no-numpy", action="store_true", help="skip the (slow) numpy baseline")
    ap.add_argument("--no-ggml", action="store_true", help="skip ggml even when llama-cpp-python is installed")
    ap.add_argument("--quick", action="store_true", help="4096x14336, q4_k and q8_0, M = 1")
    args = ap.parse_args()
    if args.quick:
        args.shapes, args.types, args.m = "4096x14336", "q4_k,q8_0", "1"

    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    qtypes = [t.strip() for t in args.types.split(",")]
    ms = [int(v) for v in args.m.split(",")]
    ops.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    working_set = (args.working_set_mb << 20) or 2 * llc_bytes()

    ggml = None
    ggml_note = "not installed (pip install llama-cpp-python in the bench environment)"
    if not args.no_ggml:
        try:
            ggml = GgmlMulMat(args.threads)
            ggml_note = f"llama-cpp-python {ggml.version}, persistent threadpool"
        except (ImportError, OSError, AttributeError) as exc:
            ggml_note = f"unavailable ({exc})"
    elif args.no_ggml:
        ggml_note = "skipped"

    print("# neuron.ops.qmatmul on the CPU\n")
    print(f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; last-level cache {llc_bytes() >> 20} MiB")
    print(f"- ours: helexa {ops.build_info()['version']} ({git_commit()}), ISA {ops.cpu_isa()}, {args.threads} threads")
    print(f"- torch {torch.__version__}, numpy {np.__version__}, gguf {version('gguf')}")
    print(f"- ggml: {ggml_note}")
    print(f"- weights rotate through >= {working_set >> 20} MiB of distinct matrices")
    print("- times: medians (± half the 10-90% spread); numpy: one matrix, dequantize + matmul per call")
    print("- speedup columns: baseline time / our time (> 1 means we are faster)\n")
    print("| N x K | type | M | ours ms | GB/s | numpy ms | torch f32 ms | ggml ms | x numpy | x torch | x ggml |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    gen = torch.Generator().manual_seed(0)
    bars: list[str] = []
    for n, k in shapes:
        for qtype in qtypes:
            for row in bench_weight(n, k, qtype, ms, args, ggml, gen, working_set):
                gbps = row["bytes"] / row["ours"] / 1e9
                ours = row["ours"]
                line = (
                    f"| {n}x{k} | {qtype} | {row['m']} | {ours * 1e3:.3f} ±{row['spread']:.0%} | {gbps:.1f} | "
                    f"{row['numpy'] * 1e3:.1f} | {row['torch'] * 1e3:.2f} | {row['ggml'] * 1e3:.3f} | "
                    f"{row['numpy'] / ours:.0f} | {row['torch'] / ours:.2f} | {row['ggml'] / ours:.2f} |"
                )
                print(line.replace("nan", "—"), flush=True)
                if (n, k, qtype, row["m"]) == (4096, 14336, "q4_k", 1):
                    if not math.isnan(row["numpy"]):
                        bars.append(
                            f"- Q4_K M=1 4096x14336: {row['numpy'] / ours:.0f}x faster than numpy (bar: >= 40x)"
                        )
                    if not math.isnan(row["ggml"]):
                        bars.append(f"- Q4_K M=1 4096x14336: {ours / row['ggml']:.2f}x ggml's time (bar: <= 1.25x)")
            gc.collect()
    if bars:
        print("\n" + "\n".join(bars))


def bench_weight(n, k, qtype, ms, args, ggml, gen, working_set) -> list[dict]:
    """Times every contender on one weight shape and type, for each M."""
    first = random_quant_tensor(qtype, (n, k), generator=gen)
    count = max(2, math.ceil(working_set / first.nbytes))
    mats = [ops.QuantTensor(d, qtype, (n, k)) for d in copies(first.data, count)]
    dense_one = ops.dequantize(first)
    dense = copies(dense_one, max(2, math.ceil(working_set / (dense_one.numel() * 4))))
    raw = first.data.numpy().reshape(n, -1)
    gtype = gguf.GGMLQuantizationType[qtype.upper()]
    rows = []
    for m in ms:
        x = torch.randn(m, k, generator=gen)
        out = torch.empty(m, n)
        gemv = m <= 8
        reps, min_secs = (args.reps, 0.5) if gemv else (3, 1.0)

        def ours(i: int, x=x, out=out) -> None:
            ops.qmatmul(x, mats[i % len(mats)], out=out)

        def torch_f32(i: int, x=x) -> None:
            torch.matmul(x, dense[i % len(dense)].T)

        xn = x.numpy()

        def numpy_deq(i: int, xn=xn) -> None:
            gguf.quants.dequantize(raw, gtype) @ xn.T

        for i in range(len(mats)):
            ours(i)
        for i in range(len(dense)):
            torch_f32(i)
        t_ours, spread = summary(timed(ours, reps, min_secs))
        t_torch, _ = summary(timed(torch_f32, reps, min_secs))
        t_numpy = float("nan")
        if not args.no_numpy:
            numpy_deq(0)  # the first call pays page faults for numpy's temporaries
            t_numpy = summary(timed(numpy_deq, 3 if gemv else 1))[0]
        t_ggml = float("nan") if ggml is None else summary(ggml.time(mats, x, reps, min_secs))[0]
        rows.append(
            {
                "m": m,
                "bytes": first.nbytes,
                "ours": t_ours,
                "spread": spread,
                "torch": t_torch,
                "numpy": t_numpy,
                "ggml": t_ggml,
            }
        )
    return rows


if __name__ == "__main__":
    main()
