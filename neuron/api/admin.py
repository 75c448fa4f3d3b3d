"""The neuron's control routes (contracts §3): discovery, health, model lifecycle, endpoint,
tokenize, metrics and version."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import unquote

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sanic import Blueprint, Request, response

from cortex.protocol.errors import ApiError, invalid
from cortex.protocol.fleet import Health, ModelSpec, UnloadRequest
from cortex.protocol.openai.requests import ChatCompletionRequest, ChatMessage, Tool
from neuron import __version__, hardware, ops
from neuron.api.context import context_of
from neuron.api.inference import chat_prompt

bp = Blueprint("admin")


def _json(obj, status: int = 200):
    return response.raw(msgspec.json.encode(obj), status=status, content_type="application/json")


def _decode(request: Request, kind):
    if not request.body:
        raise invalid("the request body is empty: expected a JSON object")
    try:
        return msgspec.json.decode(request.body, type=kind)
    except msgspec.ValidationError as exc:
        raise invalid(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise invalid(f"malformed JSON body: {exc}") from None


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
            memory_free_mb=hardware.memory_free_mb(),
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
    entry = await ctx.residency.load(spec)
    if not spec.wait:
        return _json({"status": entry.status}, status=200 if entry.status == "loaded" else 202)
    await ctx.residency.wait_loaded(entry)
    if entry.loaded is not None and entry.task is not None and entry.task.done():
        ctx.metrics.load_seconds.labels(spec.model_id).observe(entry.loaded.load_secs)
    return _json({"status": "loaded"})


@bp.post("/models/unload")
async def unload(request: Request):
    req = _decode(request, UnloadRequest)
    await context_of(request).residency.unload(req.model_id)
    return _json({"status": "unloaded"})


@bp.get("/models/<rest:path>")
async def model_endpoint(request: Request, rest: str):
    rest = unquote(rest)
    if not rest.endswith("/endpoint"):
        raise ApiError("not_found", f"no route GET /models/{rest}")
    model_id = rest[: -len("/endpoint")]
    ctx = context_of(request)
    ctx.residency.get(model_id)
    url = ctx.config.advertise_url or f"{request.scheme}://{request.host}"
    return _json({"url": url.rstrip("/")})


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
        ids, _ = await asyncio.to_thread(chat_prompt, side, chat)
    else:
        ids = side.tokenizer.encode(req.prompt, add_special_tokens=False).ids
    return _json({"count": len(ids), "max_context": side.context_length})


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
                "cuda": info["cuda"],
                "archs": info["cuda_archs"],
                "native_kernels": info["native_kernels"],
                "cpu_isas": info["cpu_isas"],
            },
        }
    )
