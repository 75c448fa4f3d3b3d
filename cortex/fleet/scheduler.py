"""Choosing where a request runs: a loaded replica with the fewest in-flight requests (ties by
name), else one cold load on a feasible neuron (pinned first, then most free memory) that every
concurrent request for the model shares. A neuron that cannot take the model (full, gone) makes
way for the next candidate; when none can, the client gets 503 with Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from cortex.config import ModelProfile
from cortex.fleet.neurons import NeuronClient, NeuronUnreachable
from cortex.fleet.state import Fleet, Node
from cortex.protocol.errors import ApiError
from cortex.protocol.fleet import ModelInfo, ModelSpec

log = logging.getLogger(__name__)

RETRY_AFTER_SECS = 5.0
LOADING_POLL_SECS = 0.5


class LoadObserver(Protocol):
    def load_finished(self, model: str, node: str, result: str, secs: float) -> None: ...


@dataclass
class Route:
    node: Node
    url: str
    cold: bool
    load_ms: float | None = None


def _devices_for(profile: ModelProfile, node: Node) -> list[int]:
    if profile.min_devices == 0 or node.discovery is None:
        return []
    floor = profile.min_device_vram_mb or 0
    free = {d.index: d.vram_free_mb for d in (node.health.devices if node.health else [])}
    fits = [d for d in node.discovery.devices if d.vram_total_mb >= floor]
    fits.sort(key=lambda d: (-free.get(d.index, d.vram_total_mb), d.index))
    return sorted(d.index for d in fits[: profile.min_devices])


class Scheduler:
    def __init__(self, fleet: Fleet, client: NeuronClient, observer: LoadObserver | None = None) -> None:
        self.fleet = fleet
        self.client = client
        self.observer = observer
        self._loads: dict[str, asyncio.Task[Node]] = {}

    def _unavailable(self, message: str) -> ApiError:
        return ApiError("unavailable", message, retry_after=RETRY_AFTER_SECS)

    def _not_found(self, model: str) -> ApiError:
        fleet = self.fleet
        known = sorted({m for n in fleet.nodes.values() for m in n.models} | {p.id for p in fleet.catalogue.models})
        return ApiError(
            "not_found",
            f"model {model!r} is not served by this fleet: not loaded on any neuron and not in the catalogue"
            + (f" (known: {', '.join(known[:20])})" if known else ""),
            param="model",
            code="model_not_found",
        )

    def _check_fleet(self) -> None:
        fleet = self.fleet
        if not fleet.nodes:
            raise self._unavailable("no neurons are configured ([[neurons]] in cortex.toml)")
        if not fleet.up_nodes():
            raise self._unavailable(f"none of the {len(fleet.nodes)} neurons is reachable right now")

    async def count_tokens(self, model: str, body: bytes) -> int:
        """A prompt's token count from a neuron with the model's files: where it is loaded or
        loading first, then where it could be placed. Counting never loads a model."""
        self._check_fleet()
        fleet = self.fleet
        profile = fleet.catalogue.profile(model)
        nodes = fleet.replicas(model) + fleet.loading_on(model)
        if profile is not None:
            nodes += fleet.feasible_nodes(profile)
        if not nodes:
            if profile is None:
                raise self._not_found(model)
            raise self._unavailable(f"no neuron that is up can hold {model!r}, so none can count its tokens")
        problems: list[str] = []
        asked: set[str] = set()
        for node in nodes:
            if node.name in asked:
                continue
            asked.add(node.name)
            try:
                return await self.client.tokenize(node.endpoint, body)
            except NeuronUnreachable as exc:
                problems.append(f"{node.name}: unreachable")
                log.info("tokenize on %s failed: %s", node.name, exc)
            except ApiError as exc:
                if exc.status != 404:  # the request itself is wrong: every neuron would say so
                    raise
                problems.append(f"{node.name}: {exc.message}")
        raise self._unavailable(f"no neuron could count tokens for {model!r}: " + "; ".join(problems))

    async def route(self, model: str, *, exclude: frozenset[str] = frozenset()) -> Route:
        """Where ``model`` (a canonical id) runs now; loads it first when it must."""
        fleet = self.fleet
        self._check_fleet()
        for node in fleet.replicas(model):
            if node.name in exclude:
                continue
            try:
                return Route(node, await self._endpoint(node, model), cold=False)
            except NeuronUnreachable as exc:
                log.info("endpoint of %s on %s failed: %s", model, node.name, exc)
        profile = fleet.catalogue.profile(model)
        if profile is None and not fleet.loading_on(model):
            raise self._not_found(model)
        started = time.monotonic()
        node = await self.ensure_loaded(model, profile)
        try:
            url = await self._endpoint(node, model)
        except NeuronUnreachable as exc:
            raise self._unavailable(f"neuron {node.name} loaded {model!r} but then stopped answering: {exc}") from None
        return Route(node, url, cold=True, load_ms=(time.monotonic() - started) * 1000)

    async def _endpoint(self, node: Node, model: str) -> str:
        url = node.endpoints.get(model)
        if url is None:
            url = await self.client.endpoint(node.endpoint, model)
            node.endpoints[model] = url
        return url

    async def ensure_loaded(self, model: str, profile: ModelProfile | None, node: Node | None = None) -> Node:
        """Loads ``model`` (on ``node`` or where placement says) unless a load is already under
        way; every caller waits for the same load."""
        task = self._loads.get(model)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._load(model, profile, node), name=f"load {model}")
            self._loads[model] = task
            task.add_done_callback(lambda t: self._loads.pop(model, None) if self._loads.get(model) is t else None)
        return await asyncio.shield(task)

    async def _load(self, model: str, profile: ModelProfile | None, node: Node | None) -> Node:
        loading = self.fleet.loading_on(model)
        if node is None and loading:  # someone else (another gateway, an operator) started it
            return await self._wait_loading(model, loading[0])
        if profile is None:
            profile = ModelProfile(id=model)
        candidates = [node] if node is not None else self.fleet.feasible_nodes(profile)
        if not candidates:
            need = "the host CPU" if profile.min_devices == 0 else f"{profile.min_devices} GPU(s)"
            floor = f" with {profile.min_device_vram_mb} MB each" if profile.min_device_vram_mb else ""
            pins = f" on {', '.join(profile.pinned_on)}" if profile.pinned_on else ""
            raise self._unavailable(f"no neuron that is up can hold {model!r} (needs {need}{floor}{pins})")
        problems = []
        for candidate in candidates:
            spec = ModelSpec(
                model_id=model,
                harness=profile.harness,
                quant=profile.quant,
                tensor_parallel=profile.min_devices if profile.min_devices > 1 else None,
                devices=_devices_for(profile, candidate),
                wait=True,
            )
            started = time.monotonic()
            log.info("cold load of %s on %s", model, candidate.name)
            try:
                await self.client.load(candidate.endpoint, spec)
            except NeuronUnreachable as exc:
                problems.append(f"{candidate.name}: unreachable")
                self._observe(model, candidate.name, "unreachable", started)
                log.warning("cold load of %s on %s: %s", model, candidate.name, exc)
                continue
            except ApiError as exc:
                self._observe(model, candidate.name, "full" if exc.status == 507 else "failed", started)
                if exc.status == 507:
                    problems.append(f"{candidate.name}: {exc.message}")
                    continue
                raise ApiError(
                    "upstream",
                    f"loading {model!r} on neuron {candidate.name} failed: {exc.message}",
                    code="load_failed",
                ) from None
            self._observe(model, candidate.name, "ok", started)
            info = candidate.models.get(model)
            candidate.models[model] = ModelInfo(
                id=model,
                harness=profile.harness or "torch",
                status="loaded",
                devices=spec.devices or [],
                vram_used_mb=info.vram_used_mb if info else profile.vram_mb,
                quant=profile.quant,
                context_length=info.context_length if info else None,
                load_progress=1.0,
                error=None,
            )
            log.info("loaded %s on %s in %.1f s", model, candidate.name, time.monotonic() - started)
            return candidate
        raise self._unavailable(f"no neuron could take {model!r}: " + "; ".join(problems))

    async def _wait_loading(self, model: str, node: Node) -> Node:
        deadline = time.monotonic() + self.fleet.config.gateway.load_timeout_secs
        while time.monotonic() < deadline:
            status = node.status_of(model)
            if status == "loaded":
                return node
            if status != "loading" or not node.up:
                break
            await asyncio.sleep(LOADING_POLL_SECS)
            with contextlib.suppress(NeuronUnreachable):
                node.models = {m.id: m for m in await self.client.models(node.endpoint)}
        raise self._unavailable(f"{model!r} was loading on {node.name} but did not become ready")

    def _observe(self, model: str, node: str, result: str, started: float) -> None:
        if self.observer is not None:
            self.observer.load_finished(model, node, result, time.monotonic() - started)
