#!/usr/bin/env python3
"""Gateway overhead on loopback: the same workload straight to a fast neuron stub, through
cortex, and through a LiteLLM proxy (when ``litellm[proxy]`` is installed in the bench
environment; never a dependency), in one run.

The stub (aiohttp) answers the neuron contract and serves deterministic completions: a small
JSON body, or an SSE stream of ``--tokens`` chunks ``--token-ms`` apart. Reported per target:
non-streaming latency at concurrency 1 (p50 / p99, and what the gateway adds), requests/s at
concurrency 64, and time to first token with 256 concurrent streams, with error counts. A second
table times translated streams (Anthropic ``/v1/messages``, OpenAI ``/v1/responses``) against the
stub's own chat stream at 64 concurrent streams: what translation adds to the first token.

    python bench/gateway.py [--requests 2000] [--seconds 5] [--streams 256] [--rounds 5] [--no-litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

MODEL = "bench-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 16}


# --- the stub neuron ----------------------------------------------------------------------


def run_stub(port: int, tokens: int, token_ms: float) -> None:
    from aiohttp import web

    url = f"http://127.0.0.1:{port}"
    usage = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
    answer = json.dumps(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok " * tokens}, "finish_reason": "stop"}
            ],
            "usage": usage,
        }
    ).encode()

    def chunk(delta: dict, finish: str | None = None, with_usage: bool = False) -> bytes:
        obj = {
            "id": "chatcmpl-stub",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if with_usage:
            obj["usage"] = usage
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    first, token, last = chunk({"role": "assistant", "content": ""}), chunk({"content": "ok "}), chunk({}, "stop", True)

    def with_usage(data: bytes, done: int) -> bytes:  # vLLM's continuous_usage_stats, as a neuron does
        obj = json.loads(data[6:])
        obj["usage"] = {"prompt_tokens": 8, "completion_tokens": done, "total_tokens": 8 + done}
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    continuous = [with_usage(first, 0)] + [with_usage(token, i + 1) for i in range(tokens)]

    async def discovery(request):
        return web.json_response(
            {
                "hostname": "stub",
                "os": "Linux",
                "kernel": "x",
                "cuda_version": None,
                "driver_version": None,
                "devices": [],
                "cpu": {"cores": 2, "memory_total_mb": 8000},
                "harnesses": ["torch"],
                "version": "stub",
            }
        )

    async def health(request):
        return web.json_response({"uptime_secs": 1, "devices": [], "memory_free_mb": 8000, "models": {}})

    async def models(request):
        return web.json_response(
            [
                {
                    "id": MODEL,
                    "harness": "torch",
                    "status": "loaded",
                    "devices": [],
                    "vram_used_mb": 1,
                    "quant": None,
                    "context_length": 4096,
                    "load_progress": 1.0,
                    "error": None,
                }
            ]
        )

    async def endpoint(request):
        return web.json_response({"url": url})

    async def chat(request):
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=answer, content_type="application/json")
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        usage_always = (body.get("stream_options") or {}).get("continuous_usage_stats")
        await resp.write(continuous[0] if usage_always else first)
        for i in range(tokens):
            if token_ms:
                await asyncio.sleep(token_ms / 1000)
            await resp.write(continuous[i + 1] if usage_always else token)
        await resp.write(last + b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.add_routes(
        [
            web.get("/discovery", discovery),
            web.get("/health", health),
            web.get("/models", models),
            web.get("/models/{rest:.*}", endpoint),
            web.post("/v1/chat/completions", chat),
        ]
    )
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


async def wait_ready(url: str, proc: subprocess.Popen, log: Path, secs: float = 120.0, headers=None) -> None:
    deadline = time.monotonic() + secs
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args[:3]} exited:\n{log.read_text()[-2000:]}")
            try:
                async with s.post(url + "/v1/chat/completions", json=BODY, headers=headers or {}) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    raise SystemExit(f"{url} not ready after {secs} s:\n{log.read_text()[-2000:]}")


# --- load ---------------------------------------------------------------------------------


async def latencies(url: str, n: int, headers: dict) -> list[float]:
    out = []
    async with aiohttp.ClientSession(headers=headers) as s:
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.post(url + "/v1/chat/completions", json=BODY) as r:
                await r.read()
                if r.status != 200:
                    raise SystemExit(f"{url}: HTTP {r.status}")
            out.append(time.perf_counter() - t0)
    return out


async def throughput(url: str, concurrency: int, seconds: float, headers: dict) -> tuple[float, int]:
    done = errors = 0
    stop = time.perf_counter() + seconds
    payload = json.dumps(BODY).encode()
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, headers={**headers, "content-type": "application/json"}) as s:

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop:
                try:
                    async with s.post(url + "/v1/chat/completions", data=payload) as r:
                        await r.read()
                        done += r.status == 200
                        errors += r.status != 200
                except aiohttp.ClientError:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0), errors


CHAT_STREAM = ("/v1/chat/completions", {**BODY, "stream": True}, b'"content":"ok')
TRANSLATED = {
    "Anthropic /v1/messages": ("/v1/messages", {**BODY, "stream": True}, b'"text_delta"'),
    "Responses /v1/responses": (
        "/v1/responses",
        {"model": MODEL, "input": "Say something.", "max_output_tokens": 16, "stream": True},
        b'"response.output_text.delta"',
    ),
}


async def stream_ttfts(url: str, streams: int, headers: dict, kind=CHAT_STREAM) -> tuple[list[float], int]:
    """Time to the first token of ``streams`` concurrent streams; each is read to its end."""
    path, body, marker = kind
    ttfts: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=streams)
    async with aiohttp.ClientSession(connector=conn, headers=headers, timeout=aiohttp.ClientTimeout(total=120)) as s:

        async def one() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            first = None
            try:
                async with s.post(url + path, json=body) as r:
                    if r.status != 200:
                        errors += 1
                        return
                    async for line in r.content:
                        if first is None and marker in line:
                            first = time.perf_counter() - t0
                        if line.startswith((b"event: error", b'data: {"error"')):
                            errors += 1
                if first is None:
                    errors += 1
                else:
                    ttfts.append(first)
            except (TimeoutError, aiohttp.ClientError):
                errors += 1

        await asyncio.gather(*(one() for _ in range(streams)))
    return ttfts, errors


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(name: str, url: str, args, headers: dict | None = None) -> dict:
    headers = headers or {}
    await latencies(url, 50, headers)  # warm up
    lat = await latencies(url, args.requests, headers)
    rps, errors = await throughput(url, 64, args.seconds, headers)
    ttfts, stream_errors = await stream_ttfts(url, args.streams, headers)
    print(f"  measured {name}", file=sys.stderr, flush=True)
    return {
        "name": name,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
        "rps": rps,
        "errors": errors,
        "ttft50": pct(ttfts, 0.5) if ttfts else float("nan"),
        "ttft99": pct(ttfts, 0.99) if ttfts else float("nan"),
        "stream_errors": stream_errors,
    }


async def measure_translated(stub_url: str, gw_url: str, litellm: tuple[str, dict] | None, args) -> list[dict]:
    """TTFT at ``args.translated_streams`` concurrent streams: the stub's chat stream, cortex
    passing it through, cortex translating it (and LiteLLM's ``/v1/messages`` when it runs);
    rounds interleave so drift hits all alike."""
    kinds = [("stub chat (direct)", stub_url, CHAT_STREAM, {}), ("cortex chat (pass-through)", gw_url, CHAT_STREAM, {})]
    kinds += [(f"cortex {name}", gw_url, kind, {}) for name, kind in TRANSLATED.items()]
    if litellm is not None:
        name = "Anthropic /v1/messages"
        kinds.append((f"LiteLLM proxy {name}", litellm[0], TRANSLATED[name], litellm[1]))
    for _, url, kind, headers in kinds:  # warm up every path
        await stream_ttfts(url, 8, headers, kind)
    ttfts: dict[str, list[float]] = {name: [] for name, _, _, _ in kinds}
    errors = dict.fromkeys(ttfts, 0)
    for _ in range(args.rounds):
        for name, url, kind, headers in kinds:
            got, bad = await stream_ttfts(url, args.translated_streams, headers, kind)
            ttfts[name] += got
            errors[name] += bad
    print("  measured translated streams", file=sys.stderr, flush=True)
    return [
        {"name": n, "ttft50": pct(t, 0.5), "ttft99": pct(t, 0.99), "errors": errors[n], "n": len(t)}
        for n, t in ttfts.items()
    ]


async def main_async(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        stub_port, gw_port, gw_metrics = free_port(), free_port(), free_port()
        stub_url = f"http://127.0.0.1:{stub_port}"
        procs.append(
            spawn(
                [
                    sys.executable,
                    __file__,
                    "--stub",
                    str(stub_port),
                    "--tokens",
                    str(args.tokens),
                    "--token-ms",
                    str(args.token_ms),
                ],
                work / "stub.log",
            )
        )
        await wait_ready(stub_url, procs[-1], work / "stub.log")
        cfg = work / "cortex.toml"
        cfg.write_text(
            f'[gateway]\nlisten = "127.0.0.1:{gw_port}"\nmetrics_listen = "127.0.0.1:{gw_metrics}"\n'
            f'poll_interval_secs = 30\n[[neurons]]\nname = "stub"\nendpoint = "{stub_url}"\n'
        )
        procs.append(spawn([sys.executable, "-m", "cortex.cli", "serve", "--config", str(cfg)], work / "cortex.log"))
        gw_url = f"http://127.0.0.1:{gw_port}"
        await wait_ready(gw_url, procs[-1], work / "cortex.log")
        targets = [("stub (direct)", stub_url, None), ("cortex", gw_url, None)]
        if not args.no_litellm:
            try:
                import litellm  # noqa: F401
            except ImportError:
                print("  litellm not installed: skipping it (pip install 'litellm[proxy]')", file=sys.stderr)
            else:
                ll_port = free_port()
                (work / "litellm.yaml").write_text(
                    f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: hosted_vllm/{MODEL}\n"
                    f"      api_base: {stub_url}/v1\n      api_key: none\n"
                )
                env = {"LITELLM_MASTER_KEY": "sk-bench", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
                litellm_bin = str(Path(sys.executable).with_name("litellm"))
                procs.append(
                    spawn(
                        [
                            litellm_bin,
                            "--config",
                            str(work / "litellm.yaml"),
                            "--port",
                            str(ll_port),
                            "--host",
                            "127.0.0.1",
                        ],
                        work / "litellm.log",
                        env,
                    )
                )
                ll_url = f"http://127.0.0.1:{ll_port}"
                auth = {"authorization": "Bearer sk-bench"}
                await wait_ready(ll_url, procs[-1], work / "litellm.log", 180, auth)
                targets.append(("LiteLLM proxy", ll_url, auth))
        rows = [await measure(name, url, args, headers) for name, url, headers in targets]
        ll_target = next(((url, h) for name, url, h in targets if name == "LiteLLM proxy"), None)
        translated = await measure_translated(stub_url, gw_url, ll_target, args)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)

    base = rows[0]
    print("# gateway overhead on loopback\n")
    print(f"- {os.cpu_count()} CPUs; stub: {args.tokens} tokens, {args.token_ms} ms apart when streaming")
    print(
        f"- {args.requests} sequential requests; {args.seconds} s at concurrency 64; "
        f"{args.streams} concurrent streams\n"
    )
    print(
        "| target | c=1 p50 ms | c=1 p99 ms | added p50 ms | added p99 ms | c=64 req/s | errors | "
        f"TTFT p50 ms ({args.streams} streams) | TTFT p99 ms | added TTFT p50 ms | stream errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['p50'] * 1e3:.2f} | {r['p99'] * 1e3:.2f} | {(r['p50'] - base['p50']) * 1e3:.2f} | "
            f"{(r['p99'] - base['p99']) * 1e3:.2f} | {r['rps']:.0f} | {r['errors']} | {r['ttft50'] * 1e3:.1f} | "
            f"{r['ttft99'] * 1e3:.1f} | {(r['ttft50'] - base['ttft50']) * 1e3:.1f} | {r['stream_errors']} |"
        )
    by = {r["name"]: r for r in rows}
    if "cortex" in by:
        c = by["cortex"]
        print(f"\n- cortex added p50 at c=1: {(c['p50'] - base['p50']) * 1e3:.2f} ms (bar: <= 1 ms)")
        print(f"- cortex at c=64: {c['rps']:.0f} req/s (bar: >= 2000)", end="")
        if "LiteLLM proxy" in by:
            print(f"; {c['rps'] / by['LiteLLM proxy']['rps']:.0f}x LiteLLM (bar: >= 20x)", end="")
        print(f"\n- errors with {args.streams} streams through cortex: {c['stream_errors']} (bar: 0)")
    direct = translated[0]
    print(f"\n## translated streams: {args.translated_streams} concurrent, {args.rounds} rounds\n")
    print("| path | streams | TTFT p50 ms | TTFT p99 ms | added TTFT p50 ms | errors |")
    print("|---|---|---|---|---|---|")
    for r in translated:
        print(
            f"| {r['name']} | {r['n']} | {r['ttft50'] * 1e3:.2f} | {r['ttft99'] * 1e3:.2f} | "
            f"{(r['ttft50'] - direct['ttft50']) * 1e3:.2f} | {r['errors']} |"
        )
    passing = translated[1]
    worst = max(
        (r for r in translated if r["name"].startswith("cortex ") and "/v1/" in r["name"]), key=lambda r: r["ttft50"]
    )
    print(
        f"\n- what translation adds to cortex's pass-through TTFT p50 (worst dialect, {worst['name']}): "
        f"{(worst['ttft50'] - passing['ttft50']) * 1e3:.2f} ms (bar: <= 3 ms); "
        f"the hop itself adds {(passing['ttft50'] - direct['ttft50']) * 1e3:.2f} ms at this burst"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--token-ms", type=float, default=10.0)
    ap.add_argument("--translated-streams", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the translated-stream table")
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--stub", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stub:
        run_stub(args.stub, args.tokens, args.token_ms)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
