"""Fleet state without the network: feasibility, replica order, down after 3 failed polls."""

from __future__ import annotations

from cortex.config import Catalogue, CortexConfig, ModelProfile, NeuronEntry
from cortex.fleet.state import Fleet, feasible
from cortex.protocol.fleet import CpuInfo, DeviceHealth, DeviceInfo, Discovery, Health, ModelInfo


def discovery(*vram: int, memory_mb: int = 32000) -> Discovery:
    return Discovery(
        hostname="h",
        os="Linux",
        kernel="k",
        cuda_version=None,
        driver_version=None,
        devices=[DeviceInfo(index=i, name="g", vram_total_mb=v, compute_capability="8.9") for i, v in enumerate(vram)],
        cpu=CpuInfo(cores=8, memory_total_mb=memory_mb),
        harnesses=["torch"],
        version="t",
    )


def health(*free: int, memory_free_mb: int = 20000) -> Health:
    devices = [
        DeviceHealth(index=i, vram_used_mb=0, vram_free_mb=f, utilization_pct=0, temp_c=0) for i, f in enumerate(free)
    ]
    return Health(uptime_secs=1, devices=devices, memory_free_mb=memory_free_mb, models={})


def info(model: str, status: str = "loaded") -> ModelInfo:
    return ModelInfo(
        id=model,
        harness="torch",
        status=status,
        devices=[0],
        vram_used_mb=100,
        quant=None,
        context_length=None,
        load_progress=1.0,
        error=None,
    )


def make_fleet(catalogue: Catalogue | None = None) -> Fleet:
    cfg = CortexConfig(neurons=[NeuronEntry(name=n, endpoint=f"http://{n}") for n in ("a", "b", "c")])
    fleet = Fleet(cfg, catalogue or Catalogue())
    fleet.nodes["a"].record_success(discovery(24000, 24000), health(20000, 4000), [info("m"), info("x", "loading")])
    fleet.nodes["b"].record_success(discovery(12000), health(11000), [info("m")])
    fleet.nodes["c"].record_success(discovery(), health(memory_free_mb=60000), [])
    return fleet


def test_feasibility_counts_devices_floors_and_pins():
    fleet = make_fleet()
    a, b, c = (fleet.nodes[n] for n in "abc")
    assert feasible(ModelProfile(id="p", min_devices=2), a) and not feasible(ModelProfile(id="p", min_devices=2), b)
    floor = ModelProfile(id="p", min_device_vram_mb=16000)
    assert [feasible(floor, n) for n in (a, b, c)] == [True, False, False]
    cpu = ModelProfile(id="p", min_devices=0, vram_mb=40000)
    assert [feasible(cpu, n) for n in (a, b, c)] == [False, False, False]  # 32 GB hosts
    assert feasible(ModelProfile(id="p", min_devices=0, vram_mb=1000), c)
    assert not feasible(ModelProfile(id="p", pinned_on=["b"]), a) and feasible(ModelProfile(id="p", pinned_on=["b"]), b)


def test_replicas_least_busy_first_then_by_name_and_placement_by_free_memory():
    fleet = make_fleet()
    assert [n.name for n in fleet.replicas("m")] == ["a", "b"]
    fleet.nodes["a"].in_flight["m"] = 2
    assert [n.name for n in fleet.replicas("m")] == ["b", "a"]
    assert [n.name for n in fleet.feasible_nodes(ModelProfile(id="p"))] == ["a", "b"]  # 20000 vs 11000 free
    assert [n.name for n in fleet.feasible_nodes(ModelProfile(id="p", min_devices=0))] == ["c", "a", "b"]
    pinned = ModelProfile(id="p", pinned_on=["b", "a"])
    assert [n.name for n in fleet.feasible_nodes(pinned)] == ["a", "b"]


def test_a_node_goes_down_after_three_failed_polls_and_up_on_one_success():
    fleet = make_fleet()
    b = fleet.nodes["b"]
    b.endpoints["m"] = "http://b"
    assert [b.record_failure() for _ in range(3)] == [False, False, True]
    assert not b.up and b.endpoints == {} and [n.name for n in fleet.replicas("m")] == ["a"]
    b.record_success(None, health(11000), [info("m")])
    assert b.up and b.failures == 0 and b.discovery is not None


def test_model_entries_merge_loaded_loading_catalogue_and_aliases():
    catalogue = Catalogue(
        models=[ModelProfile(id="p"), ModelProfile(id="never", min_devices=8)], aliases={"alias-p": "p", "alias-x": "x"}
    )
    fleet = make_fleet(catalogue)
    entries = {e["id"]: e for e in fleet.model_entries()}
    assert set(entries) == {"m", "x", "p", "alias-p", "alias-x"}
    assert entries["m"]["status"] == "loaded" and {loc["node"] for loc in entries["m"]["locations"]} == {"a", "b"}
    assert entries["x"]["status"] == "loading" and entries["p"]["status"] == "available"
    assert entries["alias-p"]["alias_of"] == "p"
