"""The scheduler against simulated neurons (in-process, short real delays): one load per cold
model, drains before evictions, bounded waits, defragmenting restarts, and the swap-thrash
simulation: an agent-style workload on a neuron with room for one model of three, against a
FIFO one-request-one-swap baseline on the same simulated neuron."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field

import pytest

from cortex.config import Catalogue, CortexConfig, EvictionSection, GatewaySection, ModelProfile, NeuronEntry
from cortex.fleet.poller import poll_forever, poll_once
from cortex.fleet.scheduler import Scheduler
from cortex.fleet.state import Fleet
from cortex.protocol.errors import ApiError
from cortex.protocol.fleet import (
    CpuInfo,
    DeviceHealth,
    DeviceInfo,
    Discovery,
    Health,
    ModelHealth,
    ModelInfo,
    ModelSpec,
)


@dataclass
class SimNeuron:
    """One GPU with ``vram_mb``; every model takes ``mb``; loads take ``load_secs``; a model
    serves one request at a time (``max_in_flight = 1``) for ``serve_secs``."""

    vram_mb: int = 10000
    mb: int = 8000
    load_secs: float = 0.1
    unload_secs: float = 0.01
    serve_secs: float = 0.02
    status: dict[str, str] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    restarts: int = 0

    def used(self) -> int:
        return self.mb * sum(1 for s in self.status.values() if s in ("loading", "loaded"))

    async def serve(self, model: str) -> None:
        assert self.status.get(model) == "loaded", f"{model} served while {self.status.get(model)}"
        self.in_flight[model] = self.in_flight.get(model, 0) + 1
        try:
            async with self.locks.setdefault(model, asyncio.Lock()):
                await asyncio.sleep(self.serve_secs)
        finally:
            self.in_flight[model] -= 1


class SimClient:
    """NeuronClient's interface over SimNeurons (the peer this test is not about)."""

    def __init__(self, neurons: dict[str, SimNeuron]) -> None:
        self.neurons = neurons

    def _n(self, base: str) -> SimNeuron:
        return self.neurons[base.removeprefix("http://")]

    async def discovery(self, base: str) -> Discovery:
        n = self._n(base)
        return Discovery(
            hostname=base,
            os="Linux",
            kernel="sim",
            cuda_version="13",
            driver_version="580",
            devices=[DeviceInfo(index=0, name="Sim GPU", vram_total_mb=n.vram_mb, compute_capability="8.9")],
            cpu=CpuInfo(cores=8, memory_total_mb=64000),
            harnesses=["torch"],
            version="sim",
        )

    async def health(self, base: str) -> Health:
        n = self._n(base)
        return Health(
            uptime_secs=1.0,
            devices=[
                DeviceHealth(
                    index=0, vram_used_mb=n.used(), vram_free_mb=n.vram_mb - n.used(), utilization_pct=0, temp_c=40
                )
            ],
            memory_free_mb=64000,
            models={m: ModelHealth(status=s, in_flight=n.in_flight.get(m, 0), queued=0) for m, s in n.status.items()},
        )

    async def models(self, base: str) -> list[ModelInfo]:
        n = self._n(base)
        return [
            ModelInfo(
                id=m,
                harness="torch",
                status=s,
                devices=[0],
                vram_used_mb=n.mb if s == "loaded" else None,
                quant=None,
                context_length=4096,
                load_progress=1.0 if s == "loaded" else 0.5,
                error=None,
            )
            for m, s in n.status.items()
        ]

    async def endpoint(self, base: str, model: str) -> str:
        return base

    async def footprint(self, base: str, model: str) -> tuple[int, int]:
        n = self._n(base)
        return n.mb, n.mb

    async def load(self, base: str, spec: ModelSpec) -> None:
        n = self._n(base)
        model = spec.model_id
        if n.status.get(model) in ("loading", "loaded"):
            return
        if n.used() + n.mb > n.vram_mb:
            raise ApiError("insufficient_storage", f"{model} needs {n.mb} MiB", status=507)
        n.status[model] = "loading"
        n.loads.append(model)

        async def finish() -> None:
            await asyncio.sleep(n.load_secs)
            n.status[model] = "loaded"

        asyncio.get_running_loop().create_task(finish())

    async def unload(self, base: str, model: str) -> None:
        n = self._n(base)
        if model not in n.status:
            raise ApiError("not_found", f"{model} is not loaded")
        while n.in_flight.get(model, 0):
            await asyncio.sleep(0.002)
        await asyncio.sleep(n.unload_secs)
        del n.status[model]
        n.unloads.append(model)

    async def restart(self, base: str) -> None:
        n = self._n(base)
        n.restarts += 1


def fleet_of(neurons: dict[str, SimNeuron], models: list[str], **eviction) -> tuple[Fleet, SimClient]:
    config = CortexConfig(
        gateway=GatewaySection(load_timeout_secs=30),
        eviction=EvictionSection(**eviction),
        neurons=[NeuronEntry(name=name, endpoint=f"http://{name}") for name in neurons],
    )
    catalogue = Catalogue(models=[ModelProfile(id=m, min_devices=1) for m in models])
    return Fleet(config, catalogue), SimClient(neurons)


