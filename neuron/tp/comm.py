"""Collectives between the ranks of one tensor-parallel model, behind one small interface: the
CPU's over gloo, so the sharding, the executor and the watchdog run in CI; the GPU's over NCCL
(``neuron/ops/nccl.py``, loaded at run time) behind the same calls.

A group is its own gloo process group over a TCP store that rank 0 (the neuron) serves: no
process-global ``torch.distributed`` state, so one neuron can hold several tensor-parallel models.
A collective whose peer died fails at once (its connection closes); one whose peer hangs fails
after ``timeout_s``: either way the step raises, and the engine fails its requests.
"""

from __future__ import annotations

import datetime
import socket
from typing import Protocol

import torch
import torch.distributed as dist


class Communicator(Protocol):
    rank: int
    world: int

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor: ...  # sum, in place; returns t
    def all_gather(self, t: torch.Tensor) -> torch.Tensor: ...  # every rank's t in rank order: [world, *t.shape]
    def close(self) -> None: ...


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class GlooCommunicator:
    """Rank ``rank`` of ``world``, meeting the others at ``host:port`` (rank 0 serves the store)."""

    def __init__(
        self, rank: int, world: int, host: str, port: int, *, timeout_s: float = 60.0, name: str = "tp"
    ) -> None:
        self.rank, self.world = rank, world
        timeout = datetime.timedelta(seconds=timeout_s)
        self.store = dist.TCPStore(host, port, world, is_master=rank == 0, timeout=timeout)
        self.group = dist.ProcessGroupGloo(dist.PrefixStore(name, self.store), rank, world, timeout)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if not t.is_contiguous():
            raise ValueError("all_reduce needs a contiguous tensor")
        self.group.allreduce([t]).wait()
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        if not t.is_contiguous():
            raise ValueError("all_gather needs a contiguous tensor")
        out = torch.empty((self.world, *t.shape), dtype=t.dtype, device=t.device)
        self.group.allgather([list(out.unbind(0))], [t]).wait()
        return out

    def close(self) -> None:
        self.group = None  # type: ignore[assignment]  (its connections close with it)
        self.store = None  # type: ignore[assignment]
