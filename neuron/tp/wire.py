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
    """What a rank needs of a batch (host copies of its tensors)."""
    out = {}
    for name in FIELDS:
        value = getattr(batch, name)
        out[name] = value.cpu() if isinstance(value, torch.Tensor) else value
    return out


def batch_of(fields: dict[str, Any], device: torch.device) -> Batch:
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) and k != "state_slots" else v for k, v in fields.items()}
    return Batch(**moved)
