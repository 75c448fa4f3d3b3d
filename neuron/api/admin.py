"""The neuron's control routes (contracts §3): discovery, health, model lifecycle, endpoint,
footprint, tokenize, metrics and version; and the in-place restart the gateway asks of an idle
neuron after many load/unload cycles (``POST /admin/restart``)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from urllib.parse import unquote

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sanic import Blueprint, Request, Sanic, response

from cortex.protocol.errors import ApiError, decode_body, invalid
from cortex.protocol.fleet import Endpoint, Footprint, Health, ModelSpec, TokenCount, UnloadRequest
from cortex.protocol.openai.requests import ChatCompletionRequest, ChatMessage, Tool
from neuron import __version__, ops
from neuron.api.context import NeuronContext, context_of
from neuron.api.inference import chat_prompt
from neuron.chat.text import encode_prompt

log = logging.getLogger(__name__)

bp = Blueprint("admin")
DRAIN_TIMEOUT_SECS = 300.0


def _json(obj, status: int = 200):
    return response.raw(msgspec.json.encode(obj), status=status, content_type="application/json")


def _decode(request: Request, kind):
    return decode_body(request.body, kind)


@bp.get("/discovery")
async def discovery(request: Request):
    return _json(context_of(request).discovery)


@bp.get("/health")
async def health(request: Request):
    ctx = context_of(request)
    return _json(
        Health(
            uptime_secs=round(time.monotonic() - ctx.started, 3),
            devices=ctx.device_health,
            memory_free_mb=ctx.residency.memory_free_mb(),
            models=ctx.residency.health(),
        )
    )


@bp.get("/models")
async def models(request: Request):
    return _json(context_of(request).residency.infos())


@bp.post("/models/load")
async def load(request: Request):
    ctx = context_of(request)
    spec = _decode(request, ModelSpec)
    ctx.intake.check_open()  # a model loaded now would be gone after the restart
    entry = await ctx.residency.load(spec)
    if not spec.wait:
        return _json({"status": entry.status}, status=200 if entry.status == "loaded" else 202)
    await ctx.residency.wait_loaded(entry)
    return _json({"status": "loaded"})


@bp.post("/models/unload")
async def unload(request: Request):
    req = _decode(request, UnloadRequest)
    await context_of(request).residency.unload(req.model_id)
    return _json({"status": "unloaded"})


@bp.get("/models/<rest:path>")
async def model_route(request: Request, rest: str):
    """``/models/{id}/endpoint`` and ``/models/{id}/footprint``: one route, since an id may hold a
    ``/`` (escaped or not)."""
    rest = unquote(rest)
    model_id, _, leaf = rest.rpartition("/")
    ctx = context_of(request)
    if leaf == "endpoint" and model_id:
        ctx.residency.get(model_id)
        url = ctx.config.advertise_url or f"{request.scheme}://{request.host}"
        return _json(Endpoint(url=url.rstrip("/")))
    if leaf == "footprint" and model_id:
        quant = request.args.get("quant") or None  # the weights as a load with this quant would hold them
        cpu_bytes, gpu_bytes = await asyncio.to_thread(ctx.residency.footprint, model_id, quant)
        return _json(Footprint(model_id=model_id, cpu_mb=_ceil_mb(cpu_bytes), gpu_mb=_ceil_mb(gpu_bytes)))
    raise ApiError("not_found", f"no route GET /models/{rest}")


def _ceil_mb(n_bytes: int) -> int:
    return -(-n_bytes // 2**20)


class RestartRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    drain_timeout_secs: float = DRAIN_TIMEOUT_SECS


@bp.post("/admin/restart")
async def restart(request: Request):
    """Answers 202 at once; then, in the background, the restart: new inference requests get
    503, the ones running finish (or are cancelled past ``drain_timeout_secs``), every model is
    unloaded and the server stops, and the CLI re-executes the process (same PID), which loads
    the same models again on the same devices."""
    ctx = context_of(request)
    req = _decode(request, RestartRequest) if request.body else RestartRequest()
    if not (math.isfinite(req.drain_timeout_secs) and req.drain_timeout_secs >= 0):
        raise invalid(
            f"drain_timeout_secs: expected a number >= 0, got {req.drain_timeout_secs:g}", param="drain_timeout_secs"
        )
    if ctx.restart is not None:
        raise ApiError("conflict", "a restart of this neuron is already under way", code="neuron_restarting")
    models = [spec.model_id for spec in ctx.residency.resident_specs()]
    ctx.intake.close()
    ctx.restart = asyncio.get_running_loop().create_task(
        _restart(request.app, ctx, req.drain_timeout_secs), name="restart"
    )
    log.info("restart asked: %d requests to drain, models resident: %s", ctx.intake.inside, ", ".join(models) or "none")
    return _json({"status": "restarting", "models": models}, status=202)


async def _restart(app: Sanic, ctx: NeuronContext, drain_timeout_secs: float) -> None:
    models: list[ModelSpec] = []
    try:
        cancelled = await ctx.intake.drain(drain_timeout_secs)
        if cancelled:
            log.warning("restart: cancelled %d requests still running after %g s", cancelled, drain_timeout_secs)
        models = ctx.residency.resident_specs()  # those resident now: an unload during the drain stays done
        await ctx.residency.unload_all()
    except Exception:  # the new process starts clean whatever went wrong here
        log.exception("restart: draining or unloading failed; restarting anyway")
    ctx.restart_models = models
    log.info("restart: models unloaded; stopping the server to re-execute")
    app.stop()


class TokenizeRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict | None = None
    chat_template_kwargs: dict | None = None


@bp.post("/tokenize")
async def tokenize(request: Request):
    """Counts the prompt the model would see; works for models that are not resident too."""
    ctx = context_of(request)
    req = _decode(request, TokenizeRequest)
    if req.messages is None and req.prompt is None:
        raise invalid("give messages or prompt", param="messages")
    side = await asyncio.to_thread(ctx.residency.text_side, req.model)
    if req.messages is not None:
        chat = ChatCompletionRequest(
            model=req.model,
            messages=req.messages,
            tools=req.tools,
            tool_choice=req.tool_choice,
            chat_template_kwargs=req.chat_template_kwargs,
        )
        ids = (await asyncio.to_thread(chat_prompt, side, chat)).ids
    else:
        ids = await asyncio.to_thread(encode_prompt, side, req.prompt, param="prompt")
    return _json(TokenCount(count=len(ids), max_context=side.context_length))


@bp.get("/metrics")
async def metrics(request: Request):
    return response.raw(generate_latest(context_of(request).metrics.registry), content_type=CONTENT_TYPE_LATEST)


@bp.get("/version")
async def version(request: Request):
    info = ops.build_info()
    return _json(
        {
            "version": __version__,
            "build": {
                "cuda": info["cuda"],  # a CUDA device is usable by the kernels here
                "cuda_built": info["cuda_built"],
                "archs": info["cuda_archs"],
                "native_kernels": info["native_kernels"],
                "cpu_isas": info["cpu_isas"],
            },
        }
    )
