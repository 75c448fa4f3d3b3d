"""The scheduler against simulated neurons (in-process, short real delays): one load per cold
model, drains before evictions, bounded waits, defragmenting restarts, and the swap-thrash
simulation: an agent-style workload on a neuron with room for one model of three, against a
FIFO one-request-one-swap baseline on the same simulated neuron.

The simulator lives in bench/swap_thrash.py, which prints the swap-thrash table; these tests
import it from there and hold the scheduler to its behaviour."""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from cortex.protocol.errors import ApiError

ROOT = Path(__file__).resolve().parents[4]


def load_bench(name: str) -> ModuleType:
    """Imports bench/NAME.py (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


swap_thrash = load_bench("swap_thrash")
SimNeuron = swap_thrash.SimNeuron
fleet_of = swap_thrash.fleet_of
started_scheduler = swap_thrash.started_scheduler
request = swap_thrash.request


def test_concurrent_requests_for_one_cold_model_share_one_load():
    async def main() -> None:
        neurons = {"n": SimNeuron(vram_mb=30000)}
        fleet, client = fleet_of(neurons, ["A", "B"], min_residency_secs=0)
        scheduler = await started_scheduler(fleet, client)
        try:
            await asyncio.gather(*(request(scheduler, neurons, "A") for _ in range(8)))
            assert neurons["n"].loads == ["A"]
            await request(scheduler, neurons, "B")  # room for both: no eviction
            assert neurons["n"].loads == ["A", "B"] and neurons["n"].unloads == []
        finally:
            await scheduler.stop()

    asyncio.run(main())


def test_an_evicted_model_drains_first_and_young_models_stay():
    async def main() -> None:
        neurons = {"n": SimNeuron(serve_secs=0.3)}
        fleet, client = fleet_of(neurons, ["A", "B"], min_residency_secs=0.5, swap_after_secs=0.05)
        scheduler = await started_scheduler(fleet, client)
        try:
            await request(scheduler, neurons, "A")
            long_a = asyncio.create_task(request(scheduler, neurons, "A"))
            await asyncio.sleep(0.02)
            t0 = time.monotonic()
            await request(scheduler, neurons, "B")  # must wait: A is young (0.5 s) and busy
            assert time.monotonic() - t0 >= 0.3
            assert long_a.done() and not long_a.exception()  # A's request finished before A left
            assert neurons["n"].unloads == ["A"] and neurons["n"].loads == ["A", "B"]
        finally:
            await scheduler.stop()

    asyncio.run(main())


def test_a_request_that_cannot_get_room_in_time_gets_503_with_the_reason():
    async def main() -> None:
        neurons = {"n": SimNeuron()}
        fleet, client = fleet_of(neurons, ["A", "B"], min_residency_secs=60, max_wait_secs=0.3)
        scheduler = await started_scheduler(fleet, client)
        try:
            await request(scheduler, neurons, "A")
            with pytest.raises(ApiError) as info:
                await request(scheduler, neurons, "B")
            assert info.value.status == 503 and info.value.retry_after
            assert "waited 0.3 s" in info.value.message and "A is younger than min_residency_secs" in info.value.message
        finally:
            await scheduler.stop()

    asyncio.run(main())


def test_an_idle_neuron_restarts_after_its_load_unload_cycles():
    async def main() -> None:
        neurons = {"n": SimNeuron()}
        fleet, client = fleet_of(neurons, ["A", "B"], min_residency_secs=0, swap_after_secs=0, defrag_after_cycles=2)
        scheduler = await started_scheduler(fleet, client)
        try:
            for model in ("A", "B", "A"):
                await request(scheduler, neurons, model)
            node = fleet.nodes["n"]
            for _ in range(200):
                if neurons["n"].restarts and node.busy is None:
                    break
                await asyncio.sleep(0.01)
            assert neurons["n"].restarts == 1 and fleet.nodes["n"].cycles == 0
            await request(scheduler, neurons, "A")  # serving goes on after the restart
        finally:
            await scheduler.stop()

    asyncio.run(main())


def test_a_burst_spreads_over_the_replicas_instead_of_piling_onto_one():
    async def main() -> None:
        neurons = {"a": SimNeuron(vram_mb=30000), "b": SimNeuron(vram_mb=30000)}
        fleet, client = fleet_of(neurons, ["A"], min_residency_secs=0)
        for name in neurons:  # resident on both before the burst
            await client.load(f"http://{name}", swap_thrash.ModelSpec(model_id="A"))
        await asyncio.sleep(neurons["a"].load_secs * 2)
        scheduler = await started_scheduler(fleet, client)
        try:
            await asyncio.gather(*(request(scheduler, neurons, "A") for _ in range(8)))
            assert (neurons["a"].served, neurons["b"].served) == (4, 4)
            assert all(n.in_flight.get("A", 0) == 0 for n in fleet.nodes.values())  # every count returned
        finally:
            await scheduler.stop()

    asyncio.run(main())


def test_a_neuron_that_dies_during_a_cold_load_is_not_asked_again_at_every_tick():
    async def main() -> None:
        neurons = {"n": SimNeuron(load_secs=0.2)}
        fleet, client = fleet_of(neurons, ["A"], max_wait_secs=1.0)
        scheduler = await started_scheduler(fleet, client)
        try:
            waiting = asyncio.get_running_loop().create_task(request(scheduler, neurons, "A"))
            await asyncio.sleep(0.05)  # the load is under way
            neurons["n"].dead = True
            with pytest.raises(ApiError) as info:
                await waiting
            assert info.value.status == 503 and info.value.retry_after
            # one load asked, a few polls of its progress; never a load at every planner tick (10 ms)
            assert neurons["n"].calls["load"] == 1
            assert neurons["n"].calls.get("models", 0) < 60
        finally:
            await scheduler.stop()

    asyncio.run(main())


def test_an_unload_during_a_cold_load_plans_again_for_the_waiting_requests():
    async def main() -> None:
        neurons = {"n": SimNeuron(load_secs=0.1)}
        fleet, client = fleet_of(neurons, ["A"], min_residency_secs=0)
        scheduler = await started_scheduler(fleet, client)
        try:
            waiting = asyncio.get_running_loop().create_task(request(scheduler, neurons, "A"))
            await asyncio.sleep(0.03)
            await client.unload("http://n", "A")  # an operator (or another gateway) unloads it mid-load
            await waiting  # served: the scheduler loaded it again instead of failing the request
            assert neurons["n"].loads == ["A", "A"] and neurons["n"].served == 1
        finally:
            await scheduler.stop()

    asyncio.run(main())


def test_a_bug_planning_one_model_fails_its_own_requests_only():
    async def main() -> None:
        neurons = {"n": SimNeuron(vram_mb=30000)}
        fleet, client = fleet_of(neurons, ["A", "B"], min_residency_secs=0)
        scheduler = await started_scheduler(fleet, client)
        place = scheduler._place

        def broken_for_b(model, queue, now):
            if model == "B":
                raise RuntimeError("a planning bug")
            return place(model, queue, now)

        scheduler._place = broken_for_b  # type: ignore[method-assign]
        try:
            b = asyncio.get_running_loop().create_task(request(scheduler, neurons, "B"))
            await asyncio.sleep(0.02)  # B queues first, then A
            await request(scheduler, neurons, "A")  # still loads and serves
            with pytest.raises(ApiError) as info:
                await b
            assert info.value.status == 500 and "could not plan" in info.value.message
        finally:
            await scheduler.stop()

    asyncio.run(main())


# --- swap thrash (the figure itself: bench/swap_thrash.py) ----------------------------------


def test_swap_aware_scheduling_beats_fifo_on_an_agent_workload():
    workload = swap_thrash.agent_workload()
    max_wait = 5.0
    results = asyncio.run(swap_thrash.measure(workload, max_wait))
    (fifo_swaps, fifo_lat), (our_swaps, our_lat) = results[swap_thrash.FIFO], results[swap_thrash.CORTEX]
    assert len(our_lat) == len(workload)  # every request answered, none refused
    assert fifo_swaps >= 3 * our_swaps
    assert statistics.mean(our_lat) <= statistics.mean(fifo_lat)
    assert max(our_lat) < max_wait
