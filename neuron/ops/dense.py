"""Dense (unquantized) kernels: the bf16 GEMV of a decode step, ``y = W @ x``, and its few-rows
form for a decode step of several sequences.

torch's CPU bf16 matrix-vector product reaches about half the memory bandwidth; a decode step
of a bf16 model is little else. Our kernel streams each weight row once per thread with
software prefetch, and uses vdpbf16ps where the CPU has AVX-512 BF16.

Numerics: bf16 products are exact in float32; sums are float32 (relative error ~1e-6 against a
float64 reference), then rounded to the output dtype.
"""

from __future__ import annotations

import torch

from neuron.ops import _lib

_OUT_DTYPES = {torch.bfloat16: _lib.DType.bf16, torch.float32: _lib.DType.f32}


def gemv_bf16(x: torch.Tensor, w: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``W[N, K] @ x`` for one activation row ``x`` of shape ``[K]`` or ``[1, K]`` (bf16, CPU).

    The result has x's shape with K replaced by N, in bf16 (or in ``out``'s dtype: bf16 or f32).
    """
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor):
        raise TypeError("x and w must be torch.Tensors")
    if w.dtype != torch.bfloat16 or x.dtype != torch.bfloat16:
        raise TypeError(f"gemv_bf16 takes bfloat16 x and w, got x {x.dtype} and w {w.dtype}")
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D [N, K], got shape {tuple(w.shape)}")
    n, k = w.shape
    if x.shape[-1] != k or x.numel() != k:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected one row of K = {k}")
    if x.device.type != "cpu" or w.device.type != "cpu":
        raise ValueError(f"gemv_bf16 runs on the CPU; x is on {x.device}, w on {w.device}")
    if not (x.is_contiguous() and w.is_contiguous()):
        raise ValueError("x and w must be contiguous")
    shape = (*x.shape[:-1], n)
    if out is None:
        out = torch.empty(shape, dtype=torch.bfloat16)
    elif out.dtype not in _OUT_DTYPES or tuple(out.shape) != shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous bfloat16 or float32 tensor of shape {shape}")
    _lib.native.gemv_bf16_cpu(out.data_ptr(), x.data_ptr(), w.data_ptr(), n, k, _OUT_DTYPES[out.dtype])
    return out


MATMUL_MAX_ROWS = 16  # past this many rows torch's matrix product is the better tool


def matmul_bf16(x: torch.Tensor, w: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T`` for a few activation rows ``x`` ``[M, K]`` (bf16, CPU): a decode step of several
    sequences. W is streamed from memory about once, whatever M is (a chunk of its rows is reused
    from cache for every row of x). The result is ``[M, N]`` bf16 (or ``out``'s dtype: bf16 or f32)."""
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor):
        raise TypeError("x and w must be torch.Tensors")
    if w.dtype != torch.bfloat16 or x.dtype != torch.bfloat16:
        raise TypeError(f"matmul_bf16 takes bfloat16 x and w, got x {x.dtype} and w {w.dtype}")
    if w.dim() != 2 or x.dim() != 2:
        raise ValueError(f"x must be [M, K] and w [N, K], got x {tuple(x.shape)} and w {tuple(w.shape)}")
    n, k = w.shape
    if x.shape[1] != k:
        raise ValueError(f"x has {x.shape[1]} columns but w has K = {k}")
    if x.device.type != "cpu" or w.device.type != "cpu":
        raise ValueError(f"matmul_bf16 runs on the CPU; x is on {x.device}, w on {w.device}")
    if not (x.is_contiguous() and w.is_contiguous()):
        raise ValueError("x and w must be contiguous")
    shape = (x.shape[0], n)
    if out is None:
        out = torch.empty(shape, dtype=torch.bfloat16)
    elif out.dtype not in _OUT_DTYPES or tuple(out.shape) != shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous bfloat16 or float32 tensor of shape {shape}")
    _lib.native.matmul_bf16_cpu(out.data_ptr(), x.data_ptr(), w.data_ptr(), x.shape[0], n, k, _OUT_DTYPES[out.dtype])
    return out


def gemv_bf16_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """float64 ``W @ x``."""
    return (w.double() @ x.double().reshape(-1)).reshape(*x.shape[:-1], w.shape[0])


def rms_norm_bf16(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF RMSNorm of bf16 rows ``x[..., D]`` with a bf16 ``weight[D]``: bf16 out, float32 inside.

    ``x`` may be a strided view as long as each row of D is contiguous and the rows form at most
    two strided levels (``[T, heads, D]`` heads of a fused projection); the result is dense.
    """
    if x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16:
        raise TypeError(f"rms_norm_bf16 takes bfloat16 x and weight, got {x.dtype} and {weight.dtype}")
    dim = x.shape[-1]
    if weight.shape != (dim,) or not weight.is_contiguous():
        raise ValueError(f"weight must be a contiguous ({dim},) tensor, got shape {tuple(weight.shape)}")
    if x.device.type != "cpu" or weight.device.type != "cpu":
        raise ValueError("rms_norm_bf16 runs on the CPU")
    if x.dim() < 2 or x.stride(-1) != 1:
        raise ValueError(f"x must have contiguous rows and at least 2 dims, got shape {tuple(x.shape)}")
    if x.dim() > 3 or x.numel() == 0:
        x = x.reshape(-1, dim)
    if x.dim() == 2:
        outer, inner, outer_stride, inner_stride = x.shape[0], 1, x.stride(0), dim
    else:
        outer, inner, outer_stride, inner_stride = x.shape[0], x.shape[1], x.stride(0), x.stride(1)
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    if out.numel():
        _lib.native.rms_norm_bf16_cpu(
            out.data_ptr(), x.data_ptr(), weight.data_ptr(), outer, inner, dim, outer_stride, inner_stride, eps
        )
    return out


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm formula in float64 (the reference, before the output rounding)."""
    h = x.double()
    return weight.double() * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))
