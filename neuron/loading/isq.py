"""In-situ quantization: a float checkpoint's weights quantized as they are read, by a
:class:`~neuron.models.methods.WeightPlan` that follows llama.cpp's type choices (and is the
plan ``neuron quantize`` writes a GGUF file with, so both hold the same bytes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neuron.models.methods import Dense, Method, Quant
from neuron.ops.quant import QUANTIZABLE_TYPES

# The in-situ mixes: llama.cpp's Q4_K_M / Q5_K_M choice of higher-precision tensors.
ISQ_MIXES: dict[str, str] = {"q4_k_m": "q4_k", "q5_k_m": "q5_k"}
# A type whose block does not divide a weight's columns falls back to a smaller block, as
# llama.cpp does; a fallback this build lacks becomes q8_0, and a width q8_0 cannot take stays dense.
FALLBACK: dict[str, str] = {
    "q4_k": "q5_0",
    "q5_k": "q5_1",
    "q6_k": "q8_0",
    "q2_k": "q4_0",
    "q3_k": "q4_0",
    "iq4_xs": "iq4_nl",
}


def isq_types() -> tuple[str, ...]:
    """What ``quant`` accepts on a safetensors load: every block type we can quantize to, then the mixes."""
    return (*QUANTIZABLE_TYPES, *ISQ_MIXES)


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def _more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


@dataclass(frozen=True)
class IsqPlan:
    """In-situ quantization of a float checkpoint to ``quant`` (a block type, or a ``_m`` mix).

    Every matrix gets the type, the untied ``lm_head`` and the untied embedding included; a tied
    table stays dense (``dtype``), since it is the head too, and so do an MoE router and the
    shared expert's gate (llama.cpp's ``ffn_gate_inp`` / ``ffn_gate_inp_shexp``). A mix raises
    ``lm_head`` to Q6_K and ``v_proj`` / ``down_proj`` to Q6_K on llama.cpp's layers
    (:func:`_more_bits`). Norms, and a gated DeltaNet's conv taps, ``A_log`` and ``dt_bias``, are
    no Linear's: they are never quantized.
    """

    quant: str
    dtype: torch.dtype
    num_layers: int
    tied: bool

    def method(self, name: str, shape: tuple[int, int]) -> Method:
        base = ISQ_MIXES.get(self.quant, self.quant)
        mix = self.quant in ISQ_MIXES
        qtype = base
        if "embed_tokens" in name and self.tied:
            return Dense(self.dtype)
        if name.endswith(("mlp.gate.weight", "shared_expert_gate.weight")):
            return Dense(self.dtype)  # an MoE router and the shared expert's gate stay dense, as llama.cpp keeps them
        if name.startswith("lm_head") and mix:
            qtype = "q6_k"
        elif mix and (".v_proj." in name or ".down_proj." in name):
            layer = _layer_of(name)
            if layer is not None and _more_bits(layer, self.num_layers):
                qtype = "q6_k"
        return _fitting(qtype, shape[1], self.dtype)


def _fitting(qtype: str, cols: int, dtype: torch.dtype) -> Method:
    method = Quant(qtype)
    if method.fits(cols):
        return method
    fallback = FALLBACK.get(qtype, "q8_0")
    method = Quant(fallback if fallback in QUANTIZABLE_TYPES else "q8_0")
    return method if method.fits(cols) else Dense(dtype)
