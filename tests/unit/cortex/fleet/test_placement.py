"""Placement as a pure decision: room first, then the fewest and cheapest evictions in the
strategy's order, never a higher priority, a young or (while the newcomer is not yet patient) a
busy resident; "wait" for passing reasons, "never" with the reason."""

from __future__ import annotations

from cortex.config import ModelProfile
from cortex.fleet.placement import NodeView, Resident, Rules, plan

GPU = ModelProfile(id="new", min_devices=1)
CPU = ModelProfile(id="new", min_devices=0)
RULES = Rules(strategy="lru", min_residency_secs=30, swap_after_secs=5)


def resident(model: str, mb: int = 8000, *, priority: int = 100, idle: float = 100, age: float = 1000, busy=False):
    return Resident(model, [0], mb, priority, busy, age_secs=age, idle_secs=idle)


def gpu_node(name: str, free: int, residents: list[Resident], need: int = 8000, **kw) -> NodeView:
    return NodeView(name, host_free_mb=64000, device_free_mb={0: free}, residents=residents, need_mb=need, **kw)


def test_a_neuron_with_room_beats_evicting_and_pinned_then_most_free_wins():
    full = gpu_node("a-full", 1000, [resident("old")])
    roomy = gpu_node("b-roomy", 9000, [])
    roomier = gpu_node("c-roomier", 20000, [])
    assert plan("new", GPU, 100, [full, roomy, roomier], RULES, patient=False).node == "c-roomier"
    pinned = ModelProfile(id="new", min_devices=1, pinned_on=["b-roomy"])
    assert plan("new", pinned, 100, [full, roomy, roomier], RULES, patient=False).node == "b-roomy"
    chosen = plan("new", GPU, 100, [full, roomy], RULES, patient=False)
    assert (chosen.kind, chosen.node, chosen.devices, chosen.victims) == ("fits", "b-roomy", [0], [])


def test_lru_evicts_the_least_recently_used_and_only_as_many_as_needed():
    node = gpu_node(
        "a",
        0,
        [resident("recent", 4000, idle=10), resident("oldest", 4000, idle=900), resident("older", 4000, idle=500)],
    )
    chosen = plan("new", GPU, 100, [node], RULES, patient=False)
    assert (chosen.kind, chosen.victims) == ("evict", ["oldest", "older"])


def test_priority_strategy_evicts_the_lowest_priority_first_lru_within_it():
    node = gpu_node(
        "a",
        0,
        [
            resident("low-new", 8000, priority=10, idle=20),
            resident("low-old", 8000, priority=10, idle=800),
            resident("mid-oldest", 8000, priority=50, idle=5000),
        ],
    )
    by_priority = plan("new", GPU, 100, [node], Rules("priority", 30, 5), patient=False)
    assert by_priority.victims == ["low-old"]
    by_lru = plan("new", GPU, 100, [node], RULES, patient=False)
    assert by_lru.victims == ["mid-oldest"]


def test_higher_priority_and_pinned_residents_are_never_displaced():
    node = gpu_node("a", 0, [resident("vip", priority=1000)])
    chosen = plan("new", GPU, 100, [node], RULES, patient=True)
    assert chosen.kind == "never" and "higher-priority vip" in chosen.reason
    equal = plan("new", GPU, 1000, [node], RULES, patient=True)
    assert (equal.kind, equal.victims) == ("evict", ["vip"])  # equal priority may displace


def test_young_and_busy_residents_make_it_wait_until_patience_drains_the_busy():
    young = gpu_node("a", 0, [resident("fresh", age=3)])
    assert plan("new", GPU, 100, [young], RULES, patient=True).kind == "wait"
    busy = gpu_node("a", 0, [resident("working", busy=True)])
    waiting = plan("new", GPU, 100, [busy], RULES, patient=False)
    assert waiting.kind == "wait" and "working is in use" in waiting.reason
    assert plan("new", GPU, 100, [busy], RULES, patient=True).victims == ["working"]  # it drains first
    hot = gpu_node("a", 0, [resident("just-used", idle=1)])
    assert plan("new", GPU, 100, [hot], RULES, patient=False).kind == "wait"
    assert plan("new", GPU, 100, [hot], RULES, patient=True).victims == ["just-used"]


def test_fewest_evictions_win_across_neurons():
    two = gpu_node("a", 0, [resident("x", 4000, idle=900), resident("y", 4000, idle=900)])
    one = gpu_node("b", 0, [resident("z", 8000, idle=10)])
    assert plan("new", GPU, 100, [two, one], RULES, patient=True).node == "b"


def test_a_model_that_fits_nowhere_says_why_and_a_busy_neuron_means_wait():
    small = gpu_node("a", 2000, [], need=48000)
    chosen = plan("new", GPU, 100, [small], RULES, patient=True)
    assert chosen.kind == "never" and "a cannot make room for 48000 MB" in chosen.reason
    occupied = gpu_node("a", 0, [resident("x")], occupied=True)
    assert plan("new", GPU, 100, [occupied], RULES, patient=True).kind == "wait"
    assert plan("new", GPU, 100, [], RULES, patient=True).kind == "never"


def test_cpu_models_count_host_memory_and_only_cpu_residents():
    gpu_resident = resident("on-gpu")
    cpu_resident = Resident("on-cpu", [], 3000, 100, False, age_secs=1000, idle_secs=100)
    node = NodeView("a", host_free_mb=1000, device_free_mb={0: 0}, residents=[gpu_resident, cpu_resident], need_mb=3500)
    chosen = plan("new", CPU, 100, [node], RULES, patient=False)
    assert (chosen.kind, chosen.devices, chosen.victims) == ("evict", [], ["on-cpu"])


def test_tensor_parallel_needs_each_device_to_hold_its_share():
    tp = ModelProfile(id="new", min_devices=2)
    node = NodeView("a", 0, {0: 5000, 1: 3000, 2: 4500}, [], need_mb=9000)
    assert plan("new", tp, 100, [node], RULES, patient=False).devices == [0, 2]
    tight = NodeView("a", 0, {0: 5000, 1: 3000}, [], need_mb=9000)
    assert plan("new", tp, 100, [tight], RULES, patient=False).kind == "never"
    freed = NodeView("a", 0, {0: 5000, 1: 3000}, [Resident("old", [1], 4000, 100, False, 1000, 100)], need_mb=9000)
    chosen = plan("new", tp, 100, [freed], RULES, patient=False)
    assert (chosen.kind, chosen.devices, chosen.victims) == ("evict", [0, 1], ["old"])
