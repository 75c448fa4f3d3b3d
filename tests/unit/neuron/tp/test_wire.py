"""The step frames to a rank: a batch survives the trip exactly (values, dtypes, shapes, empty
tensors, no state slots), through a real pipe."""

from __future__ import annotations

import io
import os

import pytest
import torch

from neuron.models import Batch
from neuron.tp import wire


def batch(state_slots: torch.Tensor | None) -> Batch:
    return Batch(
        input_ids=torch.tensor([5, 151_000, 7]),
        positions=torch.tensor([40, 41, 9]),
        query_starts=[0, 2, 3],
        context_lens=[42, 10],
        block_tables=torch.tensor([[3, 4, 9], [1, 0, 0]], dtype=torch.int32),
        slot_mapping=torch.tensor([64, 65, 25]),
        sample_indices=torch.empty(0, dtype=torch.int64),
        state_slots=state_slots,
    )


@pytest.mark.parametrize("slots", [None, torch.tensor([2, 0])])
def test_a_batch_crosses_a_pipe_unchanged(slots):
    sent = batch(slots)
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as w, os.fdopen(read_fd, "rb") as r:
        wire.send(w, ("step", wire.batch_fields(sent)))
        kind, fields = wire.recv(r)
    got = wire.batch_of(fields, torch.device("cpu"))
    assert kind == "step"
    for name in wire.FIELDS:
        a, b = getattr(sent, name), getattr(got, name)
        if isinstance(a, torch.Tensor):
            assert b.dtype == a.dtype and b.shape == a.shape and torch.equal(a, b), name
        else:
            assert a == b, name


def test_a_closed_pipe_is_eof():
    with pytest.raises(EOFError, match="the pipe closed"):
        wire.recv(io.BytesIO(b""))
    with pytest.raises(EOFError, match="mid-frame"):
        wire.recv(io.BytesIO(wire._LEN.pack(10) + b"abc"))
