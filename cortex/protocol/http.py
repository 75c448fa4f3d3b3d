"""How both programs listen for HTTP: Sanic's server with deadlines on what a client sends.

Sanic's ``REQUEST_TIMEOUT`` counts the silence between bytes, so a client that sends one byte of
its headers every few seconds ("slowloris") holds its connection, and a file descriptor, forever.
Here a new connection must send its first request's head within :data:`HEAD_SECS`, every request
head must arrive whole within :data:`HEAD_SECS` of its first byte, and a body within
:data:`BODY_SECS` of its head; past them the client gets 408 and the connection closes. Idle
keep-alive connections close after :data:`KEEP_ALIVE_SECS`. Responses have no deadline (a
stream may run for hours); the handlers bound silence themselves.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sanic import Request
from sanic.exceptions import RequestTimeout
from sanic.http import Stage
from sanic.server.protocols.http_protocol import HttpProtocol

HEAD_SECS = 10.0
BODY_SECS = 60.0
KEEP_ALIVE_SECS = 75.0
RESPONSE_SECS = 24 * 3600.0  # Sanic's own response timeout: off in practice; streams are long

SERVER_CONFIG: dict[str, Any] = {
    "REQUEST_TIMEOUT": HEAD_SECS,
    "KEEP_ALIVE_TIMEOUT": KEEP_ALIVE_SECS,
    "RESPONSE_TIMEOUT": RESPONSE_SECS,
    "FALLBACK_ERROR_FORMAT": "json",
}


class DeadlineProtocol(HttpProtocol):
    """Sanic's HTTP/1 protocol with a deadline on each request's head (and on the first one's
    start), checked on Sanic's own timeout tick."""

    __slots__ = ("_head_since",)

    def connection_made(self, transport) -> None:
        self._head_since: float | None = asyncio.get_running_loop().time()  # the first request's head
        super().connection_made(transport)

    def check_timeouts(self) -> None:
        http, task = self._http, self._task
        if http is not None and task is not None:
            now = asyncio.get_running_loop().time()
            if http.stage is Stage.REQUEST:
                if self._head_since is None:
                    self._head_since = now
            elif http.stage is not Stage.IDLE:
                self._head_since = None  # the head arrived; keep-alive waits are Sanic's own
            if self._head_since is not None and now - self._head_since > HEAD_SECS:
                http.exception = RequestTimeout(f"the request's head did not arrive within {HEAD_SECS:g} s")
                task.cancel()
                return
        super().check_timeouts()


class DeadlineRequest(Request):
    """A request whose body must arrive whole within :data:`BODY_SECS` of its head."""

    async def receive_body(self) -> None:
        try:
            await asyncio.wait_for(super().receive_body(), timeout=BODY_SECS)
        except TimeoutError:
            raise RequestTimeout(f"the request body did not arrive within {BODY_SECS:g} s") from None
