"""Qwen3-MoE (Qwen3-30B-A3B and kin): Qwen3's attention with a mixture-of-experts MLP on the
layers ``decoder_sparse_step`` / ``mlp_only_layers`` choose (``layers.SparseMoE``), a dense
gated MLP of ``intermediate_size`` on the others. HF names throughout.
"""

from __future__ import annotations

from typing import Any

from neuron.models.layers import CausalLM, DecoderConfig, parse_decoder_config


class Qwen3MoeConfig(DecoderConfig, kw_only=True, frozen=True):
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Qwen3MoeConfig:
        return parse_decoder_config(cls, raw, "qwen3_moe", qk_norm=True, qkv_bias=False, moe=True)


class Qwen3MoeForCausalLM(CausalLM):
    model_type = "qwen3_moe"
    config_class = Qwen3MoeConfig


ARCHITECTURES = {"Qwen3MoeForCausalLM": Qwen3MoeForCausalLM}
