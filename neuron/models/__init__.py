"""The model contract: what every architecture gives the engine, and what the engine gives it.

An architecture is a torch module class registered in :data:`ARCHITECTURES` (keyed by
config.json ``architectures``) with:

- ``model_type`` and ``config_class``; ``config_class.from_dict(raw)`` parses config.json once
  and raises :class:`UnsupportedModel` or :class:`BadCheckpoint` (never an HTTP error: models
  know nothing of HTTP; ``neuron/api/errors.py`` maps each :class:`ModelError` to its status);
- ``state_spec()``: the per-layer state a sequence carries: :class:`AttentionState` (the paged
  KV cache) or :class:`RecurrentState` (a fixed-size slot: the hybrids' gated DeltaNet layers);
- ``FUSED``-style tables of fused weights and ``tied_names`` (the loader walks them);
- ``forward(batch, kv) -> logits``: one step of the engine for every sequence in ``batch`` at
  once, float32 logits ``[len(batch.sample_indices), vocab]`` for the rows that sample.

A :class:`Batch` is vLLM's attention-metadata shape: the new tokens of all sequences flat,
their positions, where each sequence's queries start, how long each sequence's context is after
this step, its block table and where each new token's keys and values go (slot mapping).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


class ModelError(Exception):
    """A model the neuron cannot serve, said in words. Raised by ``models/`` and ``loading/``;
    ``neuron/api/errors.py`` says which HTTP status each kind is."""

    param: str | None = None  # the request field the error is about, when it is one


class UnsupportedModel(ModelError):
    """A valid checkpoint of an architecture or feature this neuron does not implement."""


class BadCheckpoint(ModelError):
    """A checkpoint that is broken or incomplete (a missing config field, a missing tensor)."""


class BadQuant(ModelError):
    """A ``quant`` this neuron cannot apply to the model's files (names what it can)."""

    param = "quant"


class BadModelId(ModelError):
    """An id that is not ``org/name`` or ``name``: a path, ``..``, a part too long."""

    param = "model_id"


class ModelNotFound(ModelError):
    """No files for the id where the neuron looks (model_roots, the HF cache, the hub)."""

    param = "model_id"


@dataclass(frozen=True)
class AttentionState:
    """A layer's state is the keys and values of every past token (the paged KV cache)."""

    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class RecurrentState:
    """A layer's state is fixed-size, whatever the context (a gated DeltaNet layer): the last
    ``conv_kernel - 1`` inputs of its causal conv over ``conv_channels``, and a float32
    ``[heads, key_dim, value_dim]`` recurrent state. One slot of the engine's state pool per
    sequence (``neuron.engine.state_slots``)."""

    conv_channels: int
    conv_kernel: int
    heads: int
    key_dim: int
    value_dim: int

    def nbytes(self) -> int:
        return 4 * (self.conv_channels * (self.conv_kernel - 1) + self.heads * self.key_dim * self.value_dim)


class PagedKV(Protocol):
    """The engine's KV pool as the models use it (``neuron.engine.kv_cache.KVPool``)."""

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None: ...
    def gather(self, layer: int, table: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def blocks(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    @property
    def states(self) -> RecurrentStates | None: ...


class RecurrentStates(Protocol):
    """The engine's recurrent-state pool as the models use it (``neuron.engine.state_slots.StatePool``):
    per recurrent layer, ``conv[i]`` ``[slots, channels, kernel - 1]`` and ``ssm[i]``
    ``[slots, heads, key_dim, value_dim]``, float32, updated in place by the layer."""

    conv: list[torch.Tensor]
    ssm: list[torch.Tensor]


@dataclass(frozen=True)
class DecodePlan:
    """The sequences of a batch that add one token each (decodes), for one attention call over
    all of them: their rows, block tables and context lengths; and the others (prompt chunks)."""

    seqs: list[int]
    rows: torch.Tensor  # [D] their rows in the batch
    tables: torch.Tensor  # [D, max_blocks]
    lens: torch.Tensor  # [D] int64, on the host
    everyone: bool  # every sequence of the batch decodes (rows are 0..B-1)
    others: list[int]


@dataclass
class Batch:
    """One engine step: ``T`` new tokens of ``B`` sequences, on the model's device.

    Sequence ``i``'s new tokens are rows ``query_starts[i] : query_starts[i + 1]``; after this
    step its context holds ``context_lens[i]`` tokens (the earlier ones already in the cache).
    The host-side lists let the attention loop without reading the device.
    """

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    query_starts: list[int]  # B + 1 offsets into the T rows
    context_lens: list[int]  # B
    block_tables: torch.Tensor  # [B, max_blocks] int64
    slot_mapping: torch.Tensor  # [T] int64: where each new token's keys and values go
    sample_indices: torch.Tensor  # [S] int64: rows whose logits are wanted
    # recurrent layers: each sequence's slot in the state pool ([B] int64, on the host); a
    # sequence whose context is all new starts from zeros, any other continues its slot
    state_slots: torch.Tensor | None = None
    _plan: DecodePlan | None = field(default=None, repr=False)
    _fresh: torch.Tensor | None = field(default=None, repr=False)

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)

    def query_len(self, i: int) -> int:
        return self.query_starts[i + 1] - self.query_starts[i]

    def fresh_states(self) -> torch.Tensor:
        """[B] bool, on the host: which sequences start their recurrent state from zeros (no
        earlier tokens), computed once per batch."""
        if self._fresh is None:
            self._fresh = torch.tensor(
                [self.context_lens[i] == self.query_len(i) for i in range(self.num_seqs)], dtype=torch.bool
            )
        return self._fresh

    def decode_plan(self) -> DecodePlan:
        """Which sequences decode (computed once per batch, used by every layer)."""
        if self._plan is None:
            seqs = [i for i in range(self.num_seqs) if self.query_len(i) == 1]
            others = [i for i in range(self.num_seqs) if self.query_len(i) != 1]
            everyone = not others
            index = torch.tensor(seqs, dtype=torch.long, device=self.block_tables.device)
            rows = torch.tensor([self.query_starts[i] for i in seqs], dtype=torch.long, device=self.input_ids.device)
            tables = self.block_tables if everyone else self.block_tables.index_select(0, index)
            lens = torch.tensor([self.context_lens[i] for i in seqs], dtype=torch.long)
            self._plan = DecodePlan(seqs, rows, tables.contiguous(), lens, everyone, others)
        return self._plan


from neuron.models import llama, qwen2, qwen3, qwen3_5, qwen3_moe, qwen3_next  # noqa: E402 (they use the contract above)

ARCHITECTURES = {
    **qwen3.ARCHITECTURES,
    **qwen2.ARCHITECTURES,
    **llama.ARCHITECTURES,
    **qwen3_moe.ARCHITECTURES,
    **qwen3_next.ARCHITECTURES,
    **qwen3_5.ARCHITECTURES,
}
MODEL_TYPES = {cls.model_type: cls for cls in ARCHITECTURES.values()}


def architecture_for(raw: dict) -> type:
    """The architecture class for a parsed config.json; :class:`UnsupportedModel` naming the
    type when this neuron has none for it."""
    for name in raw.get("architectures") or []:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    model_type = raw.get("model_type")
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    supported = ", ".join(sorted(MODEL_TYPES))
    raise UnsupportedModel(
        f"model_type {model_type!r} (architectures {raw.get('architectures')}) is not supported: "
        f"this neuron serves {supported}"
    )
