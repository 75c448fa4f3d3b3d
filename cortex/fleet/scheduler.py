"""Where requests run and what is resident: routing, cold loads, eviction, swaps, restarts.

A request for a model that is resident goes to the replica with the fewest in-flight requests at
once; it never waits behind another model's load. A request for a cold model joins that model's
queue; every queued request of one model is served by one load. A planner task looks at the
queues whenever something changes (a request arrives or ends, a load finishes, a neuron fails)
and on a short tick, and asks :mod:`cortex.fleet.placement` where the oldest queue's model goes:

- it fits somewhere now → load it there (``wait: false``, progress polled);
- it fits after evicting → the victims drain (no new requests go to them; the ones in flight
  finish), are unloaded, and the model loads in their place;
- only passing reasons stand in the way (a resident in use or just used, or too young) → wait;
  the incoming model's patience (``swap_after_secs``) bounds how long a busy resident keeps it
  out, and ``max_wait_secs`` bounds the whole wait (then 503 + Retry-After);
- nothing could ever make room → 503 with the reason.

One operation runs per neuron at a time. After ``defrag_after_cycles`` unloads an idle neuron is
asked to restart (``POST /admin/restart``) and comes back with its models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from cortex.config import EvictionSection, ModelProfile
from cortex.fleet import placement
from cortex.fleet.neurons import NeuronClient, NeuronUnreachable
from cortex.fleet.state import Busy, Fleet, Node, Operation, feasible
from cortex.protocol.errors import ApiError, kind_of_status
from cortex.protocol.fleet import ModelSpec

log = logging.getLogger(__name__)

RETRY_AFTER_SECS = 5.0
TICK_SECS = 0.25  # the planner looks again at least this often (waits are timed)
LOAD_POLL_SECS = 0.25  # how often a load in progress is polled for its progress
RESTART_WAIT_SECS = 600.0


class LoadDropped(Exception):
    """The model left the neuron's list while it loaded: someone unloaded it."""


class LoadObserver(Protocol):
    def load_finished(self, model: str, node: str, result: str, secs: float) -> None: ...
    def evicted(self, model: str, node: str, reason: str) -> None: ...
    def restarted(self, node: str) -> None: ...


@dataclass
class Route:
    node: Node
    url: str
    cold: bool
    load_ms: float | None = None


@dataclass
class Waiter:
    """A request (or an admin load) waiting for its model to become resident."""

    future: asyncio.Future[Node]
    since: float
    node: str | None = None  # only this neuron (admin loads)
    exclude: frozenset[str] = frozenset()
    admin: bool = False  # an operator's load: a model outside the catalogue may load too

    def accepts(self, node: Node) -> bool:
        return (self.node is None or node.name == self.node) and node.name not in self.exclude


@dataclass
class Queue:
    waiters: list[Waiter] = field(default_factory=list)
    reason: str = ""  # why it waits, for the 503 when it waits too long

    def live(self) -> list[Waiter]:
        self.waiters = [w for w in self.waiters if not w.future.done()]
        return self.waiters


