"""Server-sent events for streamed completions: ``data: {json}`` events, ``data: [DONE]`` at the
end, ``: keep-alive`` comments while nothing else goes out (a long prefill), and a final
``data: {"error": …}`` event when something fails after the first byte."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from sanic import Request

from cortex.protocol.errors import ApiError
from cortex.protocol.openai import errors as openai_errors
from neuron.engine.admission import restart_error

log = logging.getLogger(__name__)

KEEPALIVE_SECS = 10.0
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def event(obj: Any) -> bytes:
    return b"data: " + msgspec.json.encode(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


async def stream_events(
    request: Request,
    produce: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]],
    *,
    keepalive_secs: float = KEEPALIVE_SECS,
    headers: dict[str, str] | None = None,
) -> None:
    """Runs ``produce(emit)`` and relays what it emits as an SSE response, with keep-alives.

    The producer runs as its own task; when the client goes away the handler is cancelled and
    so is the producer (which stops generating at its next step). A restart that stops the
    stream (the request's intake ticket) cancels the producer and the stream ends with a
    ``neuron_restarting`` error event and ``[DONE]``.
    """
    response = await request.respond(content_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})})
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    aborted: list[ApiError] = []

    async def emit(data: bytes) -> None:
        await queue.put(data)

    async def run() -> None:
        try:
            await produce(emit)
        except ApiError as exc:
            await queue.put(openai_errors.render_sse(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("stream failed after the first byte")
            await queue.put(openai_errors.render_sse(ApiError("internal", f"generation failed: {type(exc).__name__}")))
        finally:
            await queue.put(None)

    producer = asyncio.get_running_loop().create_task(run())
    ticket = getattr(request.ctx, "ticket", None)
    if ticket is not None:  # a restart that stops this stream ends it with an error event, not a cut

        def abort() -> None:
            aborted.append(restart_error())
            producer.cancel()

        ticket.abort = abort
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=keepalive_secs)
            except TimeoutError:
                await response.send(KEEPALIVE)
                continue
            if item is None:
                break
            await response.send(item)
        if aborted:
            await response.send(openai_errors.render_sse(aborted[0]))
        await response.send(DONE)
        await response.eof()
    finally:
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
