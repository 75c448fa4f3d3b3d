"""Building blocks shared by the architectures: RMSNorm, rotary embedding, a weight-only Linear
with an optional fused layout, and a KV cache preallocated per sequence.

Numerics follow HF transformers (checked by the parity tests): RMSNorm normalises in float32
and casts back before the weight; RoPE tables are computed in float32 and cast to the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neuron import ops


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
        # A decode step of a bf16 model on the CPU: our GEMV streams the weight near memory speed.
        if (
            x.dtype == torch.bfloat16
            and w.dtype == torch.bfloat16
            and x.numel() == w.shape[1]
            and x.device.type == "cpu"
        ):
            return ops.gemv_bf16(x, w)
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


class KVCache:
    """Keys and values of one sequence for every layer, allocated once for ``capacity`` tokens.

    Token-major (``[layers, capacity, kv_heads, head_dim]``): writing a step is one contiguous copy,
    and attention reads a transposed view.
    """

    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, capacity: int, *, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (layers, capacity, kv_heads, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.capacity = capacity

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stores k/v [T, kv_heads, head_dim] at ``start``; returns [kv_heads, start + T, head_dim] views."""
        end = start + k.shape[0]
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} tokens; position {end} is past it")
        self.k[layer, start:end] = k
        self.v[layer, start:end] = v
        return self.k[layer, :end].transpose(0, 1), self.v[layer, :end].transpose(0, 1)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
