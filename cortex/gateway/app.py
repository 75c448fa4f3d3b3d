"""The gateway's Sanic app: a factory that builds the typed context, registers the routes, the
auth check and the error handlers, and owns the HTTP session and the fleet poller."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sanic import Request, Sanic, response
from sanic.exceptions import SanicException

from cortex.config import Catalogue, CortexConfig, load_catalogue, split_listen
from cortex.fleet.neurons import NeuronClient
from cortex.fleet.poller import poll_forever, poll_once
from cortex.fleet.scheduler import Scheduler
from cortex.fleet.state import Fleet
from cortex.gateway import admin, anthropic, openai, responses, ui
from cortex.gateway.context import GatewayContext
from cortex.metrics import GatewayMetrics
from cortex.protocol.anthropic import errors as anthropic_errors
from cortex.protocol.auth import key_matches, presented_key
from cortex.protocol.errors import ApiError, kind_of_status
from cortex.protocol.http import SERVER_CONFIG, DeadlineProtocol, DeadlineRequest
from cortex.protocol.openai import errors as openai_errors

log = logging.getLogger(__name__)

POLL_TIMEOUT_SECS = 5.0
LISTEN_BACKLOG = 1024  # a burst of clients must not overflow the accept queue (a dropped SYN costs a 1 s retry)


def error_response(err: ApiError, request: Request):
    """The error in the caller's dialect: Anthropic's envelope on ``/v1/messages*`` (and on
    ``/v1/models*`` for a client that sends ``anthropic-version``), OpenAI's everywhere else."""
    headers = {"retry-after": str(max(1, int(err.retry_after)))} if err.retry_after is not None else {}
    path = request.path
    if path.startswith("/v1/messages") or (path.startswith("/v1/models") and "anthropic-version" in request.headers):
        body = anthropic_errors.render(err, request_id=request.headers.get("x-request-id") or f"req_{request.id.hex}")
    else:
        body = openai_errors.render(err)
    return response.raw(msgspec.json.encode(body), status=err.status, headers=headers, content_type="application/json")


def metrics_app(registry, name: str) -> Sanic:
    """The metrics listener (``gateway.metrics_listen``): ``/metrics`` (and ``/``) in Prometheus
    text, on the gateway's own event loop, so a scrape never reads fleet state another thread is
    changing, with the same deadlines on slow clients as the API."""
    app = Sanic(name, env_prefix=None, configure_logging=False, request_class=DeadlineRequest)
    # TOUCHUP off: Sanic rewrites its shared HTTP classes once, at the gateway app's start
    app.config.update({**SERVER_CONFIG, "REQUEST_MAX_SIZE": 64 * 2**10, "TOUCHUP": False})

    @app.get("/")
    @app.get("/metrics", name="metrics")
    async def scrape(request: Request):
        return response.raw(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return app


def reload_catalogue(ctx: GatewayContext) -> str:
    """Reads ``models_config`` again (``systemctl reload cortex``, SIGHUP): the catalogue and the
    aliases change for the requests that arrive after it; streams in flight, the fleet state and
    measured footprints are untouched. A file that no longer loads changes nothing (the error is
    raised, naming the file and key, for the caller to log). Answers what was loaded."""
    catalogue = load_catalogue(Path(ctx.config.models_config))
    before = {m.id for m in ctx.catalogue.models}
    after = {m.id for m in catalogue.models}
    ctx.catalogue = ctx.fleet.catalogue = catalogue
    changes = [f"+{m}" for m in sorted(after - before)] + [f"-{m}" for m in sorted(before - after)]
    return f"{ctx.config.models_config}: {len(catalogue.models)} models, {len(catalogue.aliases)} aliases" + (
        f" ({' '.join(changes)})" if changes else ""
    )


def create_app(
    config: CortexConfig, catalogue: Catalogue, *, fleet: Fleet | None = None, name: str = "cortex"
) -> Sanic:
    fleet = fleet or Fleet(config, catalogue)
    ctx = GatewayContext(config=config, catalogue=catalogue, fleet=fleet, metrics=GatewayMetrics(fleet))
    app = Sanic(name, ctx=ctx, env_prefix=None, configure_logging=False, request_class=DeadlineRequest)
    app.config.update({**SERVER_CONFIG, "REQUEST_MAX_SIZE": int(config.gateway.max_body_mb * 2**20)})
    app.blueprint(openai.bp)
    app.blueprint(anthropic.bp)
    app.blueprint(responses.bp)
    app.blueprint(admin.bp)
    app.blueprint(ui.bp)
    auth = config.auth
    # Without admin_keys the API keys open /admin/* too: an [auth] section never leaves it open.
    admin_keys = (auth.admin_keys or auth.api_keys) if auth is not None else []

    @app.on_request
    async def check_key(request: Request):
        if auth is None:
            return None
        path = request.path
        if path.startswith("/admin/") and admin_keys:
            key = presented_key(request.headers)
            if key is None:
                return error_response(ApiError("authentication", "this route needs an admin key"), request)
            if not key_matches(key, admin_keys):
                return error_response(ApiError("permission", "the key presented is not an admin key"), request)
        elif (
            path.startswith("/v1/") and auth.api_keys and not key_matches(presented_key(request.headers), auth.api_keys)
        ):
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
        kind = kind_of_status(status)
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
            c.http,
            poll_timeout_secs=POLL_TIMEOUT_SECS,
            load_timeout_secs=c.config.gateway.load_timeout_secs,
            keys={n.endpoint: n.api_key for n in c.fleet.nodes.values() if n.api_key},
        )
        c.scheduler = Scheduler(c.fleet, c.client, observer=c.metrics)
        mhost, mport = split_listen(c.config.gateway.metrics_listen)
        c.metrics_server = await metrics_app(c.metrics.registry, f"{app.name}-metrics").create_server(
            host=mhost, port=mport, protocol=DeadlineProtocol, access_log=False, backlog=LISTEN_BACKLOG
        )
        await c.metrics_server.startup()  # (create_server has bound the port and accepts connections)
        await poll_once(c.fleet, c.client)  # serve from a known fleet from the first request
        c.scheduler.start()
        c.tasks.append(asyncio.create_task(poll_forever(c.fleet, c.client, c.config.gateway.poll_interval_secs)))

    @app.before_server_stop
    async def stop_poller(app: Sanic) -> None:
        app.ctx.fleet.events.close()  # open event streams end now, not at the graceful-shutdown timeout
        if app.ctx.stats_task is not None:
            app.ctx.tasks.append(app.ctx.stats_task)
        for task in app.ctx.tasks:
            task.cancel()
        await asyncio.gather(*app.ctx.tasks, return_exceptions=True)
        if app.ctx.scheduler is not None:
            await app.ctx.scheduler.stop()

    @app.after_server_stop
    async def close_upstreams(app: Sanic) -> None:
        if app.ctx.metrics_server is not None:
            await app.ctx.metrics_server.close()
        if app.ctx.http is not None:
            await app.ctx.http.close()

    return app
