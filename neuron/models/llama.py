"""Llama 3.x (dense): the shared decoder of ``layers.py`` with Llama 3's RoPE frequency scaling
(``rope_scaling`` of type ``llama3``), no per-head norm, no bias unless ``attention_bias``.
"""

from __future__ import annotations

from typing import Any

from neuron.models.layers import CausalLM, DecoderConfig, parse_decoder_config


class LlamaConfig(DecoderConfig, kw_only=True, frozen=True):
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LlamaConfig:
        return parse_decoder_config(cls, raw, "llama", qk_norm=False, qkv_bias=False, rope_types=("default", "llama3"))


class LlamaForCausalLM(CausalLM):
    model_type = "llama"
    config_class = LlamaConfig


ARCHITECTURES = {"LlamaForCausalLM": LlamaForCausalLM}
