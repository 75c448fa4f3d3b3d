#!/usr/bin/env python3
"""The neuron engine on the CPU against HF transformers, same weights, same run.

A Qwen3 with Qwen3-0.6B's dimensions (hidden 1024, 28 layers, 16 q / 8 kv heads, head_dim 128,
intermediate 3072, vocab 151936, tied embeddings) and random weights is written once in HF layout.
For each dtype:

- batch 1: time to first token for a ``--prompt``-token prompt, and decode tok/s over
  ``--tokens`` generated tokens, for the engine (the real path: continuous batching on the device
  thread, sampler, detokenizer) and for ``transformers`` ``generate`` (greedy);
- concurrency: aggregate decode tok/s of 1, 4, 8, 16 streams at once (distinct prompts), measured
  in the window where every stream is decoding, against ``generate`` at batch 8 (one batch of 8
  prompts of equal length, so no padding);
- ``--quants q8_0,q4_k_m``: the same engine rows with the weights quantized in situ (bfloat16
  activations);
- ``--gguf q8_0,q4_k_m``: the model written as GGUF by ``neuron quantize``, ours against
  llama.cpp (``llama-cpp-python``) on the same file with the same threads: TTFT, decode, prefill
  of 512 tokens (and our 1-8 streams);
- prefix cache: TTFT of a 2,048-token prompt whose first 2,000 tokens were the previous request's,
  against the same prompt cold; for a hybrid model, whose recurrent state resumes only where it
  was kept, a 2,000-token conversation extended by 50 tokens against the same prompt cold.

``--model`` picks the architecture: ``qwen3-0.6b`` (above), ``qwen3.5-hybrid`` (a Qwen3.5-shaped
hybrid: hidden 1024, 24 layers, 18 gated DeltaNet with 16 key / 16 value heads of 128 and 6
gated attention with 8 q / 2 kv heads of 256, rotary on a quarter, intermediate 3584, tied) or
``qwen3-moe-small`` (Qwen3-MoE: hidden 1024, 16 layers, 32 experts of 384, 4 per token).

    python bench/neuron_decode.py [--model qwen3-0.6b] [--tokens 64] [--prompt 128]
                                  [--dtypes float32,bfloat16] [--streams 1,4,8,16]
                                  [--no-transformers] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# bench/ is on sys.path when a script here runs
from kernels_cpu import cpu_model, git_commit

from neuron.demo import demo_template, demo_text, qwen3_config, random_weights, train_tokenizer, write_model_dir
from neuron.engine.admission import Admission
from neuron.engine.engine import EngineRequest, Output
from neuron.engine.generation import GenerationRequest, Outcome, generate
from neuron.engine.loaded import KVSettings, LoadedModel, load_model, release_model
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
VOCAB = 151936
GREEDY = SamplingParams(temperature=0.0)


HYBRID = dict(
    hidden_size=1024,
    intermediate_size=3584,
    num_hidden_layers=24,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=256,
    linear_num_key_heads=16,
    linear_num_value_heads=16,
    linear_key_head_dim=128,
    linear_value_head_dim=128,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
)
MOE = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=128,
    num_experts=32,
    num_experts_per_tok=4,
    moe_intermediate_size=384,
    norm_topk_prob=True,
    max_position_embeddings=40960,
    tie_word_embeddings=True,
)
MODELS = {
    "qwen3-0.6b": "Qwen3 with Qwen3-0.6B dimensions",
    "qwen3.5-hybrid": "a Qwen3.5-shaped hybrid (18 gated DeltaNet + 6 gated attention layers, hidden 1024)",
    "qwen3-moe-small": "a small Qwen3-MoE (16 layers, 32 experts of 384, 4 per token, hidden 1024)",
}


def write_model(out: Path, model: str = "qwen3-0.6b") -> Path:
    if (out / "model.safetensors").is_file():
        return out
    tok = train_tokenizer(demo_text())
    if model == "qwen3-0.6b":
        cfg = qwen3_config(VOCAB, **QWEN3_06B)
        return write_model_dir(out, tok, cfg, random_weights(cfg, seed=0), template=demo_template())
    import json

    import transformers

    if model == "qwen3.5-hybrid":
        hf_cfg = transformers.Qwen3_5TextConfig(vocab_size=VOCAB, **HYBRID)
        cls = transformers.Qwen3_5ForCausalLM
    else:
        hf_cfg = transformers.Qwen3MoeConfig(vocab_size=VOCAB, **MOE)
        cls = transformers.Qwen3MoeForCausalLM
    torch.manual_seed(0)
    hf = cls(hf_cfg)
    with torch.no_grad():  # HF leaves stacked experts uninitialised
        for name, p in hf.named_parameters():
            if "experts" in name:
                p.normal_(0, 0.02)
    hf.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    return write_model_dir(out, tok, cfg, None, template=demo_template())


def prompts(n: int, length: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (length,), generator=gen).tolist() for _ in range(n)]


async def load(
    model_dir: Path, dtype: torch.dtype, worker: DeviceWorker, max_num_seqs: int, quant: str | None = None
) -> LoadedModel:
    settings = KVSettings(kv_cache_mb=4096, share=0.25, max_num_seqs=max_num_seqs, max_batch_tokens=512)
    lm = await worker.run(
        load_model,
        "bench",
        model_dir,
        worker,
        dtype,
        Admission("bench", max_num_seqs, 0, 1),
        settings,
        free_bytes=lambda: 1 << 40,
        progress=lambda f: None,
        loop=asyncio.get_running_loop(),
        quant=quant,
    )
    lm.eos_ids = set()  # random weights: never stop early
    return lm


async def stream(lm: LoadedModel, prompt: list[int], n: int) -> list[float]:
    """One request through the engine; the arrival time of each token."""
    outputs: asyncio.Queue[Output] = asyncio.Queue()
    lm.engine.submit(EngineRequest(prompt, n, GREEDY, frozenset(), outputs.put_nowait))
    times: list[float] = []
    while True:
        out = await outputs.get()
        times += [time.perf_counter()] * len(out.tokens)
        if out.finish is not None:
            return times


async def ttft_and_decode(lm: LoadedModel, prompt: list[int], tokens: int) -> tuple[float, float]:
    """Through the whole event-loop path (detokenizer, stop matcher, parser): TTFT and decode
    tok/s of one stream, timed by the tokens as the engine hands them over."""
    req = GenerationRequest(prompt_ids=prompt, max_new_tokens=tokens, params=GREEDY, ignore_eos=True)
    times: list[float] = []
    submit = lm.engine.submit

    def timed(request: EngineRequest) -> int:
        deliver = request.deliver
        request.deliver = lambda out: (times.extend([time.perf_counter()] * len(out.tokens)), deliver(out))
        return submit(request)

    lm.engine.submit = timed  # (one stream at a time: nothing else submits meanwhile)
    try:
        t0 = time.perf_counter()
        async for _ in generate(lm, req, Outcome(prompt_tokens=len(prompt))):
            pass
    finally:
        lm.engine.submit = submit
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return times[0] - t0, decode


PREFILL = 512  # the prompt of the prefill rows


def bench_llama_cpp(args, path: Path) -> dict:
    """llama.cpp on the same GGUF file, same threads: TTFT and greedy decode tok/s of one stream
    (as ``ttft_and_decode`` times ours), and prefill tok/s of a 512-token prompt."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=2048,
        n_batch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    ttfts, rates, prefills = [], [], []
    for r in range(args.reps + 1):  # the first is a warm-up
        prompt = prompts(1, args.prompt, 100 + r)[0]
        llm.reset()
        t0 = time.perf_counter()
        times = []
        for _ in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            times.append(time.perf_counter())
            if len(times) >= args.tokens:
                break
        long = prompts(1, PREFILL, 500 + r)[0]
        llm.reset()
        p0 = time.perf_counter()
        llm.eval(long)
        if r:
            ttfts.append(times[0] - t0)
            rates.append((len(times) - 1) / (times[-1] - times[0]))
            prefills.append(PREFILL / (time.perf_counter() - p0))
    llm.close()
    return {
        "ttft": statistics.median(ttfts),
        "decode": statistics.median(rates),
        "prefill": statistics.median(prefills),
    }


