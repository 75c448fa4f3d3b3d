"""Relaying a request to the neuron that serves its model.

OpenAI chat and completions pass through as bytes: the body is parsed once (``model``,
``stream``) and re-encoded only to rewrite an alias; streams are relayed chunk by chunk as they
arrive; metrics time the first token and find usage by a byte search of the stream's last
chunks. Translated dialects (Anthropic Messages, OpenAI Responses) send a chat body the gateway
built and get the answer back through a translator: whole, or event by event as the upstream
chunks arrive, with the dialect's keep-alive while nothing else goes out.

A connection failure before the first byte retries on another replica; nothing is retried after
it. While a streamed request waits for a cold load, the response headers go out at once and
keep-alives follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import msgspec
from sanic import Request, response
from sanic.response.types import HTTPResponse

from cortex.fleet.scheduler import Route
from cortex.gateway.context import GatewayContext
from cortex.protocol.auth import key_headers
from cortex.protocol.errors import ApiError, kind_of_status
from cortex.protocol.openai import errors as openai_errors
from cortex.translate.common import StreamError
from cortex.translate.sse import EventReader, decode_chunk, upstream_error

log = logging.getLogger(__name__)

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


class Timings(msgspec.Struct):
    """The neuron's own timing of a generation (llama.cpp server's ``timings`` fields): decode
    speed comes from here, never from when chunks happened to arrive (a tool call streamed whole
    at the end would read as thousands of tokens a second)."""

    predicted_n: int = 0  # decode steps after the first token
    predicted_ms: float = 0.0


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Final(msgspec.Struct):
    usage: Usage | None = None
    timings: Timings | None = None


def _usage(tail: bytes) -> _Final | None:
    """The last ``usage`` (and ``timings``) in a body or in the last chunks of a stream."""
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None
    start = tail.rfind(b"data: ", 0, at)
    start = 0 if start < 0 else start + 6
    end = tail.find(b"\n", at)
    try:
        final = msgspec.json.decode(tail[start : end if end >= 0 else len(tail)], type=_Final)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return final if final.usage is not None else None


class StreamTranslator(Protocol):
    """Chat chunks in, the client's dialect out (``cortex.translate``)."""

    started: bool
    ended: bool

    def start(self, input_tokens: int) -> bytes: ...
    def keepalive(self) -> bytes: ...
    def feed(self, chunk: Any) -> bytes: ...
    def finish(self) -> bytes: ...
    def fail(self, err: ApiError) -> bytes: ...


@dataclass
class Translation:
    """How one translated request's answer goes back: ``whole`` turns a complete chat answer
    into the client's body; ``stream`` is set for streamed requests; ``count`` (optional) counts
    the prompt's tokens so a stream can open before a cold load finishes."""

    whole: Callable[[bytes], bytes]
    stream: StreamTranslator | None = None
    count: Callable[[], Awaitable[int | None]] | None = None


def upstream_api_error(status: int, data: bytes, retry_after: str | None = None) -> ApiError:
    """A neuron's error answer (OpenAI envelope, or anything) as an ApiError to re-render."""
    message, param = data[:500].decode(errors="replace"), None
    with contextlib.suppress(msgspec.DecodeError, AttributeError, TypeError):
        err = msgspec.json.decode(data).get("error")
        if isinstance(err, dict):
            message, param = str(err.get("message") or err), err.get("param")
    kind = kind_of_status(status, upstream=True)
    after = None
    with contextlib.suppress(TypeError, ValueError):
        after = float(retry_after) if retry_after is not None else None
    return ApiError(kind, message, param=param, status=status, retry_after=after)


NEURON_QUEUE_HEADER = "x-neuron-queue-ms"  # the neuron's own admission wait


def _queue_secs(header: str | None) -> float:
    try:
        value = float(header) / 1000 if header else 0.0
    except ValueError:
        return 0.0
    return value if 0 <= value < 1e6 else 0.0


MAX_STALE_RETRIES = 2
WHOLE_ANSWER_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
STALE_CODES = (b'"model_unloading"', b'"model_loading"', b'"neuron_restarting"')


class StaleRoute(Exception):
    """The neuron answered before the first byte that it does not serve the model (any more)."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _is_stale(status: int, data: bytes) -> bool:
    return status == 404 or any(code in data for code in STALE_CODES)


def _relay_headers(upstream: aiohttp.typedefs.LooseHeaders, extra: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in upstream.items() if k.lower() not in HOP_BY_HOP}
    out.update(extra)
    return out


async def count_prompt(ctx: GatewayContext, model: str, tokenize_body: dict[str, Any], endpoint: str) -> int:
    """A prompt's exact token count from a neuron (never loading a model), with the request metric."""
    status = 499
    try:
        count = await ctx.scheduler.count_tokens(model, msgspec.json.encode(tokenize_body))
        status = 200
        return count
    except ApiError as err:
        status = err.status
        raise
    finally:
        ctx.metrics.requests.labels(model_label(ctx, model), "", endpoint, str(status)).inc()


