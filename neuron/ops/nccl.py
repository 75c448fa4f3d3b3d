"""NCCL collectives for tensor parallelism across GPUs, through ``libnccl.so.2`` opened at run
time (``csrc/nccl``: the module links no NCCL). :func:`load` finds the library: ``HELEXA_NCCL_LIBRARY``
when set, else the ``nvidia-nccl-cu*`` wheel that a CUDA build of torch brings (``nvidia/nccl/lib``
on ``sys.path``), else the system's (``libnccl.so.2`` on the loader's path); when none loads it
raises :class:`NcclUnavailable` naming every place it looked and why each was passed over.

:class:`NcclCommunicator` is the GPU side of ``neuron.tp.comm.Communicator``: rank 0 makes the
unique id (:func:`unique_id`), every rank joins with it, and the collectives run in place on
CUDA tensors on torch's current stream.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from neuron.ops import _lib

ENV = "HELEXA_NCCL_LIBRARY"
_DTYPES = {torch.float32: _lib.DType.f32, torch.float16: _lib.DType.f16, torch.bfloat16: _lib.DType.bf16}


class NcclUnavailable(RuntimeError):
    """No loadable NCCL on this host (the message says where it looked)."""


def candidates() -> list[str]:
    """Where :func:`load` looks, in order."""
    out = []
    if os.environ.get(ENV):
        return [os.environ[ENV]]
    for entry in sys.path:
        lib = Path(entry or ".") / "nvidia" / "nccl" / "lib" / "libnccl.so.2"
        if lib.is_file():
            out.append(str(lib))
    out.append("libnccl.so.2")
    return out


def load() -> str:
    """Opens NCCL (once per process); returns the library's path."""
    tried = candidates()
    try:
        return _lib.native.nccl_open_library(tried)
    except RuntimeError as exc:
        hint = f"install the nvidia-nccl-cu12 (or -cu13) wheel, or set {ENV} to the library's path"
        raise NcclUnavailable(f"{exc}\n{hint}") from None


def version() -> tuple[int, int, int]:
    """The loaded NCCL's version, (major, minor, patch)."""
    v = _lib.native.nccl_version()
    return (v // 10000, v // 100 % 100, v % 100) if v >= 10000 else (v // 1000, v // 100 % 10, v % 100)


def unique_id() -> bytes:
    """A fresh communicator id (rank 0 makes it and hands it to every rank)."""
    load()
    return _lib.native.nccl_unique_id()


def _check_cuda(t: torch.Tensor, name: str) -> None:
    if t.device.type != "cuda":
        raise TypeError(f"{name} must be a CUDA tensor, got one on {t.device}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


class NcclCommunicator:
    """Rank ``rank`` of ``world`` on the current CUDA device (set it first: ``torch.cuda.set_device``)."""

    def __init__(self, rank: int, world: int, uid: bytes) -> None:
        load()
        self.rank, self.world = rank, world
        self.comm = _lib.native.nccl_comm_init(uid, world, rank)

    @staticmethod
    def _stream(t: torch.Tensor) -> int:
        return torch.cuda.current_stream(t.device).cuda_stream

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        _check_cuda(t, "the tensor")
        _lib.native.nccl_all_reduce(self.comm, t.data_ptr(), t.numel(), _DTYPES[t.dtype], self._stream(t))
        return t

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        _check_cuda(t, "the tensor")
        _lib.native.nccl_broadcast(self.comm, t.data_ptr(), t.numel(), _DTYPES[t.dtype], src, self._stream(t))
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` stacked in rank order: ``[world, *t.shape]``."""
        _check_cuda(t, "the tensor")
        out = torch.empty((self.world, *t.shape), dtype=t.dtype, device=t.device)
        stream = self._stream(t)
        _lib.native.nccl_all_gather(self.comm, t.data_ptr(), out.data_ptr(), t.numel(), _DTYPES[t.dtype], stream)
        return out

    def close(self) -> None:
        if self.comm:
            _lib.native.nccl_comm_destroy(self.comm)
            self.comm = 0
