"""The engine with a hybrid model (a tiny random Qwen3.5: gated DeltaNet + full attention, f32):
concurrent greedy requests give what each gives alone and what HF transformers gives, also in a
pool so small that sequences are preempted; a cancelled request gives back its blocks and its
state slot; a conversation extended by a turn resumes from the state kept at its prompt's last
block boundary, or at its answer's, with the log probabilities of a cold prefill; the state slots come out of the
same memory budget as the KV blocks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
import transformers

from cortex.protocol.errors import ApiError
from neuron.demo import demo_text, train_tokenizer
from neuron.engine.admission import Admission
from neuron.engine.engine import EngineRequest, Output
from neuron.engine.generation import GenerationRequest, Outcome, generate
from neuron.engine.kv_cache import BLOCK_TOKENS
from neuron.engine.loaded import KVSettings, LoadedModel, load_model, release_model
from neuron.engine.sampling import SamplingParams
from neuron.engine.worker import DeviceWorker

GREEDY = SamplingParams(temperature=0.0)
VOCAB = 384


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(21)
    cfg = transformers.Qwen3_5TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        max_position_embeddings=1024,
    )
    hf = transformers.Qwen3_5ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                p.uniform_(-1.0, 1.0)
    out = tmp_path_factory.mktemp("hybrid")
    hf.save_pretrained(out)
    train_tokenizer(demo_text(), vocab_size=VOCAB).save(str(out / "tokenizer.json"))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": []}))
    return out, hf


def settings(**changes) -> KVSettings:
    return KVSettings(**{"kv_cache_mb": None, "share": 1.0, "max_num_seqs": 8, "max_batch_tokens": 64, **changes})


async def loaded(path: Path, kv: KVSettings, worker: DeviceWorker, free: int = 1 << 34) -> LoadedModel:
    return await worker.run(
        load_model,
        "h",
        path,
        worker,
        torch.float32,
        Admission("h", kv.max_num_seqs, 8, 5),
        kv,
        free_bytes=lambda: free,
        progress=lambda f: None,
        loop=asyncio.get_running_loop(),
    )


async def run_one(lm: LoadedModel, prompt: list[int], n: int, logprobs: int | None = None) -> list[Output]:
    outputs: asyncio.Queue[Output] = asyncio.Queue()
    lm.engine.submit(EngineRequest(prompt, n, GREEDY, frozenset(), outputs.put_nowait, logprobs=logprobs))
    got = []
    while True:
        out = await outputs.get()
        got.append(out)
        if out.finish is not None:
            assert out.finish == "length", out
            return got


def tokens(outs: list[Output]) -> list[int]:
    return [t for o in outs for t in o.tokens]


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
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


def workload() -> list[tuple[list[int], int]]:
    gen = torch.Generator().manual_seed(8)
    shared = torch.randint(0, VOCAB, (40,), generator=gen).tolist()
    jobs = []
    for i, length in enumerate((3, 50, 17, 71, 29, 6)):
        prompt = torch.randint(0, VOCAB, (length,), generator=gen).tolist()
        if i in (1, 3):
            prompt = shared + prompt[:15]
        jobs.append((prompt, 10 + i))
    return jobs


def run_concurrently(path: Path, kv: KVSettings, jobs, free: int = 1 << 34):
    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(path, kv, worker, free)
        together = await asyncio.gather(*(run_one(lm, p, n) for p, n in jobs))
        preemptions = lm.engine.stats.preemptions
        alone = [await run_one(lm, p, n) for p, n in jobs]
        free_slots = lm.engine.states.num_free + len(lm.engine.kept)
        await worker.run(release_model, lm)
        worker.close()
        return [tokens(t) for t in together], [tokens(a) for a in alone], lm, preemptions, free_slots

    return asyncio.run(main())


def test_concurrent_greedy_requests_give_what_each_gives_alone_and_what_transformers_gives(hybrid):
    path, hf = hybrid
    jobs = workload()
    together, alone, lm, preemptions, free_slots = run_concurrently(path, settings(), jobs)
    assert together == alone
    for (prompt, n), got in zip(jobs, together, strict=True):
        assert got == hf_greedy(hf, prompt, n)
    assert preemptions == 0
    assert free_slots == lm.engine.states.num_slots  # every running slot came back (kept ones count as theirs)


def test_a_pool_too_small_for_everyone_preempts_and_still_gives_the_same_tokens(hybrid):
    path, hf = hybrid

    async def sizes() -> tuple[int, int, int]:
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(path, settings(), worker)
        pool = lm.engine.pool
        block, slot = pool.layout.bytes_per_block(), pool.states.nbytes() // pool.states.num_slots
        weights = lm.memory_bytes - pool.nbytes()
        await worker.run(release_model, lm)
        worker.close()
        return weights, block, slot

    weights, block, slot = asyncio.run(sizes())
    jobs = workload()
    # a budget of 8 slots: 4 running (half the budget), 2 kept (a quarter), and the rest in blocks
    kv = settings(max_num_seqs=4)
    together, alone, lm, preemptions, _ = run_concurrently(path, kv, jobs, free=weights + 8 * slot)
    assert lm.engine.max_num_seqs == 4 and lm.engine.kept.capacity == 2
    assert lm.engine.allocator.num_blocks == 2 * slot // block < 16
    assert preemptions > 0
    assert together == alone
    for (prompt, n), got in zip(jobs, together, strict=True):
        assert got == hf_greedy(hf, prompt, n)


def test_states_that_do_not_fit_half_the_budget_lower_the_sequences_run_at_once(hybrid):
    path, _ = hybrid

    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(path, settings(max_num_seqs=8), worker)
        slot = lm.engine.pool.states.nbytes() // lm.engine.pool.states.num_slots
        weights = lm.memory_bytes - lm.engine.pool.nbytes()
        await worker.run(release_model, lm)
        small = await loaded(path, settings(max_num_seqs=8), worker, free=weights + 6 * slot)
        out = small.engine.max_num_seqs, small.engine.states.num_slots, small.engine.kept.capacity
        tokens_out = tokens(await run_one(small, list(range(5, 60)), 5))
        await worker.run(release_model, small)
        with pytest.raises(ApiError, match="not the recurrent state of one sequence"):
            await loaded(path, settings(max_num_seqs=8), worker, free=weights + slot)
        worker.close()
        return out, tokens_out

    (seqs, slots, kept), got = asyncio.run(main())
    assert (seqs, slots, kept) == (3, 4, 1)
    assert len(got) == 5


def test_a_cancelled_request_gives_back_its_blocks_and_its_state_slot(hybrid):
    path, _ = hybrid

    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(path, settings(), worker)
        blocks, slots = lm.engine.allocator.num_free, lm.engine.states.num_free
        prompt = list(range(1, 150))
        req = GenerationRequest(prompt_ids=prompt, max_new_tokens=400, params=GREEDY, ignore_eos=True)
        gen = generate(lm, req, Outcome(prompt_tokens=len(prompt)))
        await gen.__anext__()
        held = slots - lm.engine.states.num_free
        await gen.aclose()
        for _ in range(200):
            if not lm.engine.has_work():
                break
            await asyncio.sleep(0.01)
        after = lm.engine.allocator.num_free, lm.engine.states.num_free + len(lm.engine.kept)
        await worker.run(release_model, lm)
        worker.close()
        return (blocks, slots), held, after

    before, held, after = asyncio.run(main())
    assert held >= 1 and after == before


def test_an_extended_conversation_resumes_from_the_kept_state_with_cold_logprobs(hybrid):
    """A 100-token prompt, then the same conversation extended by 30 tokens: the second prefill
    starts at the first prompt's last block boundary (96), and its tokens and log probabilities
    are those of the extended prompt on a fresh model (no state kept)."""
    path, _ = hybrid
    gen = torch.Generator().manual_seed(4)
    first = torch.randint(0, VOCAB, (100,), generator=gen).tolist()
    extended = first + torch.randint(0, VOCAB, (30,), generator=gen).tolist()

    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(path, settings(), worker)
        assert lm.engine.kept.capacity >= 1
        await run_one(lm, first, 4)
        assert len(lm.engine.kept) == 1
        warm = await run_one(lm, extended, 6, logprobs=3)
        hits = lm.engine.kept.hits
        await worker.run(release_model, lm)
        cold_lm = await loaded(path, settings(), worker)
        cold = await run_one(cold_lm, extended, 6, logprobs=3)
        await worker.run(release_model, cold_lm)
        worker.close()
        return warm, cold, hits

    warm, cold, hits = asyncio.run(main())
    assert hits == 1
    assert warm[0].cached_tokens == 96 == 100 // BLOCK_TOKENS * BLOCK_TOKENS and cold[0].cached_tokens == 0
    assert tokens(warm) == tokens(cold)
    for w, c in zip(warm, cold, strict=True):
        for a, b in zip(w.logprobs, c.logprobs, strict=True):
            assert abs(a.logprob - b.logprob) < 1e-4
            assert [t for t, _ in a.top] == [t for t, _ in b.top]
            assert max(abs(x - y) for (_, x), (_, y) in zip(a.top, b.top, strict=True)) < 1e-4


def test_the_next_turn_skips_the_previous_answer_too(hybrid):
    """A 40-token prompt answered with 30 tokens (69 computed: the last one is only sampled); the
    state is kept at 32 (the prompt's boundary) and at 64 (the answer's last, which replaced the
    one at 48). The next turn, prompt + answer + 10 tokens, resumes at 64 with cold log-probs."""
    path, _ = hybrid
    gen = torch.Generator().manual_seed(12)
    first = torch.randint(0, VOCAB, (40,), generator=gen).tolist()
    extra = torch.randint(0, VOCAB, (10,), generator=gen).tolist()

    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(path, settings(), worker)
        answer = tokens(await run_one(lm, first, 30))
        kept = len(lm.engine.kept)
        nxt = first + answer + extra
        warm = await run_one(lm, nxt, 4, logprobs=2)
        await worker.run(release_model, lm)
        cold_lm = await loaded(path, settings(), worker)
        cold = await run_one(cold_lm, nxt, 4, logprobs=2)
        await worker.run(release_model, cold_lm)
        worker.close()
        return kept, warm, cold

    kept, warm, cold = asyncio.run(main())
    assert kept == 2  # the prompt's (32) and the answer's newest (64)
    assert warm[0].cached_tokens == 64 and cold[0].cached_tokens == 0
    assert tokens(warm) == tokens(cold)
    for w, c in zip(warm, cold, strict=True):
        for a, b in zip(w.logprobs, c.logprobs, strict=True):
            assert abs(a.logprob - b.logprob) < 1e-4


def test_a_prefix_without_a_kept_state_is_recomputed_not_half_reused(hybrid):
    """Blocks of a shared prefix are in the cache but no state was kept where they end: the second
    request recomputes from the start (a hybrid cannot resume from KV blocks alone)."""
    path, hf = hybrid
    gen = torch.Generator().manual_seed(6)
    shared = torch.randint(0, VOCAB, (48,), generator=gen).tolist()
    a = shared + torch.randint(0, VOCAB, (40,), generator=gen).tolist()  # kept at 80, not at 48
    b = shared + torch.randint(0, VOCAB, (10,), generator=gen).tolist()

    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(path, settings(), worker)
        await run_one(lm, a, 3)
        outs = await run_one(lm, b, 5)
        await worker.run(release_model, lm)
        worker.close()
        return outs

    outs = asyncio.run(main())
    assert outs[0].cached_tokens == 0
    assert tokens(outs) == hf_greedy(hf, b, 5)


def test_state_slots_come_out_of_the_pool_budget(hybrid):
    path, _ = hybrid

    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        lm = await loaded(path, settings(kv_cache_mb=4), worker)
        pool = lm.engine.pool
        out = pool.nbytes(), pool.states.num_slots, lm.engine.kept.capacity, pool.num_blocks
        out += (pool.layout.bytes_per_block(), pool.states.nbytes())
        await worker.run(release_model, lm)
        worker.close()
        return out

    total, slots, kept, blocks, block_bytes, state_bytes = asyncio.run(main())
    assert total <= 4 << 20 and total == blocks * block_bytes + state_bytes
    assert slots == 8 + kept and kept >= 1
    assert state_bytes // slots * kept <= (4 << 20) // 4
