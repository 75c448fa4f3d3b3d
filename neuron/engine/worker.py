"""One device, one thread: each device's models, tensors and (CUDA) context belong to a single
worker thread. The event loop hands it jobs (a load, an unload) and awaits their results; between
jobs the thread runs the engine steps of the models resident on the device, back to back while
any has work, so generation never waits for the event loop to ask for the next step."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


class Steppable(Protocol):
    def has_work(self) -> bool: ...
    def step(self) -> None: ...


_WAKE = object()  # a job that does nothing: the thread looks at its engines again
_STOP = object()


class DeviceWorker:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.name = str(device)
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._engines: list[Steppable] = []
        self._thread = threading.Thread(target=self._main, name=f"device-{self.name}", daemon=True)
        self._thread.start()
        if device.type == "cuda":
            self.call(torch.cuda.set_device, device)

    def _main(self) -> None:
        turn = 0
        while True:
            busy = [e for e in self._engines if e.has_work()]
            try:
                item = self._jobs.get(block=not busy)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None and item is not _WAKE:
                fn, args, kwargs, fut = item
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(*args, **kwargs))
                    except BaseException as exc:
                        fut.set_exception(exc)
                continue  # jobs first: a load or an unload never waits behind a long generation
            if busy:  # one step of one engine, taking turns between the models on this device
                turn = (turn + 1) % len(busy)
                try:
                    busy[turn].step()
                except Exception:  # Engine.step catches its own failures; this is a last resort
                    log.exception("an engine step on %s failed", self.name)

    def _submit(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> Future[T]:
        fut: Future[T] = Future()
        self._jobs.put((fn, args, kwargs, fut))
        return fut

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.wrap_future(self._submit(fn, args, kwargs))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs a job from a thread that is not the event loop (start-up, tests) and waits for it."""
        return self._submit(fn, args, kwargs).result()

    def wake(self) -> None:
        """Tells the thread an engine has new work. Thread-safe."""
        self._jobs.put(_WAKE)

    def attach(self, engine: Steppable) -> None:
        """Steps ``engine`` from now on. On the worker thread (inside a job)."""
        self._engines.append(engine)

    def detach(self, engine: Steppable) -> None:
        """No more steps of ``engine``. On the worker thread (inside a job)."""
        self._engines = [e for e in self._engines if e is not engine]

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout=30)
