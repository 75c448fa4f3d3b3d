"""Health and the operator's routes: ``/health``, ``/``, ``/admin/fleet``, ``/admin/models/*``."""

from __future__ import annotations

import logging
import time

import msgspec
from sanic import Blueprint, Request, response

from cortex.fleet.neurons import NeuronUnreachable
from cortex.gateway.context import GatewayContext, context_of
from cortex.protocol.errors import ApiError, decode_body, invalid

log = logging.getLogger(__name__)
bp = Blueprint("admin")


def _json(obj, status: int = 200):
    return response.raw(msgspec.json.encode(obj), status=status, content_type="application/json")


def wants_html(request: Request) -> bool:
    """A browser asking for a page (not a probe, an SDK or curl asking for JSON)."""
    accept = request.headers.get("accept", "")
    return "text/html" in accept.split(",", 1)[0]


def root_page(status: str, healthy: int, total: int) -> response.HTTPResponse:
    """``GET /`` for a browser: the health line and the way to the fleet page."""
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        "<title>helexa cortex</title><body style='font-family:system-ui;margin:2rem'>"
        f"<h1>helexa cortex</h1><p>Fleet {status}: {healthy} of {total} neurons up.</p>"
        "<p><a href='/ui'>Open the fleet page</a> · <a href='/v1/models'>/v1/models</a> · "
        "<a href='/health'>/health (JSON)</a></p></body></html>"
    )
    return response.html(body, status=503 if status == "down" else 200)


@bp.get("/health")
@bp.get("/", name="root")
async def health(request: Request):
    fleet = context_of(request).fleet
    total, healthy = len(fleet.nodes), len(fleet.up_nodes())
    status = "down" if healthy == 0 else ("ok" if healthy == total else "degraded")
    if request.path == "/" and wants_html(request):  # a browser: the way to the fleet page
        return root_page(status, healthy, total)
    entries = fleet.model_entries()
    return _json(  # a fleet that is down answers 503: probes and load balancers see it
        {
            "status": status,
            "nodes": {"total": total, "healthy": healthy},
            "models": {
                "loaded": sum(1 for e in entries if e["status"] == "loaded" and "alias_of" not in e),
                "available": sum(1 for e in entries if "alias_of" not in e),
            },
        },
        status=503 if status == "down" else 200,
    )


@bp.get("/admin/fleet")
async def fleet(request: Request):
    return _json(fleet_view(context_of(request)))


def fleet_view(ctx: GatewayContext) -> dict:
    """What ``/admin/fleet`` answers (and the fleet page's snapshot): every node with its
    discovery, health and models, and the requests waiting per model."""
    fleet = ctx.fleet
    now = time.monotonic()
    nodes = []
    for node in fleet.nodes.values():
        models = []
        for info in node.models.values():
            health = node.health.models.get(info.id) if node.health is not None else None
            used = node.last_used.get(info.id)
            models.append(
                {
                    **msgspec.structs.asdict(info),
                    "priority": fleet.priority(info.id),
                    "footprint_mb": fleet.footprint(info.id, node, gpu=bool(info.devices)),
                    "queued": health.queued if health is not None else 0,
                    "idle_secs": round(now - used, 1) if used is not None else None,
                    "draining": info.id in node.draining,
                }
            )
        nodes.append(
            {
                "name": node.name,
                "endpoint": node.endpoint,
                "up": node.up,
                "failed_polls": node.failures,
                "busy": str(node.busy) if node.busy is not None else None,
                "cycles": node.cycles,
                "discovery": node.discovery,
                "health": node.health,
                "models": models,
                "in_flight": {m: n for m, n in node.in_flight.items() if n},
            }
        )
    waiting = {m: len(q.live()) for m, q in ctx.scheduler.queues.items() if q.live()} if ctx.scheduler else {}
    return {"nodes": nodes, "waiting": waiting}


class AdminModelRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    node: str | None = None
    wait: bool = True
    force: bool = False  # unload: let a busy model's requests finish, then unload (else 409)


def _decode(request: Request) -> AdminModelRequest:
    req = decode_body(request.body, AdminModelRequest)
    if not req.model:
        raise invalid("model must be a non-empty model id", param="model")
    return req


def _node(request: Request, name: str | None):
    fleet = context_of(request).fleet
    if name is None:
        return None
    if name not in fleet.nodes:
        raise ApiError("not_found", f"no neuron named {name!r} (known: {', '.join(fleet.nodes)})", param="node")
    return fleet.nodes[name]


@bp.post("/admin/models/load")
async def load(request: Request):
    """Loads under the same rules as a request's cold load (placement, eviction, waits)."""
    ctx = context_of(request)
    req = _decode(request)
    model = ctx.fleet.canonical(req.model)
    node = _node(request, req.node)
    if req.wait:
        loaded_on = await ctx.scheduler.ensure_loaded(model, node)
        return _json({"status": "loaded", "model": model, "node": loaded_on.name})
    task = request.app.add_task(ctx.scheduler.ensure_loaded(model, node), name=f"admin load {model}")
    if task is not None:
        task.add_done_callback(_log_failure(model))
    return _json({"status": "loading", "model": model}, status=202)


def _log_failure(model: str):
    def done(task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("admin load of %s failed: %s", model, task.exception())

    return done


@bp.post("/admin/models/unload")
async def unload(request: Request):
    """Unloads where it is resident; a model in use answers 409 unless ``force`` (``?force=true``
    or ``"force": true``), which lets its requests finish first."""
    ctx = context_of(request)
    req = _decode(request)
    force = req.force or request.args.get("force", "").lower() in ("1", "true", "yes")
    model = ctx.fleet.canonical(req.model)
    node = _node(request, req.node)
    targets = [node] if node is not None else [n for n in ctx.fleet.up_nodes() if n.status_of(model) is not None]
    if not targets or all(t.status_of(model) is None for t in targets):
        raise ApiError("not_found", f"model {model!r} is not loaded on any neuron", param="model")
    done = []
    for target in targets:
        try:
            await ctx.scheduler.unload(target, model, force=force)
        except NeuronUnreachable as exc:
            raise ApiError("upstream", f"neuron {target.name} did not answer: {exc}") from None
        done.append(target.name)
    return _json({"status": "unloaded", "model": model, "nodes": done})
