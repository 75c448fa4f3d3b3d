"""Building blocks shared by the architectures: RMSNorm, rotary embedding, a weight-only Linear
with an optional fused layout, and causal attention through the paged KV cache.

Numerics follow HF transformers (checked by the parity tests): RMSNorm normalises in float32
and casts back before the weight; RoPE tables are computed in float32 and cast to the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neuron import ops
from neuron.models import Batch, PagedKV


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


class Linear(nn.Module):
    """``y = x @ W.T`` with no bias. ``shards`` names the row blocks of a fused weight (q/k/v),
    so the loader can fill each block from its own checkpoint tensor."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        shards: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.weight = empty_param(out_features, in_features, dtype=dtype, device=device)
        self.shards = shards or {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        # A decode step of a bf16 model on the CPU (one row, or one per sequence of the batch): our
        # kernels stream the weight near memory speed, once for all rows.
        if x.dtype == torch.bfloat16 and w.dtype == torch.bfloat16 and x.device.type == "cpu":
            if x.numel() == w.shape[1]:
                return ops.gemv_bf16(x, w)
            rows = x.numel() // w.shape[1]
            if rows <= ops.MATMUL_MAX_ROWS and x.is_contiguous():
                return ops.matmul_bf16(x.reshape(rows, w.shape[1]), w).reshape(*x.shape[:-1], w.shape[0])
        return F.linear(x, w)


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
