"""Model lifecycle across the fleet through real processes: ``cortex serve`` in front of neuron
test doubles that keep a memory budget (footprints, 507 when full, loads joined, unloads that
wait for requests in flight, restarts), and once in front of two real ``neuron serve``: placement,
LRU and priority eviction, what is never evicted, bounded waits, two gateways on one fleet,
operator loads and unloads, defragmenting restarts."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from integration.services import FleetUnderTest, NeuronProcess, ServiceProcess, free_port, write_config

from neuron.demo import demo_template, demo_text, qwen3_config, random_weights, train_tokenizer, write_model_dir

USER = [{"role": "user", "content": "Hi"}]
GB10 = 10000  # every model's footprint in these tests: two fit on a 24 GB device, three do not


def eviction(**keys) -> str:
    values = {"min_residency_secs": 0, "swap_after_secs": 0.2, "max_wait_secs": 5, **keys}
    return "[eviction]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())


def ask(fleet: FleetUnderTest, model: str, **body) -> httpx.Response:
    return httpx.post(fleet.url + "/v1/chat/completions", json={"model": model, "messages": USER, **body}, timeout=30)


def catalogue(*models: str, **extra) -> list[dict]:
    return [{"id": m, **extra.get(m.replace("-", "_"), {})} for m in models]


def evictions(fleet: FleetUnderTest) -> dict[tuple[str, str], float]:
    family = fleet.metrics().get("cortex_evictions")
    samples = family.samples if family else []
    return {(s.labels["model"], s.labels["reason"]): s.value for s in samples if s.name.endswith("_total")}


def test_lru_evicts_the_least_recently_used_model(start_fleet):
    fleet = start_fleet(
        {"a": {"footprint": GB10, "load_secs": 0.05}}, models=catalogue("m1", "m2", "m3"), extra=eviction()
    )
    for model in ("m1", "m2", "m1"):  # m2 is now the least recently used
        assert ask(fleet, model).status_code == 200
    settled(fleet)
    assert ask(fleet, "m3").status_code == 200
    stats = fleet.stats("a")
    assert stats["unloads"] == ["m2"] and sorted(stats["models"]) == ["m1", "m3"]
    assert evictions(fleet) == {("m2", "lru"): 1.0}


def test_priority_evicts_the_lowest_priority_first(start_fleet):
    fleet = start_fleet(
        {"a": {"footprint": GB10, "load_secs": 0.05}},
        models=catalogue("low", "mid", "new", low={"residency_priority": 10}, mid={"residency_priority": 50}),
        extra=eviction(strategy="priority"),
    )
    for model in ("mid", "low"):  # low is the most recently used, but the lowest priority
        assert ask(fleet, model).status_code == 200
    settled(fleet)
    assert ask(fleet, "new").status_code == 200
    assert fleet.stats("a")["unloads"] == ["low"]
    assert evictions(fleet) == {("low", "priority"): 1.0}


def test_pinned_and_higher_priority_models_survive_and_a_model_that_cannot_displace_them_gets_503(start_fleet):
    fleet = start_fleet(
        {"a": {"footprint": GB10, "load_secs": 0.05}},
        models=catalogue("pinned", "vip", "new", pinned={"pinned_on": ["a"]}, vip={"residency_priority": 500}),
        extra=eviction(),
    )
    for model in ("pinned", "vip"):
        assert ask(fleet, model).status_code == 200
    settled(fleet)
    r = ask(fleet, "new")
    assert r.status_code == 503 and r.headers["retry-after"]
    message = r.json()["error"]["message"]
    assert "fits nowhere" in message and "higher-priority pinned, vip" in message
    assert fleet.stats("a")["unloads"] == []


def test_a_model_in_use_drains_before_it_is_evicted_and_its_stream_completes(start_fleet):
    fleet = start_fleet(
        {"a": {"footprint": 14000, "load_secs": 0.05, "tokens": 30, "token_delay": 0.03}},
        models=catalogue("busy", "new"),
        extra=eviction(swap_after_secs=0.3),
    )
    assert ask(fleet, "busy").status_code == 200
    lines: list[str] = []
    body = {"model": "busy", "messages": USER, "stream": True}

    def stream() -> None:
        with httpx.Client(timeout=30) as c, c.stream("POST", fleet.url + "/v1/chat/completions", json=body) as r:
            lines.extend(line for line in r.iter_lines() if line)

    reader = threading.Thread(target=stream)
    reader.start()
    wait_until(lambda: in_flight(fleet, "busy") == 1, "the stream to start")
    started = time.monotonic()
    assert ask(fleet, "new").status_code == 200  # waits for the stream: busy drains first
    waited = time.monotonic() - started
    reader.join(10)
    assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)
    assert sum('"busy-' in line or "a-" in line for line in lines) >= 30  # every token arrived
    assert waited > 0.5 and fleet.stats("a")["unloads"] == ["busy"]


def test_a_young_model_is_not_evicted_and_the_wait_is_bounded(start_fleet):
    fleet = start_fleet(
        {"a": {"footprint": 14000, "load_secs": 0.05}},
        models=catalogue("young", "new"),
        extra=eviction(min_residency_secs=30, max_wait_secs=0.5),
    )
    assert ask(fleet, "young").status_code == 200
    r = ask(fleet, "new")
    assert r.status_code == 503 and r.headers["retry-after"]
    assert "young is younger than min_residency_secs" in r.json()["error"]["message"]
    assert fleet.stats("a")["unloads"] == []


def test_placement_prefers_a_neuron_with_room_over_evicting(start_fleet):
    fleet = start_fleet(
        {"a": {"footprint": 14000, "loaded": ["m1"]}, "b": {"footprint": 14000}},
        models=catalogue("m1", "m2"),
        extra=eviction(),
    )
    settled(fleet)
    r = ask(fleet, "m2")
    assert r.status_code == 200 and r.headers["x-cortex-node"] == "b"
    assert fleet.stats("a")["unloads"] == [] and fleet.stats("b")["load_starts"] == ["m2"]


def wait_until(condition, what: str, secs: float = 10.0):
    """Polls ``condition()`` until it is true (returning it); fails naming ``what`` at the deadline."""
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def settled(fleet: FleetUnderTest, idle_secs: float = 0.25) -> None:
    """Until the gateway is idle: no operation on any neuron, nothing in flight, nobody waiting,
    and every resident unused for ``idle_secs`` (past eviction()'s swap_after_secs: no longer
    "just used")."""

    def idle() -> bool:
        state = httpx.get(fleet.url + "/admin/fleet", timeout=5).json()
        quiet = not state["waiting"] and all(n["busy"] is None and not n["in_flight"] for n in state["nodes"])
        unused = all((m["idle_secs"] or 0) >= idle_secs for n in state["nodes"] for m in n["models"])
        return quiet and unused

    wait_until(idle, "the gateway to settle")


def in_flight(fleet: FleetUnderTest, model: str, url: str | None = None) -> int:
    state = httpx.get((url or fleet.url) + "/admin/fleet", timeout=5).json()
    return sum(n["in_flight"].get(model, 0) for n in state["nodes"])


@contextlib.contextmanager
def second_gateway(fleet: FleetUnderTest, tmp_path) -> Iterator[str]:
    """Another ``cortex serve`` in front of the same neurons; yields its URL."""
    port, mport = free_port(), free_port()
    cfg = tmp_path / "second.toml"
    neurons = "".join(f'[[neurons]]\nname = "{n}"\nendpoint = "{p.url}"\n' for n, p in fleet.neurons.items())
    cfg.write_text(
        f'models_config = "models.toml"\n[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{mport}"\n'
        f"poll_interval_secs = 0.3\n{eviction()}\n{neurons}"
    )
    url = f"http://127.0.0.1:{port}"
    gateway = ServiceProcess(
        [sys.executable, "-m", "cortex.cli", "serve", "--config", str(cfg)], url, tmp_path / "second.log", tmp_path
    )
    try:
        gateway.wait_http("/health", lambda h: h["nodes"]["healthy"] == len(fleet.neurons), 30)
        yield url
    finally:
        gateway.stop()


def test_two_gateways_on_one_fleet_load_a_model_once(start_fleet, tmp_path):
    fleet = start_fleet({"a": {"footprint": GB10, "load_secs": 0.5}}, models=catalogue("m1"), extra=eviction())
    with second_gateway(fleet, tmp_path) as url2:
        answers: list[int] = []

        def one(url: str) -> None:
            r = httpx.post(url + "/v1/chat/completions", json={"model": "m1", "messages": USER}, timeout=30)
            answers.append(r.status_code)

        threads = [threading.Thread(target=one, args=(u,)) for u in (fleet.url, url2) * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert answers == [200] * 6
    assert fleet.stats("a")["load_starts"] == ["m1"]


def test_a_gateway_never_cuts_a_stream_another_gateway_relays(start_fleet, tmp_path):
    fleet = start_fleet(
        {"a": {"footprint": 14000, "loaded": ["m1"], "tokens": 25, "token_delay": 0.04}},
        models=catalogue("m1", "m2"),
        extra=eviction(),
    )
    with second_gateway(fleet, tmp_path) as url2:
        lines: list[str] = []
        body = {"model": "m1", "messages": USER, "stream": True}

        def stream() -> None:
            with httpx.Client(timeout=30) as c, c.stream("POST", url2 + "/v1/chat/completions", json=body) as r:
                lines.extend(line for line in r.iter_lines() if line)

        reader = threading.Thread(target=stream)
        reader.start()
        wait_until(lambda: in_flight(fleet, "m1", url2) == 1, "the other gateway's stream to start")
        assert ask(fleet, "m2").status_code == 200  # the first gateway evicts m1 once the stream is done
        reader.join(10)
    assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)
    assert sum("a-" in line for line in lines) == 25
    assert fleet.stats("a")["unloads"] == ["m1"]


def test_operator_unload_of_a_busy_model_is_409_unless_forced(start_fleet):
    fleet = start_fleet(
        {"a": {"footprint": GB10, "loaded": ["m1"], "tokens": 20, "token_delay": 0.05}},
        models=catalogue("m1"),
        extra=eviction(),
    )
    reader = threading.Thread(target=lambda: ask(fleet, "m1"))
    reader.start()
    wait_until(lambda: in_flight(fleet, "m1") == 1, "the request to start")
    busy = httpx.post(fleet.url + "/admin/models/unload", json={"model": "m1"}, timeout=10)
    assert busy.status_code == 409 and "force" in busy.json()["error"]["message"]
    forced = httpx.post(fleet.url + "/admin/models/unload?force=true", json={"model": "m1"}, timeout=30)
    reader.join(10)
    assert forced.status_code == 200 and forced.json()["nodes"] == ["a"]
    assert fleet.stats("a")["unloads"] == ["m1"] and evictions(fleet) == {("m1", "admin"): 1.0}


def test_operator_load_uses_placement_and_shows_progress_and_footprints(start_fleet, tmp_path):
    fleet = start_fleet(
        {"a": {"footprint": GB10, "load_secs": 1.0}},
        models=catalogue("m1", m1={"residency_priority": 7}),
        extra=eviction(),
    )
    r = httpx.post(fleet.url + "/admin/models/load", json={"model": "m1", "wait": False}, timeout=10)
    assert r.status_code == 202
    seen = set()
    for _ in range(40):
        entry = next(m for m in httpx.get(fleet.url + "/v1/models").json()["data"] if m["id"] == "m1")
        seen |= {loc.get("load_progress") for loc in entry["locations"] if loc["status"] == "loading"}
        if entry["status"] == "loaded":
            break
        time.sleep(0.05)
    assert entry["status"] == "loaded" and {p for p in seen if p is not None} & {0.2, 0.4, 0.6, 0.8}
    for _ in range(40):  # the load's bookkeeping ends just after the model is loaded
        if httpx.get(fleet.url + "/admin/fleet").json()["nodes"][0]["busy"] is None:
            break
        time.sleep(0.05)
    out = subprocess.run(
        [sys.executable, "-m", "cortex.cli", "ps", "--endpoint", fleet.url], capture_output=True, text=True, timeout=30
    )
    header, row = out.stdout.splitlines()[:2]
    assert header.split() == ["MODEL", "NODE", "STATUS", "MEMORY", "QUANT", "PRIORITY", "IN-FLIGHT", "QUEUED", "IDLE"]
    assert row.split()[:7] == ["m1", "a", "loaded", "10000", "MB", "-", "7"]


def test_a_neuron_restarts_after_its_load_unload_cycles_once_idle(start_fleet):
    fleet = start_fleet(
        {"a": {"footprint": 14000, "load_secs": 0.05, "restart_secs": 0.3}},
        models=catalogue("m1", "m2"),
        extra=eviction(defrag_after_cycles=2),
    )
    for model in ("m1", "m2", "m1"):  # two evictions = two load/unload cycles
        assert ask(fleet, model).status_code == 200
    for _ in range(60):
        if fleet.stats("a")["restarts"]:
            break
        time.sleep(0.05)
    assert fleet.stats("a")["restarts"] == 1
    assert ask(fleet, "m1").status_code == 200  # serving again once it is back

    def counted() -> list:
        samples = fleet.metrics()["cortex_neuron_restarts"].samples
        return [(s.labels["node"], s.value) for s in samples if s.name.endswith("_total")]

    for _ in range(40):
        if counted():
            break
        time.sleep(0.05)
    assert counted() == [("a", 1.0)]


# --- end to end -----------------------------------------------------------------------------


BIG = ("big/a", "big/b", "big/c")


@pytest.fixture(scope="module")
def big_models(tmp_path_factory) -> Path:
    """Three ~26 MB models (f32): a 40 MB budget holds one of them, never two."""
    root = tmp_path_factory.mktemp("big-models")
    tok = train_tokenizer(demo_text(), vocab_size=512)
    cfg = qwen3_config(
        512, hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=4, head_dim=64
    )
    for i, model in enumerate(BIG):
        write_model_dir(root / model, tok, cfg, random_weights(cfg, seed=i), template=demo_template())
    return root


@pytest.fixture
def two_real_neurons(big_models, tmp_path):
    """Two CPU neurons, each with room (cpu_memory_mb) for one of the big models."""
    procs = []
    for name in ("left", "right"):
        port = free_port()
        cfg = write_config(tmp_path / f"{name}.toml", port, big_models, [])
        cfg.write_text(cfg.read_text().replace("allow_download = false", "allow_download = false\ncpu_memory_mb = 40"))
        procs.append(NeuronProcess(cfg, port, tmp_path / f"{name}.log"))
    try:
        for p in procs:
            p.wait_ready([])
        yield dict(zip(("left", "right"), procs, strict=True))
    finally:
        for p in procs:
            p.stop()


def test_end_to_end_a_cold_request_evicts_the_lru_model_through_the_real_api(two_real_neurons, start_fleet):
    a, b, c = BIG
    fleet = start_fleet(
        {},
        models=[{"id": m, "min_devices": 0} for m in BIG],
        endpoints={n: p.url for n, p in two_real_neurons.items()},
        extra=eviction(),
    )
    first = ask(fleet, a, max_tokens=2)
    second = ask(fleet, b, max_tokens=2)
    assert first.status_code == second.status_code == 200
    assert {first.headers["x-cortex-node"], second.headers["x-cortex-node"]} == {"left", "right"}
    settled(fleet)
    assert ask(fleet, a, max_tokens=2).status_code == 200  # b is now the least recently used
    r = ask(fleet, c, max_tokens=2)
    assert r.status_code == 200 and r.headers["x-cortex-node"] == second.headers["x-cortex-node"]
    where = {
        name: sorted(httpx.get(n.url + "/health", timeout=5).json()["models"]) for name, n in two_real_neurons.items()
    }
    assert where[first.headers["x-cortex-node"]] == [a] and where[second.headers["x-cortex-node"]] == [c]
    assert evictions(fleet) == {(b, "lru"): 1.0}
    measured = {
        m["id"]: m["vram_used_mb"] for n in two_real_neurons.values() for m in httpx.get(n.url + "/models").json()
    }
    assert 20 <= measured[c] <= 40  # the footprint the placement worked with was real
