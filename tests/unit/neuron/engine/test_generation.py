"""The engine without HTTP, on tiny random Qwen3 checkpoints (f32): concurrent greedy requests
give token for token what each gives alone and what HF transformers' ``generate`` gives, with a
roomy KV pool and with one so small that sequences are preempted; a prefix-cache hit gives the
logits of a cold prefill; a cancelled request's blocks return to the pool; a seeded sampled
request gives the same text alone and inside a busy batch; generation defaults come from
generation_config.json, and a model that does not fit is refused before it is built."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
import transformers
from transformers import Qwen3Config as HFConfig
from transformers import Qwen3ForCausalLM as HFQwen3

from cortex.protocol.errors import ApiError
from neuron.demo import demo_text, train_tokenizer, write_demo_model
from neuron.engine.admission import Admission
from neuron.engine.engine import EngineRequest, Output
from neuron.engine.generation import GenerationRequest, Outcome, generate
from neuron.engine.kv_cache import BLOCK_TOKENS, BlockAllocator
from neuron.engine.loaded import KVSettings, LoadedModel, load_model, release_model
from neuron.engine.sampling import SamplingParams
from neuron.engine.stepper import SingleSequence, pool_for
from neuron.engine.worker import DeviceWorker

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, HFQwen3]:
    """A tiny random Qwen3 in HF layout (with a tokenizer, as a model folder has), and HF's copy."""
    torch.manual_seed(99)
    cfg = HFConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    hf = HFQwen3(cfg).eval()
    out = tmp_path_factory.mktemp("tiny")
    hf.save_pretrained(out)
    train_tokenizer(demo_text(), vocab_size=384).save(str(out / "tokenizer.json"))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": []}))
    return out, hf


def settings(**changes) -> KVSettings:
    return KVSettings(**{"kv_cache_mb": None, "share": 1.0, "max_num_seqs": 8, "max_batch_tokens": 64, **changes})


async def loaded(path: Path, kv: KVSettings, worker: DeviceWorker, free: int = 1 << 34) -> LoadedModel:
    """The model loaded as the neuron loads it; with ``share = 1`` its KV pool takes what of
    ``free`` the weights leave (at most ``max_num_seqs`` full contexts)."""
    return await worker.run(
        load_model,
        "t",
        path,
        worker,
        torch.float32,
        Admission("t", kv.max_num_seqs, 8, 5),
        kv,
        free_bytes=lambda: free,
        progress=lambda f: None,
        loop=asyncio.get_running_loop(),
    )


async def tokens_of(lm: LoadedModel, prompt: list[int], n: int, params: SamplingParams = GREEDY) -> list[int]:
    """The token ids the engine generates for one request (its own outputs, before detokenizing)."""
    outputs: asyncio.Queue[Output] = asyncio.Queue()
    lm.engine.submit(EngineRequest(prompt, n, params, frozenset(), outputs.put_nowait))
    got: list[int] = []
    while True:
        out = await outputs.get()
        got += out.tokens
        if out.finish is not None:
            assert out.finish == "length", out
            return got


def hf_greedy(hf: HFQwen3, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            generation_config=transformers.GenerationConfig(eos_token_id=None, pad_token_id=0),
        )
    return out[0, len(prompt) :].tolist()


