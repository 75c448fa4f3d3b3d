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
from collections.abc import Callable

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
ABORTED_EXIT_SECS = 5.0  # how long aborted requests get to say why before their tasks are cancelled
CANCEL_AGAIN_SECS = 0.1


class Ticket:
    """One request inside the :class:`Intake`. ``abort`` is what a restart calls when the request
    outlives the drain: by default its task is cancelled; a handler that can end better (a
    stream: an error event and ``[DONE]``; a whole answer: a 503) sets its own."""

    def __init__(self, task: asyncio.Task | None) -> None:
        self.task = task
        self.abort: Callable[[], None] = task.cancel if task is not None else (lambda: None)


RESTART_ABORT = "this neuron restarted before the answer was complete; send the request again"


def restart_error() -> ApiError:
    """What a request stopped by a restart answers (or ends its stream with)."""
    return ApiError("unavailable", RESTART_ABORT, code="neuron_restarting", retry_after=RESTART_RETRY_AFTER_SECS)


class Intake:
    """The neuron-wide door for inference requests. A restart closes it (new requests get 503
    ``neuron_restarting``), then drains it: waits for the requests inside, and past its bound
    aborts them (each as its :class:`Ticket` says), so the restart never waits forever on a
    stream and no stream just stops without saying why."""

    def __init__(self) -> None:
        self.is_open = True
        self._inside: dict[asyncio.Task | None, Ticket] = {}
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

    def enter(self) -> Ticket:
        """Lets the current request (its task) in, or raises 503 when closed."""
        self.check_open()
        task = asyncio.current_task()
        ticket = Ticket(task)
        self._inside[task] = ticket
        self._empty.clear()
        return ticket

    def leave(self) -> None:
        self._inside.pop(asyncio.current_task(), None)
        if not self._inside:
            self._empty.set()

    def close(self) -> None:
        self.is_open = False

    async def drain(self, timeout_secs: float) -> int:
        """Waits up to ``timeout_secs`` for the requests inside to finish, then aborts those
        still running and waits for them to leave (cancelling their tasks if they do not);
        returns how many were aborted."""
        if self._empty.is_set():
            return 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), timeout=timeout_secs)
        late = list(self._inside.values())
        for ticket in late:
            ticket.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), timeout=ABORTED_EXIT_SECS)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCELLED_EXIT_SECS
        while self._inside and loop.time() < deadline:
            # Again and again: on Python 3.11 a cancellation that meets an await finishing inside
            # asyncio.wait_for (a stream's queue read) is lost.
            for task in list(self._inside):
                if task is not None:
                    task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), timeout=CANCEL_AGAIN_SECS)
        return len(late)
