"""The fleet page: ``GET /ui`` (plain HTML, CSS and JS from ``cortex/gateway/static``: nothing to
build, nothing fetched from elsewhere) and the event stream it reads, ``GET /admin/events``.

The stream (``text/event-stream``) opens with a ``snapshot`` event — what ``/admin/fleet`` answers
plus the catalogue and the per-model stats — then relays :mod:`cortex.fleet.events` as they
happen, with a ``: keep-alive`` comment every :data:`KEEPALIVE_SECS` of silence. A client that
sends ``Last-Event-ID`` of an event still in the hub's ring gets what followed it instead of a
snapshot. A client that stops reading is dropped once it is :data:`cortex.fleet.events.BUFFER`
events behind (its connection closed; the page reconnects), so no page slows the gateway. Admin
auth as for every ``/admin/*`` route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from importlib import resources
from typing import Any

from sanic import Blueprint, Request, response

from cortex.fleet.events import Event
from cortex.gateway.admin import fleet_view
from cortex.gateway.context import GatewayContext, context_of
from cortex.protocol.errors import ApiError

log = logging.getLogger(__name__)
bp = Blueprint("ui")

KEEPALIVE_SECS = 15.0
STATS_SECS = 2.0
# what a slow page's backlog may take below the hub's queue: the kernel's send buffer, and the
# transport's before a write waits (the defaults would hold megabytes per stalled page)
SEND_BUFFER_BYTES = 16 * 1024
WRITE_BUFFER_BYTES = 16 * 1024
STATIC = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
EVENT_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}


def _static(name: str) -> bytes:
    return resources.files("cortex.gateway").joinpath("static", name).read_bytes()


@bp.get("/ui")
async def page(request: Request):
    return response.raw(_static("index.html"), content_type="text/html; charset=utf-8", headers=_NO_CACHE)


@bp.get("/ui/<name:str>")
async def asset(request: Request, name: str):
    kind = STATIC.get(name)
    if kind is None:
        raise ApiError("not_found", f"no file {name!r} on the fleet page")
    return response.raw(_static(name), content_type=f"{kind}; charset=utf-8", headers=_NO_CACHE)


_NO_CACHE = {"cache-control": "no-cache"}


# --- the stream ---------------------------------------------------------------------------


def snapshot(ctx: GatewayContext) -> dict[str, Any]:
    view = fleet_view(ctx)
    catalogue = [
        {"id": m.id, "min_devices": m.min_devices, "priority": ctx.fleet.priority(m.id), "vram_mb": m.vram_mb}
        for m in ctx.catalogue.models
    ]
    return {**view, "catalogue": catalogue, "aliases": dict(ctx.catalogue.aliases), "stats": StatsReader(ctx).read()}


class StatsReader:
    """Per-model figures from the gateway's own counters: requests answered, in flight, queued,
    and the mean decode speed and TTFT (over the last interval with traffic, and since start)."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.previous: dict[str, dict[str, float]] = {}
        self.recent: dict[str, dict[str, float | None]] = {}

    def _sums(self) -> dict[str, dict[str, float]]:
        m = self.ctx.metrics
        out: dict[str, dict[str, float]] = {}
        for metric, prefix in ((m.requests, "requests"), (m.tps, "tps"), (m.ttft, "ttft")):
            for family in metric.collect():
                for sample in family.samples:
                    model = sample.labels.get("model", "")
                    if not model:
                        continue
                    key = {"_total": "requests", "_sum": f"{prefix}_sum", "_count": f"{prefix}_count"}.get(
                        sample.name.removeprefix(family.name)
                    )
                    if key is not None and (key != "requests" or prefix == "requests"):
                        row = out.setdefault(model, {})
                        row[key] = row.get(key, 0.0) + sample.value
        return out

    def read(self) -> dict[str, dict[str, Any]]:
        fleet, scheduler = self.ctx.fleet, self.ctx.scheduler
        sums = self._sums()
        models = set(sums) | {m for n in fleet.nodes.values() for m in n.models}
        stats: dict[str, dict[str, Any]] = {}
        for model in sorted(models):
            now, before = sums.get(model, {}), self.previous.get(model, {})
            waiting = len(scheduler.queues[model].live()) if scheduler and model in scheduler.queues else 0
            held = [n.health.models[model] for n in fleet.nodes.values() if n.health and model in n.health.models]
            row: dict[str, Any] = {
                "requests": int(now.get("requests", 0)),
                "in_flight": sum(n.in_flight.get(model, 0) for n in fleet.nodes.values()),
                "queued": waiting + sum(h.queued for h in held),  # the gateway's wait and the neurons' queues
            }
            recent = self.recent.setdefault(model, {})
            for name, key in (("tps", "tokens_per_second"), ("ttft", "ttft_seconds")):
                total, count = now.get(f"{name}_sum", 0.0), now.get(f"{name}_count", 0.0)
                grew = count - before.get(f"{name}_count", 0.0)
                if grew > 0:
                    recent[key] = round((total - before.get(f"{name}_sum", 0.0)) / grew, 4)
                row[key] = {"recent": recent.get(key), "mean": round(total / count, 4) if count else None}
            stats[model] = row
        self.previous = sums
        return stats


def _stats_task(ctx: GatewayContext) -> None:
    """Starts the periodic ``stats`` event while anyone listens (one task for all pages)."""
    hub = ctx.fleet.events
    if ctx.stats_task is not None and not ctx.stats_task.done():
        return

    async def run() -> None:
        reader = StatsReader(ctx)
        reader.read()
        while hub.subscribers:
            await asyncio.sleep(STATS_SECS)
            if hub.subscribers:
                hub.publish("stats", models=reader.read())

    ctx.stats_task = asyncio.get_running_loop().create_task(run(), name="fleet-stats")


@bp.get("/admin/events")
async def events(request: Request):
    ctx = context_of(request)
    hub = ctx.fleet.events
    sub, replay = hub.subscribe(request.headers.get("last-event-id"))
    try:
        # built before the first await: nothing published in between is lost or told twice
        first = [e.sse() for e in replay] if replay is not None else [_snapshot_frame(ctx)]
        transport = request.transport
        sub.on_drop = transport.abort  # a page too far behind: close it, it reconnects
        with contextlib.suppress(OSError, AttributeError, NotImplementedError):
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
        stream = await request.respond(headers=dict(EVENT_HEADERS))
        for frame in first:
            await stream.send(frame)
        _stats_task(ctx)
        while True:
            try:
                event = await asyncio.wait_for(sub.next(), KEEPALIVE_SECS)
            except TimeoutError:
                await stream.send(b": keep-alive\n\n")
                continue
            if event is None:  # dropped, or the gateway is stopping
                break
            await stream.send(event.sse())
        with contextlib.suppress(Exception):
            await stream.eof()
    except (ConnectionError, OSError) as exc:  # the page went away
        log.debug("event stream closed: %s", exc)
    finally:
        hub.unsubscribe(sub)
    return None


def _snapshot_frame(ctx: GatewayContext) -> bytes:
    event = Event(ctx.fleet.events.last_id, "snapshot", snapshot(ctx), ctx.fleet.events.epoch)
    return event.sse()
