"""The engine without HTTP: chunked prefill equals one prefill, generation defaults come from
generation_config.json, and a model that does not fit is refused before it is built."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from cortex.protocol.errors import ApiError
from neuron.demo import write_demo_model
from neuron.engine.admission import Admission
from neuron.engine.generation import GenerationRequest, Outcome, generate
from neuron.engine.loaded import load_model
from neuron.engine.sampling import SamplingParams
from neuron.engine.worker import DeviceWorker


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = write_demo_model(tmp_path_factory.mktemp("demo") / "helexa" / "demo")
    worker = DeviceWorker(torch.device("cpu"))
    lm = worker.call(
        load_model,
        "helexa/demo",
        path,
        worker,
        torch.float32,
        Admission("helexa/demo", 1, 1, 5),
        free_bytes=lambda: 1 << 40,
        progress=lambda f: None,
    )
    yield lm
    worker.close()


def run(lm, req: GenerationRequest) -> tuple[str, Outcome, list[int]]:
    outcome = Outcome(prompt_tokens=len(req.prompt_ids))
    tokens: list[int] = []
    decode = lm.decode

    def record(seq, token):
        nxt = decode(seq, token)
        tokens.append(nxt)
        return nxt

    lm.decode = record
    try:

        async def collect() -> str:
            parts = []
            async for delta in generate(lm, req, outcome):
                parts += [ev.text for ev in delta.events]
            return "".join(parts)

        return asyncio.run(collect()), outcome, tokens
    finally:
        lm.decode = decode


def test_a_prompt_prefilled_in_chunks_generates_what_one_prefill_does(demo):
    prompt = demo.tokenizer.encode("The weather today is mild and the sky was grey in the morning").ids
    assert len(prompt) > 10
    base = dict(prompt_ids=prompt, max_new_tokens=12, params=SamplingParams(temperature=0.0))
    whole = run(demo, GenerationRequest(**base, prefill_chunk=512))
    chunked = run(demo, GenerationRequest(**base, prefill_chunk=3))
    assert chunked[2] == whole[2] and chunked[0] == whole[0]
    assert whole[1].completion_tokens <= 12 and whole[1].finish_reason in ("length", "stop")


def test_zero_max_tokens_finishes_with_length_at_once(demo):
    text, outcome, tokens = run(
        demo, GenerationRequest(prompt_ids=[1, 2, 3], max_new_tokens=0, params=SamplingParams())
    )
    assert (text, outcome.completion_tokens, outcome.finish_reason, tokens) == ("", 0, "length", [])


def test_generation_defaults_and_eos_come_from_generation_config(demo):
    assert demo.defaults == SamplingParams(temperature=0.7, top_p=0.8, top_k=20)
    cfg = json.loads((demo.model_dir / "generation_config.json").read_text())
    assert demo.eos_ids == set(cfg["eos_token_id"])
    assert demo.context_length == 4096


def test_a_model_that_does_not_fit_is_refused_with_507(tmp_path):
    path = write_demo_model(tmp_path / "m")
    worker = DeviceWorker(torch.device("cpu"))
    try:
        with pytest.raises(ApiError) as err:
            worker.call(
                load_model,
                "m",
                path,
                worker,
                torch.float32,
                Admission("m", 1, 1, 1),
                free_bytes=lambda: 1 << 10,
                progress=lambda f: None,
            )
    finally:
        worker.close()
    assert err.value.status == 507 and "needs about" in err.value.message
