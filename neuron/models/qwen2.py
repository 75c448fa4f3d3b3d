"""Qwen2 / Qwen2.5 (dense): the shared decoder of ``layers.py`` with a bias on the q, k and v
projections and no per-head norm. HF names throughout, fusions as ``layers.FUSED``.
"""

from __future__ import annotations

from typing import Any

from neuron.models.layers import CausalLM, DecoderConfig, parse_decoder_config


class Qwen2Config(DecoderConfig, kw_only=True, frozen=True):
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Qwen2Config:
        return parse_decoder_config(cls, raw, "qwen2", qk_norm=False, qkv_bias=True)


class Qwen2ForCausalLM(CausalLM):
    model_type = "qwen2"
    config_class = Qwen2Config


ARCHITECTURES = {"Qwen2ForCausalLM": Qwen2ForCausalLM}
