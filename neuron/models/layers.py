"""Building blocks shared by the architectures: RMSNorm, rotary embedding, a weight-only Linear
with an optional fused layout and the token embedding (both holding their weight through a
weight method: dense or ggml blocks), and causal attention through the paged KV cache.

Numerics follow HF transformers (checked by the parity tests): RMSNorm normalises in float32
and casts back before the weight; RoPE tables are computed in float32 and cast to the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neuron import ops
from neuron.models import Batch, PagedKV
from neuron.models.methods import Method, Weight, WeightPlan


def empty_param(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    """An uninitialised parameter: every weight is filled by the loader, so no time goes to init."""
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = empty_param(dim, dtype=dtype, device=device)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and self.weight.dtype == torch.bfloat16 and x.device.type == "cpu":
            return ops.rms_norm_bf16(x, self.weight, self.eps)
        h = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * h.to(x.dtype)


@dataclass
class Part:
    """A run of a Linear's rows held by one method: rows ``first : first + rows`` of the output."""

    first: int
    rows: int
    method: Method
    weight: Weight


class Linear(nn.Module):
    """``y = x @ W.T`` with no bias. ``shards`` names the row blocks of a fused weight (q/k/v),
    so the loader can fill each block from its own checkpoint tensor.

    A Linear is built without storage; :meth:`bind` gives it a method per shard (from the
    model's :class:`~neuron.models.methods.WeightPlan`) and allocates. Neighbouring shards of one
    method share one storage, so a fused weight whose shards agree is one matrix product; shards
    of different methods (a GGUF mix: ``v_proj`` at Q6_K beside ``q_proj`` at Q4_K) are one
    product each, concatenated.
    """

    def __init__(self, in_features: int, out_features: int, *, shards: dict[str, int] | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.shards = shards or {}
        self.parts: list[Part] = []
        self.tied = False  # the weight is a tied embedding's table: the embedding is what gets filled

    def shard_rows(self) -> list[tuple[str | None, int, int]]:
        """(shard name or None, first row, rows) of each block the loader fills."""
        if not self.shards:
            return [(None, 0, self.out_features)]
        out, first = [], 0
        for name, rows in self.shards.items():
            out.append((name, first, rows))
            first += rows
        return out

    def bind(self, methods: list[Method], device: torch.device) -> None:
        """Allocates storage: ``methods[i]`` for the i-th block of :meth:`shard_rows`."""
        blocks = self.shard_rows()
        if len(methods) != len(blocks):
            raise ValueError(f"{len(blocks)} weight blocks need {len(blocks)} methods, got {len(methods)}")
        runs: list[list] = []  # [first, rows, method]
        for (_, first, rows), method in zip(blocks, methods, strict=True):
            if runs and runs[-1][2] == method:
                runs[-1][1] += rows
            else:
                runs.append([first, rows, method])
        self.parts = [Part(f, r, m, m.allocate(r, self.in_features, device)) for f, r, m in runs]
        self._expose()

    def share(self, other: Embedding) -> None:
        """Uses ``other``'s table as this weight (tied embeddings): one storage, one method."""
        self.parts = [Part(0, self.out_features, other.method, other.weight)]
        self.tied = True
        self._expose()

    def _expose(self) -> None:
        # torch sees the storage (memory reports, ``.to``): a dense weight as ``weight``, ggml
        # blocks as buffers ``qweight<i>``
        for i, part in enumerate(self.parts):
            if isinstance(part.weight, nn.Parameter):  # shared with a tied embedding
                self.weight = part.weight
            elif isinstance(part.weight, torch.Tensor):
                if len(self.parts) == 1:
                    self.weight = nn.Parameter(part.weight, requires_grad=False)
                    part.weight = self.weight
                else:
                    self.register_buffer(f"dweight{i}", part.weight, persistent=False)
            else:
                self.register_buffer(f"qweight{i}", part.weight.data, persistent=False)

    def fill(self, first: int, rows: int, src: Weight) -> None:
        """Fills output rows ``first : first + rows`` (one shard) from a checkpoint tensor."""
        for part in self.parts:
            if part.first <= first and first + rows <= part.first + part.rows:
                with torch.no_grad():
                    part.method.fill(part.method.rows(part.weight, first - part.first, rows), src)
                return
        raise ValueError(f"rows {first}:{first + rows} are not one part of this Linear")

    @property
    def nbytes(self) -> int:
        return sum(p.method.nbytes(p.rows, self.in_features) for p in self.parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.parts) == 1:
            part = self.parts[0]
            return part.method.apply(part.weight, x)
        return torch.cat([p.method.apply(p.weight, x) for p in self.parts], dim=-1)


class Embedding(nn.Module):
    """The token table ``[vocab, dim]``: dense, or ggml blocks read a row at a time (the table is
    never dequantized whole). :meth:`bind` allocates it, as for a Linear."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.method: Method | None = None
        self.weight: Weight | None = None

    def bind(self, method: Method, device: torch.device) -> None:
        self.method = method
        weight = method.allocate(self.num_embeddings, self.dim, device)
        if isinstance(weight, torch.Tensor):
            self.weight = nn.Parameter(weight, requires_grad=False)
        else:
            self.weight = weight
            self.register_buffer("qweight", weight.data, persistent=False)

    def fill(self, src: Weight) -> None:
        with torch.no_grad():
            self.method.fill(self.weight, src)

    @property
    def nbytes(self) -> int:
        return self.method.nbytes(self.num_embeddings, self.dim)

    def forward(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.method.embed(self.weight, ids, dtype)


def bind_weights(
    model: nn.Module, plan: WeightPlan, device: torch.device, *, skip: set[str] | frozenset[str] = frozenset()
) -> None:
    """Gives every Linear and Embedding of ``model`` the method ``plan`` picks for each of its
    checkpoint tensors (by name and shape) and allocates it; modules named in ``skip`` (a tied
    head) are left to the architecture."""
    for name, mod in model.named_modules():
        if name in skip:
            continue
        if isinstance(mod, Linear):
            parent = name.rsplit(".", 1)[0]
            methods = [
                plan.method(f"{parent}.{shard}.weight" if shard else f"{name}.weight", (rows, mod.in_features))
                for shard, _, rows in mod.shard_rows()
            ]
            mod.bind(methods, device)
        elif isinstance(mod, Embedding):
            mod.bind(plan.method(f"{name}.weight", (mod.num_embeddings, mod.dim)), device)


class RotaryEmbedding(nn.Module):
    """Default (unscaled) rotate-half RoPE over the full head dimension."""

    def __init__(self, head_dim: int, theta: float, *, device: torch.device) -> None:
        super().__init__()
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float32) / head_dim
        self.register_buffer("inv_freq", 1.0 / (theta**exponent), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, head_dim]; cos/sin: [T, 1, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layer: int,
    batch: Batch,
    kv: PagedKV,
    scale: float,
) -> torch.Tensor:
    """Causal attention of a batch's new tokens over each one's own sequence, through the paged
    KV cache. ``q`` is ``[T, heads, head_dim]``, ``k``/``v`` ``[T, kv_heads, head_dim]`` (stored
    into the cache first); the result is ``[T, heads, head_dim]``.

    On the CPU the sequences that add one token each (decodes) go through one call of our
    kernel, which reads their blocks in place; a sequence with no earlier tokens attends to its
    chunk alone (no cache read); any other reads its keys and values through its block table.
    """
    kv.write(layer, batch.slot_mapping, k, v)
    heads, kv_heads = q.shape[1], k.shape[1]
    plan = batch.decode_plan()
    native = q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16)
    if native and plan.everyone:  # every sequence adds one token: one call reads their blocks in place
        k_pool, v_pool = kv.blocks(layer)
        return ops.paged_decode(q, k_pool, v_pool, plan.tables, plan.lens, scale)
    out = torch.empty_like(q)
    todo = range(batch.num_seqs)
    if native and plan.seqs:
        k_pool, v_pool = kv.blocks(layer)
        part = ops.paged_decode(q.index_select(0, plan.rows), k_pool, v_pool, plan.tables, plan.lens, scale)
        out.index_copy_(0, plan.rows, part)
        todo = plan.others
    for i in todo:
        s, e = batch.query_starts[i], batch.query_starts[i + 1]
        new, length = e - s, batch.context_lens[i]
        if length == new:
            keys, values, mask = k[s:e], v[s:e], None
        else:
            keys, values = kv.gather(layer, batch.block_tables[i], length)
            mask = None
            if new > 1:  # query j sits at position length - new + j and sees keys up to there
                pos = torch.arange(length - new, length, device=q.device)
                mask = torch.arange(length, device=q.device)[None, :] <= pos[:, None]
        o = F.scaled_dot_product_attention(
            q[s:e].transpose(0, 1)[None],
            keys.transpose(0, 1)[None],
            values.transpose(0, 1)[None],
            attn_mask=mask,
            is_causal=mask is None and length == new and new > 1,
            scale=scale,
            enable_gqa=heads != kv_heads,
        )
        out[s:e] = o[0].transpose(0, 1)
    return out
