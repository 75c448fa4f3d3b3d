"""GGUF / ggml block-quantized tensors: dequantize, quantize and ``y = x @ W.T`` (qmatmul).

A :class:`QuantTensor` holds the raw ggml blocks of a 2-D weight ``W[N, K]`` row after row, exactly
the bytes a GGUF file stores for it. The types, and every size and property of each, come from the
native trait table (``_C.quant_types()``, csrc/quant/traits.cpp): ``QUANT_TYPES`` lists them by
name (ggml's type name in lower case, e.g. ``q4_k``), and nothing in Python lists them again.

Errors: a wrong dtype (or a non-tensor) raises ``TypeError``; wrong shapes, sizes, devices, a
non-contiguous tensor or ``K`` not a multiple of the block size raise ``ValueError``. Inputs are
never silently copied to make them contiguous.

Numerics: ``dequantize`` is bit-exact with ggml (and ``gguf.quants.dequantize``). ``quantize``
follows ggml's reference quantizers (``quantize_row_*_ref``; byte-identical to
``gguf.quants.quantize`` for the types gguf can quantize); types without a reference quantizer
(``QUANTIZABLE_TYPES`` says which) are refused. ``qmatmul`` quantizes activations to int8 (one
scale per ``ACT_BLOCK[qtype]`` elements: 32 for the 32-element formats, 256 for the K-quants and
IQ4_XS, as ggml does) and accumulates exact integer block sums in float32: relative RMS error
against float64 ``dequantize(W) @ x`` is about 0.5% on Gaussian data (up to 2.5% for one-block
rows of the affine formats), and against float64 ``dequantize(W) @ int8(x)`` it is float32 rounding.
The ``*_ref`` functions are plain float64 torch, the references the tests hold the kernels to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neuron.ops import _lib

_TRAITS: dict[str, dict] = {row["name"]: dict(row) for row in _lib.native.quant_types()}

QUANT_TYPES: tuple[str, ...] = tuple(_TRAITS)
GGML_TYPE_IDS: dict[str, int] = {name: row["ggml_type"] for name, row in _TRAITS.items()}
BLOCK_ELEMS: dict[str, int] = {name: row["block_elems"] for name, row in _TRAITS.items()}
BLOCK_BYTES: dict[str, int] = {name: row["block_bytes"] for name, row in _TRAITS.items()}
# Elements per int8 activation scale in qmatmul (32 for the 32-element formats, 256 for K-quants).
ACT_BLOCK: dict[str, int] = {name: row["act_block"] for name, row in _TRAITS.items()}
# Byte offsets of the fp16 scale fields in each block; every other byte pattern is a valid block.
SCALE_OFFSETS: dict[str, tuple[int, ...]] = {name: tuple(row["scale_offsets"]) for name, row in _TRAITS.items()}
# Types with a reference quantizer (ggml has none for some formats): quantize() accepts only these.
QUANTIZABLE_TYPES: tuple[str, ...] = tuple(name for name, row in _TRAITS.items() if row["can_quantize"])
# CPU ISAs with a GEMV kernel of their own per type (qmatmul falls back to the best lesser one).
GEMV_ISAS: dict[str, tuple[str, ...]] = {name: tuple(row["gemv_isas"]) for name, row in _TRAITS.items()}

_NATIVE_TYPE = {name: row["qtype"] for name, row in _TRAITS.items()}

_FLOAT_DTYPES = {
    torch.float32: _lib.DType.f32,
    torch.float16: _lib.DType.f16,
    torch.bfloat16: _lib.DType.bf16,
}


def _check_qtype(qtype: object) -> str:
    if qtype not in QUANT_TYPES:
        raise ValueError(f"qtype {qtype!r} is not supported: expected one of {', '.join(QUANT_TYPES)}")
    return qtype  # type: ignore[return-value]


def _check_tensor(t: object, name: str, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        expected = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} has dtype {str(t.dtype).removeprefix('torch.')}: expected {expected}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device}: this build has CPU kernels only for quantized tensors")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {tuple(t.stride())} for shape {tuple(t.shape)})")
    return t


@dataclass(frozen=True, slots=True)
class QuantTensor:
    """A weight ``W[N, K]`` stored as ggml blocks: ``data`` is contiguous uint8, ``N * row_bytes`` long."""

    data: torch.Tensor
    qtype: str
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        qtype = _check_qtype(self.qtype)
        if not isinstance(self.data, torch.Tensor):
            raise TypeError(f"data must be a torch.Tensor, got {type(self.data).__name__}")
        if self.data.dtype != torch.uint8:
            raise TypeError(f"data has dtype {str(self.data.dtype).removeprefix('torch.')}: expected uint8")
        if not self.data.is_contiguous():
            raise ValueError("data must be contiguous")
        try:
            n, k = (int(v) for v in self.shape)
        except (TypeError, ValueError):
            raise ValueError(f"shape must be (N, K), got {self.shape!r}") from None
        if n < 0 or k < 0:
            raise ValueError(f"shape must be non-negative, got {(n, k)}")
        if k % BLOCK_ELEMS[qtype]:
            raise ValueError(f"K = {k} is not a multiple of the {qtype} block size {BLOCK_ELEMS[qtype]}")
        object.__setattr__(self, "shape", (n, k))
        expected = n * (k // BLOCK_ELEMS[qtype]) * BLOCK_BYTES[qtype]
        if self.data.numel() != expected:
            raise ValueError(
                f"data holds {self.data.numel()} bytes but a {qtype} tensor of shape {(n, k)} needs {expected}"
            )

    @property
    def row_bytes(self) -> int:
        return self.shape[1] // BLOCK_ELEMS[self.qtype] * BLOCK_BYTES[self.qtype]

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    @property
    def device(self) -> torch.device:
        return self.data.device

    def to(self, device: torch.device | str) -> QuantTensor:
        return QuantTensor(self.data.to(device), self.qtype, self.shape)

    def __repr__(self) -> str:
        return f"QuantTensor({self.qtype}, shape={self.shape}, {self.nbytes / 2**20:.2f} MiB, device={self.device})"


def _check_quant_tensor(w: object, name: str = "w", *, cuda: bool = False) -> QuantTensor:
    """``cuda``: the op has a CUDA kernel, so a tensor on a CUDA device is accepted when the build has it."""
    if not isinstance(w, QuantTensor):
        raise TypeError(f"{name} must be a QuantTensor, got {type(w).__name__}")
    if w.device.type == "cuda" and cuda:
        if not _lib.CUDA_BUILT:
            raise ValueError(f"{name} is on {w.device}: this build of neuron._C has no CUDA kernels (CPU-only)")
        return w
    if w.device.type != "cpu":
        where = "CPU and CUDA kernels" if cuda else "CPU kernels only"
        raise ValueError(f"{name} is on {w.device}: this op has {where} for quantized tensors")
    return w


def quantize(tensor: torch.Tensor, qtype: str) -> QuantTensor:
    """Quantizes a 2-D float tensor ``[N, K]`` to ``qtype`` with ggml's reference quantizers.

    bfloat16 / float16 input is converted to float32 first (quantization is an offline step).
    """
    qtype = _check_qtype(qtype)
    if qtype not in QUANTIZABLE_TYPES:
        raise ValueError(
            f"{qtype} has no reference quantizer (ggml has none): quantizable types are {', '.join(QUANTIZABLE_TYPES)}"
        )
    x = _check_tensor(tensor, "tensor", tuple(_FLOAT_DTYPES))
    if x.ndim != 2:
        raise ValueError(f"tensor must be 2-D [N, K], got shape {tuple(x.shape)}")
    n, k = x.shape
    if k % BLOCK_ELEMS[qtype]:
        raise ValueError(f"K = {k} is not a multiple of the {qtype} block size {BLOCK_ELEMS[qtype]}")
    x = x.float()
    out = torch.empty(n * (k // BLOCK_ELEMS[qtype]) * BLOCK_BYTES[qtype], dtype=torch.uint8)
    _lib.native.quantize_cpu(out.data_ptr(), x.data_ptr(), n, k, _NATIVE_TYPE[qtype])
    return QuantTensor(out, qtype, (n, k))


def dequantize(w: QuantTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Returns the values of ``w`` as a ``[N, K]`` tensor of ``dtype`` (float32, bfloat16 or float16),
    on ``w``'s device: the CUDA kernel for a tensor on a CUDA device (enqueued on torch's current
    stream there), else the CPU one. Both are bit-exact with ggml."""
    w = _check_quant_tensor(w, cuda=True)
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dtype {dtype} is not supported: expected float32, bfloat16 or float16")
    n, k = w.shape
    out = torch.empty((n, k), dtype=dtype, device=w.device)
    args = (out.data_ptr(), w.data.data_ptr(), n, k, _NATIVE_TYPE[w.qtype], _FLOAT_DTYPES[dtype])
    if w.device.type == "cuda":
        with torch.cuda.device(w.device):
            _lib.native.dequantize_cuda(*args, torch.cuda.current_stream(w.device).cuda_stream)
    else:
        _lib.native.dequantize_cpu(*args)
    return out


