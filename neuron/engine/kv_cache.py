"""The paged KV cache: one pool of fixed-size blocks for every attention layer, allocated once
when a model loads, handed to sequences block by block, and shared between them through the
prefix cache.

A block holds :data:`BLOCK_TOKENS` consecutive tokens' keys and values in every layer. A
sequence owns a *block table* (its blocks in order); token ``i`` of it lives in block
``table[i // BLOCK_TOKENS]`` at offset ``i % BLOCK_TOKENS``, its *slot* being
``block * BLOCK_TOKENS + offset``.

Prefix caching (vLLM's automatic prefix caching, our code): a full block is keyed by the key of
the block before it and its own token ids, so a key names a whole prefix. When a block is full
and computed it is *registered* under its key; a new sequence starts from the longest run of
registered blocks matching its first tokens and computes only the rest. A block nobody holds
keeps its contents and its key on the free list, least recently freed first, until it is needed
for something else. Keys are Python hashes, and every hit compares the token ids too, so a hash
collision can only cost a miss, never wrong keys and values.

Everything here runs on the model's device thread.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from neuron.engine.state_slots import StatePool
from neuron.models import AttentionState, RecurrentState

BLOCK_TOKENS = 16


@dataclass(frozen=True)
class KVLayout:
    """The shape of one attention layer's cache entries (the model's state spec)."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype.itemsize

    def bytes_per_block(self) -> int:
        return self.bytes_per_token() * BLOCK_TOKENS


def kv_layout(spec: list[AttentionState | RecurrentState], dtype: torch.dtype) -> KVLayout:
    """The KV pool's layout for a model's state spec: its attention layers, in order."""
    attention = [s for s in spec if isinstance(s, AttentionState)]
    if not attention:
        raise ValueError("the model has no attention layer: it needs no KV pool")
    return KVLayout(len(attention), attention[0].kv_heads, attention[0].head_dim, dtype)


def recurrent_spec(spec: list[AttentionState | RecurrentState]) -> list[RecurrentState]:
    """The recurrent layers of a state spec, in order (empty for a plain decoder)."""
    return [s for s in spec if isinstance(s, RecurrentState)]


