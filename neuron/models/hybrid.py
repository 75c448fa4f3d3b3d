"""The blocks the hybrid architectures share (Qwen3-Next, Qwen3.5 and their MoE variants): gated
DeltaNet layers (a fixed-size recurrent state per sequence) interleaved with gated full
attention (the paged KV cache), zero-centred RMSNorms, partial rotary embedding.

Exact math, checked against HF transformers by the parity tests (``modeling_qwen3_next.py``,
``modeling_qwen3_5.py``):

- every RMSNorm but the DeltaNet output's is zero-centred: ``x / rms(x) * (1 + w)`` in float32;
- full attention: ``q_proj`` holds per head ``head_dim`` query rows then ``head_dim`` gate rows;
  q and k get the zero-centred norm over each head, rotary on the first
  ``partial_rotary_factor`` of each head, and the attention output is scaled by
  ``sigmoid(gate)`` before ``o_proj``;
- gated DeltaNet: the projections as the checkpoint has them (Qwen3-Next's ``in_proj_qkvz`` and
  ``in_proj_ba`` grouped per key head, Qwen3.5's ``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``,
  ``in_proj_a``), a causal depthwise conv + SiLU over q|k|v, ``β = sigmoid(b)``,
  ``g = −exp(A_log)·softplus(a + dt_bias)``, the gated delta rule over l2-normalised q and k
  with a float32 state (``neuron.ops.gdn``), then ``w · norm(o) · silu(z)`` and ``out_proj``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import torch
import torch.nn.functional as F
from torch import nn

from neuron import ops
from neuron.models import AttentionState, BadCheckpoint, Batch, PagedKV, RecurrentState, UnsupportedModel
from neuron.models.layers import (
    CausalLM,
    DecoderConfig,
    Embedding,
    GatedMLP,
    Linear,
    RotaryEmbedding,
    SparseMoE,
    apply_rotary,
    empty_param,
    paged_attention,
    parse_decoder_config,
)

LINEAR, FULL = "linear_attention", "full_attention"


class HybridConfig(DecoderConfig, kw_only=True, frozen=True):
    """A hybrid's config.json (its ``text_config`` in a multimodal checkpoint), HF names."""

    layer_types: list[str] = msgspec.field(default_factory=list)
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel_dim: int = 4
    partial_rotary_factor: float = 1.0
    grouped_qkvz: bool = False  # Qwen3-Next: in_proj_qkvz / in_proj_ba, their rows grouped per key head
    # the value heads in llama.cpp's Qwen3.5 order (value head h reads key head h % key heads), as a
    # GGUF file keeps them: its tensors are used as they are stored (a config from a GGUF file says so)
    value_heads_tiled: bool = False

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


