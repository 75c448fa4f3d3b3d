"""Residency without HTTP: the CPU memory cap (the figure /health reports and a CPU load's fit check
uses), footprints read from checkpoint headers, and the specs a restart loads again."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

from cortex.protocol.errors import ApiError
from cortex.protocol.fleet import ModelSpec
from neuron import hardware
from neuron.config import NeuronConfig
from neuron.demo import write_demo_model
from neuron.engine.residency import Entry, Residency
from neuron.loading.safetensors import Checkpoint

MIB = 2**20


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_demo_model(root / "helexa" / "demo")
    write_demo_model(root / "test" / "demo2", seed=1)
    return root


def residency(root, tmp_path, **config) -> Residency:
    config = {"allow_download": False, "cpu_dtype": "float32", **config}
    return Residency(NeuronConfig(model_roots=[str(root)], hf_cache=str(tmp_path / "hf"), **config))


def held(memory_bytes: int, device: str = "cpu") -> Entry:
    """An entry that holds memory and nothing else (no tensors), for the accounting alone."""
    loaded = SimpleNamespace(memory_bytes=memory_bytes, device=torch.device(device))
    return Entry(spec=ModelSpec(model_id="x"), devices=[] if device == "cpu" else [0], status="loaded", loaded=loaded)


def test_memory_free_is_the_hosts_capped_by_cpu_memory_mb_less_the_cpu_models(root, tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "memory_free_mb", lambda: 5000)
    assert residency(root, tmp_path).memory_free_mb() == 5000  # no cap: what the host has
    res = residency(root, tmp_path, cpu_memory_mb=1000)
    assert res.memory_free_mb() == 1000
    res.entries = {"a": held(300 * MIB), "b": held(100 * MIB + 1), "gpu": held(4000 * MIB, "cuda")}
    assert res.memory_free_mb() == 599  # a started MiB counts as taken; GPU models do not count
    monkeypatch.setattr(hardware, "memory_free_mb", lambda: 200)
    assert res.memory_free_mb() == 200  # the host has less than the cap leaves
    res.entries["c"] = held(800 * MIB)
    assert res.memory_free_mb() == 0  # never below 0


def test_a_cpu_load_counts_the_model_loaded_just_before_it(root, tmp_path):
    """Two loads queued back to back on the CPU worker: whichever reaches the worker second sees
    the other model in its fit check, so under a cap that holds one of them it gets 507."""

    async def scenario():
        res = residency(root, tmp_path, cpu_memory_mb=1)
        need = Checkpoint(root / "helexa" / "demo").numel() * 4
        assert MIB // 2 < need < MIB  # one fits under 1 MiB, two do not
        entries = [
            await res.load(ModelSpec(model_id="helexa/demo", devices=[])),
            await res.load(ModelSpec(model_id="test/demo2", devices=[])),
        ]
        outcomes = await asyncio.gather(*(res.wait_loaded(e) for e in entries), return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, ApiError)]
        assert len(refused) == 1 and refused[0].status == 507 and refused[0].code == "does_not_fit"
        (loaded,) = [e for e, o in zip(entries, outcomes, strict=True) if o is None]
        assert res.cpu_free_bytes() == MIB - loaded.loaded.memory_bytes
        await res.close()

    asyncio.run(scenario())


def test_footprint_counts_the_checkpoint_in_the_cpu_dtype_and_in_bf16(root, tmp_path):
    elements = Checkpoint(root / "helexa" / "demo").numel()
    assert residency(root, tmp_path).footprint("helexa/demo") == (elements * 4, elements * 2)
    bf16 = residency(root, tmp_path, cpu_dtype="bfloat16")
    assert bf16.footprint("helexa/demo") == (elements * 2, elements * 2)
    assert "helexa/demo" not in bf16.entries  # nothing loaded


def test_footprint_of_a_model_that_is_not_here_is_404_and_of_a_bad_id_400(root, tmp_path):
    res = residency(root, tmp_path, allow_download=True)  # a footprint never downloads all the same
    with pytest.raises(ApiError) as missing:
        res.footprint("test/nowhere")
    assert missing.value.status == 404 and "test/nowhere" in missing.value.message
    with pytest.raises(ApiError) as bad:
        res.footprint("../etc")
    assert bad.value.status == 400 and bad.value.param == "model_id"


def test_resident_specs_pin_each_model_to_its_devices(root, tmp_path):
    res = residency(root, tmp_path)
    res.entries = {
        "a": Entry(spec=ModelSpec(model_id="a"), devices=[0], status="loaded"),
        "b": Entry(spec=ModelSpec(model_id="b", harness="torch", wait=False), devices=[], status="loading"),
        "c": Entry(spec=ModelSpec(model_id="c"), devices=[], status="failed"),
        "d": Entry(spec=ModelSpec(model_id="d"), devices=[], status="unloading"),
    }
    assert res.resident_specs() == [
        ModelSpec(model_id="a", devices=[0]),
        ModelSpec(model_id="b", harness="torch", wait=False, devices=[]),
    ]


def test_failed_loads_are_kept_only_as_the_newest_few_for_a_while(root, tmp_path, monkeypatch):
    from neuron.engine import residency as module

    async def main() -> None:
        res = residency(root, tmp_path)
        ended: list[tuple[str, str]] = []
        res.on_load_end = lambda model, secs, result: ended.append((model, result))
        for i in range(module.FAILED_KEPT + 9):  # each is not found: a failed load
            entry = await res.load(ModelSpec(model_id=f"nobody/missing-{i}"))
            with pytest.raises(ApiError) as err:
                await res.wait_loaded(entry)
            assert err.value.status == 404
        infos = res.infos()
        assert len(infos) == module.FAILED_KEPT and all(i.status == "failed" for i in infos)
        assert {i.id for i in infos} == {f"nobody/missing-{i}" for i in range(9, module.FAILED_KEPT + 9)}
        assert all(i.error_status == 404 and "was not found" in i.error for i in infos)
        assert ended == [(f"nobody/missing-{i}", "failed") for i in range(module.FAILED_KEPT + 9)]  # every load counted
        monkeypatch.setattr(module, "FAILED_KEPT_SECS", 0.0)
        assert res.infos() == []  # and none older than FAILED_KEPT_SECS
        ok = await res.load(ModelSpec(model_id="helexa/demo", devices=[]))
        await res.wait_loaded(ok)
        assert ended[-1] == ("helexa/demo", "ok")
        await res.close()

    asyncio.run(main())
