"""Paged decode attention against a float64 reference that gathers each sequence's blocks first:
random pools, shuffled block tables, awkward context lengths (1, a block, a block + 1, several
tiles), grouped and plain heads, head dims on and off the 16-lane path, float32 and bfloat16, on
every CPU ISA; the output is pre-filled with NaN so an unwritten row fails; bad arguments raise
naming what was wrong."""

from __future__ import annotations

import pytest
import torch

from neuron import ops

TOL = {torch.float32: 2e-6, torch.bfloat16: 8e-3}  # relative RMS against float64


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(torch.sqrt(((a - b) ** 2).mean()) / torch.sqrt((b**2).mean()))


def case(seed: int, lens: list[int], heads: int, kv_heads: int, dim: int, dtype: torch.dtype, block_tokens: int = 16):
    gen = torch.Generator().manual_seed(seed)
    per_seq = [(n + block_tokens - 1) // block_tokens for n in lens]
    blocks = sum(per_seq) + 3  # a few blocks nobody reads
    k = torch.randn(blocks, block_tokens, kv_heads, dim, generator=gen).to(dtype)
    v = torch.randn(blocks, block_tokens, kv_heads, dim, generator=gen).to(dtype)
    order = torch.randperm(blocks, generator=gen).tolist()
    width = max(per_seq) + 1
    tables, taken = [], 0
    for n in per_seq:
        row = order[taken : taken + n]
        taken += n
        tables.append(row + [blocks - 1] * (width - n))
    q = torch.randn(len(lens), heads, dim, generator=gen).to(dtype)
    return q, k, v, torch.tensor(tables, dtype=torch.long), torch.tensor(lens, dtype=torch.long)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("lens", "heads", "kv_heads", "dim"),
    [
        ([1], 4, 4, 16),
        ([16, 17, 5], 16, 8, 128),  # a block, a block + 1; Qwen3-0.6B's heads
        ([200, 33, 64, 1], 8, 2, 64),  # several tiles of 32 keys, groups of 4
        ([95], 6, 3, 24),  # head_dim off the 16-lane path
        ([300, 77], 32, 8, 128),
    ],
)
def test_paged_decode_matches_the_float64_reference(isa, dtype, lens, heads, kv_heads, dim):
    q, k, v, tables, lengths = case(len(lens) * 7 + dim, lens, heads, kv_heads, dim, dtype)
    scale = dim**-0.5
    out = torch.full_like(q, float("nan"))
    got = ops.paged_decode(q, k, v, tables, lengths, scale, out=out)
    assert got is out and not torch.isnan(got).any()
    ref = ops.paged_decode_ref(q, k, v, tables, lengths, scale)
    assert rel_rms(got, ref) < TOL[dtype]


def test_the_isas_agree(simd_isa):
    q, k, v, tables, lengths = case(3, [130, 9, 64], 16, 8, 128, torch.bfloat16)
    ours = ops.paged_decode(q, k, v, tables, lengths, 0.1)
    ops.set_cpu_isa("generic")
    plain = ops.paged_decode(q, k, v, tables, lengths, 0.1)
    assert rel_rms(ours, plain) < 1e-5


def test_it_equals_sdpa_over_the_gathered_keys():
    """What the model's torch path computes (scaled_dot_product_attention with grouped heads)."""
    q, k, v, tables, lengths = case(5, [40, 70], 8, 4, 32, torch.float32)
    got = ops.paged_decode(q, k, v, tables, lengths, 32**-0.5)
    for b, n in enumerate(lengths.tolist()):
        keys = k[tables[b, : (n + 15) // 16]].reshape(-1, 4, 32)[:n]
        values = v[tables[b, : (n + 15) // 16]].reshape(-1, 4, 32)[:n]
        want = torch.nn.functional.scaled_dot_product_attention(
            q[b][None, :, None], keys.transpose(0, 1)[None], values.transpose(0, 1)[None], enable_gqa=True
        )[0, :, 0]
        assert (got[b] - want).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    ("change", "error", "needle"),
    [
        (lambda a: {**a, "q": a["q"].double()}, TypeError, "q must be float32 or bfloat16"),
        (lambda a: {**a, "k_pool": a["k_pool"].bfloat16()}, TypeError, "k_pool must have q's dtype"),
        (lambda a: {**a, "block_tables": a["block_tables"].int()}, TypeError, "block_tables must be int64"),
        (lambda a: {**a, "context_lens": a["context_lens"][:1]}, ValueError, "one row per sequence"),
        (lambda a: {**a, "context_lens": a["context_lens"] * 0}, ValueError, "context_lens[0] = 0"),
        (lambda a: {**a, "q": a["q"].transpose(0, 1)}, ValueError, "q must be a contiguous"),
        (lambda a: {**a, "q": a["q"][:, :3].contiguous()}, ValueError, "multiple of kv_heads"),
    ],
)
def test_bad_arguments_raise_naming_what_was_wrong(change, error, needle):
    q, k, v, tables, lengths = case(1, [20, 3], 4, 2, 16, torch.float32)
    args = {"q": q, "k_pool": k, "v_pool": v, "block_tables": tables, "context_lens": lengths, "scale": 0.25}
    with pytest.raises(error, match=needle.replace("[", r"\[").replace("]", r"\]")):
        ops.paged_decode(**change(args))