class KVPool:
    """Keys and values of every attention layer: ``k[layer]`` and ``v[layer]`` are
    ``[num_blocks, BLOCK_TOKENS, kv_heads, head_dim]``; and, for a hybrid model, the recurrent
    layers' state slots (``states``)."""

    def __init__(
        self, layout: KVLayout, num_blocks: int, device: torch.device, states: StatePool | None = None
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"a KV pool needs at least one block, got {num_blocks}")
        shape = (layout.layers, num_blocks, BLOCK_TOKENS, layout.kv_heads, layout.head_dim)
        self.layout = layout
        self.states = states
        self.num_blocks = num_blocks
        self.k = torch.zeros(shape, dtype=layout.dtype, device=device)
        self.v = torch.zeros(shape, dtype=layout.dtype, device=device)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * BLOCK_TOKENS

    def nbytes(self) -> int:
        """The keys and values and the state slots."""
        states = self.states.nbytes() if self.states is not None else 0
        return self.num_blocks * self.layout.bytes_per_block() + states

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stores ``k``/``v`` ``[T, kv_heads, head_dim]`` at the flat ``slots`` ``[T]``."""
        flat = (-1, self.layout.kv_heads, self.layout.head_dim)
        self.k[layer].view(flat).index_copy_(0, slots, k)
        self.v[layer].view(flat).index_copy_(0, slots, v)

    def blocks(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's keys and values, ``[num_blocks, BLOCK_TOKENS, kv_heads, head_dim]`` each."""
        return self.k[layer], self.v[layer]

    def gather(self, layer: int, table: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``length`` tokens' keys and values of a sequence with block table ``table``,
        as ``[length, kv_heads, head_dim]`` copies."""
        blocks = (length + BLOCK_TOKENS - 1) // BLOCK_TOKENS
        flat = (-1, self.layout.kv_heads, self.layout.head_dim)
        k = self.k[layer].index_select(0, table[:blocks]).view(flat)[:length]
        v = self.v[layer].index_select(0, table[:blocks]).view(flat)[:length]
        return k, v


def chain_key(parent: int | None, tokens: tuple[int, ...]) -> int:
    """The prefix-cache key of a full block: its parent's key and its own token ids."""
    return hash((parent, tokens))


@dataclass
class _Cached:
    key: int
    parent: int | None
    tokens: tuple[int, ...]


@dataclass
class CacheStats:
    queried_tokens: int = 0  # prompt tokens looked up in the prefix cache
    hit_tokens: int = 0  # of those, found computed


class BlockAllocator:
    """Hands out the pool's blocks by reference count; registered full blocks stay findable by
    their prefix key while free, and are reused least recently freed first."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.refs = [0] * num_blocks
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.by_key: dict[int, int] = {}  # prefix key -> block
        self.cached: dict[int, _Cached] = {}  # block -> what it holds (registered blocks only)
        self.stats = CacheStats()

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def allocate(self, n: int) -> list[int] | None:
        """``n`` blocks (reference count 1), or None when fewer are free. A free block that was
        registered gives up its key: its contents are about to be overwritten."""
        if n > len(self.free):
            return None
        out = []
        for _ in range(n):
            block, _ = self.free.popitem(last=False)
            held = self.cached.pop(block, None)
            if held is not None and self.by_key.get(held.key) == block:
                del self.by_key[held.key]
            self.refs[block] = 1
            out.append(block)
        return out

    def release(self, blocks: list[int]) -> None:
        """Drops one reference to each block; a block nobody holds goes to the end of the free
        list (a registered one stays findable until it is reused)."""
        for block in reversed(blocks):  # a sequence's last blocks are the least likely to be shared
            self.refs[block] -= 1
            if self.refs[block] < 0:
                raise RuntimeError(f"block {block} released more often than it was taken")
            if self.refs[block] == 0:
                self.free[block] = None

    def register(self, block: int, parent: int | None, tokens: tuple[int, ...]) -> int:
        """Makes a full, computed block findable under its prefix key; returns the key. A key
        already held by another block keeps that block (the duplicate stays private)."""
        key = chain_key(parent, tokens)
        if key not in self.by_key:
            self.by_key[key] = block
            self.cached[block] = _Cached(key, parent, tokens)
        return key

    def match(self, tokens: list[int], limit: int, keys: list[int] | None = None) -> tuple[list[int], int | None]:
        """The longest run of registered blocks that holds the first tokens of ``tokens``, at most
        ``limit`` tokens' worth; each block found gains a reference. Returns the blocks and the
        key of the last one (the parent of what comes next); ``keys`` receives every block's key."""
        found: list[int] = []
        parent: int | None = None
        for start in range(0, limit - limit % BLOCK_TOKENS, BLOCK_TOKENS):
            chunk = tuple(tokens[start : start + BLOCK_TOKENS])
            key = chain_key(parent, chunk)
            block = self.by_key.get(key)
            if block is None:
                break
            held = self.cached.get(block)
            if held is None or held.parent != parent or held.tokens != chunk:  # a hash collision: a miss
                break
            if self.refs[block] == 0:
                del self.free[block]
            self.refs[block] += 1
            found.append(block)
            parent = key
            if keys is not None:
                keys.append(key)
        return found, parent


@dataclass
class BlockTable:
    """One sequence's blocks and what of them is computed and registered."""

    blocks: list[int] = field(default_factory=list)
    registered: int = 0  # leading full blocks registered in the prefix cache
    last_key: int | None = None  # the key of the last registered block

    def slot(self, position: int) -> int:
        return self.blocks[position // BLOCK_TOKENS] * BLOCK_TOKENS + position % BLOCK_TOKENS


def blocks_for(tokens: int) -> int:
    return (tokens + BLOCK_TOKENS - 1) // BLOCK_TOKENS