def bench_gguf(args, model_dir: Path, quant: str) -> tuple[dict, dict | None]:
    """Ours and llama.cpp on one GGUF file that ``neuron quantize`` writes from the bench model."""
    from neuron.loading.gguf_export import export_gguf

    folder = Path(f"{args.workdir}-gguf-{quant}")  # beside the model: its own folder is safetensors
    path = folder / f"model-{quant.upper()}.gguf"
    if not path.exists():
        export_gguf(model_dir, path, quant)
    ours = bench_neuron(args, folder, torch.bfloat16, quant)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return ours, None
    return ours, bench_llama_cpp(args, path)


def steady_rate(all_times: list[list[float]]) -> float:
    """Tokens per second of all streams together while every one of them was decoding."""
    start = max(t[0] for t in all_times)
    end = min(t[-1] for t in all_times)
    if end <= start:
        return float("nan")
    count = sum(sum(1 for x in t if start < x <= end) for t in all_times)
    return count / (end - start)


def bench_neuron(args, model_dir: Path, dtype: torch.dtype, quant: str | None = None) -> dict:
    streams = [int(s) for s in args.streams.split(",")]

    async def run() -> dict:
        worker = DeviceWorker(torch.device("cpu"))
        lm = await load(model_dir, dtype, worker, max(streams), quant)
        out: dict = {}
        try:
            p = prompts(1, args.prompt, 0)[0]
            await ttft_and_decode(lm, p, 4)  # warm up
            runs = [
                await ttft_and_decode(lm, prompts(1, args.prompt, 100 + r)[0], args.tokens) for r in range(args.reps)
            ]
            out["ttft"] = statistics.median(r[0] for r in runs)
            out["decode"] = statistics.median(r[1] for r in runs)
            for c in streams:
                rates = []
                for r in range(args.reps):
                    batch = prompts(c, args.prompt, 1000 * c + r)
                    times = await asyncio.gather(*(stream(lm, q, args.tokens) for q in batch))
                    rates.append(steady_rate(times))
                out[f"streams{c}"] = statistics.median(rates)
            if quant is not None:  # the prefix cache does not depend on how the weights are held
                long = [prompts(1, PREFILL, 500 + r)[0] for r in range(args.reps)]
                out["prefill"] = statistics.median([PREFILL / (await ttft_and_decode(lm, p, 1))[0] for p in long])
                return out
            if lm.engine.kept is not None:  # a hybrid: the conversation goes on, 50 tokens more
                base, more = prompts(1, 2000, 7)[0], prompts(1, 50, 8)[0]
                cold = statistics.median(
                    [(await ttft_and_decode(lm, prompts(1, 2050, 9 + r)[0], 1))[0] for r in range(2)]
                )
                await ttft_and_decode(lm, base, 1)
                warm = (await ttft_and_decode(lm, base + more, 1))[0]
                out["prefix_cold"], out["prefix_warm"] = cold, warm
                return out
            # prefix cache: the previous request's first 2000 tokens, then 48 new ones
            base = prompts(1, 2048, 7)[0]
            cold_prompt = prompts(1, 2048, 8)[0]
            cold = statistics.median([(await ttft_and_decode(lm, prompts(1, 2048, 9 + r)[0], 1))[0] for r in range(2)])
            await ttft_and_decode(lm, base, 1)
            warm = (await ttft_and_decode(lm, base[:2000] + cold_prompt[:48], 1))[0]
            out["prefix_cold"], out["prefix_warm"] = cold, warm
        finally:
            await worker.run(release_model, lm)
            worker.close()
        return out

    return asyncio.run(run())


