"""The pipe between the neuron (rank 0) and a rank process: length-prefixed pickled frames.

Frames the neuron sends: ``("step", batch_fields)``, ``("stop",)``. Frames a rank answers, one
per frame it got: ``("ready", info)`` once loaded, then ``("ok",)`` or ``("error", message)``.
A rank never sends logits: only rank 0 samples.
"""

from __future__ import annotations

import pickle
import struct
from typing import IO, Any

import torch

from neuron.models import Batch

_LEN = struct.Struct("<Q")
FIELDS = (
    "input_ids",
    "positions",
    "query_starts",
    "context_lens",
    "block_tables",
    "slot_mapping",
    "sample_indices",
    "state_slots",
)


def send(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LEN.pack(len(data)) + data)
    stream.flush()


def recv(stream: IO[bytes]) -> Any:
    """The next frame; EOFError when the other side is gone."""
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError("the pipe closed")
    (size,) = _LEN.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the pipe closed mid-frame")
    return pickle.loads(data)


def batch_fields(batch: Batch) -> dict[str, Any]:
    """What a rank needs of a batch. Its tensors (index tensors) travel as dtype, shape and raw
    bytes: pickling a torch tensor costs tens of microseconds each, its bytes almost nothing
    (``bench/tp_pipe.py``)."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(batch, name)
        if isinstance(value, torch.Tensor):
            host = value.detach().cpu().contiguous()
            value = (str(host.dtype).removeprefix("torch."), tuple(host.shape), host.numpy().tobytes())
        out[name] = value
    return out


def batch_of(fields: dict[str, Any], device: torch.device) -> Batch:
    rebuilt: dict[str, Any] = {}
    for name, value in fields.items():
        if name in _TENSORS and value is not None:
            dtype, shape, data = value
            t = torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype)) if data else torch.empty(0)
            t = t.to(getattr(torch, dtype)).view(shape)
            value = t if name == "state_slots" else t.to(device)  # (state slots stay on the host)
        rebuilt[name] = value
    return Batch(**rebuilt)


_TENSORS = {"input_ids", "positions", "block_tables", "slot_mapping", "sample_indices", "state_slots"}
