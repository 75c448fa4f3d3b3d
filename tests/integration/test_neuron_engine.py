"""The serving core through a real ``neuron serve``: concurrent streams (openai SDK) give what each
gives alone; a repeated prompt's start comes from the prefix cache (``cached_tokens``); and 32
requests without ``max_tokens`` on a model with a 32k context never hold more KV memory than the
pool (the process's RSS, and ``/health``'s figures), giving their blocks back when they go."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from integration.services import NeuronProcess, free_port, write_config

from neuron.demo import demo_template, demo_text, qwen3_config, random_weights, train_tokenizer, write_model_dir

KV_MB = 64
LONG = "test/long32k"


@pytest.fixture(scope="module")
def engine_root(model_root, tmp_path_factory) -> Path:
    """The shared models plus one with a 32k context and 8 KiB of keys and values a token (f32):
    32 full contexts would need 8 GiB, the pool holds 64 MiB."""
    cfg = qwen3_config(
        512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=32768,
    )
    write_model_dir(
        model_root / LONG,
        train_tokenizer(demo_text(), vocab_size=512),
        cfg,
        random_weights(cfg, seed=2),
        template=demo_template(),
    )
    return model_root


@pytest.fixture(scope="module")
def neuron(engine_root, tmp_path_factory) -> Iterator[NeuronProcess]:
    work = tmp_path_factory.mktemp("engine-neuron")
    port = free_port()
    cfg = write_config(
        work / "neuron.toml",
        port,
        engine_root,
        ["helexa/demo", LONG],
        top={"kv_cache_mb": KV_MB},
        max_num_seqs=32,
        max_queue_depth=64,
    )
    server = NeuronProcess(cfg, port, work / "neuron.log")
    try:
        server.wait_ready(["helexa/demo", LONG])
        yield server
    finally:
        server.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_concurrent_streams_give_what_each_gives_alone(neuron):
    prompts = [
        f"Tell me about the {w} in the morning" * (1 + i % 3)
        for i, w in enumerate(["sky", "sea", "hill", "road", "tree", "rain", "wind", "town"])
    ]

    def ask(client: openai.OpenAI, p: str) -> str:
        stream = client.completions.create(
            model="helexa/demo", prompt=p, max_tokens=24, temperature=0, stream=True, extra_body={"ignore_eos": True}
        )
        return "".join(c.choices[0].text for c in stream if c.choices)

    with openai.OpenAI(base_url=neuron.url + "/v1", api_key="x", max_retries=0, timeout=120) as client:
        alone = [ask(client, p) for p in prompts]
        together: list[str | None] = [None] * len(prompts)
        threads = [
            threading.Thread(target=lambda i=i, p=p: together.__setitem__(i, ask(client, p)))
            for i, p in enumerate(prompts)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert together == alone and all(alone)


def test_a_repeated_prompt_start_comes_from_the_prefix_cache(neuron):
    system = "You are a careful assistant. " * 40  # hundreds of tokens: many full blocks
    with openai.OpenAI(base_url=neuron.url + "/v1", api_key="x", max_retries=0, timeout=120) as client:
        first = client.chat.completions.create(
            model="helexa/demo",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": "a"}],
            max_tokens=2,
        )
        second = client.chat.completions.create(
            model="helexa/demo",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": "b"}],
            max_tokens=2,
        )
    assert first.usage.prompt_tokens_details.cached_tokens < 16 * (first.usage.prompt_tokens // 16 - 2)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached % 16 == 0 and cached >= second.usage.prompt_tokens - 32  # all but the last block or two


def test_requests_without_max_tokens_never_hold_more_kv_memory_than_the_pool(neuron):
    health = httpx.get(neuron.url + "/health", timeout=5).json()["models"][LONG]
    capacity = health["kv_capacity_tokens"]
    assert capacity == KV_MB * 2**20 // (8 * 1024) // 16 * 16  # 64 MiB of 8 KiB tokens
    baseline = rss_mb(neuron.proc.pid)
    peaks = {"rss": baseline, "used": 0}

    async def main() -> None:
        async with httpx.AsyncClient(base_url=neuron.url, timeout=60) as client:

            async def one(i: int) -> None:
                messages = [{"role": "user", "content": f"request {i} " * 8}]
                body = {"model": LONG, "messages": messages, "stream": True, "ignore_eos": True}  # no max_tokens
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    assert r.status_code == 200
                    async for _ in r.aiter_lines():
                        pass

            tasks = [asyncio.create_task(one(i)) for i in range(32)]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                h = (await client.get("/health")).json()["models"][LONG]
                assert h["kv_used_tokens"] <= h["kv_capacity_tokens"] == capacity
                peaks["used"] = max(peaks["used"], h["kv_used_tokens"])
                peaks["rss"] = max(peaks["rss"], rss_mb(neuron.proc.pid))
                if peaks["used"] >= capacity - 32 * 16 and time.monotonic() > deadline - 14:
                    break  # the pool is full (every sequence short of a block), and has been for a while
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    assert peaks["used"] >= capacity // 2  # they did fill it
    # the pool (64 MiB) and the working memory of 32 sequences, never the 8 GiB they would ask for
    assert peaks["rss"] - baseline < KV_MB + 200, peaks
    for _ in range(100):  # gone: their blocks back in the pool
        if httpx.get(neuron.url + "/health", timeout=5).json()["models"][LONG]["kv_used_tokens"] == 0:
            break
        time.sleep(0.1)
    assert httpx.get(neuron.url + "/health", timeout=5).json()["models"][LONG]["kv_used_tokens"] == 0
    metrics = httpx.get(neuron.url + "/metrics", timeout=5).text
    assert f'neuron_preemptions_total{{model="{LONG}"}}' in metrics
