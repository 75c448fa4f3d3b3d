"""One sequence through the model contract, step by step, with no scheduler: the paged KV cache
and the :class:`~neuron.models.Batch` built by hand. What the parity tests and the in-process
benchmarks drive a model with; the engine does the same for many sequences at once."""

from __future__ import annotations

import torch

from neuron.engine.kv_cache import BLOCK_TOKENS, KVPool, blocks_for, kv_layout, recurrent_spec
from neuron.engine.state_slots import StatePool
from neuron.models import Batch


def pool_for(model: torch.nn.Module, tokens: int, *, state_slots: int = 1) -> KVPool:
    """A KV pool holding ``tokens`` tokens of ``model`` (its state spec, its dtype and device),
    with ``state_slots`` recurrent-state slots when the model has recurrent layers."""
    spec = model.state_spec()
    dtype, device = model.decoder.dtype, next(model.parameters()).device
    recurrent = recurrent_spec(spec)
    states = StatePool(recurrent, state_slots, device) if recurrent else None
    return KVPool(kv_layout(spec, dtype), blocks_for(tokens), device, states)


class SingleSequence:
    """A sequence with blocks ``first_block..`` of ``pool`` (all of them by default)."""

    def __init__(
        self,
        model: torch.nn.Module,
        pool: KVPool,
        *,
        first_block: int = 0,
        blocks: int | None = None,
        state_slot: int = 0,
    ) -> None:
        self.model = model
        self.pool = pool
        self.state_slot = state_slot  # its slot of the pool's recurrent states (hybrid models)
        count = pool.num_blocks - first_block if blocks is None else blocks
        self.blocks = list(range(first_block, first_block + count))
        self.length = 0  # tokens computed so far
        self.device = pool.k.device

    def run(self, ids: list[int] | torch.Tensor, *, all_logits: bool = False) -> torch.Tensor:
        """Feeds ``ids`` after what came before; float32 logits of the last token ``[vocab]``,
        or of every one ``[len(ids), vocab]``."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        n = int(ids.numel())
        start, end = self.length, self.length + n
        if blocks_for(end) > len(self.blocks):
            raise ValueError(f"the sequence's {len(self.blocks)} blocks hold {len(self.blocks) * BLOCK_TOKENS} tokens")
        positions = torch.arange(start, end)
        slots = torch.tensor(
            [self.blocks[p // BLOCK_TOKENS] * BLOCK_TOKENS + p % BLOCK_TOKENS for p in range(start, end)]
        )
        rows = torch.arange(n) if all_logits else torch.tensor([n - 1])
        batch = Batch(
            input_ids=ids.to(self.device),
            positions=positions.to(self.device),
            query_starts=[0, n],
            context_lens=[end],
            block_tables=torch.tensor([self.blocks[: blocks_for(end)]], device=self.device),
            slot_mapping=slots.to(self.device),
            sample_indices=rows.to(self.device),
            state_slots=torch.tensor([self.state_slot]) if self.pool.states is not None else None,
        )
        logits = self.model(batch, self.pool)
        self.length = end
        return logits if all_logits else logits[0]
