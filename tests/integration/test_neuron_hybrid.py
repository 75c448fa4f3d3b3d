"""A hybrid model (a tiny random Qwen3.5: gated DeltaNet + gated attention) through a real
``neuron serve`` and the official SDKs: concurrent chat streams give what each gives alone; the
next turn of a conversation resumes from the state kept at the last block boundary its first
turn reached (``cached_tokens``) and answers what the same conversation answers cold, in a fresh
process; ``/models`` reports it loaded with its pool."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
import transformers
from integration.services import NeuronProcess, free_port, write_config

from neuron.demo import demo_template, demo_text, train_tokenizer, write_model_dir

HYBRID = "test/hybrid"


@pytest.fixture(scope="module")
def hybrid_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hybrid-models")
    tokenizer = train_tokenizer(demo_text(), vocab_size=512)
    cfg = transformers.Qwen3_5TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(5)
    hf = transformers.Qwen3_5ForCausalLM(cfg)
    out = root / HYBRID
    hf.save_pretrained(out)
    write_model_dir(out, tokenizer, json.loads((out / "config.json").read_text()), None, template=demo_template())
    return root


def serve(root: Path, work: Path) -> NeuronProcess:
    port = free_port()
    cfg = write_config(work / "neuron.toml", port, root, [HYBRID], max_num_seqs=8, max_queue_depth=32)
    server = NeuronProcess(cfg, port, work / "neuron.log")
    server.wait_ready([HYBRID])
    return server


@pytest.fixture(scope="module")
def neuron(hybrid_root, tmp_path_factory) -> Iterator[NeuronProcess]:
    server = serve(hybrid_root, tmp_path_factory.mktemp("hybrid-neuron"))
    try:
        yield server
    finally:
        server.stop()


def client(server: NeuronProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)


def chat(c: openai.OpenAI, messages: list[dict], n: int = 12):
    return c.chat.completions.create(
        model=HYBRID, messages=messages, max_tokens=n, temperature=0, extra_body={"ignore_eos": True}
    )


def test_the_hybrid_is_listed_as_loaded_with_its_pool(neuron):
    entry = next(m for m in httpx.get(neuron.url + "/models", timeout=5).json() if m["id"] == HYBRID)
    assert entry["status"] == "loaded" and entry["kv_capacity_tokens"] > 0
    assert entry["vram_used_mb"] is not None and entry["context_length"] == min(4096, entry["kv_capacity_tokens"])


def test_concurrent_chat_streams_give_what_each_gives_alone(neuron):
    prompts = [f"Say something about the {w}." * (1 + i % 3) for i, w in enumerate(["sky", "sea", "hill", "rain"])]

    def ask(c: openai.OpenAI, p: str) -> str:
        stream = c.chat.completions.create(
            model=HYBRID,
            messages=[{"role": "user", "content": p}],
            max_tokens=20,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        return "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)

    with client(neuron) as c:
        alone = [ask(c, p) for p in prompts]
        together: list[str | None] = [None] * len(prompts)
        threads = [
            threading.Thread(target=lambda i=i, p=p: together.__setitem__(i, ask(c, p))) for i, p in enumerate(prompts)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert together == alone and all(alone)


def test_the_next_turn_resumes_from_the_kept_state_and_answers_as_cold(neuron, hybrid_root, tmp_path):
    system = "You are a careful assistant who answers briefly. " * 8
    first_turn = [{"role": "system", "content": system}, {"role": "user", "content": "Tell me about the sea."}]
    with client(neuron) as c:
        first = chat(c, first_turn)
        turn2 = [
            *first_turn,
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "And the hills?"},
        ]
        second = chat(c, turn2)
    # kept: at the first prompt's last block boundary, and at the last one its answer reached (the
    # answer's last token is only sampled); the template renders the answer back as the same tokens
    computed = first.usage.prompt_tokens + first.usage.completion_tokens - 1
    kept_at = max(first.usage.prompt_tokens // 16 * 16, computed // 16 * 16)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == kept_at > 0
    cold_server = serve(hybrid_root, tmp_path)  # a fresh process: nothing kept
    try:
        with client(cold_server) as c:
            cold = chat(c, turn2)
    finally:
        cold_server.stop()
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert cold.choices[0].message.content == second.choices[0].message.content
