"""Qwen3.5 / Qwen3.6 (dense and MoE): three gated DeltaNet layers for every gated full-attention
layer, the DeltaNet projections stored apart (``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``,
``in_proj_a``). The released checkpoints are multimodal (``...ForConditionalGeneration``, the
text decoder at ``model.language_model``, its config at ``text_config``); the neuron serves their
text side and leaves the vision tower and the multi-token-prediction layers unread. The MoE
variants route every layer through experts plus a gated shared expert, always renormalizing the
top-k weights. HF names throughout; the blocks are ``hybrid.py``'s.
"""

from __future__ import annotations

from typing import Any

from neuron.models.hybrid import HybridCausalLM, HybridConfig, parse_hybrid_config


class Qwen3_5Config(HybridConfig, kw_only=True, frozen=True):
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Qwen3_5Config:
        return parse_hybrid_config(cls, raw, "qwen3_5", grouped_qkvz=False)


class Qwen3_5MoeConfig(HybridConfig, kw_only=True, frozen=True):
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Qwen3_5MoeConfig:
        return parse_hybrid_config(cls, raw, "qwen3_5_moe", grouped_qkvz=False, always_renormalize=True)


class Qwen3_5ForCausalLM(HybridCausalLM):
    model_type = "qwen3_5_text"
    config_class = Qwen3_5Config


class Qwen3_5ForConditionalGeneration(Qwen3_5ForCausalLM):
    model_type = "qwen3_5"
    wrapped = True


class Qwen3_5MoeForCausalLM(HybridCausalLM):
    model_type = "qwen3_5_moe_text"
    config_class = Qwen3_5MoeConfig


class Qwen3_5MoeForConditionalGeneration(Qwen3_5MoeForCausalLM):
    model_type = "qwen3_5_moe"
    wrapped = True


ARCHITECTURES = {
    "Qwen3_5ForCausalLM": Qwen3_5ForCausalLM,
    "Qwen3_5ForConditionalGeneration": Qwen3_5ForConditionalGeneration,
    "Qwen3_5MoeForCausalLM": Qwen3_5MoeForCausalLM,
    "Qwen3_5MoeForConditionalGeneration": Qwen3_5MoeForConditionalGeneration,
}
