"""The attention family: decode attention through the paged KV cache.

``paged_decode`` computes one new token's attention for each of ``B`` sequences, reading their
keys and values where they are, block by block (a gather into a contiguous copy first would move
as many bytes as the attention reads). Query head ``h`` reads kv head ``h // (heads // kv_heads)``
(grouped-query attention). Numerics: float32 scores, softmax and sums (one rescale per tile of 32
keys, as flash attention does), rounded once to the output dtype.
"""

from __future__ import annotations

import torch

from neuron.ops import _lib

_DTYPES = {torch.float32: _lib.DType.f32, torch.bfloat16: _lib.DType.bf16}


def _check_int64(t: torch.Tensor, name: str, dims: int) -> None:
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {t.dtype}")
    if t.dim() != dims or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"{name} must be a contiguous {dims}-D CPU tensor, got shape {tuple(t.shape)} on {t.device}")


def paged_decode(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of ``q`` ``[B, heads, head_dim]`` over each sequence's first ``context_lens[b]``
    tokens in ``k_pool``/``v_pool`` ``[blocks, block_tokens, kv_heads, head_dim]`` (one layer of
    the pool), token ``t`` of sequence ``b`` in block ``block_tables[b, t // block_tokens]``.
    Returns ``[B, heads, head_dim]`` in q's dtype (float32 or bfloat16, the pool's too)."""
    if q.dtype not in _DTYPES:
        raise TypeError(f"q must be float32 or bfloat16, got {q.dtype}")
    for name, t in (("k_pool", k_pool), ("v_pool", v_pool)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.dim() != 4 or not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError(f"{name} must be a contiguous 4-D CPU tensor, got shape {tuple(t.shape)}")
    if k_pool.shape != v_pool.shape:
        raise ValueError(f"k_pool {tuple(k_pool.shape)} and v_pool {tuple(v_pool.shape)} differ")
    if q.dim() != 3 or not q.is_contiguous() or q.device.type != "cpu":
        raise ValueError(f"q must be a contiguous [B, heads, head_dim] CPU tensor, got shape {tuple(q.shape)}")
    seqs, heads, head_dim = q.shape
    _, block_tokens, kv_heads, pool_dim = k_pool.shape
    if pool_dim != head_dim:
        raise ValueError(f"the pool's head_dim {pool_dim} is not q's {head_dim}")
    _check_int64(block_tables, "block_tables", 2)
    _check_int64(context_lens, "context_lens", 1)
    if block_tables.shape[0] != seqs or context_lens.shape[0] != seqs:
        raise ValueError(
            f"block_tables {tuple(block_tables.shape)} and context_lens {tuple(context_lens.shape)} "
            f"must have one row per sequence ({seqs})"
        )
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {q.dtype} tensor of shape {tuple(q.shape)}")
    _lib.native.paged_decode_cpu(
        out.data_ptr(),
        q.data_ptr(),
        k_pool.data_ptr(),
        v_pool.data_ptr(),
        block_tables.data_ptr(),
        context_lens.data_ptr(),
        seqs,
        heads,
        kv_heads,
        head_dim,
        block_tokens,
        block_tables.shape[1],
        float(scale),
        _DTYPES[q.dtype],
    )
    return out


def paged_decode_ref(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """float64 attention, each sequence's keys and values gathered from its blocks first."""
    seqs, heads, head_dim = q.shape
    block_tokens, kv_heads = k_pool.shape[1], k_pool.shape[2]
    group = heads // kv_heads
    out = torch.empty(q.shape, dtype=torch.float64)
    for b in range(seqs):
        length = int(context_lens[b])
        blocks = block_tables[b, : (length + block_tokens - 1) // block_tokens]
        k = k_pool[blocks].reshape(-1, kv_heads, head_dim)[:length].double()
        v = v_pool[blocks].reshape(-1, kv_heads, head_dim)[:length].double()
        for h in range(heads):
            scores = (k[:, h // group] @ q[b, h].double()) * scale
            out[b, h] = torch.softmax(scores, 0) @ v[:, h // group]
    return out
