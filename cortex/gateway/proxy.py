"""Relaying a request to the neuron that serves its model, bytes in, bytes out.

The body is parsed once (``model``, ``stream``) and re-encoded only to rewrite an alias. Streams
are relayed chunk by chunk as they arrive; metrics time the first token, and usage is found by a
byte search of the stream's last chunks. A connection failure before the first byte retries on
another replica; nothing is retried after it. While a streamed request waits for a cold load,
the SSE headers go out at once and ``: keep-alive`` comments follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from typing import Any

import aiohttp
import msgspec
from sanic import Request, response
from sanic.response.types import HTTPResponse

from cortex.fleet.scheduler import Route
from cortex.gateway.context import GatewayContext
from cortex.protocol.errors import ApiError
from cortex.protocol.openai import errors as openai_errors

log = logging.getLogger(__name__)

KEEPALIVE_SECS = 5.0
COLD_WAIT_SECS = 0.05  # a route slower than this is a cold load: open the stream meanwhile
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
    }
)
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}
DONE = b"data: [DONE]\n\n"


class RoutedBody(msgspec.Struct):
    """The only fields the gateway reads from a request body."""

    model: str
    stream: bool = False
    messages: msgspec.Raw = msgspec.Raw(b"")  # kept undecoded: only checked to be present
    prompt: msgspec.Raw = msgspec.Raw(b"")


_TOKEN_RE = re.compile(rb'"(?:content|text|reasoning_content)"\s*:\s*"[^"]|"tool_calls"')


def _has_token(chunk: bytes) -> bool:
    """Whether an SSE chunk carries generated output (not just the opening role chunk)."""
    return _TOKEN_RE.search(chunk) is not None


def _usage(tail: bytes) -> tuple[int, int] | None:
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None
    start = tail.rfind(b"data: ", 0, at)
    start = 0 if start < 0 else start + 6
    end = tail.find(b"\n", at)
    try:
        obj = msgspec.json.decode(tail[start : end if end >= 0 else len(tail)])
        usage = obj.get("usage") or {}
        return int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    except (msgspec.DecodeError, AttributeError, TypeError, ValueError):
        return None


def _relay_headers(upstream: aiohttp.typedefs.LooseHeaders, extra: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in upstream.items() if k.lower() not in HOP_BY_HOP}
    out.update(extra)
    return out


class Relay:
    """One client request on its way through the gateway."""

    def __init__(self, request: Request, ctx: GatewayContext, endpoint: str, path: str) -> None:
        self.request, self.ctx, self.endpoint, self.path = request, ctx, endpoint, path
        self.started = time.monotonic()
        self.model = ""  # label: a fleet / catalogue id once routed, never the client's string
        self.node = ""
        self.status = 0
        self.stream_response: Any = None  # sanic response once the stream is open

    async def run(self, body: bytes, parsed: RoutedBody) -> HTTPResponse | None:
        fleet = self.ctx.fleet
        canonical = fleet.canonical(parsed.model)
        if canonical != parsed.model:  # an alias: the neuron knows the model by its own id
            obj = msgspec.json.decode(body)
            obj["model"] = canonical
            body = msgspec.json.encode(obj)
        try:
            route = await self._route(canonical, parsed.stream)
            self.model = canonical
            return await self._forward(route, canonical, body, parsed.stream)
        except ApiError as err:
            self.status = err.status
            if self.stream_response is not None:  # headers already out: finish the stream with the error
                await self._send(openai_errors.render_sse(err) + DONE)
                await self.stream_response.eof()
                return None
            raise
        finally:
            m = self.ctx.metrics
            labels = (self.model, self.node)
            m.requests.labels(*labels, self.endpoint, str(self.status or 499)).inc()
            m.duration.labels(*labels, self.endpoint).observe(time.monotonic() - self.started)

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(Exception):  # the client may be gone
            await self.stream_response.send(data)

    async def _route(self, model: str, stream: bool) -> Route:
        scheduler = self.ctx.scheduler
        task = asyncio.get_running_loop().create_task(scheduler.route(model))
        try:
            if stream:
                done, _ = await asyncio.wait({task}, timeout=COLD_WAIT_SECS)
                if not done:  # a cold load: open the stream now and keep it alive while we wait
                    self.stream_response = await self.request.respond(status=200, headers=dict(SSE_HEADERS))
                    await self._send(b": keep-alive\n\n")
                    while not task.done():
                        done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_SECS)
                        if not done:
                            await self._send(b": keep-alive\n\n")
            return await task
        finally:
            if not task.done():
                task.cancel()

    async def _forward(self, route: Route, model: str, body: bytes, stream: bool) -> HTTPResponse | None:
        ctx = self.ctx
        tried: set[str] = set()
        while True:
            node = route.node
            self.node = node.name
            node.in_flight[model] = node.in_flight.get(model, 0) + 1
            gauge = ctx.metrics.in_flight.labels(model, node.name)
            gauge.inc()
            try:
                return await self._attempt(route, model, body, stream)
            except TimeoutError:
                raise ApiError(
                    "timeout",
                    f"neuron {node.name} sent nothing for {ctx.config.gateway.stall_timeout_secs:g} s",
                    code="upstream_stalled",
                ) from None
            except aiohttp.ClientConnectionError as exc:  # before the first byte: another replica may do
                log.warning("%s unreachable before the first byte (%s); trying another replica", node.name, exc)
                node.endpoints.pop(model, None)
                tried.add(node.name)
                try:
                    route = await ctx.scheduler.route(model, exclude=frozenset(tried))
                except ApiError:
                    raise ApiError(
                        "upstream",
                        f"neuron {node.name} did not answer for {model!r} and no other replica can",
                        code="upstream_unreachable",
                    ) from None
                if route.node.name in tried:
                    raise ApiError(
                        "upstream", f"neuron {node.name} did not answer for {model!r}", code="upstream_unreachable"
                    ) from None
            finally:
                node.in_flight[model] -= 1
                gauge.dec()

    async def _attempt(self, route: Route, model: str, body: bytes, stream: bool) -> HTTPResponse | None:
        ctx, metrics = self.ctx, self.ctx.metrics
        queue_secs = time.monotonic() - self.started
        metrics.queue_wait.labels(model).observe(queue_secs)
        extra = {"x-cortex-node": route.node.name, "x-cortex-queue-ms": f"{queue_secs * 1000:.1f}"}
        if route.cold:
            extra["x-cortex-load-ms"] = f"{route.load_ms or 0:.0f}"
            metrics.cold_starts.labels(model, route.node.name).inc()
        headers = {"content-type": "application/json", "accept": self.request.headers.get("accept", "*/*")}
        async with ctx.http.post(route.url + self.path, data=body, headers=headers) as up:
            self.status = up.status
            ctype = up.headers.get("content-type", "")
            if up.status == 200 and not ctype.startswith(("application/json", "text/event-stream")):
                raise ApiError(
                    "upstream",
                    f"neuron {route.node.name} answered with content-type {ctype or '(none)'!r}, not JSON or SSE",
                    code="upstream_garbage",
                )
            if not stream or up.status != 200 or not ctype.startswith("text/event-stream"):
                try:
                    data = await up.read()
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise ApiError("upstream", f"neuron {route.node.name} broke off its answer: {exc}") from None
                self._account_body(model, route.node.name, data)
                if self.stream_response is not None:  # we promised a stream during the cold load
                    if up.status != 200:
                        err = ApiError("upstream", data.decode(errors="replace")[:500], status=up.status)
                        await self._send(openai_errors.render_sse(err) + DONE)
                    else:
                        await self._send(data)
                    await self.stream_response.eof()
                    return None
                return response.raw(data, status=up.status, headers=_relay_headers(up.headers, extra))
            return await self._stream(up, model, route.node.name, extra)

    def _account_body(self, model: str, node: str, data: bytes) -> None:
        usage = _usage(data) if b'"usage"' in data else None
        if usage:
            self.ctx.metrics.prompt_tokens.labels(model, node).inc(usage[0])
            self.ctx.metrics.completion_tokens.labels(model, node).inc(usage[1])

    async def _stream(self, up: aiohttp.ClientResponse, model: str, node: str, extra: dict[str, str]) -> None:
        metrics = self.ctx.metrics
        if self.stream_response is None:
            self.stream_response = await self.request.respond(
                status=up.status, headers=_relay_headers(up.headers, extra)
            )
        resp = self.stream_response
        tail: deque[bytes] = deque(maxlen=4)
        first = last = None
        token_chunks = 0
        try:
            async for chunk in up.content.iter_any():
                if first is None or token_chunks < 2:
                    if _has_token(chunk):
                        now = time.monotonic()
                        if first is None:
                            first = now
                            metrics.ttft.labels(model, node).observe(now - self.started)
                        token_chunks += 1
                else:
                    token_chunks += 1
                last = time.monotonic()
                tail.append(chunk)
                await resp.send(chunk)
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            stalled = isinstance(exc, asyncio.TimeoutError)
            why = (
                f"neuron {node} sent nothing for {self.ctx.config.gateway.stall_timeout_secs:g} s"
                if stalled
                else f"neuron {node} broke off the stream ({type(exc).__name__})"
            )
            log.warning("stream of %s: %s", model, why)
            self.status = 502
            err = ApiError(
                "timeout" if stalled else "upstream", why, code="upstream_stalled" if stalled else "upstream_broken"
            )
            await self._send(openai_errors.render_sse(err) + DONE)
        await resp.eof()
        usage = _usage(b"".join(tail))
        if usage:
            metrics.prompt_tokens.labels(model, node).inc(usage[0])
            metrics.completion_tokens.labels(model, node).inc(usage[1])
            if first is not None and last is not None and last > first and usage[1] > 1:
                metrics.tps.labels(model, node).observe((usage[1] - 1) / (last - first))
                metrics.itl.labels(model, node).observe((last - first) / (usage[1] - 1))
        return None
