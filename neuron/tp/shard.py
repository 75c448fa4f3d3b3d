"""One rank's share of a model under tensor parallelism (Megatron's split, as the seed did it):
column-parallel projections keep a slice of their output rows, row-parallel ones a slice of their
input columns followed by one all-reduce (sum) per block, everything else is replicated.

- attention: whole query heads per rank (Qwen3.5's gated ``q_proj`` keeps each head's query and
  gate rows together); key/value heads split, or replicated when there are fewer than ranks (rank
  ``r`` then holds kv head ``r·kv // world``, the one its query heads read); ``o_proj`` row-parallel;
- MLP, every MoE expert and the shared expert: gate/up column-, down row-parallel; the router and
  the shared expert's gate replicated (every rank routes alike); one all-reduce per block;
- gated DeltaNet: whole key heads per rank and their value heads (grouped order: value head ``h``
  reads key head ``h // r``, so a rank's value heads read only its key heads — no communication
  inside the recurrence); ``in_proj_qkv`` and the conv taps by regions (its Q, K and V slices
  concatenated), ``z``, ``b``, ``a``, ``A_log``, ``dt_bias`` split, Qwen3-Next's grouped
  ``in_proj_qkvz`` / ``in_proj_ba`` split in whole key-head groups; ``out_proj`` row-parallel;
- embedding and head vocab-parallel when the vocabulary divides by the ranks (each rank holds its
  ``vocab / world`` rows: a token's embedding comes from the rank holding its row, summed over
  the ranks; the head's logits slices are gathered), else replicated; norms replicated.

:func:`local_config` is the config one rank builds its modules from, :class:`ShardedSource` the
weight source that hands it its slices (the loader and the weight methods — in-situ quantization
included — see only the rank's tensors), :func:`attach` the all-reduces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import torch
from torch import nn

from neuron.loading.weights import WeightSource
from neuron.models import UnsupportedModel
from neuron.models.hybrid import GatedAttention, GatedDeltaNet
from neuron.models.layers import Attention, GatedMLP, SparseMoE
from neuron.models.methods import Weight
from neuron.ops.quant import BLOCK_ELEMS, QuantTensor, dequantize
from neuron.tp.comm import Communicator


@dataclass(frozen=True)
class Shard:
    rank: int
    world: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not one of {self.world} ranks")


def _split(what: str, count: int, world: int) -> int:
    if count % world:
        raise UnsupportedModel(
            f"tensor parallelism over {world} devices needs {what} divisible by {world}, got {count}"
        )
    return count // world


def splits_vocab(cfg: Any, world: int) -> bool:
    """Whether the embedding and the head are split by vocabulary rows over ``world`` ranks."""
    return world > 1 and cfg.vocab_size % world == 0


def local_config(cfg: Any, shard: Shard) -> Any:
    """The config of one rank's modules: heads, widths and experts' widths divided by the ranks;
    :class:`UnsupportedModel` naming what does not divide."""
    n = shard.world
    if n == 1:
        return cfg
    kv = cfg.num_key_value_heads
    if kv < n and n % kv:
        raise UnsupportedModel(
            f"tensor parallelism over {n} devices needs {kv} kv heads to divide or be divided by {n}"
        )
    fields: dict[str, Any] = {
        "num_attention_heads": _split("num_attention_heads", cfg.num_attention_heads, n),
        "num_key_value_heads": _split("num_key_value_heads", kv, n) if kv >= n else 1,
        "intermediate_size": _split("intermediate_size", cfg.intermediate_size, n) if cfg.intermediate_size else 0,
    }
    if splits_vocab(cfg, n):
        fields["vocab_size"] = cfg.vocab_size // n
    if cfg.num_experts:
        fields["moe_intermediate_size"] = _split("moe_intermediate_size", cfg.moe_intermediate_size, n)
        if cfg.shared_expert_intermediate_size:
            fields["shared_expert_intermediate_size"] = _split(
                "shared_expert_intermediate_size", cfg.shared_expert_intermediate_size, n
            )
    if hasattr(cfg, "linear_num_key_heads"):
        if cfg.value_heads_tiled:
            raise UnsupportedModel(
                "tensor parallelism over a GGUF file's tiled value heads is not supported yet: load the safetensors"
            )
        fields["linear_num_key_heads"] = _split("linear_num_key_heads", cfg.linear_num_key_heads, n)
        fields["linear_num_value_heads"] = _split("linear_num_value_heads", cfg.linear_num_value_heads, n)
    return msgspec.structs.replace(cfg, **fields)


# --- slicing one tensor ---------------------------------------------------------------------------


def _narrow(weight: Weight, dim: int, start: int, length: int) -> Weight:
    """``weight``'s slice ``start : start + length`` along ``dim``; ggml blocks stay blocks where
    the slice takes whole rows (dim 0) or whole blocks of every row (dim 1)."""
    if isinstance(weight, QuantTensor):
        rows, cols = weight.shape
        if dim == 0:
            data = weight.data.view(rows, weight.row_bytes)[start : start + length].reshape(-1)
            return QuantTensor(data.contiguous(), weight.qtype, (length, cols))
        block = BLOCK_ELEMS[weight.qtype]
        if start % block == 0 and length % block == 0:
            per_block = weight.row_bytes // (cols // block)
            view = weight.data.view(rows, cols // block, per_block)[:, start // block : (start + length) // block]
            return QuantTensor(view.reshape(-1).contiguous(), weight.qtype, (rows, length))
        weight = dequantize(weight)
    return weight.narrow(dim, start, length).contiguous()


def _cat(parts: list[Weight]) -> Weight:
    if all(isinstance(p, QuantTensor) for p in parts):
        data = torch.cat([p.data for p in parts])
        return QuantTensor(data, parts[0].qtype, (sum(p.shape[0] for p in parts), parts[0].shape[1]))
    return torch.cat([dequantize(p) if isinstance(p, QuantTensor) else p for p in parts])


@dataclass(frozen=True)
class _Rule:
    dim: int  # the dimension sliced
    regions: tuple[int, ...] | None  # sizes of the regions sliced apart (None: the whole dim)
    kv_heads: bool = False  # k/v rows: kv heads, replicated when fewer than ranks


COLUMN = ("q_proj", "gate_proj", "up_proj", "in_proj_z", "in_proj_b", "in_proj_a", "in_proj_qkvz", "in_proj_ba")
ROW = ("o_proj", "down_proj", "out_proj")
REPLICATED = ("mlp.gate.weight", "shared_expert_gate.weight")


class ShardedSource:
    """``source``'s tensors as one rank holds them (HF names; shapes and contents its slices)."""

    def __init__(self, source: WeightSource, cfg: Any, shard: Shard) -> None:
        self.source, self.cfg, self.shard = source, cfg, shard

    def names(self) -> list[str]:
        return self.source.names()

    def _rule(self, name: str) -> _Rule | None:
        if self.shard.world == 1 or name.endswith(REPLICATED):
            return None
        parts = name.split(".")
        if len(parts) < 2:
            return None
        module, leaf = parts[-2], parts[-1]
        if module in ("embed_tokens", "lm_head"):
            return _Rule(0, None) if leaf == "weight" and splits_vocab(self.cfg, self.shard.world) else None
        if module in ("k_proj", "v_proj"):
            return _Rule(0, None, kv_heads=True)
        if module in COLUMN and leaf in ("weight", "bias"):
            return _Rule(0, None)
        if module in ROW and leaf == "weight":
            return _Rule(1, None)
        cfg = self.cfg
        if module == "in_proj_qkv" or (module == "conv1d" and leaf == "weight"):
            key = cfg.linear_num_key_heads * cfg.linear_key_head_dim
            return _Rule(0, (key, key, cfg.linear_num_value_heads * cfg.linear_value_head_dim))
        if module == "linear_attn" and leaf in ("A_log", "dt_bias"):
            return _Rule(0, None)
        return None

    def _slices(self, name: str, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
        """(start, length) along the rule's dim for each region this rank takes; None: all of it."""
        rule = self._rule(name)
        if rule is None:
            return None
        r, n = self.shard.rank, self.shard.world
        if rule.kv_heads:
            kv, d = self.cfg.num_key_value_heads, self.cfg.head_dim
            if kv >= n:
                per = kv // n
                return [(r * per * d, per * d)]
            return [(r * kv // n * d, d)]  # replicated: the kv head this rank's query heads read
        out, first = [], 0
        for size in rule.regions or (shape[rule.dim],):
            per = _split(f"{name}'s dimension {rule.dim}", size, n)
            out.append((first + r * per, per))
            first += size
        return out

    def shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self.source.shape(name))
        slices = self._slices(name, shape)
        if slices is None:
            return shape
        dim = self._rule(name).dim
        return tuple(sum(n for _, n in slices) if i == dim else s for i, s in enumerate(shape))

    def read(self, name: str) -> Weight:
        weight = self.source.read(name)
        slices = self._slices(name, tuple(self.source.shape(name)))
        if slices is None:
            return weight
        dim = self._rule(name).dim
        parts = [_narrow(weight, dim, start, length) for start, length in slices]
        return parts[0] if len(parts) == 1 else _cat(parts)

    def close(self) -> None:
        self.source.close()


# --- the all-reduces ------------------------------------------------------------------------------


def reduced_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are partial sums on each rank: every attention (full or gated
    DeltaNet), every decoder layer's MLP or MoE block (an expert's output is summed inside its
    block, which is reduced once)."""
    mixers = (Attention, GatedAttention, GatedDeltaNet, SparseMoE)
    out = []
    for name, module in model.named_modules():
        if isinstance(module, mixers) or (isinstance(module, GatedMLP) and name.endswith(".mlp")):
            out.append(module)
    return out


def attach(model: nn.Module, comm: Communicator, *, vocab_parallel: bool = False) -> int:
    """Sums each partial block output over the ranks (``comm.all_reduce``, in place); with
    ``vocab_parallel`` (see :func:`splits_vocab`) also makes the rank's slice of the embedding a
    whole one (rows outside the slice are zero here and summed in from their rank) and gathers
    the head's logits slices in rank order. Returns how many blocks reduce (two per layer)."""
    blocks = reduced_blocks(model)
    for module in blocks:
        module.register_forward_hook(lambda _m, _i, out: comm.all_reduce(out))
    if vocab_parallel:
        _vocab_parallel(model, comm)
    return len(blocks)


def _vocab_parallel(model: nn.Module, comm: Communicator) -> None:
    embed = model.decoder.embed_tokens
    rows = embed.num_embeddings  # this rank's: [rank·rows, (rank + 1)·rows) of the vocabulary
    first = comm.rank * rows
    inside: list[torch.Tensor] = []  # the last lookup's mask (one step at a time: one device thread)

    def local_ids(_m, args):
        ids, dtype = args
        local = ids - first
        mask = (local >= 0) & (local < rows)
        inside[:] = [mask]
        return torch.where(mask, local, 0), dtype

    def summed(_m, _args, out: torch.Tensor) -> torch.Tensor:
        out.mul_(inside[0].unsqueeze(-1).to(out.dtype))
        return comm.all_reduce(out)

    embed.register_forward_pre_hook(local_ids)
    embed.register_forward_hook(summed)

    def gathered(_m, _args, out: torch.Tensor) -> torch.Tensor:
        parts = comm.all_gather(out.contiguous())  # [world, tokens, rows]
        return torch.cat(list(parts.unbind(0)), dim=-1)

    model.lm_head.register_forward_hook(gathered)
