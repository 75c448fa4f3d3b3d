"""What happens in the fleet, as it happens: the events behind ``GET /admin/events`` and the fleet
page. Producers (the fleet state as polls and operations change it, the scheduler, the relay)
call :meth:`EventHub.publish`, which never waits: each subscriber has a bounded queue, and one
that falls behind by more than it holds is dropped (its stream is closed; a browser reconnects
with ``Last-Event-ID``) rather than slowing anyone. A ring of recent events lets a reconnecting
subscriber resume where it left off when that is still in the ring.

Event kinds and their data (every event also carries ``time``, seconds since the epoch):

- ``neuron``: ``{node, state: up | degraded | down, reason?}`` — degraded after a failed poll of a
  neuron that was up, down after three; ``reason`` is the last poll's error.
- ``health``: ``{node, health}`` — a neuron's reading (contracts §3 ``/health``), when it changed.
- ``model``: ``{node, model, state, …}`` — ``loading`` (with ``progress`` 0..1, again as it
  grows), ``loaded`` (``vram_used_mb``, ``devices``), ``failed`` (``error``), ``unloading``
  (``reason``, ``needed_by``: the model that needed the room, if any), ``evicted`` (same fields),
  ``unloaded`` (an operator's unload: ``reason`` ``admin``; or, without a reason, gone without
  the gateway asking).
- ``restart``: ``{node, state: restarting | restarted | failed, error?}`` (defragmentation).
- ``failover``: ``{model, node, error}`` — a request left ``node`` for another replica.
- ``stats``: ``{models: {ID: {requests, in_flight, queued, tokens_per_second, ttft_seconds}}}``
  every couple of seconds while someone listens (from the gateway's own counters).

Pure asyncio and data: no HTTP here (``cortex/gateway/ui.py`` serves the stream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["Event", "EventHub", "Subscription"]

log = logging.getLogger(__name__)

BUFFER = 256  # events a subscriber may fall behind by before it is dropped
HISTORY = 1024  # recent events kept for Last-Event-ID resume

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]
    epoch: str = ""  # the hub's: an id from another gateway process is never taken for one of ours

    @property
    def sse_id(self) -> str:
        return f"{self.epoch}-{self.id}"

    def sse(self) -> bytes:
        """The event as one server-sent-event frame."""
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (self.sse_id.encode(), self.kind.encode(), _encode(self.data))


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[Event | None]
    on_drop: Callable[[], None] | None = None  # closes the subscriber's connection
    dropped: bool = False

    async def next(self) -> Event | None:
        """The next event; None once dropped."""
        return None if self.dropped else await self.queue.get()


class EventHub:
    def __init__(self, *, buffer: int = BUFFER, history: int = HISTORY) -> None:
        self.buffer = buffer
        self.history: deque[Event] = deque(maxlen=history)
        self.subscribers: set[Subscription] = set()
        self.last_id = 0
        self.epoch = f"{time.time_ns() // 1_000_000:x}"
        self.dropped = 0  # subscribers dropped for falling behind, since start

    def publish(self, kind: str, **data: Any) -> Event:
        """Records the event and hands it to every subscriber; never blocks. A subscriber whose
        queue is full is dropped."""
        self.last_id += 1
        event = Event(self.last_id, kind, {**data, "time": round(time.time(), 3)}, self.epoch)
        self.history.append(event)
        for sub in list(self.subscribers):
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._drop(sub)
        return event

    def subscribe(self, last_event_id: str | None = None) -> tuple[Subscription, list[Event] | None]:
        """A new subscription, and the events after ``last_event_id`` (an SSE id this hub gave
        out) when they are all still in the ring: a resume. None when the subscriber needs a
        fresh snapshot instead (no id, another process's, or too old)."""
        sub = Subscription(asyncio.Queue(self.buffer))
        self.subscribers.add(sub)
        epoch, _, n = (last_event_id or "").partition("-")
        if epoch != self.epoch or not n.isdigit():
            return sub, None
        last = int(n)
        oldest = self.history[0].id if self.history else self.last_id + 1
        if not oldest - 1 <= last <= self.last_id:
            return sub, None
        return sub, [e for e in self.history if e.id > last]

    def snapshot_id(self) -> str:
        """The SSE id of a snapshot taken now: resuming from it replays what follows."""
        return f"{self.epoch}-{self.last_id}"

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    def close(self) -> None:
        """Ends every subscription (the gateway is stopping): each stream finishes at once."""
        for sub in list(self.subscribers):
            self.subscribers.discard(sub)
            sub.dropped = True
            while not sub.queue.empty():
                sub.queue.get_nowait()
            sub.queue.put_nowait(None)

    def _drop(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)
        sub.dropped = True
        self.dropped += 1
        while not sub.queue.empty():  # free what it held, and wake a reader waiting for more
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)
        log.info("dropped an event stream %d events behind (a slow client; it may reconnect)", self.buffer)
        if sub.on_drop is not None:
            sub.on_drop()