def workload(seed: int = 5) -> list[tuple[float, list[int], int]]:
    """Eight requests (arrival delay, prompt, new tokens): lengths from 3 to 90, three of them
    sharing a 48-token prefix, arriving while the first ones decode."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randint(0, 384, (48,), generator=gen).tolist()
    out = []
    for i, length in enumerate((3, 70, 17, 90, 33, 5, 61, 40)):
        prompt = torch.randint(0, 384, (length,), generator=gen).tolist()
        if i in (1, 3, 6):
            prompt = shared + prompt[:20]
        out.append((0.0 if i < 3 else 0.01 * i, prompt, 12 + i))
    return out


def run_concurrently(path: Path, kv: KVSettings, jobs, free: int = 1 << 34):
    """The jobs all at once, then each alone, on one loaded model; (together, alone, model)."""

    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(path, kv, worker, free)

        async def one(delay, prompt, n):
            await asyncio.sleep(delay)
            return await tokens_of(lm, prompt, n)

        together = await asyncio.gather(*(one(*job) for job in jobs))
        preemptions = lm.engine.stats.preemptions
        alone = [await tokens_of(lm, prompt, n) for _, prompt, n in jobs]
        await worker.run(release_model, lm)
        worker.close()
        return together, alone, lm, preemptions

    return asyncio.run(main())


def test_concurrent_greedy_requests_give_what_each_gives_alone_and_what_transformers_gives(tiny):
    path, hf = tiny
    jobs = workload()
    together, alone, lm, preemptions = run_concurrently(path, settings(), jobs)
    assert together == alone
    for (_, prompt, n), got in zip(jobs, together, strict=True):
        assert got == hf_greedy(hf, prompt, n)
    assert preemptions == 0
    assert lm.engine.allocator.stats.hit_tokens >= 2 * 48  # the shared prefix was computed once


def test_a_pool_too_small_for_everyone_preempts_and_still_gives_the_same_tokens(tiny):
    path, hf = tiny
    jobs = workload()

    async def sizes() -> tuple[int, int]:  # the weights' bytes and a KV block's
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(path, settings(), worker)
        block = lm.engine.pool.layout.bytes_per_block()
        weights = lm.memory_bytes - lm.engine.pool.nbytes()
        await worker.run(release_model, lm)
        worker.close()
        return weights, block

    weights, block = asyncio.run(sizes())
    # 7 blocks: the longest request needs 6 (86 tokens), all of them at once about 30
    jobs = [(0.0, prompt, n) for _, prompt, n in jobs]
    together, alone, lm, preemptions = run_concurrently(path, settings(), jobs, free=weights + 7 * block)
    assert lm.engine.allocator.num_blocks == 7
    assert preemptions > 0
    assert together == alone
    for (_, prompt, n), got in zip(jobs, together, strict=True):
        assert got == hf_greedy(hf, prompt, n)


def test_a_prefix_cache_hit_gives_the_logits_of_a_cold_prefill(tiny):
    path, _ = tiny
    from neuron.loading.safetensors import Checkpoint
    from neuron.loading.weights import load_weights
    from neuron.models.qwen3 import Qwen3Config, Qwen3ForCausalLM

    model = Qwen3ForCausalLM(
        Qwen3Config.from_dict(json.loads((path / "config.json").read_text())),
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    load_weights(model, Checkpoint(path), redundant=model.tied_names, arch="qwen3")
    prompt = torch.randint(0, 384, (75,), generator=torch.Generator().manual_seed(3)).tolist()
    cold = SingleSequence(model, pool_for(model, 128)).run(prompt, all_logits=True)
    pool = pool_for(model, 16 * 12)
    alloc = BlockAllocator(pool.num_blocks)
    first = alloc.allocate(5)
    seq = SingleSequence(model, pool, blocks=0)
    seq.blocks = first
    seq.run(prompt[:64])  # four full blocks computed ...
    key = None
    for i in range(4):  # ... and registered, then the sequence ends
        key = alloc.register(first[i], key, tuple(prompt[i * BLOCK_TOKENS : (i + 1) * BLOCK_TOKENS]))
    alloc.release(first)
    found, _ = alloc.match(prompt, len(prompt) - 1)
    assert found == first[:4] and alloc.stats.hit_tokens == 0  # (the engine counts hits, not match)
    warm = SingleSequence(model, pool, blocks=0)
    warm.blocks = found + alloc.allocate(1)
    warm.length = 64
    logits = warm.run(prompt[64:], all_logits=True)
    assert (logits - cold[64:]).abs().max().item() < 1e-5


def test_a_cancelled_request_gives_its_blocks_back(tiny):
    path, _ = tiny

    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(path, settings(), worker)
        baseline = lm.engine.allocator.num_free
        prompt = list(range(1, 200))
        req = GenerationRequest(prompt_ids=prompt, max_new_tokens=400, params=GREEDY, ignore_eos=True)
        gen = generate(lm, req, Outcome(prompt_tokens=len(prompt)))
        await gen.__anext__()
        while lm.engine.allocator.num_free == baseline:
            await asyncio.sleep(0.01)
        held = baseline - lm.engine.allocator.num_free
        await gen.aclose()  # the client went away
        for _ in range(200):
            if not lm.engine.has_work():
                break
            await asyncio.sleep(0.01)
        # its blocks are free again (the full ones stay findable in the prefix cache)
        free_after = lm.engine.allocator.num_free
        await worker.run(release_model, lm)
        worker.close()
        return baseline, held, free_after

    baseline, held, free_after = asyncio.run(main())
    assert held >= 13 and free_after == baseline


def test_a_seeded_sampled_request_gives_the_same_tokens_alone_and_in_a_busy_batch(tiny):
    path, _ = tiny
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    prompt = list(range(30, 61))

    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(path, settings(), worker)
        alone = await tokens_of(lm, prompt, 24, params)
        others = [tokens_of(lm, list(range(i, i + 40)), 30, SamplingParams(temperature=1.0)) for i in range(5)]
        busy = await asyncio.gather(tokens_of(lm, prompt, 24, params), *others)
        await worker.run(release_model, lm)
        worker.close()
        return alone, busy[0]

    alone, busy = asyncio.run(main())
    assert alone == busy and len(alone) == 24


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("demo") / "helexa" / "demo")


def test_generation_defaults_and_eos_come_from_generation_config(demo):
    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(demo, settings(), worker)
        await worker.run(release_model, lm)
        worker.close()
        return lm

    lm = asyncio.run(main())
    assert lm.defaults == SamplingParams(temperature=0.7, top_p=0.8, top_k=20)
    cfg = json.loads((demo / "generation_config.json").read_text())
    assert lm.eos_ids == set(cfg["eos_token_id"])
    assert lm.context_length == 4096


def test_a_model_that_does_not_fit_is_refused_with_507(tmp_path):
    path = write_demo_model(tmp_path / "m")

    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        try:
            await worker.run(
                load_model,
                "m",
                path,
                worker,
                torch.float32,
                Admission("m", 1, 1, 1),
                settings(),
                free_bytes=lambda: 1 << 10,
                progress=lambda f: None,
                loop=asyncio.get_running_loop(),
            )
        finally:
            worker.close()

    with pytest.raises(ApiError) as err:
        asyncio.run(main())
    assert err.value.status == 507 and "needs about" in err.value.message


def test_a_kv_cache_larger_than_what_the_weights_leave_is_refused_with_507(tiny):
    path, _ = tiny

    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        try:
            await loaded(path, settings(kv_cache_mb=64), worker, free=2 << 20)  # 2 MiB free: the pool wants 4
        finally:
            worker.close()

    with pytest.raises(ApiError) as err:
        asyncio.run(main())
    assert err.value.status == 507 and "kv_cache_mb = 64" in err.value.message
