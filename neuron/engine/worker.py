"""One device, one thread: each device's models, tensors and (CUDA) context belong to a single
worker thread; the event loop hands it jobs and awaits their results."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class DeviceWorker:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.name = str(device)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"device-{self.name}")
        if device.type == "cuda":
            self._executor.submit(torch.cuda.set_device, device).result()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs a job from a thread that is not the event loop (start-up, tests) and waits for it."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
