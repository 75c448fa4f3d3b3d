"""The gateway's Sanic app: a factory that builds the typed context, registers the routes, the
auth check and the error handlers, and owns the HTTP session and the fleet poller."""

from __future__ import annotations

import asyncio
import hmac
import logging

import aiohttp
import msgspec
from sanic import Request, Sanic, response
from sanic.exceptions import SanicException

from cortex.config import Catalogue, CortexConfig
from cortex.fleet.neurons import NeuronClient
from cortex.fleet.poller import poll_forever, poll_once
from cortex.fleet.scheduler import Scheduler
from cortex.fleet.state import Fleet
from cortex.gateway import admin, anthropic, openai, responses
from cortex.gateway.context import GatewayContext
from cortex.metrics import GatewayMetrics
from cortex.protocol.anthropic import errors as anthropic_errors
from cortex.protocol.errors import ApiError
from cortex.protocol.openai import errors as openai_errors

log = logging.getLogger(__name__)

_KIND_OF_STATUS = {400: "invalid_request", 401: "authentication", 403: "permission", 404: "not_found", 413: "too_large"}
POLL_TIMEOUT_SECS = 5.0


def error_response(err: ApiError, request: Request):
    """The error in the caller's dialect: Anthropic's envelope on ``/v1/messages*``, OpenAI's
    everywhere else."""
    headers = {"retry-after": str(max(1, int(err.retry_after)))} if err.retry_after is not None else {}
    if request.path.startswith("/v1/messages"):
        body = anthropic_errors.render(err, request_id=request.headers.get("x-request-id") or f"req_{request.id.hex}")
    else:
        body = openai_errors.render(err)
    return response.raw(msgspec.json.encode(body), status=err.status, headers=headers, content_type="application/json")


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def _matches(key: str | None, keys: list[str]) -> bool:
    return key is not None and any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)


def create_app(
    config: CortexConfig, catalogue: Catalogue, *, fleet: Fleet | None = None, name: str = "cortex"
) -> Sanic:
    fleet = fleet or Fleet(config, catalogue)
    ctx = GatewayContext(config=config, catalogue=catalogue, fleet=fleet, metrics=GatewayMetrics(fleet))
    app = Sanic(name, ctx=ctx, env_prefix=None, configure_logging=False)
    app.config.update(
        {
            "REQUEST_MAX_SIZE": int(config.gateway.max_body_mb * 2**20),
            "RESPONSE_TIMEOUT": 24 * 3600,
            "REQUEST_TIMEOUT": 120,
            "KEEP_ALIVE_TIMEOUT": 75,
            "FALLBACK_ERROR_FORMAT": "json",
        }
    )
    app.blueprint(openai.bp)
    app.blueprint(anthropic.bp)
    app.blueprint(responses.bp)
    app.blueprint(admin.bp)
    auth = config.auth

    @app.on_request
    async def check_key(request: Request):
        if auth is None:
            return None
        path = request.path
        if path.startswith("/admin/") and auth.admin_keys:
            key = _presented_key(request)
            if key is None:
                return error_response(ApiError("authentication", "this route needs an admin key"), request)
            if not _matches(key, auth.admin_keys):
                return error_response(ApiError("permission", "the key presented is not an admin key"), request)
        elif path.startswith("/v1/") and auth.api_keys and not _matches(_presented_key(request), auth.api_keys):
            return error_response(
                ApiError("authentication", "a valid API key is required (Authorization: Bearer … or x-api-key)"),
                request,
            )
        return None

    @app.exception(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        return error_response(exc, request)

    @app.exception(SanicException)
    async def on_sanic_error(request: Request, exc: SanicException):
        status = getattr(exc, "status_code", 500) or 500
        kind = _KIND_OF_STATUS.get(status, "internal" if status >= 500 else "invalid_request")
        message = str(exc) or exc.__class__.__name__
        if status == 404:
            message = f"no route {request.method} {request.path}"
        elif status == 413:
            message = f"the request body is larger than max_body_mb = {config.gateway.max_body_mb:g} MB"
        return error_response(ApiError(kind, message, status=status), request)

    @app.exception(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            ApiError("internal", f"internal error ({type(exc).__name__}); see the gateway log"), request
        )

    @app.before_server_start
    async def open_upstreams(app: Sanic) -> None:
        c: GatewayContext = app.ctx
        stall = c.config.gateway.stall_timeout_secs
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=stall)
        c.http = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300), auto_decompress=False
        )
        c.client = NeuronClient(
            c.http, poll_timeout_secs=POLL_TIMEOUT_SECS, load_timeout_secs=c.config.gateway.load_timeout_secs
        )
        c.scheduler = Scheduler(c.fleet, c.client, observer=c.metrics)
        await poll_once(c.fleet, c.client)  # serve from a known fleet from the first request
        c.scheduler.start()
        c.tasks.append(asyncio.create_task(poll_forever(c.fleet, c.client, c.config.gateway.poll_interval_secs)))

    @app.before_server_stop
    async def stop_poller(app: Sanic) -> None:
        for task in app.ctx.tasks:
            task.cancel()
        await asyncio.gather(*app.ctx.tasks, return_exceptions=True)
        if app.ctx.scheduler is not None:
            await app.ctx.scheduler.stop()

    @app.after_server_stop
    async def close_upstreams(app: Sanic) -> None:
        if app.ctx.http is not None:
            await app.ctx.http.close()

    return app
