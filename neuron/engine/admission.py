"""Per-model admission: at most ``max_in_flight`` requests generate at once, at most
``max_queue_depth`` wait (FIFO) and none waits longer than ``max_wait_secs``. Past the queue
bound a request gets 429, past the wait bound 503, both with ``Retry-After``.

In front of every model's admission stands the neuron's :class:`Intake`: open until a restart
closes it, and counting the requests inside so the restart can wait for them to finish."""

from __future__ import annotations

import asyncio
import contextlib
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


RESTART_RETRY_AFTER_SECS = 5.0
CANCELLED_EXIT_SECS = 10.0
CANCEL_AGAIN_SECS = 0.1


class Intake:
    """The neuron-wide door for inference requests. A restart closes it (new requests get 503
    ``neuron_restarting``), then drains it: waits for the requests inside, and past its bound
    cancels them, so the restart never waits forever on a stream."""

    def __init__(self) -> None:
        self.is_open = True
        self._inside: set[asyncio.Task] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    @property
    def inside(self) -> int:
        return len(self._inside)

    def check_open(self) -> None:
        """Raises the 503 a request (or a load) gets while the neuron restarts."""
        if not self.is_open:
            raise ApiError(
                "unavailable",
                "this neuron is restarting: it takes no new requests until it is back",
                code="neuron_restarting",
                retry_after=RESTART_RETRY_AFTER_SECS,
            )

    def enter(self) -> None:
        """Lets the current request (its task) in, or raises 503 when closed."""
        self.check_open()
        task = asyncio.current_task()
        if task is not None:
            self._inside.add(task)
            self._empty.clear()

    def leave(self) -> None:
        self._inside.discard(asyncio.current_task())
        if not self._inside:
            self._empty.set()

    def close(self) -> None:
        self.is_open = False

    async def drain(self, timeout_secs: float) -> int:
        """Waits up to ``timeout_secs`` for the requests inside to finish, then cancels those
        still running and waits for them to leave; returns how many were cancelled."""
        if self._empty.is_set():
            return 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), timeout=timeout_secs)
        late = len(self._inside)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCELLED_EXIT_SECS
        while self._inside and loop.time() < deadline:
            # Again and again: on Python 3.11 a cancellation that meets an await finishing inside
            # asyncio.wait_for (a stream's queue read) is lost.
            for task in list(self._inside):
                task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), timeout=CANCEL_AGAIN_SECS)
        return late
