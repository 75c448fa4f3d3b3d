"""Tensor parallelism through a real ``neuron serve`` on the CPU: ``POST /models/load`` with
``tensor_parallel: 2, devices: []`` starts a rank process beside the neuron; greedy chat answers
(openai SDK) are those of the same weights loaded on one rank; killing the rank ends a running
stream with an error within seconds, the model is then listed as failed with the reason (not
hung), its ranks are gone, and the neuron keeps serving its other model."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from integration.services import NeuronProcess, free_port, write_config

ONE, TWO = "test/tp-one", "test/tp-two"


@pytest.fixture(scope="module")
def tp_neuron(model_root, tmp_path_factory) -> Iterator[NeuronProcess]:
    root = tmp_path_factory.mktemp("tp-models")
    for name in (ONE, TWO):  # the demo model twice, under two ids
        shutil.copytree(model_root / "helexa" / "demo", root / name)
    work = tmp_path_factory.mktemp("tp-neuron")
    port = free_port()
    server = NeuronProcess(write_config(work / "neuron.toml", port, root, [ONE]), port, work / "neuron.log")
    try:
        server.wait_ready([ONE])
        yield server
    finally:
        server.stop()


def ranks_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", "neuron.tp.worker"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def chat(client: openai.OpenAI, model: str, text: str, n: int = 16) -> str:
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        max_tokens=n,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    return r.choices[0].message.content


def test_two_ranks_answer_as_one_and_a_dead_rank_fails_the_model_not_the_neuron(tp_neuron):
    with httpx.Client(base_url=tp_neuron.url, timeout=120) as http:
        r = http.post("/models/load", json={"model_id": TWO, "tensor_parallel": 2, "devices": []})
        assert r.status_code == 200, r.text
        ranks = ranks_of(tp_neuron.proc.pid)
        assert len(ranks) == 1
        listed = {m["id"]: m for m in http.get("/models").json()}
        assert listed[TWO]["status"] == "loaded" and listed[TWO]["devices"] == []
        # memory per rank, measured by each rank: rank 0 in the neuron, rank 1 in its process
        per_rank = listed[TWO]["ranks"]
        assert [(r["rank"], r["pid"], r["device"]) for r in per_rank] == [
            (0, tp_neuron.proc.pid, None),
            (1, ranks[0], None),
        ]
        assert abs(sum(r["memory_mb"] for r in per_rank) - listed[TWO]["vram_used_mb"]) <= len(per_rank)
        assert per_rank[0]["memory_mb"] == per_rank[1]["memory_mb"] > 0  # two equal shards
        assert http.get("/health").json()["models"][TWO]["ranks"] == per_rank
        assert listed[ONE]["ranks"] is None  # one rank: nothing to split
        with openai.OpenAI(base_url=tp_neuron.url + "/v1", api_key="x", max_retries=0, timeout=120) as client:
            for text in ("Tell me about the sea.", "Hello there, how are you today?"):
                assert chat(client, TWO, text) == chat(client, ONE, text)
            stream = client.chat.completions.create(
                model=TWO,
                messages=[{"role": "user", "content": "Go on and on."}],
                max_tokens=2000,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            t0 = time.monotonic()
            with pytest.raises(openai.APIError) as failure:
                for i, _ in enumerate(stream):
                    if i == 3:
                        subprocess.run(["kill", "-9", str(ranks[0])], check=True)
            assert time.monotonic() - t0 < 20
            assert "rank" in str(failure.value)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                entry = {m["id"]: m for m in http.get("/models").json()}[TWO]
                if entry["status"] == "failed":
                    break
                time.sleep(0.2)
            assert entry["status"] == "failed" and "rank 1" in entry["error"], entry
            assert chat(client, ONE, "Still there?", 4)  # the neuron serves its other model
            with pytest.raises(openai.NotFoundError):  # a failed model is not served
                chat(client, TWO, "x", 2)
        assert ranks_of(tp_neuron.proc.pid) == []  # the rank is gone (killed; nothing left behind)
