#!/usr/bin/env python3
"""Batch-1 latency of the neuron engine on the CPU against HF transformers, same weights, same run.

A Qwen3 with Qwen3-0.6B's dimensions (hidden 1024, 28 layers, 16 q / 8 kv heads, head_dim 128,
intermediate 3072, vocab 151936, tied embeddings) and random weights is written once in HF layout.
For each dtype: time to first token for a 128-token prompt, prefill tok/s, and decode tok/s over
N generated tokens, for the neuron engine (the real generation loop: device worker, sampler,
detokenizer) and for ``transformers`` ``generate`` (greedy). Also the neuron's per-token host
overhead: wall time per decoded token minus the time spent inside the device jobs.

    python bench/neuron_decode.py [--tokens 64] [--prompt 128] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from neuron.demo import demo_template, demo_text, qwen3_config, random_weights, train_tokenizer, write_model_dir
from neuron.engine.admission import Admission
from neuron.engine.generation import GenerationRequest, Outcome, generate
from neuron.engine.loaded import load_model
from neuron.engine.sampling import SamplingParams
from neuron.engine.worker import DeviceWorker

QWEN3_06B = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    tie_word_embeddings=True,
)


def write_model(out: Path) -> Path:
    if (out / "model.safetensors").is_file():
        return out
    tok = train_tokenizer(demo_text())
    cfg = qwen3_config(151936, **QWEN3_06B)
    weights = random_weights(cfg, seed=0)
    return write_model_dir(out, tok, cfg, weights, template=demo_template())


def bench_neuron(model_dir: Path, dtype: torch.dtype, prompt: list[int], tokens: int, reps: int) -> dict:
    worker = DeviceWorker(torch.device("cpu"))
    lm = worker.call(
        load_model,
        "bench",
        model_dir,
        worker,
        dtype,
        Admission("bench", 1, 0, 1),
        free_bytes=lambda: 1 << 40,
        progress=lambda f: None,
    )
    lm.eos_ids = set()  # random weights: never stop early
    busy = {"secs": 0.0}
    for name in ("prefill", "decode"):
        inner = getattr(lm, name)

        def timed(*a, _inner=inner, **k):
            t0 = time.perf_counter()
            try:
                return _inner(*a, **k)
            finally:
                busy["secs"] += time.perf_counter() - t0

        setattr(lm, name, timed)

    async def one(n: int) -> tuple[float, float, float]:
        req = GenerationRequest(prompt_ids=prompt, max_new_tokens=n, params=SamplingParams(temperature=0.0))
        busy["secs"] = 0.0
        t0 = time.perf_counter()
        first = None
        async for _ in generate(lm, req, Outcome(prompt_tokens=len(prompt))):
            if first is None:
                first = time.perf_counter() - t0
        return first or 0.0, time.perf_counter() - t0, busy["secs"]

    async def run() -> dict:
        await one(4)  # warm up
        ttfts, decodes, overheads = [], [], []
        for _ in range(reps):
            ttft, _, _ = await one(1)
            _, total, inside = await one(tokens)
            ttfts.append(ttft)
            decodes.append((tokens - 1) / (total - ttft))
            overheads.append((total - inside) / tokens)
        return {
            "ttft": statistics.median(ttfts),
            "decode": statistics.median(decodes),
            "overhead_ms": statistics.median(overheads) * 1e3,
        }

    try:
        return asyncio.run(run())
    finally:
        worker.close()


def bench_transformers(model_dir: Path, dtype: torch.dtype, prompt: list[int], tokens: int, reps: int) -> dict:
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    cfg = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0)

    def gen(n: int) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, generation_config=cfg)
        return time.perf_counter() - t0

    gen(4)
    ttfts, decodes = [], []
    for _ in range(reps):
        ttft = gen(1)
        total = gen(tokens)
        ttfts.append(ttft)
        decodes.append((tokens - 1) / (total - ttft))
    return {"ttft": statistics.median(ttfts), "decode": statistics.median(decodes), "overhead_ms": float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per decode run (default: %(default)s)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt length in tokens (default: %(default)s)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="(default: %(default)s)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "helexa-bench-qwen3-0.6b"))
    ap.add_argument("--no-transformers", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = write_model(Path(args.workdir))
    prompt = torch.randint(0, 151936, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()

    from neuron import ops

    print("# neuron decode on the CPU, batch 1\n")
    print(f"- model: Qwen3 with Qwen3-0.6B dimensions, random weights ({model_dir})")
    print(f"- prompt {args.prompt} tokens, {args.tokens} generated, {args.threads} threads, medians of {args.reps}")
    print(f"- torch {torch.__version__}, helexa {ops.build_info()['version']}, CPU ISA {ops.cpu_isa()}\n")
    print("| engine | dtype | TTFT ms | prefill tok/s | decode tok/s | host overhead ms/token |")
    print("|---|---|---|---|---|---|")
    best_hf, best_ours = 0.0, 0.0
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        rows = [("neuron", bench_neuron(model_dir, dtype, prompt, args.tokens, args.reps))]
        if not args.no_transformers:
            rows.append(("transformers", bench_transformers(model_dir, dtype, prompt, args.tokens, args.reps)))
        for engine, r in rows:
            print(
                f"| {engine} | {name} | {r['ttft'] * 1e3:.0f} | {args.prompt / r['ttft']:.0f} | {r['decode']:.1f} | "
                f"{r['overhead_ms']:.2f} |".replace("nan", "—"),
                flush=True,
            )
            if engine == "neuron":
                best_ours = max(best_ours, r["decode"])
            else:
                best_hf = max(best_hf, r["decode"])
    if best_hf:
        print(f"\n- best neuron decode / best transformers decode: {best_ours / best_hf:.2f}x (bar: >= 1.5x)")


if __name__ == "__main__":
    main()
