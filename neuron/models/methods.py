"""Weight methods: how a :class:`~neuron.models.layers.Linear` (or the token embedding) holds its
weight and multiplies by it. vLLM's ``LinearMethodBase`` shape, our own code.

- :class:`Dense` keeps a float tensor of its dtype (the bf16 CPU decode kernels apply it);
- :class:`Quant` keeps ggml blocks of one type (a :class:`~neuron.ops.quant.QuantTensor`) and
  multiplies with ``ops.qmatmul``; a long prefill dequantizes tiles of rows and runs a GEMM
  instead, from :func:`gemm_min_rows` activation rows on (the one place that crossover lives).

A method allocates storage for ``rows x cols``, fills a run of rows from one checkpoint tensor
(a float tensor is converted or quantized as it arrives; ggml blocks are copied, or converted
when the types differ), applies itself to activations and says its exact bytes from the shape
alone, so footprints come from file headers. Which method each weight gets is a
:class:`WeightPlan`'s choice, made by name and shape before anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from neuron import ops
from neuron.ops.quant import BLOCK_BYTES, BLOCK_ELEMS, QuantTensor

# Activation rows from which a quantized weight is dequantized a tile of rows at a time and
# multiplied by torch's GEMM instead of going through qmatmul. Measured on the Qwen3-0.6B-shaped
# bench model (bf16 activations, 2 threads, AMD EPYC Zen 4): alone, the direct kernel wins up to
# about 300 rows for q4_k (6144 x 1024: 11.1 vs 12.4 ms at 256 rows, 20.5 vs 14.2 at 512) and
# about 500 for q6_k, whose dequantization is the slowest; q8_0 wins alone to ~300 rows too, but
# in the model a 128-token prompt takes 830 ms direct against 400 ms through the GEMM, so q8_0
# switches early. bench/neuron_decode.py --gguf measures TTFT and prefill on both sides.
QUANT_GEMM_MIN_ROWS = 320
QUANT_GEMM_MIN_ROWS_OF = {"q8_0": 64, "q6_k": 512}
LONGEST_DIRECT_ROWS = max(QUANT_GEMM_MIN_ROWS, *QUANT_GEMM_MIN_ROWS_OF.values())  # every type goes to GEMM from here


def gemm_min_rows(qtype: str) -> int:
    return QUANT_GEMM_MIN_ROWS_OF.get(qtype, QUANT_GEMM_MIN_ROWS)


QUANT_GEMM_TILE_ROWS = 512  # weight rows dequantized at once: a few MiB, stays in cache

Weight = torch.Tensor | QuantTensor


@dataclass(frozen=True)
class Dense:
    """A float weight of ``dtype``."""

    dtype: torch.dtype

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def nbytes(self, rows: int, cols: int) -> int:
        return rows * cols * self.dtype.itemsize

    def allocate(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        return torch.empty((rows, cols), dtype=self.dtype, device=device)

    def rows(self, weight: torch.Tensor, first: int, count: int) -> torch.Tensor:
        return weight[first : first + count]

    def fill(self, dest: torch.Tensor, src: Weight) -> None:
        if isinstance(src, QuantTensor):
            src = ops.dequantize(src, torch.float32)
        dest.copy_(src)

    def apply(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # A decode step of a bf16 model on the CPU (one row, or one per sequence of the batch): our
        # kernels stream the weight near memory speed, once for all rows.
        if x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and x.device.type == "cpu":
            if x.numel() == weight.shape[1]:
                return ops.gemv_bf16(x, weight)
            rows = x.numel() // weight.shape[1]
            if rows <= ops.MATMUL_MAX_ROWS and x.is_contiguous():
                return ops.matmul_bf16(x.reshape(rows, weight.shape[1]), weight).reshape(*x.shape[:-1], weight.shape[0])
        return F.linear(x, weight)

    def embed(self, weight: torch.Tensor, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return F.embedding(ids, weight).to(dtype)


@dataclass(frozen=True)
class Quant:
    """ggml blocks of ``qtype`` (one of ``ops.quant.QUANT_TYPES``)."""

    qtype: str

    @property
    def name(self) -> str:
        return self.qtype

    def fits(self, cols: int) -> bool:
        return cols % BLOCK_ELEMS[self.qtype] == 0

    def nbytes(self, rows: int, cols: int) -> int:
        return rows * (cols // BLOCK_ELEMS[self.qtype]) * BLOCK_BYTES[self.qtype]

    def allocate(self, rows: int, cols: int, device: torch.device) -> QuantTensor:
        data = torch.empty(self.nbytes(rows, cols), dtype=torch.uint8, device=device)
        return QuantTensor(data, self.qtype, (rows, cols))

    def rows(self, weight: QuantTensor, first: int, count: int) -> QuantTensor:
        row_bytes = weight.row_bytes
        data = weight.data[first * row_bytes : (first + count) * row_bytes]
        return QuantTensor(data, self.qtype, (count, weight.shape[1]))

    def fill(self, dest: QuantTensor, src: Weight) -> None:
        if isinstance(src, QuantTensor) and src.qtype == self.qtype:
            dest.data.copy_(src.data)
            return
        values = ops.dequantize(src, torch.float32) if isinstance(src, QuantTensor) else src
        dest.data.copy_(ops.quantize(values.contiguous(), self.qtype).data)

    def apply(self, weight: QuantTensor, x: torch.Tensor) -> torch.Tensor:
        n, k = weight.shape
        rows = x.numel() // k if k else 0
        x = x if x.is_contiguous() else x.contiguous()
        if rows < gemm_min_rows(self.qtype):
            return ops.qmatmul(x, weight)
        flat = x.reshape(rows, k)
        out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
        for first in range(0, n, QUANT_GEMM_TILE_ROWS):
            count = min(QUANT_GEMM_TILE_ROWS, n - first)
            tile = ops.dequantize(self.rows(weight, first, count), x.dtype)
            out[:, first : first + count] = flat @ tile.T
        return out.reshape(*x.shape[:-1], n)

    def embed(self, weight: QuantTensor, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The rows of ``ids``, dequantized: the table itself stays quantized."""
        row_bytes = weight.row_bytes
        picked = weight.data.view(weight.shape[0], row_bytes).index_select(0, ids.reshape(-1))
        rows = QuantTensor(picked.reshape(-1), self.qtype, (picked.shape[0], weight.shape[1]))
        return ops.dequantize(rows, dtype).reshape(*ids.shape, weight.shape[1])


Method = Dense | Quant


class WeightPlan(Protocol):
    """Chooses the method of each matrix weight by its checkpoint name and shape (rows, cols);
    ``dtype`` is the activations', which norms and biases are held in."""

    dtype: torch.dtype

    def method(self, name: str, shape: tuple[int, int]) -> Method: ...


@dataclass(frozen=True)
class DensePlan:
    """Every weight dense in ``dtype``: the unquantized load of a safetensors checkpoint."""

    dtype: torch.dtype

    def method(self, name: str, shape: tuple[int, int]) -> Method:
        return Dense(self.dtype)