class Gateway(Scheduler):
    """The scheduler with the gateway's poller beside it, as ``cortex serve`` runs them."""

    def start(self) -> None:
        super().start()
        self._poller = asyncio.get_running_loop().create_task(poll_forever(self.fleet, self.client, 0.05))

    async def stop(self) -> None:
        self._poller.cancel()
        await super().stop()


async def started_scheduler(fleet: Fleet, client: SimClient) -> Scheduler:
    await poll_once(fleet, client)  # type: ignore[arg-type]
    scheduler = Gateway(fleet, client, tick_secs=0.01, load_poll_secs=0.01)  # type: ignore[arg-type]
    scheduler.start()
    return scheduler


async def request(scheduler: Scheduler, neurons: dict[str, SimNeuron], model: str) -> float:
    """One request through routing and the simulated neuron; returns its latency."""
    t0 = time.monotonic()
    route = await scheduler.route(model)
    scheduler.request_started(route.node, model)
    try:
        await neurons[route.node.name].serve(model)
    finally:
        scheduler.request_finished(route.node, model)
    return time.monotonic() - t0


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


# --- swap thrash ----------------------------------------------------------------------------


def agent_workload(seed: int = 7) -> list[tuple[float, str]]:
    """Arrival times of an agent session: a main agent on A all along (a request every 60 ms)
    and sub-agents on B, then C, then B (every 120 ms, 0.6 s each), interleaved in time."""
    rng = random.Random(seed)
    arrivals = [(i * 0.06 + rng.uniform(0, 0.01), "A") for i in range(40)]
    for start, model in ((0.1, "B"), (0.9, "C"), (1.7, "B")):
        arrivals += [(start + i * 0.12 + rng.uniform(0, 0.01), model) for i in range(5)]
    return sorted(arrivals)


async def run_fifo(workload: list[tuple[float, str]], sim: SimNeuron) -> tuple[int, list[float]]:
    """The baseline: requests served one by one in arrival order; a request for a model that is
    not resident swaps it in first (unload, load)."""
    client = SimClient({"n": sim})
    queue: asyncio.Queue = asyncio.Queue()
    swaps = 0
    latencies: list[float] = []
    resident: str | None = None

    async def worker() -> None:
        nonlocal swaps, resident
        while True:
            arrived, model, done = await queue.get()
            if model != resident:
                if resident is not None:
                    await client.unload("http://n", resident)
                await client.load("http://n", ModelSpec(model_id=model))
                while sim.status[model] != "loaded":
                    await asyncio.sleep(0.005)
                resident, swaps = model, swaps + 1
            await sim.serve(model)
            latencies.append(time.monotonic() - arrived)
            done.set()

    server = asyncio.create_task(worker())
    t0 = time.monotonic()
    events = []
    for at, model in workload:
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        event = asyncio.Event()
        events.append(event)
        queue.put_nowait((time.monotonic(), model, event))
    for event in events:
        await event.wait()
    server.cancel()
    return swaps, latencies


async def run_cortex(workload: list[tuple[float, str]], sim: SimNeuron, max_wait: float) -> tuple[int, list[float]]:
    neurons = {"n": sim}
    fleet, client = fleet_of(
        neurons, ["A", "B", "C"], min_residency_secs=0.0, swap_after_secs=0.25, max_wait_secs=max_wait
    )
    scheduler = await started_scheduler(fleet, client)
    try:
        t0 = time.monotonic()

        async def at(when: float, model: str) -> float:
            await asyncio.sleep(max(0.0, t0 + when - time.monotonic()))
            return await request(scheduler, neurons, model)

        latencies = await asyncio.gather(*(at(when, model) for when, model in workload))
    finally:
        await scheduler.stop()
    return len(sim.loads), list(latencies)


def test_swap_aware_scheduling_beats_fifo_on_an_agent_workload(capsys):
    workload = agent_workload()
    max_wait = 5.0

    async def main():
        fifo = await run_fifo(workload, SimNeuron())
        ours = await run_cortex(workload, SimNeuron(), max_wait)
        return fifo, ours

    (fifo_swaps, fifo_lat), (our_swaps, our_lat) = asyncio.run(main())
    with capsys.disabled():
        print(
            f"\nswap thrash, {len(workload)} requests, room for 1 of 3 models, load 100 ms, serve 20 ms:\n"
            f"  FIFO one-request-one-swap: {fifo_swaps} swaps, mean latency {statistics.mean(fifo_lat) * 1e3:.0f} ms, "
            f"max {max(fifo_lat) * 1e3:.0f} ms\n"
            f"  cortex:                    {our_swaps} swaps, mean latency {statistics.mean(our_lat) * 1e3:.0f} ms, "
            f"max {max(our_lat) * 1e3:.0f} ms ({fifo_swaps / our_swaps:.1f}x fewer swaps)"
        )
    assert len(our_lat) == len(workload)  # every request answered, none refused
    assert fifo_swaps >= 3 * our_swaps
    assert statistics.mean(our_lat) <= statistics.mean(fifo_lat)
    assert max(our_lat) < max_wait
