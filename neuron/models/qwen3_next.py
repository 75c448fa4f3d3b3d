"""Qwen3-Next (Qwen3-Next-80B-A3B and kin): three gated DeltaNet layers for every gated
full-attention layer, a mixture of experts with a shared expert on the layers
``decoder_sparse_step`` / ``mlp_only_layers`` choose. The DeltaNet projections are stored as
``in_proj_qkvz`` and ``in_proj_ba``, grouped per key head (``hybrid.grouped_qkvz_order``).
HF names throughout; the blocks are ``hybrid.py``'s.
"""

from __future__ import annotations

from typing import Any

from neuron.models.hybrid import HybridCausalLM, HybridConfig, parse_hybrid_config


class Qwen3NextConfig(HybridConfig, kw_only=True, frozen=True):
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Qwen3NextConfig:
        # a GGUF file keeps the projections apart (llama.cpp's attn_qkv, attn_gate, ssm_ba split):
        # its config says grouped_qkvz = false, and the layers take Qwen3.5's names
        grouped = bool(raw.get("grouped_qkvz", True))
        return parse_hybrid_config(cls, raw, "qwen3_next", grouped_qkvz=grouped)


class Qwen3NextForCausalLM(HybridCausalLM):
    model_type = "qwen3_next"
    config_class = Qwen3NextConfig


ARCHITECTURES = {"Qwen3NextForCausalLM": Qwen3NextForCausalLM}
