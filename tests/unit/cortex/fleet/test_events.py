"""The event hub: ordering, bounded subscribers, resume from Last-Event-ID, and the events the
fleet state tells as polls change it."""

from __future__ import annotations

import asyncio

import msgspec

from cortex.fleet.events import EventHub
from cortex.fleet.state import Node
from cortex.protocol.fleet import DeviceHealth, Health, ModelHealth, ModelInfo


def frames(sub) -> list:
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


def test_subscribers_get_every_event_in_order_with_ids():
    hub = EventHub()
    a, _ = hub.subscribe()
    b, _ = hub.subscribe()
    for i in range(5):
        hub.publish("model", model=f"m{i}")
    for sub in (a, b):
        got = frames(sub)
        assert [e.data["model"] for e in got] == [f"m{i}" for i in range(5)]
        assert [e.id for e in got] == [1, 2, 3, 4, 5]
    frame = hub.history[-1].sse().decode()
    head, data = frame.split("data: ")
    assert head == f"id: {hub.epoch}-5\nevent: model\n" and frame.endswith("\n\n")
    assert msgspec.json.decode(data)["model"] == "m4"


def test_a_subscriber_that_falls_behind_is_dropped_without_stopping_the_others():
    hub = EventHub(buffer=3)
    slow, _ = hub.subscribe()
    fast, _ = hub.subscribe()
    closed = []
    slow.on_drop = lambda: closed.append(True)
    for i in range(3):
        hub.publish("health", n=i)
        assert [e.data["n"] for e in frames(fast)] == [i]  # this one reads as they come
    hub.publish("health", n=3)  # the fourth unread event: over the slow one's buffer
    assert slow.dropped and closed == [True] and slow not in hub.subscribers and hub.dropped == 1
    assert asyncio.run(slow.next()) is None  # its reader wakes and ends
    assert [e.data["n"] for e in frames(fast)] == [3] and not fast.dropped


def test_resume_replays_what_followed_or_asks_for_a_snapshot():
    hub = EventHub(history=4)
    for i in range(3):
        hub.publish("model", n=i)
    _, replay = hub.subscribe(f"{hub.epoch}-1")
    assert [e.data["n"] for e in replay] == [1, 2]
    _, replay = hub.subscribe(hub.snapshot_id())
    assert replay == []  # nothing happened since
    for i in range(3, 8):
        hub.publish("model", n=i)
    _, replay = hub.subscribe(f"{hub.epoch}-2")  # ids 3.. fell out of a 4-event ring
    assert replay is None
    _, replay = hub.subscribe(f"{hub.epoch}-4")
    assert [e.id for e in replay] == [5, 6, 7, 8]
    for stale in ("othergateway-5", "garbage", f"{hub.epoch}-99", "", None):
        assert hub.subscribe(stale)[1] is None


def test_close_ends_every_stream():
    hub = EventHub()
    subs = [hub.subscribe()[0] for _ in range(3)]
    hub.publish("x")
    hub.close()
    assert not hub.subscribers
    assert [asyncio.run(s.next()) for s in subs] == [None, None, None]


def info(model: str, status: str = "loaded", progress: float | None = None, **kw) -> ModelInfo:
    fields = {"devices": [], "vram_used_mb": None, "quant": None, "context_length": None, "error": None} | kw
    return ModelInfo(id=model, harness="torch", status=status, load_progress=progress, **fields)


def health(used: int = 1000, **models: ModelHealth) -> Health:
    device = DeviceHealth(index=0, vram_used_mb=used, vram_free_mb=24000 - used, utilization_pct=5, temp_c=40)
    return Health(uptime_secs=1.0, devices=[device], memory_free_mb=30000, models=models)


def told(hub: EventHub, sub) -> list[tuple]:
    return [(e.kind, {k: v for k, v in e.data.items() if k != "time"}) for e in frames(sub)]


def test_node_tells_its_state_changes_and_model_lifecycle():
    hub = EventHub()
    sub, _ = hub.subscribe()
    node = Node("beast", "http://beast:13131", events=hub)
    node.record_success(None, health(), [info("a")])
    events = told(hub, sub)
    assert events[0][0] == "health" and events[0][1]["node"] == "beast"
    assert events[1:] == [
        ("model", {"node": "beast", "model": "a", "state": "loaded", "vram_used_mb": None, "devices": []}),
        ("neuron", {"node": "beast", "state": "up"}),
    ]
    node.record_success(None, health(), [info("a")])  # nothing changed: nothing told
    assert told(hub, sub) == []
    node.set_models({"a": info("a"), "b": info("b", "loading", 0.0)})
    node.set_models({"a": info("a"), "b": info("b", "loading", 0.0)})  # same progress: quiet
    node.set_models({"a": info("a"), "b": info("b", "loading", 0.5)})
    node.set_models({"a": info("a"), "b": info("b", "loaded", 1.0, vram_used_mb=900, devices=[0])})
    node.set_models(
        {"b": info("b", "loaded", 1.0, vram_used_mb=900, devices=[0]), "c": info("c", "failed", error="boom")}
    )
    assert told(hub, sub) == [
        ("model", {"node": "beast", "model": "b", "state": "loading", "progress": 0.0}),
        ("model", {"node": "beast", "model": "b", "state": "loading", "progress": 0.5}),
        ("model", {"node": "beast", "model": "b", "state": "loaded", "vram_used_mb": 900, "devices": [0]}),
        ("model", {"node": "beast", "model": "c", "state": "failed", "error": "boom"}),
        ("model", {"node": "beast", "model": "a", "state": "unloaded"}),
    ]
    node.draining.add("b")  # an eviction under way tells its own end
    node.set_models({"c": info("c", "failed", error="boom")})
    assert told(hub, sub) == []
    assert [node.record_failure("timed out") for _ in range(3)] == [False, False, True]
    assert told(hub, sub) == [
        ("neuron", {"node": "beast", "state": "degraded", "reason": "timed out"}),
        ("neuron", {"node": "beast", "state": "down", "reason": "timed out"}),
    ]
    node.record_success(None, health(used=2000), [])
    kinds = [(k, d.get("state")) for k, d in told(hub, sub)]
    assert kinds == [("health", None), ("model", "unloaded"), ("neuron", "up")]