def bench_transformers(args, model_dir: Path, dtype: torch.dtype) -> dict:
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    cfg = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0)

    def gen(batch: list[list[int]], n: int) -> float:
        ids = torch.tensor(batch)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, generation_config=cfg
            )
        return time.perf_counter() - t0

    gen(prompts(1, args.prompt, 0), 4)
    out: dict = {}
    ttfts, decodes, batched = [], [], []
    for r in range(args.reps):
        p = prompts(1, args.prompt, 100 + r)
        ttft = gen(p, 1)
        total = gen(p, args.tokens)
        ttfts.append(ttft)
        decodes.append((args.tokens - 1) / (total - ttft))
        eight = prompts(8, args.prompt, 5000 + r)
        first8 = gen(eight, 1)
        total8 = gen(eight, args.tokens)
        batched.append(8 * (args.tokens - 1) / (total8 - first8))
    out["ttft"], out["decode"] = statistics.median(ttfts), statistics.median(decodes)
    out["batch8"] = statistics.median(batched)
    return out


# --- through HTTP: neuron serve, and cortex in front of it --------------------------------


def bench_http(args, model_dir: Path, dtype_name: str) -> dict:
    """Aggregate tok/s of 1 and 8 concurrent openai SDK chat streams, straight to a real ``neuron
    serve`` and through a real ``cortex serve`` in front of it (short prompts, ``--tokens`` each)."""
    from gateway import free_port, spawn  # bench/gateway.py: this folder is on sys.path when run as a script

    work = Path(tempfile.mkdtemp(prefix="neuron-bench-http-"))
    root = work / "models"
    (root / "bench" / "qwen3-0.6b").mkdir(parents=True)
    for f in model_dir.iterdir():  # hard links (a symlink would resolve outside the model root: refused)
        os.link(f, root / "bench" / "qwen3-0.6b" / f.name)
    model = "bench/qwen3-0.6b"
    nport, gport, mport = free_port(), free_port(), free_port()
    (work / "neuron.toml").write_text(
        f'host = "127.0.0.1"\nport = {nport}\nmodel_roots = ["{root}"]\nallow_download = false\n'
        f'cpu_dtype = "{dtype_name}"\nkv_cache_mb = 4096\n[admission]\nmax_num_seqs = 16\nmax_queue_depth = 64\n'
        f'[[default_models]]\nmodel_id = "{model}"\n'
    )
    (work / "models.toml").write_text(f'[[models]]\nid = "{model}"\nmin_devices = 0\n')
    (work / "cortex.toml").write_text(
        f'models_config = "models.toml"\n[gateway]\nlisten = "127.0.0.1:{gport}"\n'
        f'metrics_listen = "127.0.0.1:{mport}"\npoll_interval_secs = 1\n'
        f'[[neurons]]\nname = "local"\nendpoint = "http://127.0.0.1:{nport}"\n'
    )
    python = sys.executable
    procs = [spawn([python, "-P", "-m", "neuron.cli", "serve", "--config", str(work / "neuron.toml")], work / "n.log")]
    procs.append(
        spawn([python, "-P", "-m", "cortex.cli", "serve", "--config", str(work / "cortex.toml")], work / "c.log")
    )
    targets = {"neuron serve": f"http://127.0.0.1:{nport}/v1", "cortex -> neuron": f"http://127.0.0.1:{gport}/v1"}

    async def ask(client, n: int) -> int:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=n,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        tokens = 0
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens

    async def run() -> dict:
        import openai

        out: dict = {}
        for name, url in targets.items():
            async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=600) as client:
                deadline = time.monotonic() + 300
                while True:  # until the model answers through this target
                    try:
                        await ask(client, 1)
                        break
                    except openai.APIError:
                        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                            raise SystemExit(
                                f"{name} never answered:\n{(work / 'n.log').read_text()[-2000:]}"
                            ) from None
                        await asyncio.sleep(0.5)
                for c in (1, 8):
                    rates = []
                    for _ in range(args.reps):
                        t0 = time.perf_counter()
                        counts = await asyncio.gather(*(ask(client, args.tokens) for _ in range(c)))
                        rates.append(sum(counts) / (time.perf_counter() - t0))
                    out[(name, c)] = statistics.median(rates)
        return out

    try:
        return asyncio.run(run())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per stream (default: %(default)s)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt length in tokens (default: %(default)s)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="(default: %(default)s)")
    ap.add_argument("--streams", default="1,4,8,16", help="concurrent streams per row (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions; medians are reported (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--model", default="qwen3-0.6b", choices=sorted(MODELS), help="(default: %(default)s)")
    ap.add_argument("--workdir", default=None, help="where the model is written (default: a temp folder per model)")
    ap.add_argument("--no-transformers", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--quick", action="store_true", help="bfloat16 only, one repetition, 32 tokens")
    ap.add_argument("--no-http", action="store_true", help="skip the rows through neuron serve and cortex")
    ap.add_argument(
        "--gguf",
        default="",
        help="GGUF rows: the model written by neuron quantize at these types (e.g. q8_0,q4_k_m), ours and "
        "llama.cpp's (llama-cpp-python) on the same file (default: none)",
    )
    ap.add_argument(
        "--quants",
        default="",
        help="in-situ quantized rows of the engine in bfloat16, e.g. q8_0,q4_k_m (default: none)",
    )
    args = ap.parse_args()
    if args.quick:
        args.dtypes, args.reps, args.tokens = "bfloat16", 1, 32
    torch.set_num_threads(args.threads)
    args.workdir = args.workdir or os.path.join(tempfile.gettempdir(), f"helexa-bench-{args.model}")
    model_dir = write_model(Path(args.workdir), args.model)

    from neuron import ops

    print("# neuron engine on the CPU against transformers\n")
    print(f"- model: {MODELS[args.model]}, random weights ({model_dir})")
    cpu = f"- CPU {cpu_model()}, {args.threads} threads, ISA {ops.cpu_isa()}"
    print(f"{cpu}; torch {torch.__version__}, commit {git_commit()}")
    print(f"- prompt {args.prompt} tokens, {args.tokens} generated per stream, medians of {args.reps}\n")
    streams = [int(s) for s in args.streams.split(",")]
    header = ["engine", "dtype", "TTFT ms", "decode tok/s", *(f"{c} streams tok/s" for c in streams), "HF batch 8"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    results = {}
    for name in filter(None, args.dtypes.split(",")):
        dtype = getattr(torch, name)
        ours = bench_neuron(args, model_dir, dtype)
        hf = bench_transformers(args, model_dir, dtype) if not args.no_transformers else None
        results[name] = (ours, hf)
        cells = [f"{ours.get(f'streams{c}', float('nan')):.1f}" for c in streams]
        print(f"| neuron | {name} | {ours['ttft'] * 1e3:.0f} | {ours['decode']:.1f} | " + " | ".join(cells) + " | |")
        if hf is not None:
            print(
                f"| transformers | {name} | {hf['ttft'] * 1e3:.0f} | {hf['decode']:.1f} | "
                + " | " * len(streams)
                + f"{hf['batch8']:.1f} |",
                flush=True,
            )
    for quant in filter(None, args.quants.split(",")):
        ours = bench_neuron(args, model_dir, torch.bfloat16, quant)
        cells = [f"{ours.get(f'streams{c}', float('nan')):.1f}" for c in streams]
        head = f"| neuron {quant} (in situ) | bfloat16 | {ours['ttft'] * 1e3:.0f} | {ours['decode']:.1f} | "
        print(head + " | ".join(cells) + " | |", flush=True)
    gguf_rows = {}
    if args.gguf:
        print(f"\n## GGUF files (neuron quantize), ours against llama.cpp on the same file, {args.threads} threads\n")
        cols = " | ".join(f"{c} streams tok/s" for c in streams)
        print(f"| file | engine | TTFT ms | decode tok/s | prefill {PREFILL} tok/s | {cols} |")
        print("|---|---|---|---|---|" + "---|" * len(streams))
        for quant in args.gguf.split(","):
            ours, theirs = bench_gguf(args, model_dir, quant)
            gguf_rows[quant] = (ours, theirs)
            cells = " | ".join(f"{ours.get(f'streams{c}', float('nan')):.1f}" for c in streams)
            print(
                f"| {quant} | neuron | {ours['ttft'] * 1e3:.0f} | {ours['decode']:.1f} | {ours['prefill']:.0f} "
                f"| {cells} |",
                flush=True,
            )
            if theirs is None:
                print(f"| {quant} | llama.cpp | (llama-cpp-python is not installed) | | | |")
            else:
                print(
                    f"| {quant} | llama.cpp | {theirs['ttft'] * 1e3:.0f} | {theirs['decode']:.1f} "
                    f"| {theirs['prefill']:.0f} |" + " |" * len(streams),
                    flush=True,
                )
    http = {}
    if not args.no_http:
        print("\n## through HTTP (openai SDK streams, a 13-token prompt, wall time including prefill)\n")
        print("| path | dtype | 1 stream tok/s | 8 streams tok/s | ratio |")
        print("|---|---|---|---|---|")
        for name in filter(None, args.dtypes.split(",")):
            rows = bench_http(args, model_dir, name)
            for path in ("neuron serve", "cortex -> neuron"):
                one, eight = rows[(path, 1)], rows[(path, 8)]
                http[(name, path)] = (one, eight)
                print(f"| {path} | {name} | {one:.1f} | {eight:.1f} | {eight / one:.2f}x |", flush=True)
    print("\n## bars\n")
    for quant, (ours, theirs) in gguf_rows.items():
        if theirs is not None:
            print(f"- {quant}: decode / llama.cpp: {ours['decode'] / theirs['decode']:.2f}x (bar: >= 1.0x)")
            print(
                f"- {quant}: prefill {PREFILL} / llama.cpp: {ours['prefill'] / theirs['prefill']:.2f}x (bar: >= 0.7x)"
            )
    for name, (ours, hf) in results.items():
        one = ours.get("streams1") or ours["decode"]
        if "streams8" in ours:
            print(f"- {name}: 8 streams / 1 stream: {ours['streams8'] / one:.2f}x (bar: >= 5x)")
        if hf is not None:
            if "streams8" in ours:
                print(
                    f"- {name}: 8 streams / transformers batch 8: {ours['streams8'] / hf['batch8']:.2f}x (bar: >= 1.5x)"
                )
            print(
                f"- {name}: 1-stream decode / transformers batch 1: {ours['decode'] / hf['decode']:.2f}x (bar: >= 1.5x)"
            )
        if (name, "cortex -> neuron") in http:
            one, eight = http[(name, "cortex -> neuron")]
            print(f"- {name}: 8 SDK streams through cortex / 1: {eight / one:.2f}x (bar: >= 4.5x)")
        what = (
            "2,050-token conversation: cold {cold} ms, resumed from the state kept after its first 2,000 "
            if args.model == "qwen3.5-hybrid"
            else "2,048-token prompt: cold {cold} ms, 2,000 cached "
        )
        cold, warm = ours["prefix_cold"], ours["prefix_warm"]
        print(
            f"- {name}: prefix cache TTFT, " + what.format(cold=f"{cold * 1e3:.0f}") + f"{warm * 1e3:.0f} ms: "
            f"{cold / warm:.1f}x (bar: >= 10x)"
        )


if __name__ == "__main__":
    main()
