"""Per-model admission: at most ``max_in_flight`` requests generate at once, at most
``max_queue_depth`` wait (FIFO) and none waits longer than ``max_wait_secs``. Past the queue
bound a request gets 429, past the wait bound 503, both with ``Retry-After``."""

from __future__ import annotations

import asyncio
import math
from collections import deque

from cortex.protocol.errors import ApiError


class Admission:
    def __init__(self, model_id: str, max_in_flight: int, max_queue_depth: int, max_wait_secs: float) -> None:
        self.model_id = model_id
        self.max_in_flight = max_in_flight
        self.max_queue_depth = max_queue_depth
        self.max_wait_secs = max_wait_secs
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _retry_after(self) -> float:
        return float(max(1, math.ceil(self.max_wait_secs / 4)))

    async def acquire(self) -> None:
        if self.in_flight < self.max_in_flight and not self._waiters:
            self._grant()
            return
        if len(self._waiters) >= self.max_queue_depth:
            raise ApiError(
                "rate_limit",
                f"model {self.model_id!r} is busy: {self.in_flight} requests running and "
                f"{len(self._waiters)} queued (max_queue_depth {self.max_queue_depth})",
                code="queue_full",
                retry_after=self._retry_after(),
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=self.max_wait_secs)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():  # granted at the last moment: give it back
                self.release()
            else:
                waiter.cancel()
            raise ApiError(
                "unavailable",
                f"model {self.model_id!r} stayed busy for {self.max_wait_secs:g} s (max_wait_secs)",
                code="queue_timeout",
                retry_after=self._retry_after(),
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            else:
                waiter.cancel()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _grant(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        while self._waiters and self.in_flight < self.max_in_flight:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._grant()
                waiter.set_result(None)
        if self.in_flight == 0 and not self._waiters:
            self._idle.set()

    async def drained(self) -> None:
        """Waits until no request runs or waits."""
        await self._idle.wait()