class Scheduler:
    def __init__(
        self,
        fleet: Fleet,
        client: NeuronClient,
        observer: LoadObserver | None = None,
        *,
        tick_secs: float = TICK_SECS,
        load_poll_secs: float = LOAD_POLL_SECS,
    ) -> None:
        self.fleet = fleet
        self.client = client
        self.observer = observer
        self.eviction: EvictionSection = fleet.config.eviction
        self.tick_secs = tick_secs
        self.load_poll_secs = load_poll_secs
        self.queues: dict[str, Queue] = {}
        self.operations: dict[str, asyncio.Task] = {}  # model -> its load (or swap) in progress
        self.node_tasks: dict[str, asyncio.Task] = {}  # node -> a restart in progress
        self._estimating: set[tuple[str, str]] = set()
        self.refusals: dict[tuple[str, str], str] = {}  # (model, node) -> the neuron's last 507
        self._changed = asyncio.Event()
        self._planner: asyncio.Task | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._planner is None:
            self._planner = asyncio.get_running_loop().create_task(self._plan_forever(), name="planner")

    async def stop(self) -> None:
        tasks = [t for t in (self._planner, *self.operations.values(), *self.node_tasks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._planner = None

    def changed(self) -> None:
        """Something the planner cares about happened: look again now."""
        self._changed.set()

    # --- requests -------------------------------------------------------------------------

    def request_started(self, node: Node, model: str) -> None:
        node.in_flight[model] = node.in_flight.get(model, 0) + 1
        node.last_used[model] = time.monotonic()

    def request_finished(self, node: Node, model: str) -> None:
        node.in_flight[model] -= 1
        node.last_used[model] = time.monotonic()
        if node.in_flight[model] == 0 and (node.draining or self.queues):
            self.changed()

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

    async def route(self, model: str, *, exclude: frozenset[str] = frozenset()) -> Route:
        """Where ``model`` (a canonical id) runs now; waits for its load when it must.

        The request counts as started on the chosen node from the moment it is chosen (before
        any await), so a burst spreads over the replicas instead of all choosing the one that
        looked least busy; the caller calls :meth:`request_finished` once for the route."""
        self._check_fleet()
        for node in self.fleet.replicas(model):
            if node.name in exclude:
                continue
            self.request_started(node, model)
            try:
                return Route(node, await self._endpoint(node, model), cold=False)
            except NeuronUnreachable as exc:
                log.info("endpoint of %s on %s failed: %s", model, node.name, exc)
                self.request_finished(node, model)
            except BaseException:
                self.request_finished(node, model)
                raise
        started = time.monotonic()
        node = await self._wait_resident(model, exclude=exclude)
        self.request_started(node, model)
        try:
            url = await self._endpoint(node, model)
        except NeuronUnreachable as exc:
            self.request_finished(node, model)
            raise self._unavailable(f"neuron {node.name} loaded {model!r} but then stopped answering: {exc}") from None
        except BaseException:
            self.request_finished(node, model)
            raise
        return Route(node, url, cold=True, load_ms=(time.monotonic() - started) * 1000)

    async def ensure_loaded(self, model: str, node: Node | None = None) -> Node:
        """Makes ``model`` resident (on ``node`` when given) under the same rules as a request."""
        self._check_fleet()
        for found in self.fleet.replicas(model):
            if node is None or found is node:
                return found
        return await self._wait_resident(model, node=node.name if node is not None else None, admin=True)

    async def _wait_resident(
        self, model: str, *, node: str | None = None, exclude: frozenset[str] = frozenset(), admin: bool = False
    ) -> Node:
        known = self.fleet.catalogue.profile(model) is not None or any(
            n.status_of(model) in ("loaded", "loading") for n in self.fleet.up_nodes()
        )
        if not known and not admin:
            raise self._not_found(model)
        waiter = Waiter(asyncio.get_running_loop().create_future(), time.monotonic(), node, exclude, admin)
        self.queues.setdefault(model, Queue()).waiters.append(waiter)
        self.changed()
        try:
            return await waiter.future
        finally:
            if not waiter.future.done():
                waiter.future.cancel()

    async def _endpoint(self, node: Node, model: str) -> str:
        url = node.endpoints.get(model)
        if url is None:
            url = await self.client.endpoint(node.endpoint, model)
            node.endpoints[model] = url
        return url

    def forget(self, node: Node, model: str) -> None:
        """A neuron answered that ``model`` is not (or no longer) there: stop sending it requests."""
        if node.models.pop(model, None) is not None:
            self.fleet.events.publish("model", node=node.name, model=model, state="unloaded")
        node.endpoints.pop(model, None)
        self.changed()

    # --- token counts ---------------------------------------------------------------------

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

    # --- the planner ----------------------------------------------------------------------

    async def _plan_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self.tick_secs)
            self._changed.clear()
            try:
                self._plan()
            except Exception:  # a bug must not stop every future load
                log.exception("planning failed")

    def _plan(self) -> None:
        now = time.monotonic()
        for model in sorted(self.queues, key=lambda m: min((w.since for w in self.queues[m].waiters), default=now)):
            queue = self.queues[model]
            try:
                self._plan_model(model, queue, now)
            except Exception:  # one model's bug fails its own waiters, never every other model's loads
                log.exception("planning %r failed", model)
                self._fail(model, ApiError("internal", f"the gateway could not plan a load of {model!r}; see its log"))
        self._defragment()

    def _plan_model(self, model: str, queue: Queue, now: float) -> None:
        waiters = queue.live()
        if not waiters:
            del self.queues[model]
            return
        self._serve_resident(model, waiters)
        waiters = queue.live()
        if not waiters or model in self.operations:
            return
        loading = [n for n in self.fleet.loading_on(model) if not n.restarting and any(w.accepts(n) for w in waiters)]
        if loading:  # someone else (another gateway, an operator) is loading it: follow that load
            self._start(model, loading[0], self._follow(model, loading[0]))
            return
        self._place(model, queue, now)
        if model not in self.operations:
            self._expire(model, queue, now)

    def _serve_resident(self, model: str, waiters: list[Waiter]) -> None:
        replicas = self.fleet.replicas(model)
        for w in waiters:
            node = next((n for n in replicas if w.accepts(n)), None)
            if node is not None:
                w.future.set_result(node)

    def _expire(self, model: str, queue: Queue, now: float) -> None:
        limit = self.eviction.max_wait_secs
        for w in queue.live():
            if now - w.since >= limit:
                why = queue.reason or "no neuron could make room"
                w.future.set_exception(self._unavailable(f"{model!r} waited {limit:g} s for room on the fleet: {why}"))

    def _place(self, model: str, queue: Queue, now: float) -> None:
        fleet = self.fleet
        waiters = queue.live()
        profile = fleet.catalogue.profile(model)
        if profile is None:  # only an operator may load a model outside the catalogue
            if not any(w.admin for w in waiters):
                for w in waiters:
                    w.future.set_exception(self._not_found(model))
                return
            profile = self._uncatalogued(model, waiters)
        oldest = min(w.since for w in waiters)
        candidates = [n for n in fleet.up_nodes() if feasible(profile, n) and any(w.accepts(n) for w in waiters)]
        nodes = [n for n in candidates if not n.is_shunned(now)]
        if candidates and not nodes:  # the only ones that could hold it just failed: wait for them
            names = ", ".join(n.name for n in candidates)
            queue.reason = f"neuron {names} stopped answering; waiting for it to answer its polls again"
            return
        views = []
        for node in nodes:
            need = fleet.footprint(model, node, gpu=profile.min_devices > 0)
            if need is None and (model, node.name) not in self._estimating:
                self._estimating.add((model, node.name))
                asyncio.get_running_loop().create_task(self._estimate(model, node, profile.quant))
                queue.reason = "estimating its footprint"
                return
            views.append(self._view(node, need or 0, now))
        patient = now - oldest >= self.eviction.swap_after_secs
        rules = placement.Rules(
            strategy=self.eviction.strategy,
            min_residency_secs=self.eviction.min_residency_secs,
            swap_after_secs=self.eviction.swap_after_secs,
        )
        plan = placement.plan(model, profile, fleet.priority(model), views, rules, patient=patient)
        queue.reason = plan.reason
        if plan.kind == "never":
            if not nodes:
                need = "the host CPU" if profile.min_devices == 0 else f"{profile.min_devices} GPU(s)"
                floor = f" with {profile.min_device_vram_mb} MB each" if profile.min_device_vram_mb else ""
                pins = f" on {', '.join(profile.pinned_on)}" if profile.pinned_on else ""
                why = f"no neuron that is up can hold it (needs {need}{floor}{pins})"
            else:
                said = [f"{n}: {m}" for (m_, n), m in self.refusals.items() if m_ == model]
                why = plan.reason + (f" (the neuron said {'; '.join(said)})" if said else "")
            for w in waiters:
                w.future.set_exception(self._unavailable(f"{model!r} fits nowhere now: {why}"))
            return
        if plan.kind == "wait":
            return
        node = fleet.nodes[plan.node]
        self._start(model, node, self._load(model, profile, node, plan))

    def _uncatalogued(self, model: str, waiters: list[Waiter]) -> ModelProfile:
        """What an operator's load of a model outside the catalogue may use: a GPU where some
        neuron it may go to has one, else the host CPU (nothing says what the model needs)."""
        gpus = any(
            n.discovery and n.discovery.devices for n in self.fleet.up_nodes() if any(w.accepts(n) for w in waiters)
        )
        return ModelProfile(id=model, min_devices=1 if gpus else 0)

    def _view(self, node: Node, need: int, now: float) -> placement.NodeView:
        fleet = self.fleet
        residents = []
        for model, info in node.models.items():
            if info.status != "loaded" or model in node.draining:
                continue
            queued = model in self.queues and bool(self.queues[model].live())
            residents.append(
                placement.Resident(
                    model=model,
                    devices=list(info.devices),
                    mb=info.vram_used_mb or 0,
                    priority=fleet.priority(model),
                    busy=node.requests_on(model) > 0 or queued,
                    age_secs=now - node.loaded_at.get(model, now),
                    idle_secs=now - node.last_used.get(model, now),
                )
            )
        health = node.health
        return placement.NodeView(
            name=node.name,
            host_free_mb=health.memory_free_mb if health else 0,
            device_free_mb={d.index: d.vram_free_mb for d in health.devices} if health else {},
            residents=residents,
            occupied=node.busy is not None,
            need_mb=need,
        )

    async def _estimate(self, model: str, node: Node, quant: str | None) -> None:
        try:
            self.fleet.estimates[(model, node.name)] = await self.client.footprint(node.endpoint, model, quant)
        except (NeuronUnreachable, ApiError) as exc:
            log.info("no footprint estimate of %s from %s: %s", model, node.name, exc)
        self.changed()

    def _start(self, model: str, node: Node, work) -> None:
        node.busy = Busy(Operation.LOADING, model)

        async def run() -> None:
            try:
                await work
            finally:
                node.busy = None
                self.operations.pop(model, None)
                self.changed()

        self.operations[model] = asyncio.get_running_loop().create_task(run(), name=f"load {model}")

    def _resolve(self, model: str, node: Node) -> None:
        queue = self.queues.get(model)
        for w in queue.live() if queue else []:
            if w.accepts(node):
                w.future.set_result(node)

    def _fail(self, model: str, err: ApiError) -> None:
        queue = self.queues.get(model)
        for w in queue.live() if queue else []:
            w.future.set_exception(err)

    # --- operations -----------------------------------------------------------------------

    async def _refresh(self, node: Node) -> None:
        with contextlib.suppress(NeuronUnreachable):
            health, models = await asyncio.gather(self.client.health(node.endpoint), self.client.models(node.endpoint))
            node.record_success(None, health, models)
            self.fleet.learn_footprints(node)

    async def _load(self, model: str, profile: ModelProfile, node: Node, plan: placement.Plan) -> None:
        """Evicts the plan's victims (each drained first), then loads ``model`` and serves its queue."""
        started = time.monotonic()
        if plan.victims:
            node.busy = Busy(Operation.MAKING_ROOM, model)
            node.draining.update(plan.victims)
            try:
                for victim in plan.victims:
                    await self._evict(node, victim, self.eviction.strategy, needed_by=model)
            except (ApiError, NeuronUnreachable) as exc:
                log.warning("making room for %s on %s failed: %s", model, node.name, exc)
                if isinstance(exc, NeuronUnreachable):
                    self._shun(node)
                await self._refresh(node)
                return
            finally:
                node.draining.difference_update(plan.victims)
            await self._refresh(node)
            node.busy = Busy(Operation.LOADING, model)
        # Another gateway may have started this load meanwhile: the neuron joins it (loads are idempotent).
        spec = ModelSpec(
            model_id=model,
            harness=profile.harness,
            quant=profile.quant,
            tensor_parallel=profile.min_devices if profile.min_devices > 1 else None,
            devices=plan.devices,
            wait=False,
        )
        log.info("loading %s on %s (devices %s)", model, node.name, plan.devices or "cpu")
        try:
            await self.client.load(node.endpoint, spec)
            await self._await_loaded(model, node)
        except LoadDropped as exc:  # the requests still waiting for it get a new plan
            self._observe(model, node.name, "dropped", started)
            log.info("%s; planning again for the requests that wait for it", exc)
            return
        except NeuronUnreachable as exc:
            self._observe(model, node.name, "unreachable", started)
            log.warning("loading %s on %s: %s", model, node.name, exc)
            self._shun(node)
            return
        except ApiError as exc:
            self._observe(model, node.name, "full" if exc.status == 507 else "failed", started)
            if exc.status == 507:  # the neuron knows better: remember it needs more than was free
                log.info("%s does not fit on %s after all: %s", model, node.name, exc.message)
                self.refusals[(model, node.name)] = exc.message
                await self._refresh(node)
                self._learn_too_big(model, node, profile)
                return
            log.warning("loading %s on %s failed (%d): %s", model, node.name, exc.status, exc.message)
            # the neuron's own verdict on the model (not found, a bad spec, an unsupported
            # architecture) stands; anything else is the fleet's failure
            kind = kind_of_status(exc.status, upstream=True) if exc.status in (400, 404, 409) else "upstream"
            self._fail(
                model,
                ApiError(kind, f"loading {model!r} on neuron {node.name} failed: {exc.message}", code="load_failed"),
            )
            return
        self._observe(model, node.name, "ok", started)
        log.info("loaded %s on %s in %.1f s", model, node.name, time.monotonic() - started)
        now = time.monotonic()
        node.loaded_at[model] = node.last_used[model] = now
        self._resolve(model, node)
        await self._refresh(node)  # free memory as it is now, for the next placement

    def _shun(self, node: Node) -> None:
        """A neuron that failed an operation is left out of placement until it answers a poll
        again (at least a poll interval): a neuron that died mid-load is not asked again at every
        tick. The failure counts as a failed poll."""
        if node.record_failure("it stopped answering during an operation"):
            log.warning("neuron %s is down: it stopped answering during an operation", node.name)
        node.shunned_until = time.monotonic() + self.fleet.config.gateway.poll_interval_secs
        self.changed()

    def _learn_too_big(self, model: str, node: Node, profile: ModelProfile) -> None:
        health = node.health
        if health is None:
            free = 0
        elif profile.min_devices == 0:
            free = health.memory_free_mb
        else:
            free = sum(d.vram_free_mb for d in health.devices)
        cpu, gpu = self.fleet.estimates.get((model, node.name), (0, 0))
        bigger = free + 1
        self.fleet.estimates[(model, node.name)] = (max(cpu, bigger), max(gpu, bigger))
        kind = node.placement_kind(profile.min_devices > 0)
        known = self.fleet.footprints.get((model, kind))
        if known is not None and known < bigger:
            del self.fleet.footprints[(model, kind)]

    async def _await_loaded(self, model: str, node: Node) -> None:
        """Polls the neuron until the load ends; progress shows in ``node.models``."""
        deadline = time.monotonic() + self.fleet.config.gateway.load_timeout_secs
        while True:
            infos = {m.id: m for m in await self.client.models(node.endpoint)}
            info = infos.get(model)
            node.set_models(infos)
            node.note_residents()
            if info is not None and info.status == "loaded":
                self.fleet.learn_footprints(node)
                return
            if info is None:  # unloaded while loading (an operator, another gateway): not a failure
                raise LoadDropped(f"{model!r} was unloaded on {node.name} while it loaded")
            if info.status == "failed":
                raise ApiError("upstream", info.error or "the load failed", status=info.error_status or 502)
            if time.monotonic() > deadline:
                raise ApiError("timeout", f"still loading after {self.fleet.config.gateway.load_timeout_secs:g} s")
            await asyncio.sleep(self.load_poll_secs)

    async def _follow(self, model: str, node: Node) -> None:
        """A load someone else started: wait for it like our own."""
        try:
            await self._await_loaded(model, node)
        except (ApiError, NeuronUnreachable, LoadDropped) as exc:
            log.info("the load of %s on %s that another client started ended: %s", model, node.name, exc)
            if isinstance(exc, NeuronUnreachable):
                self._shun(node)
            return
        self._resolve(model, node)

    async def _evict(self, node: Node, model: str, reason: str, *, needed_by: str | None = None) -> None:
        """Drains ``model`` on ``node`` (no new requests go there; ours in flight finish), then
        unloads it; the neuron itself waits for requests other gateways have in flight.
        ``reason``: the eviction strategy, or ``admin``; ``needed_by``: the model it makes room for."""
        events = self.fleet.events
        why = {"reason": reason, "needed_by": needed_by}
        events.publish("model", node=node.name, model=model, state="unloading", **why)
        node.draining.add(model)
        deadline = time.monotonic() + self.eviction.max_wait_secs
        while node.in_flight.get(model, 0) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, self.tick_secs))
        log.info(
            "evicting %s from %s: %s", model, node.name, reason + (f" (room for {needed_by})" if needed_by else "")
        )
        try:
            await self.client.unload(node.endpoint, model)
        except ApiError as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise
        node.models.pop(model, None)
        node.endpoints.pop(model, None)
        node.note_residents()
        node.cycles += 1
        events.publish(
            "model", node=node.name, model=model, state="unloaded" if reason == "admin" else "evicted", **why
        )
        if self.observer is not None:
            self.observer.evicted(model, node.name, reason)

    async def unload(self, node: Node, model: str, *, force: bool) -> None:
        """An operator's unload: a model in use is refused (409) unless ``force``, which drains it."""
        busy = node.requests_on(model)
        if busy and not force:
            raise ApiError(
                "conflict",
                f"{model!r} has {busy} request(s) in flight or queued on {node.name}; "
                "unload with force to let them finish first",
                code="model_busy",
            )
        mine = node.busy is None  # hold the neuron, so no load is planned there while it drains
        if mine:
            node.busy = Busy(Operation.UNLOADING, model)
        try:
            await self._evict(node, model, "admin")
        finally:
            node.draining.discard(model)
            if mine:
                node.busy = None
            self.changed()

    def _defragment(self) -> None:
        every = self.eviction.defrag_after_cycles
        if every <= 0:
            return
        for node in self.fleet.up_nodes():
            idle = node.busy is None and not any(node.requests_on(m) for m in node.models)
            if node.cycles >= every and idle and node.name not in self.node_tasks:
                node.busy = Busy(Operation.RESTARTING)
                task = asyncio.get_running_loop().create_task(self._restart(node), name=f"restart {node.name}")
                self.node_tasks[node.name] = task

    async def _restart(self, node: Node) -> None:
        log.info("restarting %s after %d load/unload cycles (defragmentation)", node.name, node.cycles)
        events = self.fleet.events
        events.publish("restart", node=node.name, state="restarting", cycles=node.cycles)
        try:
            await self.client.restart(node.endpoint)
            await asyncio.sleep(self.load_poll_secs)
            deadline = time.monotonic() + RESTART_WAIT_SECS
            while time.monotonic() < deadline:  # back when it answers and nothing is loading any more
                try:
                    models = await self.client.models(node.endpoint)
                    if not any(m.status == "loading" for m in models):
                        break
                except NeuronUnreachable:
                    pass
                await asyncio.sleep(self.load_poll_secs)
            node.cycles = 0
            if self.observer is not None:
                self.observer.restarted(node.name)
            events.publish("restart", node=node.name, state="restarted")
            log.info("%s restarted", node.name)
        except (ApiError, NeuronUnreachable) as exc:
            events.publish("restart", node=node.name, state="failed", error=str(exc))
            log.warning("restarting %s failed: %s", node.name, exc)
            node.cycles = 0  # do not ask again at every tick
        finally:
            node.busy = None
            self.node_tasks.pop(node.name, None)
            await self._refresh(node)
            self.changed()

    def _observe(self, model: str, node: str, result: str, started: float) -> None:
        if self.observer is not None:
            self.observer.load_finished(model, node, result, time.monotonic() - started)