def model_label(ctx: GatewayContext, model: str) -> str:
    """``model`` as a metric label when the fleet knows it (catalogue or a neuron's list), else
    empty: never a string a client chose."""
    known = ctx.fleet.catalogue.profile(model) is not None or any(model in n.models for n in ctx.fleet.nodes.values())
    return model if known else ""


class Relay:
    """One client request on its way through the gateway."""

    def __init__(
        self, request: Request, ctx: GatewayContext, endpoint: str, path: str, translation: Translation | None = None
    ) -> None:
        self.request, self.ctx, self.endpoint, self.path = request, ctx, endpoint, path
        self.translation = translation
        self.started = time.monotonic()
        self.model = ""  # label: a fleet / catalogue id once routed, never the client's string
        self.node = ""
        self.status = 0
        self.stream_response: Any = None  # sanic response once the stream is open
        self._sending = False  # a translated event is being written
        self._sent_at = 0.0  # when the last one was

    async def run(self, body: bytes, parsed: RoutedBody) -> HTTPResponse | None:
        """Routes and forwards ``body``. For a translated request, ``body`` already names the
        canonical model; for a pass-through one an alias is rewritten here."""
        fleet = self.ctx.fleet
        canonical = fleet.canonical(parsed.model)
        if canonical != parsed.model and self.translation is None:
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
                await self._send(self._stream_error(err))
                await self.stream_response.eof()
                return None
            raise
        finally:
            m = self.ctx.metrics
            # a request that failed before it was routed (no room, queue timeout) still counts
            # against its model, so a per-model 503 rate sees it
            labels = (self.model or model_label(self.ctx, canonical), self.node)
            m.requests.labels(*labels, self.endpoint, str(self.status or 499)).inc()
            m.duration.labels(*labels, self.endpoint).observe(time.monotonic() - self.started)

    def _stream_error(self, err: ApiError) -> bytes:
        tr = self.translation.stream if self.translation is not None else None
        return tr.fail(err) if tr is not None else openai_errors.render_sse(err) + DONE

    def _keepalive(self) -> bytes:
        tr = self.translation.stream if self.translation is not None else None
        return tr.keepalive() if tr is not None else b": keep-alive\n\n"

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(Exception):  # the client may be gone
            await self.stream_response.send(data)

    async def _route(self, model: str, stream: bool) -> Route:
        scheduler = self.ctx.scheduler
        task = asyncio.get_running_loop().create_task(scheduler.route(model))
        count: asyncio.Task | None = None
        handed = False
        try:
            if stream:
                done, _ = await asyncio.wait({task}, timeout=COLD_WAIT_SECS)
                if not done:  # a cold load: open the stream now and keep it alive while we wait
                    self.stream_response = await self.request.respond(status=200, headers=dict(SSE_HEADERS))
                    tr = self.translation
                    if tr is not None and tr.count is not None and tr.stream is not None:
                        count = asyncio.get_running_loop().create_task(tr.count())
                    await self._send(self._keepalive())
                    while not task.done():
                        done, _ = await asyncio.wait(
                            {task, count} - {None},
                            timeout=self.ctx.config.gateway.keepalive_secs,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        if count is not None and count in done:  # the dialect can open its message now
                            tokens = count.result()
                            if tokens is not None and tr is not None and tr.stream is not None:
                                await self._send(tr.stream.start(tokens))
                            count = None
                        elif not done:
                            await self._send(self._keepalive())
            route = await task
            handed = True
            return route
        finally:
            for t in (task, count):
                if t is not None and not t.done():
                    t.cancel()
            if not handed and task.done() and not task.cancelled() and task.exception() is None:
                # routed, but this request is going away (the client left): the route's count ends here
                scheduler.request_finished(task.result().node, model)

    async def _forward(self, route: Route, model: str, body: bytes, stream: bool) -> HTTPResponse | None:
        ctx = self.ctx
        tried: set[str] = set()
        stale = 0
        while True:
            node = route.node  # the scheduler counted this request as started there when it chose it
            self.node = node.name
            gauge = ctx.metrics.in_flight.labels(model, node.name)
            gauge.inc()
            try:
                attempt = self._attempt(route, model, body, stream)
                return await (attempt if stream else self._while_up(node, attempt))
            except StaleRoute as exc:  # the model left that neuron (another gateway evicted it, a restart)
                ctx.scheduler.forget(node, model)
                stale += 1
                if stale > MAX_STALE_RETRIES:
                    raise exc.error from None
                log.info("%s is no longer served by %s (%s); routing again", model, node.name, exc.error.message)
                route = await ctx.scheduler.route(model)
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
                ctx.fleet.events.publish("failover", model=model, node=node.name, to=route.node.name, error=str(exc))
            finally:
                ctx.scheduler.request_finished(node, model)
                gauge.dec()

    async def _while_up(self, node, attempt):
        """A non-streamed answer is silent until it is whole, so no read timeout can tell a long
        generation from a dead neuron; the polls can: this gives up when the neuron goes down."""
        task = asyncio.ensure_future(attempt)
        down = asyncio.ensure_future(node.went_down.wait())
        try:
            done, _ = await asyncio.wait({task, down}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            raise ApiError(
                "upstream", f"neuron {node.name} stopped answering its polls before it answered", code="neuron_down"
            )
        finally:
            for t in (task, down):
                if not t.done():
                    t.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _attempt(self, route: Route, model: str, body: bytes, stream: bool) -> HTTPResponse | None:
        ctx, metrics = self.ctx, self.ctx.metrics
        queue_secs = time.monotonic() - self.started  # routing, and any cold load; the neuron adds its own
        extra = {"x-cortex-node": route.node.name}
        if route.cold:
            extra["x-cortex-load-ms"] = f"{route.load_ms or 0:.0f}"
            metrics.cold_starts.labels(model, route.node.name).inc()
        headers = {
            "content-type": "application/json",
            "accept": self.request.headers.get("accept", "*/*"),
            **key_headers(route.node.api_key),
        }
        # a stream's silence is bounded by stall_timeout_secs (the session's read timeout); a whole
        # answer is silent until it is done, however long that takes (_while_up watches the neuron)
        timeout = {} if stream else {"timeout": WHOLE_ANSWER_TIMEOUT}
        async with ctx.http.post(route.url + self.path, data=body, headers=headers, **timeout) as up:
            self.status = up.status
            queue_secs += _queue_secs(up.headers.get(NEURON_QUEUE_HEADER))
            metrics.queue_wait.labels(model).observe(queue_secs)
            extra["x-cortex-queue-ms"] = f"{queue_secs * 1000:.1f}"
            if up.status in (401, 403):  # the neuron refused our fleet key: not the client's fault
                raise ApiError(
                    "upstream",
                    f"neuron {route.node.name} refused the gateway's fleet key (HTTP {up.status}); "
                    "check [[neurons]] api_key in cortex.toml against its neuron.toml api_key",
                    code="neuron_key_refused",
                )
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
                if up.status in (404, 503) and _is_stale(up.status, data):
                    raise StaleRoute(upstream_api_error(up.status, data, up.headers.get("retry-after")))
                self._account(model, route.node.name, data)
                if self.translation is not None:
                    return self._translated_body(up, data, stream, extra)
                if self.stream_response is not None:  # we promised a stream during the cold load
                    if up.status != 200:
                        err = ApiError("upstream", data.decode(errors="replace")[:500], status=up.status)
                        await self._send(openai_errors.render_sse(err) + DONE)
                    else:
                        await self._send(data)
                    await self.stream_response.eof()
                    return None
                return response.raw(data, status=up.status, headers=_relay_headers(up.headers, extra))
            if self.translation is not None:
                return await self._stream_translated(up, model, route.node.name, extra)
            return await self._stream(up, model, route.node.name, extra)

    def _translated_body(self, up: aiohttp.ClientResponse, data: bytes, stream: bool, extra: dict[str, str]):
        if up.status != 200:
            raise upstream_api_error(up.status, data, up.headers.get("retry-after"))
        if stream:
            raise ApiError(
                "upstream", "the neuron answered a streamed request with a whole body", code="upstream_garbage"
            )
        assert self.translation is not None
        return response.raw(self.translation.whole(data), headers=extra, content_type="application/json")

    def _account(self, model: str, node: str, data: bytes) -> None:
        """Tokens from the answer's usage; decode speed and inter-token latency from the
        neuron's own timings (absent: not observed)."""
        final = _usage(data) if b'"usage"' in data else None
        if final is None or final.usage is None:
            return
        metrics = self.ctx.metrics
        metrics.prompt_tokens.labels(model, node).inc(final.usage.prompt_tokens)
        metrics.completion_tokens.labels(model, node).inc(final.usage.completion_tokens)
        t = final.timings
        if t is not None and t.predicted_n > 0 and t.predicted_ms > 0:
            metrics.tps.labels(model, node).observe(t.predicted_n / (t.predicted_ms / 1000))
            metrics.itl.labels(model, node).observe(t.predicted_ms / 1000 / t.predicted_n)

    def _broken(self, exc: BaseException, node: str, model: str) -> ApiError:
        stalled = isinstance(exc, asyncio.TimeoutError)
        why = (
            f"neuron {node} sent nothing for {self.ctx.config.gateway.stall_timeout_secs:g} s"
            if stalled
            else f"neuron {node} broke off the stream ({type(exc).__name__})"
        )
        log.warning("stream of %s: %s", model, why)
        self.status = 502
        return ApiError(
            "timeout" if stalled else "upstream", why, code="upstream_stalled" if stalled else "upstream_broken"
        )

    async def _stream(self, up: aiohttp.ClientResponse, model: str, node: str, extra: dict[str, str]) -> None:
        metrics = self.ctx.metrics
        if self.stream_response is None:
            self.stream_response = await self.request.respond(
                status=up.status, headers=_relay_headers(up.headers, extra)
            )
        resp = self.stream_response
        tail: deque[bytes] = deque(maxlen=4)
        first = None
        try:
            async for chunk in up.content.iter_any():
                if first is None and _has_token(chunk):
                    first = time.monotonic()
                    metrics.ttft.labels(model, node).observe(first - self.started)
                tail.append(chunk)
                await resp.send(chunk)
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            await self._send(openai_errors.render_sse(self._broken(exc, node, model)) + DONE)
        await resp.eof()
        self._account(model, node, b"".join(tail))
        return None

    async def _stream_translated(
        self, up: aiohttp.ClientResponse, model: str, node: str, extra: dict[str, str]
    ) -> None:
        """Upstream chat chunks → the client's dialect, event by event; while the upstream is
        silent (queue, long prefill) the dialect's keep-alive goes out every ``keepalive_secs``."""
        assert self.translation is not None and self.translation.stream is not None
        tr = self.translation.stream
        metrics = self.ctx.metrics
        if self.stream_response is None:
            self.stream_response = await self.request.respond(status=200, headers={**SSE_HEADERS, **extra})
        resp = self.stream_response
        reader = EventReader()
        tail: deque[bytes] = deque(maxlen=4)
        first = None
        self._sending, self._sent_at = False, time.monotonic()
        pinger = asyncio.get_running_loop().create_task(self._keep_alive(tr))
        try:
            async for chunk in up.content.iter_any():
                if first is None and _has_token(chunk):
                    first = time.monotonic()
                    metrics.ttft.labels(model, node).observe(first - self.started)
                tail.append(chunk)
                out = b""
                for payload in reader.feed(chunk):
                    parsed = decode_chunk(payload)
                    if parsed is None:
                        continue
                    if parsed.error is not None:
                        raise upstream_error(parsed.error)
                    out += tr.feed(parsed)
                if out:
                    await self._send_event(resp, out)
            for payload in reader.close():
                parsed = decode_chunk(payload)
                if parsed is not None:
                    await self._send_event(resp, tr.feed(parsed))
            final = tr.finish()
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            final = tr.fail(self._broken(exc, node, model))
        except StreamError as exc:
            self.status = 502
            final = tr.fail(ApiError("upstream", str(exc), code="untranslatable_stream"))
        except ApiError as err:
            self.status = err.status
            final = tr.fail(err)
        finally:
            pinger.cancel()
        await self._send(final)
        await resp.eof()
        self._account(model, node, b"".join(tail))
        return None

    async def _send_event(self, resp: Any, data: bytes) -> None:
        self._sending = True
        try:
            await resp.send(data)
        finally:
            self._sending, self._sent_at = False, time.monotonic()

    async def _keep_alive(self, tr: StreamTranslator) -> None:
        """Sends the dialect's keep-alive when nothing went out for ``keepalive_secs``; never in
        the middle of a send, so it cannot overtake the event (``message_start``) being written."""
        every = self.ctx.config.gateway.keepalive_secs
        while True:
            await asyncio.sleep(max(0.0, self._sent_at + every - time.monotonic()))
            if not self._sending and time.monotonic() - self._sent_at >= every:
                try:
                    await self._send_event(self.stream_response, tr.keepalive())
                except Exception:  # the client is gone; the relay notices on its next send
                    return
