"""Health and the operator's routes: ``/health``, ``/``, ``/admin/fleet``, ``/admin/models/*``."""

from __future__ import annotations

import msgspec
from sanic import Blueprint, Request, response

from cortex.fleet.neurons import NeuronUnreachable
from cortex.gateway.context import context_of
from cortex.protocol.errors import ApiError, invalid

bp = Blueprint("admin")


def _json(obj, status: int = 200):
    return response.raw(msgspec.json.encode(obj), status=status, content_type="application/json")


@bp.get("/health")
@bp.get("/", name="root")
async def health(request: Request):
    fleet = context_of(request).fleet
    total, healthy = len(fleet.nodes), len(fleet.up_nodes())
    status = "down" if healthy == 0 else ("ok" if healthy == total else "degraded")
    entries = fleet.model_entries()
    return _json(
        {
            "status": status,
            "nodes": {"total": total, "healthy": healthy},
            "models": {
                "loaded": sum(1 for e in entries if e["status"] == "loaded" and "alias_of" not in e),
                "available": sum(1 for e in entries if "alias_of" not in e),
            },
        }
    )


@bp.get("/admin/fleet")
async def fleet(request: Request):
    nodes = []
    for node in context_of(request).fleet.nodes.values():
        nodes.append(
            {
                "name": node.name,
                "endpoint": node.endpoint,
                "up": node.up,
                "failed_polls": node.failures,
                "discovery": node.discovery,
                "health": node.health,
                "models": list(node.models.values()),
                "in_flight": {m: n for m, n in node.in_flight.items() if n},
            }
        )
    return _json({"nodes": nodes})


class AdminModelRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    node: str | None = None
    wait: bool = True


def _decode(request: Request) -> AdminModelRequest:
    try:
        return msgspec.json.decode(request.body or b"", type=AdminModelRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise invalid(f"invalid request: {exc}") from None


def _node(request: Request, name: str | None):
    fleet = context_of(request).fleet
    if name is None:
        return None
    if name not in fleet.nodes:
        raise ApiError("not_found", f"no neuron named {name!r} (known: {', '.join(fleet.nodes)})", param="node")
    return fleet.nodes[name]


@bp.post("/admin/models/load")
async def load(request: Request):
    ctx = context_of(request)
    req = _decode(request)
    model = ctx.fleet.canonical(req.model)
    node = _node(request, req.node)
    profile = ctx.catalogue.profile(model)
    if req.wait:
        loaded_on = await ctx.scheduler.ensure_loaded(model, profile, node)
        return _json({"status": "loaded", "model": model, "node": loaded_on.name})
    request.app.add_task(ctx.scheduler.ensure_loaded(model, profile, node), name=f"admin load {model}")
    return _json({"status": "loading", "model": model}, status=202)


@bp.post("/admin/models/unload")
async def unload(request: Request):
    ctx = context_of(request)
    req = _decode(request)
    model = ctx.fleet.canonical(req.model)
    node = _node(request, req.node)
    targets = [node] if node is not None else [n for n in ctx.fleet.up_nodes() if n.status_of(model) is not None]
    if not targets:
        raise ApiError("not_found", f"model {model!r} is not loaded on any neuron", param="model")
    done = []
    for target in targets:
        try:
            await ctx.client.unload(target.endpoint, model)
        except NeuronUnreachable as exc:
            raise ApiError("upstream", f"neuron {target.name} did not answer: {exc}") from None
        target.models.pop(model, None)
        target.endpoints.pop(model, None)
        ctx.metrics.evictions.labels(model, target.name, "admin").inc()
        done.append(target.name)
    return _json({"status": "unloaded", "model": model, "nodes": done})
