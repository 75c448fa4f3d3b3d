"""Recurrent-state slots: the fixed-size state of every recurrent layer (a hybrid's gated DeltaNet
layers) for each sequence, allocated once when a model loads, from the same memory budget as the
KV pool; and the kept states that let a conversation's next turn resume instead of prefilling
everything again.

A slot holds, for each recurrent layer, the last ``kernel - 1`` inputs of its causal conv and its
float32 ``[heads, key_dim, value_dim]`` state. A running sequence holds one slot. Its state is
the state after *all* its computed tokens, so unlike KV blocks it cannot be shared or truncated:
to resume a prompt part-way, the state at that point must have been kept. The engine keeps one at
the last block boundary of each prompt and at the last one its answer reached (:class:`KeptStates`),
keyed by the prefix-cache key of the block that ends there: a later prompt whose blocks match up
to that key resumes from a copy.

Everything here runs on the model's device thread.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from neuron.models import RecurrentState


def state_bytes(spec: list[RecurrentState]) -> int:
    """The bytes of one slot: every recurrent layer's conv and DeltaNet state."""
    return sum(s.nbytes() for s in spec)


class StatePool:
    """``conv[i]`` ``[slots, channels, kernel - 1]`` and ``ssm[i]`` ``[slots, heads, key_dim,
    value_dim]`` for recurrent layer ``i``, float32, with a free list of slots."""

    def __init__(self, spec: list[RecurrentState], num_slots: int, device: torch.device) -> None:
        if num_slots < 1:
            raise ValueError(f"a state pool needs at least one slot, got {num_slots}")
        self.spec = spec
        self.num_slots = num_slots
        f32 = torch.float32
        self.conv = [torch.zeros(num_slots, s.conv_channels, s.conv_kernel - 1, dtype=f32, device=device) for s in spec]
        self.ssm = [torch.zeros(num_slots, s.heads, s.key_dim, s.value_dim, dtype=f32, device=device) for s in spec]
        self._free = list(range(num_slots - 1, -1, -1))  # popped from the end: slot 0 first

    @property
    def num_free(self) -> int:
        return len(self._free)

    def nbytes(self) -> int:
        return state_bytes(self.spec) * self.num_slots

    def allocate(self) -> int | None:
        return self._free.pop() if self._free else None

    def release(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.num_slots:
            raise RuntimeError(f"state slot {slot} released twice or never taken")
        self._free.append(slot)

    def copy(self, src: int, dst: int) -> None:
        """Slot ``dst`` becomes a copy of slot ``src`` (every layer)."""
        for t in (*self.conv, *self.ssm):
            t[dst].copy_(t[src])


class KeptStates:
    """States kept at prompt block boundaries, least recently used out first, each in a slot of
    ``pool`` of its own (at most ``capacity``)."""

    def __init__(self, pool: StatePool, capacity: int) -> None:
        self.pool = pool
        self.capacity = capacity
        self._by_key: OrderedDict[int, int] = OrderedDict()  # prefix key -> slot
        self.hits = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: int) -> bool:
        return key in self._by_key

    def keep(self, key: int, src: int) -> bool:
        """Copies slot ``src`` as the state at ``key``; False when nothing can be kept (no
        capacity, or no free slot even after dropping the oldest)."""
        if self.capacity < 1:
            return False
        if key in self._by_key:
            self._by_key.move_to_end(key)
            return True
        if len(self._by_key) >= self.capacity:
            _, slot = self._by_key.popitem(last=False)
            self.pool.release(slot)
        dst = self.pool.allocate()
        if dst is None:
            return False
        self.pool.copy(src, dst)
        self._by_key[key] = dst
        return True

    def drop(self, key: int) -> None:
        """Forgets the state kept at ``key`` (if any), freeing its slot."""
        slot = self._by_key.pop(key, None)
        if slot is not None:
            self.pool.release(slot)

    def restore(self, key: int, dst: int) -> bool:
        """Copies the state kept at ``key`` into slot ``dst``; False when none is kept."""
        slot = self._by_key.get(key)
        if slot is None:
            return False
        self._by_key.move_to_end(key)
        self.pool.copy(slot, dst)
        self.hits += 1
        return True