def parse_hybrid_config(
    cls: type[HybridConfig], raw: dict[str, Any], arch: str, *, grouped_qkvz: bool, always_renormalize: bool = False
) -> Any:
    """``raw`` (config.json, or a multimodal one's ``text_config``) as ``cls``;
    :class:`BadCheckpoint` naming a missing or inconsistent field."""
    if raw.get("text_config"):  # a multimodal checkpoint: its text side (the head's tying may sit outside)
        outer = raw
        raw = dict(raw["text_config"])
        if "tie_word_embeddings" in outer and "tie_word_embeddings" not in raw:
            raw["tie_word_embeddings"] = outer["tie_word_embeddings"]
    else:
        raw = dict(raw)
    moe = int(raw.get("num_experts", 0) or 0) > 0
    if moe:
        raw.setdefault("intermediate_size", 0)  # Qwen3.5-MoE has no dense MLP
        if always_renormalize:
            raw["norm_topk_prob"] = True
    base = parse_decoder_config(cls, raw, arch, qk_norm=True, qkv_bias=False, moe=moe)
    layers = base.num_hidden_layers
    types = raw.get("layer_types")
    if types is None:
        interval = int(raw.get("full_attention_interval", 4))
        types = [FULL if (i + 1) % interval == 0 else LINEAR for i in range(layers)]
    if len(types) != layers or any(t not in (LINEAR, FULL) for t in types):
        raise BadCheckpoint(
            f"config.json layer_types must name {layers} layers, each {LINEAR!r} or {FULL!r}; got {types!r}"
        )
    if FULL not in types:
        raise UnsupportedModel(f"{arch} without a full-attention layer is not supported by this neuron")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    try:
        fields = {
            "layer_types": list(types),
            "linear_num_key_heads": int(raw["linear_num_key_heads"]),
            "linear_num_value_heads": int(raw["linear_num_value_heads"]),
            "linear_key_head_dim": int(raw["linear_key_head_dim"]),
            "linear_value_head_dim": int(raw["linear_value_head_dim"]),
            "linear_conv_kernel_dim": int(raw.get("linear_conv_kernel_dim", 4)),
            "partial_rotary_factor": float(rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))),
            "grouped_qkvz": grouped_qkvz,
            "value_heads_tiled": bool(raw.get("value_heads_tiled", False)),
        }
    except KeyError as exc:
        raise BadCheckpoint(f"config.json lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise BadCheckpoint(f"config.json has a field of the wrong type: {exc}") from None
    cfg = msgspec.structs.replace(base, **fields)
    if cfg.linear_num_value_heads % cfg.linear_num_key_heads:
        raise BadCheckpoint(
            f"linear_num_value_heads = {cfg.linear_num_value_heads} is not a multiple of "
            f"linear_num_key_heads = {cfg.linear_num_key_heads}"
        )
    if cfg.rotary_dim <= 0 or cfg.rotary_dim % 2:
        raise BadCheckpoint(
            f"head_dim {cfg.head_dim} × partial_rotary_factor {cfg.partial_rotary_factor} "
            "must be a positive even number"
        )
    if not 2 <= cfg.linear_conv_kernel_dim <= 8:
        raise UnsupportedModel(f"{arch} with linear_conv_kernel_dim = {cfg.linear_conv_kernel_dim} is not supported")
    return cfg


class ZeroCentredRMSNorm(nn.Module):
    """``x / rms(x) · (1 + w)``, all in float32, cast back once (the weight is stored centred on 0)."""

    def __init__(self, dim: int, eps: float, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = empty_param(dim, dtype=dtype, device=device)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return (h * (1.0 + self.weight.float())).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """The DeltaNet output norm: ``w · (x / rms(x)) · silu(z)``, normalised in float32 and cast back
    before ``w`` (as HF does), the gate in float32."""

    def __init__(self, dim: int, eps: float, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = empty_param(dim, dtype=dtype, device=device)
        self.eps = eps

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return ((self.weight * h) * F.silu(z.float())).to(x.dtype)


def apply_partial_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary on the first ``cos.shape[-1]`` dims of each head, the rest passed through."""
    rd = cos.shape[-1]
    if rd == x.shape[-1]:
        return apply_rotary(x, cos, sin)
    return torch.cat((apply_rotary(x[..., :rd], cos, sin), x[..., rd:]), dim=-1)


class GatedAttention(nn.Module):
    """Full attention with an output gate; ``kv_layer`` is its index among the KV pool's layers."""

    def __init__(self, cfg: HybridConfig, kv_layer: int, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.kv_layer = kv_layer
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_size, self.kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shards = {"q_proj": 2 * self.q_size, "k_proj": self.kv_size, "v_proj": self.kv_size}
        self.qkv_proj = Linear(cfg.hidden_size, sum(shards.values()), shards=shards)
        self.o_proj = Linear(self.q_size, cfg.hidden_size)
        self.q_norm = ZeroCentredRMSNorm(self.head_dim, cfg.rms_norm_eps, dtype=dtype, device=device)
        self.k_norm = ZeroCentredRMSNorm(self.head_dim, cfg.rms_norm_eps, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: Batch, kv: PagedKV) -> torch.Tensor:
        t = x.shape[0]
        qg, k, v = self.qkv_proj(x).split((2 * self.q_size, self.kv_size, self.kv_size), dim=-1)
        q, gate = qg.reshape(t, self.heads, 2 * self.head_dim).chunk(2, dim=-1)
        q = apply_partial_rotary(self.q_norm(q), cos, sin)
        k = apply_partial_rotary(self.k_norm(k.reshape(t, self.kv_heads, self.head_dim)), cos, sin)
        v = v.reshape(t, self.kv_heads, self.head_dim)
        out = paged_attention(q, k, v, self.kv_layer, batch, kv, self.head_dim**-0.5)
        out = out.reshape(t, self.q_size) * torch.sigmoid(gate.reshape(t, self.q_size))
        return self.o_proj(out)


class DepthwiseConv(nn.Module):
    """Holds the causal conv's taps as the checkpoint stores them: ``weight`` ``[channels, 1, kernel]``."""

    def __init__(self, channels: int, kernel: int, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = empty_param(channels, 1, kernel, dtype=dtype, device=device)


def grouped_qkvz_order(key_heads: int, value_heads: int, key_dim: int, value_dim: int) -> torch.Tensor:
    """Where Qwen3-Next's grouped projection rows go: the index, into ``in_proj_qkvz`` then
    ``in_proj_ba`` outputs, of each column of Qwen3.5's layout ``[Q | K | V | Z | b | a]``
    (per key head ``g`` the checkpoint holds ``q, k, v, z`` of its ``r`` value heads, then
    ``b, a``)."""
    r = value_heads // key_heads
    stride = 2 * key_dim + 2 * r * value_dim
    parts: list[list[int]] = [[], [], [], []]
    for g in range(key_heads):
        base = g * stride
        parts[0].extend(range(base, base + key_dim))
        parts[1].extend(range(base + key_dim, base + 2 * key_dim))
        parts[2].extend(range(base + 2 * key_dim, base + 2 * key_dim + r * value_dim))
        parts[3].extend(range(base + 2 * key_dim + r * value_dim, base + stride))
    ba = key_heads * stride
    b = [ba + g * 2 * r + j for g in range(key_heads) for j in range(r)]
    a = [ba + g * 2 * r + r + j for g in range(key_heads) for j in range(r)]
    return torch.tensor([i for part in parts for i in part] + b + a, dtype=torch.long)


class GatedDeltaNet(nn.Module):
    """A linear-attention layer; ``state_layer`` is its index among the state pool's layers."""

    def __init__(self, cfg: HybridConfig, state_layer: int, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.state_layer = state_layer
        self.key_heads, self.value_heads = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        self.key_head_dim, self.value_head_dim = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        self.value_heads_tiled = cfg.value_heads_tiled
        self.key_dim = self.key_heads * self.key_head_dim
        self.value_dim = self.value_heads * self.value_head_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim
        hv = self.value_heads
        if cfg.grouped_qkvz:
            shards = {"in_proj_qkvz": self.conv_dim + self.value_dim, "in_proj_ba": 2 * hv}
            order = grouped_qkvz_order(self.key_heads, hv, self.key_head_dim, self.value_head_dim)
            self.register_buffer("order", order.to(device), persistent=False)
        else:
            shards = {"in_proj_qkv": self.conv_dim, "in_proj_z": self.value_dim, "in_proj_b": hv, "in_proj_a": hv}
            self.order = None
        self.in_proj = Linear(cfg.hidden_size, sum(shards.values()), shards=shards)
        self.conv1d = DepthwiseConv(self.conv_dim, cfg.linear_conv_kernel_dim, dtype=dtype, device=device)
        self.dt_bias = empty_param(hv, dtype=torch.float32, device=device)  # float32 whatever the model's dtype
        self.A_log = empty_param(hv, dtype=torch.float32, device=device)
        self.norm = GatedRMSNorm(self.value_head_dim, cfg.rms_norm_eps, dtype=dtype, device=device)
        self.out_proj = Linear(self.value_dim, cfg.hidden_size)

    def state(self) -> RecurrentState:
        kernel = self.conv1d.weight.shape[-1]
        return RecurrentState(self.conv_dim, kernel, self.value_heads, self.key_head_dim, self.value_head_dim)

    def forward(self, x: torch.Tensor, batch: Batch, kv: PagedKV) -> torch.Tensor:
        t = x.shape[0]
        proj = self.in_proj(x)
        if self.order is not None:
            proj = proj.index_select(-1, self.order)
        hv = self.value_heads
        mixed, z, b, a = proj.split((self.conv_dim, self.value_dim, hv, hv), dim=-1)
        states = kv.states
        if states is None or batch.state_slots is None:
            raise RuntimeError("a gated DeltaNet layer needs the engine's state pool and the batch's state slots")
        slots, fresh, starts = batch.state_slots, batch.fresh_states(), batch.query_starts
        taps = self.conv1d.weight.view(self.conv_dim, -1)
        conv = ops.causal_conv1d(mixed.contiguous(), taps, states.conv[self.state_layer], starts, slots, fresh)
        g, beta = ops.gdn_gating(a.contiguous(), b.contiguous(), self.A_log, self.dt_bias)
        o = ops.gated_delta_rule(
            conv,
            g,
            beta,
            states.ssm[self.state_layer],
            starts,
            slots,
            fresh,
            key_heads=self.key_heads,
            key_dim=self.key_head_dim,
            value_dim=self.value_head_dim,
            value_heads_tiled=self.value_heads_tiled,
        )
        o = self.norm(o, z.reshape(t, hv, self.value_head_dim))
        return self.out_proj(o.reshape(t, self.value_dim))


class HybridLayer(nn.Module):
    def __init__(self, cfg: HybridConfig, layer: int, index: int, *, dtype: torch.dtype, device: torch.device) -> None:
        """``index``: the layer's place among its kind (KV pool layers, or state pool layers)."""
        super().__init__()
        self.layer_type = cfg.layer_types[layer]
        if self.layer_type == LINEAR:
            self.linear_attn = GatedDeltaNet(cfg, index, dtype=dtype, device=device)
        else:
            self.self_attn = GatedAttention(cfg, index, dtype=dtype, device=device)
        self.mlp = SparseMoE(cfg) if cfg.is_moe_layer(layer) else GatedMLP(cfg)
        self.input_layernorm = ZeroCentredRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, device=device)
        self.post_attention_layernorm = ZeroCentredRMSNorm(
            cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, device=device
        )

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: Batch, kv: PagedKV) -> torch.Tensor:
        h = self.input_layernorm(x)
        if self.layer_type == LINEAR:
            x = x + self.linear_attn(h, batch, kv)
        else:
            x = x + self.self_attn(h, cos, sin, batch, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class HybridModel(nn.Module):
    def __init__(self, cfg: HybridConfig, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.dtype = dtype
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        counts = {LINEAR: 0, FULL: 0}
        layers = []
        for i, kind in enumerate(cfg.layer_types):
            layers.append(HybridLayer(cfg, i, counts[kind], dtype=dtype, device=device))
            counts[kind] += 1
        self.layers = nn.ModuleList(layers)
        self.norm = ZeroCentredRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, device=device)
        self.rotary_emb = RotaryEmbedding(cfg.rotary_dim, cfg.rope_theta, device=device)

    def forward(self, batch: Batch, kv: PagedKV) -> torch.Tensor:
        x = self.embed_tokens(batch.input_ids, self.dtype)
        cos, sin = self.rotary_emb(batch.positions, x.dtype)
        cos, sin = cos[:, None], sin[:, None]
        for layer in self.layers:
            x = layer(x, cos, sin, batch, kv)
        return x


class HybridCausalLM(CausalLM):
    """A hybrid decoder with its head; its state spec mixes KV-cache and recurrent layers."""

    decoder_class = HybridModel
    skip_prefixes = ("mtp.", "model.visual.")  # multi-token prediction, the vision tower: not served

    def state_spec(self) -> list[AttentionState | RecurrentState]:
        cfg = self.config
        out: list[AttentionState | RecurrentState] = []
        for layer in self.decoder.layers:
            if layer.layer_type == LINEAR:
                out.append(layer.linear_attn.state())
            else:
                out.append(AttentionState(cfg.num_key_value_heads, cfg.head_dim))
        return out
