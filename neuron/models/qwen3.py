"""Qwen3 (dense): our own torch modules with HF names, checked against transformers.

Attribute paths equal checkpoint keys (``model.layers.3.self_attn.q_proj.weight``) except the
fusions declared in :data:`FUSED`, which the loader fills block by block. A forward is one engine
step over a :class:`~neuron.models.Batch` (the model contract): every sequence's new tokens flat,
keys and values through the paged KV cache.
"""

from __future__ import annotations

from typing import Any

import msgspec
import torch
import torch.nn.functional as F
from torch import nn

from neuron.models import AttentionState, BadCheckpoint, Batch, PagedKV, UnsupportedModel
from neuron.models.layers import (
    Embedding,
    Linear,
    RMSNorm,
    RotaryEmbedding,
    apply_rotary,
    bind_weights,
    paged_attention,
)
from neuron.models.methods import DensePlan, WeightPlan

FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


class Qwen3Config(msgspec.Struct, kw_only=True, frozen=True):
    """The fields of config.json we use, HF names, resolved once (defaults filled in)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Qwen3Config:
        def unsupported(what: str) -> UnsupportedModel:
            return UnsupportedModel(f"qwen3 with {what} is not supported by this neuron")

        if raw.get("attention_bias"):
            raise unsupported("attention_bias = true")
        if raw.get("use_sliding_window"):
            raise unsupported("use_sliding_window = true")
        if raw.get("hidden_act", "silu") != "silu":
            raise unsupported(f"hidden_act = {raw['hidden_act']!r}")
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise unsupported(f"rope type {rope.get('rope_type', rope.get('type'))!r}")
        theta = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        heads = int(raw["num_attention_heads"])
        try:
            return cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=int(raw["hidden_size"]),
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(raw.get("head_dim") or raw["hidden_size"] // heads),
                max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=float(theta),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            )
        except KeyError as exc:
            raise BadCheckpoint(f"config.json lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise BadCheckpoint(f"config.json has a field of the wrong type: {exc}") from None


class Qwen3Attention(nn.Module):
    def __init__(self, cfg: Qwen3Config, layer_idx: int, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_size, self.kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        sizes = (self.q_size, self.kv_size, self.kv_size)
        self.qkv_proj = Linear(cfg.hidden_size, sum(sizes), shards=dict(zip(FUSED["qkv_proj"], sizes, strict=True)))
        self.o_proj = Linear(self.q_size, cfg.hidden_size)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, dtype=dtype, device=device)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: Batch, kv: PagedKV) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = apply_rotary(self.q_norm(q.view(t, self.heads, self.head_dim)), cos, sin)
        k = apply_rotary(self.k_norm(k.view(t, self.kv_heads, self.head_dim)), cos, sin)
        v = v.reshape(t, self.kv_heads, self.head_dim)
        out = paged_attention(q, k, v, self.layer_idx, batch, kv, self.head_dim**-0.5)
        return self.o_proj(out.reshape(t, self.q_size))


class Qwen3MLP(nn.Module):
    def __init__(self, cfg: Qwen3Config, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        sizes = (cfg.intermediate_size, cfg.intermediate_size)
        self.gate_up_proj = Linear(
            cfg.hidden_size, sum(sizes), shards=dict(zip(FUSED["gate_up_proj"], sizes, strict=True))
        )
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen3Config, layer_idx: int, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.self_attn = Qwen3Attention(cfg, layer_idx, dtype=dtype, device=device)
        self.mlp = Qwen3MLP(cfg, dtype=dtype, device=device)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, device=device)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: Batch, kv: PagedKV) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Model(nn.Module):
    def __init__(self, cfg: Qwen3Config, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.dtype = dtype
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            Qwen3DecoderLayer(cfg, i, dtype=dtype, device=device) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, device=device)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, device=device)

    def forward(self, batch: Batch, kv: PagedKV) -> torch.Tensor:
        """The final hidden states of every new token ``[T, hidden]`` (before the last norm)."""
        x = self.embed_tokens(batch.input_ids, self.dtype)
        cos, sin = self.rotary_emb(batch.positions, x.dtype)
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        for layer in self.layers:
            x = layer(x, cos, sin, batch, kv)
        return x


class Qwen3ForCausalLM(nn.Module):
    model_type = "qwen3"
    config_class = Qwen3Config

    def __init__(
        self, cfg: Qwen3Config, *, dtype: torch.dtype, device: torch.device, plan: WeightPlan | None = None
    ) -> None:
        """``dtype`` is the activations' (and the norms'); ``plan`` picks each matrix weight's
        method (default: dense in ``dtype``)."""
        super().__init__()
        self.config = cfg
        self.model = Qwen3Model(cfg, dtype=dtype, device=device)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size)
        tied = {"lm_head"} if cfg.tie_word_embeddings else set()
        bind_weights(self, plan or DensePlan(dtype), device, skip=tied)
        if tied:
            self.lm_head.share(self.model.embed_tokens)

    @property
    def tied_names(self) -> set[str]:
        """Checkpoint names that duplicate a tied weight (present in some checkpoints)."""
        return {"lm_head.weight"} if self.config.tie_word_embeddings else set()

    def state_spec(self) -> list[AttentionState]:
        """Every layer keeps keys and values (the paged KV cache)."""
        cfg = self.config
        return [AttentionState(cfg.num_key_value_heads, cfg.head_dim)] * cfg.num_hidden_layers

    @torch.inference_mode()
    def forward(self, batch: Batch, kv: PagedKV) -> torch.Tensor:
        """One engine step; float32 logits ``[S, vocab]`` of the rows in ``batch.sample_indices``."""
        h = self.model(batch, kv)
        h = self.model.norm(h.index_select(0, batch.sample_indices))
        return self.lm_head(h).float()


ARCHITECTURES = {"Qwen3ForCausalLM": Qwen3ForCausalLM}