def qmatmul(x: torch.Tensor, w: QuantTensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ W.T`` for ``x[..., K]`` (float32, bfloat16 or float16); ``y[..., N]`` has x's dtype."""
    w = _check_quant_tensor(w)
    x = _check_tensor(x, "x", tuple(_FLOAT_DTYPES))
    n, k = w.shape
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"x has shape {tuple(x.shape)}: its last dimension must be K = {k} of w {w.shape}")
    out_shape = (*x.shape[:-1], n)
    if out is None:
        out = torch.empty(out_shape, dtype=x.dtype)
    else:
        _check_tensor(out, "out", (x.dtype,))
        if tuple(out.shape) != out_shape:
            raise ValueError(f"out has shape {tuple(out.shape)}: expected {out_shape}")
    m = x.numel() // k if k else 0
    qt = _NATIVE_TYPE[w.qtype]
    workspace = torch.empty(_lib.native.qmatmul_workspace_bytes(m, k, qt), dtype=torch.uint8)
    _lib.native.qmatmul_cpu(
        out.data_ptr(), x.data_ptr(), w.data.data_ptr(), workspace.data_ptr(), m, n, k, qt, _FLOAT_DTYPES[x.dtype]
    )
    return out


def random_quant_tensor(
    qtype: str, shape: tuple[int, int], *, generator: torch.Generator | None = None, scale_std: float = 0.02
) -> QuantTensor:
    """Random valid blocks (random bytes, fp16 scales ~ N(0, scale_std)) for tests and benchmarks.

    Any byte pattern with finite scales is a valid ggml block, so random blocks exercise every
    quant value and sign without needing a quantizer.
    """
    qtype = _check_qtype(qtype)
    n, k = shape
    if k % BLOCK_ELEMS[qtype]:
        raise ValueError(f"K = {k} is not a multiple of the {qtype} block size {BLOCK_ELEMS[qtype]}")
    nblocks = n * (k // BLOCK_ELEMS[qtype])
    blocks = torch.randint(0, 256, (nblocks, BLOCK_BYTES[qtype]), dtype=torch.uint8, generator=generator)
    for offset in SCALE_OFFSETS[qtype]:
        scales = (torch.randn(nblocks, generator=generator) * scale_std).half()
        blocks[:, offset : offset + 2] = scales.view(torch.uint8).reshape(nblocks, 2)
    return QuantTensor(blocks.reshape(-1), qtype, (n, k))


# --- float64 references (plain torch, never on a hot path) ----------------------------------


def _half(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 field at byte ``offset`` of every block, as a float64 column."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).double()


def _k4_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = packed.long()
    lo, mid, hi = p[:, 0:4], p[:, 4:8], p[:, 8:12]
    sc = torch.cat([lo & 63, (hi & 0xF) | ((lo >> 6) << 4)], dim=1)
    mn = torch.cat([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], dim=1)
    return sc.double(), mn.double()


def _nibbles_k4(qs: torch.Tensor) -> torch.Tensor:
    """Q4_K / Q5_K low bits as [blocks, 8 sub-blocks, 32]."""
    q = qs.long().reshape(-1, 4, 1, 32)
    return torch.cat([q & 0xF, q >> 4], dim=2).reshape(-1, 8, 32)


# The 16 non-linear levels of IQ4_NL / IQ4_XS (ggml's kvalues_iq4nl).
_IQ4_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _nibbles32(qs: torch.Tensor) -> torch.Tensor:
    """[blocks, 16] bytes -> [blocks, 32] nibbles: element j low nibble of byte j, j + 16 high."""
    q = qs.long()
    return torch.cat([q & 0xF, q >> 4], dim=1)


def _bits32(qh: torch.Tensor) -> torch.Tensor:
    """[blocks, 4] bytes -> [blocks, 32] bits of the little-endian word, bit j at column j."""
    word = qh.long()
    bits = torch.stack([(word >> j) & 1 for j in range(8)], dim=2)  # [blocks, byte, bit]
    return bits.reshape(-1, 32)


def _two_bits_k(qs: torch.Tensor) -> torch.Tensor:
    """Q2_K / Q3_K low bits, [blocks, 64] -> [blocks, 256]: element 128h + 32s + l at bits 2s of qs[32h + l]."""
    q = qs.long().reshape(-1, 2, 1, 32)
    shifts = torch.tensor([0, 2, 4, 6]).reshape(1, 1, 4, 1)
    return ((q >> shifts) & 3).reshape(-1, 256)


def dequantize_ref(w: QuantTensor) -> torch.Tensor:
    """float64 values of ``w`` computed with plain torch from the block bytes (layouts: ggml-common.h)."""
    n, k = w.shape
    blocks = w.data.reshape(-1, BLOCK_BYTES[w.qtype]).cpu()
    levels = torch.tensor(_IQ4_LEVELS, dtype=torch.float64)
    if w.qtype == "q4_0":
        q = blocks[:, 2:18].long()
        vals = torch.cat([q & 0xF, q >> 4], dim=1).double() - 8
        out = _half(blocks, 0) * vals
    elif w.qtype == "q4_1":  # d, m, qs[16]: d * q + m
        out = _half(blocks, 0) * _nibbles32(blocks[:, 4:20]).double() + _half(blocks, 2)
    elif w.qtype == "q5_0":  # d, qh[4], qs[16]: d * (q - 16)
        q = _nibbles32(blocks[:, 6:22]) | (_bits32(blocks[:, 2:6]) << 4)
        out = _half(blocks, 0) * (q.double() - 16)
    elif w.qtype == "q5_1":  # d, m, qh[4], qs[16]: d * q + m
        q = _nibbles32(blocks[:, 8:24]) | (_bits32(blocks[:, 4:8]) << 4)
        out = _half(blocks, 0) * q.double() + _half(blocks, 2)
    elif w.qtype == "iq4_nl":  # d, qs[16]: d * level[q]
        out = _half(blocks, 0) * levels[_nibbles32(blocks[:, 2:18])]
    elif w.qtype == "q8_0":
        out = _half(blocks, 0) * blocks[:, 2:34].contiguous().view(torch.int8).double()
    elif w.qtype == "q2_k":  # scales[16], qs[64], d, dmin: d * sc * q - dmin * m, per 16
        sc = blocks[:, 0:16].long()
        q = _two_bits_k(blocks[:, 16:80]).double().reshape(-1, 16, 16)
        d, dmin = _half(blocks, 80)[:, :, None], _half(blocks, 82)[:, :, None]
        out = d * (sc & 0xF).double()[:, :, None] * q - dmin * (sc >> 4).double()[:, :, None]
    elif w.qtype == "q3_k":  # hmask[32], qs[64], scales[12], d: d * (sc - 32) * (q - 4 * !high)
        packed = blocks[:, 96:108].long()
        j = torch.arange(16)
        low = torch.where(j < 8, packed[:, j % 8] & 0xF, packed[:, j % 8] >> 4)
        high = (packed[:, 8 + j % 4] >> (2 * (j // 4))) & 3
        sc = ((low | (high << 4)) - 32).double()
        e = torch.arange(256)
        hbit = (blocks[:, 0:32].long()[:, e % 32] >> (e // 32)) & 1
        q = (_two_bits_k(blocks[:, 32:96]) - 4 * (1 - hbit)).double()
        out = _half(blocks, 108)[:, :, None] * sc[:, :, None] * q.reshape(-1, 16, 16)
    elif w.qtype == "iq4_xs":  # d, scales_h, scales_l[4], qs[128]: d * (ls - 32) * level[q], per 32
        j = torch.arange(8)
        scales_h = blocks[:, 2].long() | (blocks[:, 3].long() << 8)
        ls_low = (blocks[:, 4:8].long()[:, j // 2] >> (4 * (j % 2))) & 0xF
        ls = (ls_low | (((scales_h[:, None] >> (2 * j)) & 3) << 4)) - 32
        q = _nibbles32(blocks[:, 8:136].reshape(-1, 16)).reshape(-1, 8, 32)
        out = _half(blocks, 0)[:, :, None] * ls.double()[:, :, None] * levels[q]
    elif w.qtype in ("q4_k", "q5_k"):
        sc, mn = _k4_scales(blocks[:, 4:16])
        if w.qtype == "q4_k":
            q = _nibbles_k4(blocks[:, 16:144])
        else:
            qh = blocks[:, 16:48].long()
            bits = torch.stack([(qh >> j) & 1 for j in range(8)], dim=1)
            q = _nibbles_k4(blocks[:, 48:176]) | (bits << 4)
        out = _half(blocks, 0)[:, :, None] * sc[:, :, None] * q.double() - _half(blocks, 2)[:, :, None] * mn[:, :, None]
    elif w.qtype == "q6_k":
        ql, qh = blocks[:, 0:128].long(), blocks[:, 128:192].long()
        halves = []
        for h in range(2):
            l0, l1, hb = ql[:, 64 * h : 64 * h + 32], ql[:, 64 * h + 32 : 64 * h + 64], qh[:, 32 * h : 32 * h + 32]
            halves += [
                (l0 & 0xF) | ((hb & 3) << 4),
                (l1 & 0xF) | (((hb >> 2) & 3) << 4),
                (l0 >> 4) | (((hb >> 4) & 3) << 4),
                (l1 >> 4) | (((hb >> 6) & 3) << 4),
            ]
        q = torch.cat(halves, dim=1).double() - 32
        scales = blocks[:, 192:208].contiguous().view(torch.int8).double().repeat_interleave(16, dim=1)
        out = _half(blocks, 208) * scales * q
    else:
        raise NotImplementedError(f"dequantize_ref has no float64 reference for {w.qtype} yet")
    return out.reshape(n, k)


def qmatmul_ref(x: torch.Tensor, w: QuantTensor) -> torch.Tensor:
    """float64 ``x @ dequantize_ref(w).T``."""
    n, k = w.shape
    y = x.double().reshape(-1, k) @ dequantize_ref(w).T
    return y.reshape(*x.shape[:-1], n)
