"""The multi-rank executor under the engine, on the CPU: rank 0 in this process, rank 1 a real
``python -m neuron.tp.worker`` process over gloo. Concurrent greedy requests (prompt chunks and
decodes batched) give the tokens one rank gives, for Qwen3 and a Qwen3.5 hybrid (state slots on
every rank); a killed rank fails the running request with an error naming it within seconds
(never a hang), and every later step fails at once with the same reason."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch
import transformers

from neuron.engine.engine import Engine, EngineRequest, Output
from neuron.engine.sampling import SamplingParams
from neuron.engine.worker import DeviceWorker
from neuron.tp.executor import TpExecutor

VOCAB = 128
GREEDY = SamplingParams(temperature=0.0)
SEQS, KEPT, BLOCKS = 4, 2, 48


@pytest.fixture(scope="module", params=["qwen3", "qwen3.5"])
def folder(request, tmp_path_factory) -> Path:
    torch.manual_seed(6)
    base = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    if request.param == "qwen3":
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**base, intermediate_size=128, num_hidden_layers=2))
    else:
        cfg = transformers.Qwen3_5TextConfig(
            **base,
            intermediate_size=128,
            num_hidden_layers=4,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
        )
        hf = transformers.Qwen3_5ForCausalLM(cfg)
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith(("A_log", "dt_bias")):
                    p.uniform_(-1, 1)
    out = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(out)
    return out


def start(folder: Path, world: int, **kw) -> TpExecutor:
    return TpExecutor.start(folder, world, torch.float32, blocks=BLOCKS, state_slots=SEQS + KEPT, **kw)


async def run(executor: TpExecutor, jobs: list[tuple[list[int], int]], kill_after: int | None = None):
    """The jobs at once through an engine on ``executor``; each job's outputs."""
    worker = DeviceWorker(torch.device("cpu"))
    loop = asyncio.get_running_loop()
    kept = KEPT if executor.kv.states is not None else 0
    engine = Engine(
        executor, executor.kv, vocab_size=VOCAB, max_num_seqs=SEQS, max_batch_tokens=32, loop=loop,
        wake=worker.wake, kept_states=kept,
    )  # fmt: skip
    await worker.run(worker.attach, engine)

    async def one(prompt: list[int], n: int) -> list[Output]:
        queue: asyncio.Queue[Output] = asyncio.Queue()
        engine.submit(EngineRequest(prompt, n, GREEDY, frozenset(), queue.put_nowait))
        outs = []
        while True:
            out = await queue.get()
            outs.append(out)
            if kill_after is not None and sum(len(o.tokens) for o in outs) == kill_after:
                executor.ranks[0].kill()
            if out.finish is not None:
                return outs

    try:
        return await asyncio.gather(*(one(p, n) for p, n in jobs))
    finally:
        await worker.run(worker.detach, engine)
        worker.close()


def tokens(outs: list[Output]) -> list[int]:
    return [t for o in outs for t in o.tokens]


def jobs() -> list[tuple[list[int], int]]:
    gen = torch.Generator().manual_seed(3)
    return [(torch.randint(0, VOCAB, (n,), generator=gen).tolist(), 8 + i) for i, n in enumerate((5, 40, 17, 70, 9))]


def test_two_ranks_generate_what_one_rank_generates(folder):
    one = start(folder, 1)
    try:
        want = [tokens(o) for o in asyncio.run(run(one, jobs()))]
    finally:
        one.close()
    two = start(folder, 2)
    try:
        assert len(two.ranks) == 1 and two.ranks[0].poll() is None
        got = [tokens(o) for o in asyncio.run(run(two, jobs()))]
    finally:
        two.close()
    assert got == want and all(len(t) == n for t, (_, n) in zip(got, jobs(), strict=True))
    assert two.ranks[0].poll() == 0  # stopped when asked


def test_a_killed_rank_fails_the_running_request_and_every_later_step(folder):
    executor = start(folder, 2, timeout_s=20)
    try:
        t0 = time.monotonic()
        (outs,) = asyncio.run(run(executor, [(list(range(1, 30)), 400)], kill_after=3))
        elapsed = time.monotonic() - t0
        assert outs[-1].finish == "error" and "rank" in outs[-1].error, outs[-1]
        assert len(tokens(outs)) < 400 and elapsed < 15
        assert executor.failed is not None and "tensor-parallel model failed" in executor.failed
        t1 = time.monotonic()
        (later,) = asyncio.run(run(executor, [([1, 2, 3], 4)]))
        assert later[-1].finish == "error" and later[-1].error.endswith(executor.failed)
        assert time.monotonic() - t1 < 5
    finally:
        executor.close()
