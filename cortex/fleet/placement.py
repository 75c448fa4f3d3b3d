"""Where a cold model goes, as a pure decision over a snapshot of the fleet.

A neuron where the model fits now wins (pinned neurons first, then the most free memory). Else a
neuron where it fits after evicting displaceable residents: the fewest and cheapest evictions,
chosen in the eviction strategy's order (``lru``: least recently used first; ``priority``:
lowest ``residency_priority`` first, least recently used within a priority). A model displaces
only residents of equal or lower priority, never one younger than ``min_residency_secs``, and
never one in use unless the incoming model has waited past its patience (then the resident
drains first). When only such passing reasons stand in the way the answer is "wait"; when
nothing could ever make room, "never", with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cortex.config import ModelProfile


@dataclass
class Resident:
    """A model resident on a neuron, as placement sees it."""

    model: str
    devices: list[int]  # [] = the host CPU
    mb: int
    priority: int
    busy: bool  # requests in flight, queued there, or waiting for it at the gateway
    age_secs: float  # since it became resident
    idle_secs: float  # since it was last used


@dataclass
class NodeView:
    name: str
    host_free_mb: int
    device_free_mb: dict[int, int]  # device index -> free MB
    residents: list[Resident]
    occupied: bool = False  # an operation (load, swap, restart) is under way
    need_mb: int = 0  # the model's footprint here; 0 when unknown (the neuron's 507 decides)


@dataclass
class Plan:
    kind: str  # "fits" | "evict" | "wait" | "never"
    node: str | None = None
    devices: list[int] = field(default_factory=list)
    victims: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class Rules:
    strategy: str = "lru"
    min_residency_secs: float = 30.0
    swap_after_secs: float = 5.0


def _devices_fitting(free: dict[int, int], count: int, per_device: int) -> list[int] | None:
    """The ``count`` devices with the most free memory, when each has ``per_device`` MB."""
    ranked = sorted(free.items(), key=lambda kv: (-kv[1], kv[0]))[:count]
    if len(ranked) < count or any(mb < per_device for _, mb in ranked):
        return None
    return sorted(d for d, _ in ranked)


def _fits(view: NodeView, profile: ModelProfile, freed: list[Resident]) -> list[int] | None:
    """The devices to load on when ``freed`` are gone ([] for the CPU), or None if it does not fit."""
    if profile.min_devices == 0:
        host = view.host_free_mb + sum(r.mb for r in freed if not r.devices)
        return [] if host >= view.need_mb else None
    free = dict(view.device_free_mb)
    for r in freed:
        for d in r.devices:
            free[d] = free.get(d, 0) + r.mb // max(1, len(r.devices))
    return _devices_fitting(free, profile.min_devices, math.ceil(view.need_mb / profile.min_devices))


def _order(residents: list[Resident], strategy: str) -> list[Resident]:
    if strategy == "priority":
        return sorted(residents, key=lambda r: (r.priority, -r.idle_secs, r.model))
    return sorted(residents, key=lambda r: (-r.idle_secs, r.model))


def _on_same_resource(r: Resident, profile: ModelProfile) -> bool:
    return (not r.devices) if profile.min_devices == 0 else bool(r.devices)


def _free_total(view: NodeView, profile: ModelProfile) -> int:
    if profile.min_devices == 0:
        return view.host_free_mb
    return sum(sorted(view.device_free_mb.values(), reverse=True)[: profile.min_devices])


def plan(
    model: str, profile: ModelProfile, priority: int, views: list[NodeView], rules: Rules, *, patient: bool
) -> Plan:
    """Where ``model`` should go now. ``views`` are the feasible neurons (hardware, pins);
    ``patient`` says the model's oldest request has waited past ``swap_after_secs``."""
    pinned = set(profile.pinned_on)
    fits_now: list[tuple[tuple, Plan]] = []
    evictions: list[tuple[tuple, Plan]] = []
    waits: list[str] = []
    blocked: list[str] = []
    for view in views:
        if view.occupied:
            waits.append(f"{view.name} is busy with another load")
            continue
        devices = _fits(view, profile, [])
        rank = (view.name not in pinned, -_free_total(view, profile), view.name)
        if devices is not None:
            fits_now.append((rank, Plan("fits", view.name, devices)))
            continue
        candidates = [r for r in view.residents if r.model != model and _on_same_resource(r, profile)]
        higher = [r for r in candidates if r.priority > priority]
        lower = [r for r in candidates if r.priority <= priority]
        if _fits(view, profile, lower) is None:
            why = f"{view.name} cannot make room for {view.need_mb} MB"
            if higher:
                why += f" without evicting higher-priority {', '.join(sorted(r.model for r in higher))}"
            blocked.append(why)
            continue

        def waiting_reason(r: Resident) -> str | None:
            if r.age_secs < rules.min_residency_secs:
                return f"{r.model} is younger than min_residency_secs"
            if not patient and r.busy:
                return f"{r.model} is in use"
            if not patient and r.idle_secs < rules.swap_after_secs:
                return f"{r.model} was used {r.idle_secs:.1f} s ago"
            return None

        displaceable = [r for r in lower if waiting_reason(r) is None]
        chosen: list[Resident] = []
        devices = None
        for r in _order(displaceable, rules.strategy):
            chosen.append(r)
            devices = _fits(view, profile, chosen)
            if devices is not None:
                break
        if devices is None:
            reasons = sorted({w for r in lower if (w := waiting_reason(r)) is not None})
            waits.append(f"{view.name}: " + "; ".join(reasons))
            continue
        cost = (len(chosen), max(r.priority for r in chosen), -min(r.idle_secs for r in chosen))
        evictions.append(((cost, *rank), Plan("evict", view.name, devices, [r.model for r in chosen])))
    if fits_now:
        return min(fits_now, key=lambda t: t[0])[1]
    if evictions:
        best = min(evictions, key=lambda t: t[0])[1]
        best.reason = f"evicting {', '.join(best.victims)} on {best.node}"
        return best
    if waits:
        return Plan("wait", reason="; ".join(waits))
    if not views:
        return Plan("never", reason="no neuron that is up has the hardware for it")
    return Plan("never", reason="; ".join(blocked))
