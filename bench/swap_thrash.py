#!/usr/bin/env python3
"""Swap thrash: cortex's scheduler against a FIFO one-request-one-swap baseline on an agent workload.

A simulated neuron (in-process, short real delays) has room for one model of three; loads take
100 ms, unloads 10 ms, a request is served in 20 ms, one at a time per model. The workload is an
agent session (fixed seed): a main agent on A all along (a request every 60 ms) and sub-agents on B,
then C, then B (a request every 120 ms, 0.6 s each), interleaved in time: 55 requests. The baseline
serves requests in arrival order and swaps the model in whenever the next request needs another
one; cortex batches waiters per model and swaps only after ``swap_after_secs``. Prints a table of
swaps and request latencies per policy; never asserts (tests/unit/cortex/fleet/test_scheduler.py
holds the scheduler to these numbers and imports the simulator from here).

    python bench/swap_thrash.py [--seed 7] [--max-wait-secs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cortex.config import Catalogue, CortexConfig, EvictionSection, GatewaySection, ModelProfile, NeuronEntry
from cortex.fleet.neurons import NeuronUnreachable
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

# --- the simulated neuron and the scheduler around it ---------------------------------------


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
    served: int = 0
    dead: bool = False  # answers nothing (the process died): every call is unreachable
    calls: dict[str, int] = field(default_factory=dict)  # calls the scheduler made, by method

    def used(self) -> int:
        return self.mb * sum(1 for s in self.status.values() if s in ("loading", "loaded"))

    async def serve(self, model: str) -> None:
        if self.status.get(model) != "loaded":  # the scheduler sent a request to a model not loaded
            raise RuntimeError(f"{model} served while {self.status.get(model)}")
        self.in_flight[model] = self.in_flight.get(model, 0) + 1
        self.served += 1
        try:
            async with self.locks.setdefault(model, asyncio.Lock()):
                await asyncio.sleep(self.serve_secs)
        finally:
            self.in_flight[model] -= 1


class SimClient:
    """NeuronClient's interface over SimNeurons (the peer the scheduler talks to)."""

    def __init__(self, neurons: dict[str, SimNeuron]) -> None:
        self.neurons = neurons

    def _n(self, base: str, call: str = "") -> SimNeuron:
        n = self.neurons[base.removeprefix("http://")]
        n.calls[call] = n.calls.get(call, 0) + 1
        if n.dead:
            raise NeuronUnreachable(f"{base}: connection refused")
        return n

    async def discovery(self, base: str) -> Discovery:
        n = self._n(base, "discovery")
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
        n = self._n(base, "health")
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
        n = self._n(base, "models")
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
        self._n(base, "endpoint")
        await asyncio.sleep(0)  # a real call yields to the loop before it answers
        return base

    async def footprint(self, base: str, model: str) -> tuple[int, int]:
        n = self._n(base, "footprint")
        return n.mb, n.mb

    async def load(self, base: str, spec: ModelSpec) -> None:
        n = self._n(base, "load")
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
        n = self._n(base, "unload")
        if model not in n.status:
            raise ApiError("not_found", f"{model} is not loaded")
        while n.in_flight.get(model, 0):
            await asyncio.sleep(0.002)
        await asyncio.sleep(n.unload_secs)
        del n.status[model]
        n.unloads.append(model)

    async def restart(self, base: str) -> None:
        n = self._n(base, "restart")
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
    route = await scheduler.route(model)  # counted as started on route.node
    try:
        await neurons[route.node.name].serve(model)
    finally:
        scheduler.request_finished(route.node, model)
    return time.monotonic() - t0


# --- swap thrash: the workload and the two policies ----------------------------------------


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


# --- the measurement --------------------------------------------------------------------------


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


FIFO, CORTEX = "FIFO one-request-one-swap", "cortex"  # the policies, baseline first


async def measure(workload: list[tuple[float, str]], max_wait: float) -> dict[str, tuple[int, list[float]]]:
    """Swaps and per-request latencies of each policy, on a fresh simulated neuron each."""
    return {
        FIFO: await run_fifo(workload, SimNeuron()),
        CORTEX: await run_cortex(workload, SimNeuron(), max_wait),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=7, help="seed of the arrival jitter (default: %(default)s)")
    ap.add_argument("--max-wait-secs", type=float, default=5.0, help="cortex's max_wait_secs (default: %(default)s)")
    args = ap.parse_args()
    workload = agent_workload(args.seed)
    sim = SimNeuron()
    results = asyncio.run(measure(workload, args.max_wait_secs))

    print("# swap thrash: cortex's scheduler against FIFO one-request-one-swap\n")
    print(f"- Python {platform.python_version()}, commit {git_commit()}")
    print(
        f"- {len(workload)} requests (seed {args.seed}), room for 1 of 3 models, load {sim.load_secs * 1e3:.0f} ms, "
        f"unload {sim.unload_secs * 1e3:.0f} ms, serve {sim.serve_secs * 1e3:.0f} ms; "
        f"cortex max_wait_secs {args.max_wait_secs:g}\n"
    )
    print("| policy | swaps | mean latency ms | max latency ms |")
    print("|---|---|---|---|")
    for policy, (swaps, latencies) in results.items():
        print(f"| {policy} | {swaps} | {statistics.mean(latencies) * 1e3:.0f} | {max(latencies) * 1e3:.0f} |")
    (fifo_swaps, fifo_lat), (our_swaps, our_lat) = results[FIFO], results[CORTEX]
    print(
        f"\n- FIFO / cortex: {fifo_swaps / max(our_swaps, 1):.1f}x the swaps, "
        f"{statistics.mean(fifo_lat) / statistics.mean(our_lat):.1f}x the mean latency"
    )


if __name__ == "__main__":
    main()
