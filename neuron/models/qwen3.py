"""Qwen3 (dense): the shared decoder of ``layers.py`` with RMSNorm over each head of q and k,
no attention bias. Attribute paths equal checkpoint keys (``model.layers.3.self_attn.q_proj.weight``)
except the fusions of ``layers.FUSED``, which the loader fills block by block.
"""

from __future__ import annotations

from typing import Any

from neuron.models.layers import FUSED, CausalLM, DecoderConfig, parse_decoder_config

__all__ = ["ARCHITECTURES", "FUSED", "Qwen3Config", "Qwen3ForCausalLM"]


class Qwen3Config(DecoderConfig, kw_only=True, frozen=True):
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Qwen3Config:
        return parse_decoder_config(cls, raw, "qwen3", qk_norm=True, qkv_bias=False)


class Qwen3ForCausalLM(CausalLM):
    model_type = "qwen3"
    config_class = Qwen3Config


ARCHITECTURES = {"Qwen3ForCausalLM": Qwen3ForCausalLM}
