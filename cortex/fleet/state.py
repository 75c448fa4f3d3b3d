"""What the gateway knows about its fleet: per neuron, the last discovery, health and model
list it polled, whether it is up, how many requests the gateway has in flight there, when each
model was last used and first seen resident, what it is doing (a load, a swap, a restart); per
model, the footprints measured so far.

Rebuilt entirely from the neurons after a restart: nothing here is persisted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum

import msgspec

from cortex.config import Catalogue, CortexConfig, ModelProfile, is_pattern
from cortex.fleet.events import EventHub
from cortex.protocol.fleet import Discovery, Health, ModelInfo, ModelStatus


class Operation(StrEnum):
    """What the gateway is doing on a neuron (one operation at a time)."""

    LOADING = "loading"
    MAKING_ROOM = "making room for"
    UNLOADING = "unloading"
    RESTARTING = "restarting"


@dataclass(frozen=True)
class Busy:
    op: Operation
    model: str | None = None

    def __str__(self) -> str:
        return f"{self.op} {self.model}" if self.model else str(self.op)


DOWN_AFTER_FAILURES = 3
DEFAULT_PRIORITY = 100
PINNED_PRIORITY = 1000


@dataclass
class Node:
    name: str
    endpoint: str
    api_key: str | None = None  # the neuron's fleet key, presented on every call to it
    discovery: Discovery | None = None
    health: Health | None = None
    models: dict[str, ModelInfo] = field(default_factory=dict)
    up: bool = False
    failures: int = 0
    last_ok: float | None = None
    in_flight: dict[str, int] = field(default_factory=dict)  # model -> requests the gateway relays now
    endpoints: dict[str, str] = field(default_factory=dict)  # model -> inference base URL (cached)
    loaded_at: dict[str, float] = field(default_factory=dict)  # model -> first seen resident (monotonic)
    last_used: dict[str, float] = field(default_factory=dict)  # model -> last request started or ended
    draining: set[str] = field(default_factory=set)  # chosen for eviction: no new requests go there
    busy: Busy | None = None  # the operation under way (a load, a swap, a restart), one at a time
    cycles: int = 0  # unloads since the neuron last restarted (defragmentation)
    poll_error: str | None = None  # why the last poll failed (logged when it changes)
    shunned_until: float = 0.0  # an operation found it unreachable: no placement here until then (or a poll)
    went_down: asyncio.Event = field(default_factory=asyncio.Event)  # set while it is down (polls fail)
    events: EventHub | None = None  # where its changes are told (the fleet page)

    def is_shunned(self, now: float) -> bool:
        return now < self.shunned_until

    def status_of(self, model: str) -> str | None:
        info = self.models.get(model)
        return info.status if info is not None else None

    @property
    def restarting(self) -> bool:
        return self.busy is not None and self.busy.op is Operation.RESTARTING

    def serves(self, model: str) -> bool:
        """Whether a request for ``model`` may go here now."""
        return (
            self.up
            and not self.restarting
            and model not in self.draining
            and self.status_of(model) == ModelStatus.LOADED
        )

    def requests_on(self, model: str) -> int:
        """Requests for ``model`` here: the gateway's own, or the neuron's count (other gateways')."""
        mine = self.in_flight.get(model, 0)
        health = self.health.models.get(model) if self.health is not None else None
        return max(mine, health.in_flight + health.queued if health is not None else 0)

    def free_memory_mb(self, min_devices: int) -> int:
        """Free memory for a model needing ``min_devices`` GPUs (0: host memory)."""
        if self.health is None:
            return 0
        if min_devices == 0:
            return self.health.memory_free_mb
        free = sorted((d.vram_free_mb for d in self.health.devices), reverse=True)
        return sum(free[:min_devices]) if len(free) >= min_devices else 0

    def record_success(self, discovery: Discovery | None, health: Health, models: list[ModelInfo]) -> None:
        if discovery is not None:
            self.discovery = discovery
        if self.events is not None and (
            self.health is None or msgspec.json.encode(health) != msgspec.json.encode(self.health)
        ):
            self.events.publish("health", node=self.name, health=health)
        self.health = health
        self.set_models({m.id: m for m in models})
        for model in list(self.endpoints):
            if self.status_of(model) != "loaded":
                del self.endpoints[model]
        self.note_residents()
        if self.events is not None and (not self.up or self.failures):
            self.events.publish("neuron", node=self.name, state="up")
        self.up, self.failures, self.last_ok = True, 0, time.monotonic()
        self.shunned_until = 0.0
        self.went_down.clear()

    def set_models(self, models: dict[str, ModelInfo]) -> None:
        """The neuron's model list as just read; tells what changed (a load began or progressed,
        ended loaded or failed; a model went away without the gateway asking)."""
        before, self.models = self.models, models
        hub = self.events
        if hub is None:
            return
        for model, info in models.items():
            old = before.get(model)
            if old is not None and (old.status, old.load_progress) == (info.status, info.load_progress):
                continue
            if info.status == ModelStatus.LOADING:
                if model in self.draining:  # a neuron lists a model it is unloading as loading
                    continue
                hub.publish("model", node=self.name, model=model, state="loading", progress=info.load_progress or 0.0)
            elif old is None or old.status != info.status:
                if info.status == ModelStatus.LOADED:
                    extra = {"vram_used_mb": info.vram_used_mb, "devices": info.devices}
                else:
                    extra = {"error": info.error}
                hub.publish("model", node=self.name, model=model, state=str(info.status), **extra)
        for model in before.keys() - models.keys() - self.draining:  # (an eviction tells its own end)
            hub.publish("model", node=self.name, model=model, state="unloaded")

    def note_residents(self) -> None:
        """Starts the residency clock of models seen loaded for the first time; forgets the gone."""
        now = time.monotonic()
        for model, info in self.models.items():
            if info.status == "loaded":
                self.loaded_at.setdefault(model, now)
                self.last_used.setdefault(model, now)
        for model in [m for m in self.loaded_at if self.status_of(m) != "loaded"]:
            del self.loaded_at[model]
            self.last_used.pop(model, None)

    def device_kind(self, devices: list[int]) -> str:
        """What a footprint measured here applies to: ``cpu``, or the GPU model's name."""
        if not devices or self.discovery is None:
            return "cpu"
        names = {d.index: d.name for d in self.discovery.devices}
        return names.get(devices[0], "gpu")

    def placement_kind(self, gpu: bool) -> str:
        """The device kind a model placed here would run on: its first GPU's, or ``cpu``."""
        first = self.discovery.devices[:1] if gpu and self.discovery is not None else []
        return self.device_kind([d.index for d in first])

    def record_failure(self, reason: str = "") -> bool:
        """Counts a failed poll; returns True when this one took the node down."""
        self.failures += 1
        if self.up and self.failures >= DOWN_AFTER_FAILURES:
            self.up = False
            self.endpoints.clear()
            self.went_down.set()  # relays waiting on it give up with an error
            if self.events is not None:
                self.events.publish("neuron", node=self.name, state="down", reason=reason)
            return True
        if self.up and self.failures == 1 and self.events is not None:
            self.events.publish("neuron", node=self.name, state="degraded", reason=reason)
        return False


def feasible(profile: ModelProfile, node: Node) -> bool:
    """Whether the node's hardware can ever hold the model (device count, per-device floor, pins)."""
    if profile.pinned_on and node.name not in profile.pinned_on:
        return False
    if node.discovery is None:
        return False
    if profile.min_devices == 0:
        need = profile.vram_mb or 0
        return node.discovery.cpu.memory_total_mb >= need
    floor = profile.min_device_vram_mb or 0
    big_enough = [d for d in node.discovery.devices if d.vram_total_mb >= floor]
    return len(big_enough) >= profile.min_devices


class Fleet:
    def __init__(self, config: CortexConfig, catalogue: Catalogue) -> None:
        self.config = config
        self.catalogue = catalogue
        self.events = EventHub(buffer=config.gateway.events_buffer)
        self.nodes: dict[str, Node] = {
            n.name: Node(n.name, n.endpoint.rstrip("/"), n.api_key, events=self.events) for n in config.neurons
        }
        self.started = time.time()
        self.footprints: dict[tuple[str, str], int] = {}  # (model, device kind) -> measured MB
        self.estimates: dict[tuple[str, str], tuple[int, int]] = {}  # (model, node) -> (cpu MB, gpu MB)

    def canonical(self, model: str) -> str:
        """The model an alias (exact or pattern, one hop) points at, or the model itself."""
        return self.catalogue.resolve(model)

    def up_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.up]

    def replicas(self, model: str) -> list[Node]:
        """Nodes a request for the model may go to now, least busy first (ties by name)."""
        found = [n for n in self.nodes.values() if n.serves(model)]
        return sorted(found, key=lambda n: (n.in_flight.get(model, 0), n.name))

    def priority(self, model: str) -> int:
        """Residency priority: the catalogue's, else 1000 for pinned models and 100 for others."""
        profile = self.catalogue.profile(model)
        if profile is None:
            return DEFAULT_PRIORITY
        if profile.residency_priority is not None:
            return profile.residency_priority
        return PINNED_PRIORITY if profile.pinned_on else DEFAULT_PRIORITY

    def learn_footprints(self, node: Node) -> None:
        """Remembers what each loaded model measured on this kind of device (for this gateway's life)."""
        for info in node.models.values():
            if info.status == "loaded" and info.vram_used_mb:
                self.footprints[(info.id, node.device_kind(info.devices))] = info.vram_used_mb

    def footprint(self, model: str, node: Node, gpu: bool) -> int | None:
        """What ``model`` needs on ``node`` in MB: measured on this kind of device, else the catalogue's
        ``vram_mb``, else the neuron's estimate from the weight files; None when nothing is known."""
        kind = node.placement_kind(gpu)
        if (model, kind) in self.footprints:
            return self.footprints[(model, kind)]
        profile = self.catalogue.profile(model)
        if profile is not None and profile.vram_mb is not None:
            return profile.vram_mb
        estimate = self.estimates.get((model, node.name))
        if estimate is not None:
            return estimate[1] if gpu else estimate[0]
        return None

    def loading_on(self, model: str) -> list[Node]:
        return [n for n in self.up_nodes() if n.status_of(model) == "loading"]

    def feasible_nodes(self, profile: ModelProfile) -> list[Node]:
        """Up nodes that could hold the model, pinned ones first, then most free memory."""
        found = [n for n in self.up_nodes() if feasible(profile, n)]
        return sorted(
            found,
            key=lambda n: (n.name not in profile.pinned_on, -n.free_memory_mb(profile.min_devices), n.name),
        )

    def model_entries(self) -> list[dict]:
        """The merged catalogue of ``GET /v1/models``."""
        entries: dict[str, dict] = {}
        for profile in self.catalogue.models:
            if any(feasible(profile, n) for n in self.up_nodes()):
                entries[profile.id] = self._entry(profile.id)
        for node in self.nodes.values():
            for model, info in node.models.items():
                if model not in entries and info.status in ("loaded", "loading"):
                    entries[model] = self._entry(model)
        for alias, target in self.catalogue.aliases.items():
            if target in entries and not is_pattern(alias):
                entries[alias] = {**entries[target], "id": alias, "alias_of": target}
        return list(entries.values())

    def _entry(self, model: str) -> dict:
        locations, context = [], None
        for node in self.nodes.values():
            info = node.models.get(model)
            if info is None or info.status not in ("loaded", "loading"):
                continue
            location = {"node": node.name, "status": info.status}
            if info.status == "loading" and info.load_progress is not None:
                location["load_progress"] = info.load_progress
            locations.append(location)
            context = context or info.context_length
        statuses = {loc["status"] for loc in locations}
        status = "loaded" if "loaded" in statuses else ("loading" if "loading" in statuses else "available")
        entry = {
            "id": model,
            "object": "model",
            "created": int(self.started),
            "owned_by": "helexa",
            "status": status,
            "locations": locations,
        }
        if context is not None:
            entry["context_length"] = context
        return entry
