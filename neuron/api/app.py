"""The neuron's Sanic app: a factory that wires config, residency, discovery and metrics into
a typed context, registers the routes and the error handlers, and owns the background tasks."""

from __future__ import annotations

import asyncio
import json
import logging

import msgspec
from sanic import Request, Sanic, response
from sanic.exceptions import SanicException

from cortex.protocol.auth import key_matches, presented_key
from cortex.protocol.errors import ApiError, kind_of_status
from cortex.protocol.fleet import ModelSpec
from cortex.protocol.http import SERVER_CONFIG, DeadlineRequest
from cortex.protocol.openai import errors as openai_errors
from cortex.protocol.systemd import Notifier
from neuron import __version__, hardware
from neuron.api import admin, inference
from neuron.api.context import NeuronContext
from neuron.api.errors import api_error_of
from neuron.api.metrics import NeuronMetrics
from neuron.config import NeuronConfig
from neuron.engine.residency import HARNESSES, Residency
from neuron.loading.isq import isq_types
from neuron.models import ModelError

log = logging.getLogger(__name__)

HEALTH_REFRESH_SECS = 5.0
OPEN_ROUTES = ("/health", "/version")  # answered without the fleet key (liveness probes, version checks)


def _error_response(err: ApiError):
    headers = {}
    if err.retry_after is not None:
        headers["retry-after"] = str(int(err.retry_after))
    return response.raw(
        msgspec.json.encode(openai_errors.render(err)),
        status=err.status,
        headers=headers,
        content_type="application/json",
    )


async def _refresh_health(ctx: NeuronContext) -> None:
    while True:
        try:
            ctx.device_health = await asyncio.to_thread(hardware.read_device_health, ctx.discovery.devices)
        except Exception:  # keep the last good readings
            log.exception("reading device health failed")
        await asyncio.sleep(HEALTH_REFRESH_SECS)


async def _load_defaults(ctx: NeuronContext) -> None:
    """Loads, one after the other, the models a restart handed over (on the devices they were on)
    and then the configured ``default_models`` not among them."""
    if ctx.restore_models:
        restored = ", ".join(m.model_id for m in ctx.restore_models)
        log.info("loading again the models resident before the restart: %s", restored)
    ready, seen = [], set()
    specs = [*ctx.restore_models, *ctx.config.default_models]
    for i, spec in enumerate(specs):
        if spec.model_id in seen:
            continue
        seen.add(spec.model_id)
        if not ctx.intake.is_open:  # a restart began: what is not loaded yet, the next process loads
            return
        ctx.notifier.status(f"{_serving(ctx)}; loading {spec.model_id} ({i + 1} of {len(specs)})")
        try:
            entry = await ctx.residency.load(spec)
            await ctx.residency.wait_loaded(entry)
            ready.append(spec.model_id)
        except ApiError as exc:
            log.warning("default model %s did not load: %s", spec.model_id, exc.message)
    status = f"{_serving(ctx)}; loaded: {', '.join(ready) or 'none'}"
    if ctx.config.ready_after_default_models:
        ctx.notifier.ready(status)
    else:
        ctx.notifier.status(status)
    if ready:
        host = "localhost" if ctx.config.host in ("0.0.0.0", "::") else ctx.config.host
        body = json.dumps({"model": ready[0], "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32})
        log.info(
            "ready: %s -- try: curl -s http://%s:%d/v1/chat/completions -H 'content-type: application/json' -d '%s'",
            ", ".join(ready),
            host,
            ctx.config.port,
            body,
        )


def _serving(ctx: NeuronContext) -> str:
    return f"serving on {ctx.config.host}:{ctx.config.port}"


def create_app(
    config: NeuronConfig,
    *,
    name: str = "neuron",
    restore_models: list[ModelSpec] | None = None,
    notifier: Notifier | None = None,
) -> Sanic:
    """The neuron's app; ``restore_models`` are the models a restart handed over (loaded at start,
    before ``default_models``); ``notifier`` tells systemd when it serves (``Type=notify``): once
    it listens, or with ``ready_after_default_models`` once the default models are resident."""
    residency = Residency(config)
    ctx = NeuronContext(
        config=config,
        residency=residency,
        discovery=hardware.discover(__version__, list(HARNESSES), list(isq_types())),
        metrics=NeuronMetrics(residency, lambda: ctx.device_health),
        restore_models=list(restore_models or []),
    )
    if notifier is not None:
        ctx.notifier = notifier
    app = Sanic(name, ctx=ctx, env_prefix=None, configure_logging=False, request_class=DeadlineRequest)
    app.config.update({**SERVER_CONFIG, "REQUEST_MAX_SIZE": 64 * 2**20})
    app.blueprint(admin.bp)
    app.blueprint(inference.bp)
    key = config.api_key

    @app.on_request
    async def check_fleet_key(request: Request):
        if key is None or request.path in OPEN_ROUTES:
            return None
        presented = presented_key(request.headers)
        if presented is None:
            return _error_response(
                ApiError("authentication", "this neuron needs the fleet key: Authorization: Bearer KEY (or x-api-key)")
            )
        if not key_matches(presented, [key]):
            return _error_response(ApiError("permission", "the key presented is not this neuron's fleet key"))
        return None

    @app.exception(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        return _error_response(exc)

    @app.exception(ModelError)
    async def on_model_error(request: Request, exc: ModelError):
        return _error_response(api_error_of(exc))

    @app.exception(SanicException)
    async def on_sanic_error(request: Request, exc: SanicException):
        status = getattr(exc, "status_code", 500) or 500
        kind = kind_of_status(status)
        message = str(exc) or exc.__class__.__name__
        if status == 404:
            message = f"no route {request.method} {request.path}"
        return _error_response(ApiError(kind, message, status=status))

    @app.exception(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(ApiError("internal", f"internal error ({type(exc).__name__}); see the neuron log"))

    tasks: list[asyncio.Task] = []

    @app.before_server_start
    async def start_tasks(app: Sanic) -> None:
        tasks.append(asyncio.create_task(_refresh_health(app.ctx), name="device-health"))
        tasks.append(asyncio.create_task(_load_defaults(app.ctx), name="default-models"))
        tasks.append(asyncio.create_task(app.ctx.notifier.keep_alive(), name="watchdog"))

    @app.after_server_start
    async def tell_ready(app: Sanic) -> None:
        if not config.ready_after_default_models:
            app.ctx.notifier.ready(_serving(app.ctx))

    @app.before_server_stop
    async def stop_tasks(app: Sanic) -> None:
        if app.ctx.restart is None:  # a restart says RELOADING instead, and its new process READY
            app.ctx.notifier.stopping("stopping: unloading the models")
        running = [*tasks, app.ctx.restart] if app.ctx.restart is not None else tasks
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    @app.after_server_stop
    async def unload_all(app: Sanic) -> None:
        await app.ctx.residency.close()

    return app
