"""Collectives between the ranks of one tensor-parallel model, behind one small interface: the
CPU's over gloo (``torch.distributed``), so the sharding, the executor and the watchdog run in CI;
the GPU's over NCCL (``neuron/ops/nccl.py``, loaded at run time) behind the same calls."""

from __future__ import annotations

import datetime
from typing import Protocol

import torch
import torch.distributed as dist


class Communicator(Protocol):
    rank: int
    world: int

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor: ...  # sum, in place; returns t
    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor: ...
    def close(self) -> None: ...


class GlooCommunicator:
    """Ranks of one process group over gloo (CPU tensors). ``init_method``: a ``file://`` or
    ``tcp://`` rendezvous every rank is given; ``timeout_s`` bounds a collective whose peer died."""

    def __init__(self, rank: int, world: int, init_method: str, *, timeout_s: float = 60.0) -> None:
        self.rank, self.world = rank, world
        timeout = datetime.timedelta(seconds=timeout_s)
        if not dist.is_initialized():
            dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world, timeout=timeout)
        self.group = dist.new_group(list(range(world)), backend="gloo", timeout=timeout)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if not t.is_contiguous():
            raise ValueError("all_reduce needs a contiguous tensor")
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        dist.broadcast(t, src=src, group=self.group)
        return t

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
