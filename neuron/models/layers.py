"""Building blocks shared by the architectures: RMSNorm, rotary embedding, a weight-only Linear
with an optional fused layout and the token embedding (both holding their weight through a
weight method: dense or ggml blocks), and causal attention through the paged KV cache.

Numerics follow HF transformers (checked by the parity tests): RMSNorm normalises in float32
and casts back before the weight; RoPE tables are computed in float32 and cast to the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgspec
import torch
import torch.nn.functional as F
from torch import nn

from neuron import ops
from neuron.models import AttentionState, BadCheckpoint, Batch, PagedKV, UnsupportedModel
from neuron.models.methods import DensePlan, Method, Weight, WeightPlan
from neuron.ops.quant import QuantTensor


def empty_param(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    """An uninitialised parameter: every weight is filled by the loader, so no time goes to init."""
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = empty_param(dim, dtype=dtype, device=device)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and self.weight.dtype == torch.bfloat16 and x.device.type == "cpu":
            return ops.rms_norm_bf16(x, self.weight, self.eps)
        h = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * h.to(x.dtype)


def _adoptable(w: Weight, src: Weight) -> bool:
    """``src`` can serve as the storage ``w`` was allocated as: ggml blocks of its type, shape and device."""
    return (
        isinstance(src, QuantTensor)
        and isinstance(w, QuantTensor)
        and src.qtype == w.qtype
        and src.shape == w.shape
        and src.device == w.device
    )


@dataclass
class Part:
    """A run of a Linear's rows held by one method: rows ``first : first + rows`` of the output."""

    first: int
    rows: int
    method: Method
    weight: Weight


class Linear(nn.Module):
    """``y = x @ W.T`` with no bias. ``shards`` names the row blocks of a fused weight (q/k/v),
    so the loader can fill each block from its own checkpoint tensor.

    A Linear is built without storage; :meth:`bind` gives it a method per shard (from the
    model's :class:`~neuron.models.methods.WeightPlan`) and allocates. Neighbouring shards of one
    method share one storage, so a fused weight whose shards agree is one matrix product; shards
    of different methods (a GGUF mix: ``v_proj`` at Q6_K beside ``q_proj`` at Q4_K) are one
    product each, concatenated.
    """

    def __init__(
        self, in_features: int, out_features: int, *, shards: dict[str, int] | None = None, bias: bool = False
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.has_bias = bias
        self.bias: nn.Parameter | None = None
        self.shards = shards or {}
        self.parts: list[Part] = []
        self.tied = False  # the weight is a tied embedding's table: the embedding is what gets filled

    def shard_rows(self) -> list[tuple[str | None, int, int]]:
        """(shard name or None, first row, rows) of each block the loader fills."""
        if not self.shards:
            return [(None, 0, self.out_features)]
        out, first = [], 0
        for name, rows in self.shards.items():
            out.append((name, first, rows))
            first += rows
        return out

    def bind(self, methods: list[Method], device: torch.device, bias_dtype: torch.dtype = torch.float32) -> None:
        """Allocates storage: ``methods[i]`` for the i-th block of :meth:`shard_rows` (and the
        bias, dense in ``bias_dtype``)."""
        if self.has_bias:
            self.bias = empty_param(self.out_features, dtype=bias_dtype, device=device)
        blocks = self.shard_rows()
        if len(methods) != len(blocks):
            raise ValueError(f"{len(blocks)} weight blocks need {len(blocks)} methods, got {len(methods)}")
        runs: list[list] = []  # [first, rows, method]
        for (_, first, rows), method in zip(blocks, methods, strict=True):
            if runs and runs[-1][2] == method:
                runs[-1][1] += rows
            else:
                runs.append([first, rows, method])
        self.parts = [Part(f, r, m, m.allocate(r, self.in_features, device)) for f, r, m in runs]
        self._expose()

    def share(self, other: Embedding) -> None:
        """Uses ``other``'s table as this weight (tied embeddings): one storage, one method."""
        self.tied = True
        other.sharers.append(self)
        self.share_again(other)

    def share_again(self, other: Embedding) -> None:
        """Follows ``other``'s table again (it took a new storage: a GGUF file's memory map)."""
        self.parts = [Part(0, self.out_features, other.method, other.weight)]
        self._expose()

    def _expose(self) -> None:
        # torch sees the storage (memory reports, ``.to``): a dense weight as ``weight``, ggml
        # blocks as buffers ``qweight<i>``
        for i, part in enumerate(self.parts):
            if isinstance(part.weight, nn.Parameter):  # shared with a tied embedding
                self.weight = part.weight
            elif isinstance(part.weight, torch.Tensor):
                if len(self.parts) == 1:
                    self.weight = nn.Parameter(part.weight, requires_grad=False)
                    part.weight = self.weight
                else:
                    self.register_buffer(f"dweight{i}", part.weight, persistent=False)
            else:
                self.register_buffer(f"qweight{i}", part.weight.data, persistent=False)

    def fill(self, first: int, rows: int, src: Weight) -> None:
        """Fills output rows ``first : first + rows`` (one shard) from a checkpoint tensor. ggml
        blocks of the part's own type that make up the whole part are kept as they come (a GGUF
        file's memory map), not copied."""
        for part in self.parts:
            if part.first <= first and first + rows <= part.first + part.rows:
                if part.first == first and part.rows == rows and _adoptable(part.weight, src):
                    part.weight = src
                    self._expose()
                    return
                with torch.no_grad():
                    part.method.fill(part.method.rows(part.weight, first - part.first, rows), src)
                return
        raise ValueError(f"rows {first}:{first + rows} are not one part of this Linear")

    @property
    def nbytes(self) -> int:
        return sum(p.method.nbytes(p.rows, self.in_features) for p in self.parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.parts) == 1:
            part = self.parts[0]
            y = part.method.apply(part.weight, x)
        else:
            y = torch.cat([p.method.apply(p.weight, x) for p in self.parts], dim=-1)
        return y if self.bias is None else y + self.bias


class Embedding(nn.Module):
    """The token table ``[vocab, dim]``: dense, or ggml blocks read a row at a time (the table is
    never dequantized whole). :meth:`bind` allocates it, as for a Linear."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.method: Method | None = None
        self.weight: Weight | None = None
        self.sharers: list[Linear] = []  # tied heads reading this table

    def bind(self, method: Method, device: torch.device) -> None:
        self.method = method
        weight = method.allocate(self.num_embeddings, self.dim, device)
        if isinstance(weight, torch.Tensor):
            self.weight = nn.Parameter(weight, requires_grad=False)
        else:
            self.weight = weight
            self.register_buffer("qweight", weight.data, persistent=False)

    def fill(self, src: Weight) -> None:
        if _adoptable(self.weight, src):
            self.weight = src  # a GGUF file's blocks, kept in its memory map
            self.register_buffer("qweight", src.data, persistent=False)
            for head in self.sharers:
                head.share_again(self)
            return
        with torch.no_grad():
            self.method.fill(self.weight, src)

    @property
    def nbytes(self) -> int:
        return self.method.nbytes(self.num_embeddings, self.dim)

    def forward(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.method.embed(self.weight, ids, dtype)


def bind_weights(
    model: nn.Module, plan: WeightPlan, device: torch.device, *, skip: set[str] | frozenset[str] = frozenset()
) -> None:
    """Gives every Linear and Embedding of ``model`` the method ``plan`` picks for each of its
    checkpoint tensors (by name and shape) and allocates it; modules named in ``skip`` (a tied
    head) are left to the architecture."""
    for name, mod in model.named_modules():
        if name in skip:
            continue
        if isinstance(mod, Linear):
            parent = name.rsplit(".", 1)[0]
            methods = [
                plan.method(f"{parent}.{shard}.weight" if shard else f"{name}.weight", (rows, mod.in_features))
                for shard, _, rows in mod.shard_rows()
            ]
            mod.bind(methods, device, plan.dtype)
        elif isinstance(mod, Embedding):
            mod.bind(plan.method(f"{name}.weight", (mod.num_embeddings, mod.dim)), device)


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE over the full head dimension: unscaled, or Llama 3's frequency scaling
    (``scaling``: HF's ``rope_scaling`` of type ``llama3``)."""

    def __init__(
        self,
        head_dim: int,
        theta: float,
        *,
        device: torch.device,
        scaling: dict[str, Any] | None = None,
        freq_factors: list[float] | None = None,
    ) -> None:
        super().__init__()
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float32) / head_dim
        inv_freq = 1.0 / (theta**exponent)
        if scaling:
            inv_freq = llama3_inv_freq(inv_freq, scaling)
        if freq_factors is not None:
            inv_freq = inv_freq / torch.tensor(freq_factors, dtype=torch.float32, device=device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1's scaled frequencies: long wavelengths divided by ``factor``, short ones kept,
    the band between blended (as transformers computes them)."""
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, blended, scaled)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, head_dim]; cos/sin: [T, 1, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layer: int,
    batch: Batch,
    kv: PagedKV,
    scale: float,
) -> torch.Tensor:
    """Causal attention of a batch's new tokens over each one's own sequence, through the paged
    KV cache. ``q`` is ``[T, heads, head_dim]``, ``k``/``v`` ``[T, kv_heads, head_dim]`` (stored
    into the cache first); the result is ``[T, heads, head_dim]``.

    On the CPU the sequences that add one token each (decodes) go through one call of our
    kernel, which reads their blocks in place; a sequence with no earlier tokens attends to its
    chunk alone (no cache read); any other reads its keys and values through its block table.
    """
    kv.write(layer, batch.slot_mapping, k, v)
    heads, kv_heads = q.shape[1], k.shape[1]
    plan = batch.decode_plan()
    native = q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16)
    if native and plan.everyone:  # every sequence adds one token: one call reads their blocks in place
        k_pool, v_pool = kv.blocks(layer)
        return ops.paged_decode(q, k_pool, v_pool, plan.tables, plan.lens, scale)
    out = torch.empty_like(q)
    todo = range(batch.num_seqs)
    if native and plan.seqs:
        k_pool, v_pool = kv.blocks(layer)
        part = ops.paged_decode(q.index_select(0, plan.rows), k_pool, v_pool, plan.tables, plan.lens, scale)
        out.index_copy_(0, plan.rows, part)
        todo = plan.others
    for i in todo:
        s, e = batch.query_starts[i], batch.query_starts[i + 1]
        new, length = e - s, batch.context_lens[i]
        if length == new:
            keys, values, mask = k[s:e], v[s:e], None
        else:
            keys, values = kv.gather(layer, batch.block_tables[i], length)
            mask = None
            if new > 1:  # query j sits at position length - new + j and sees keys up to there
                pos = torch.arange(length - new, length, device=q.device)
                mask = torch.arange(length, device=q.device)[None, :] <= pos[:, None]
        o = F.scaled_dot_product_attention(
            q[s:e].transpose(0, 1)[None],
            keys.transpose(0, 1)[None],
            values.transpose(0, 1)[None],
            attn_mask=mask,
            is_causal=mask is None and length == new and new > 1,
            scale=scale,
            enable_gqa=heads != kv_heads,
        )
        out[s:e] = o[0].transpose(0, 1)
    return out


# --- the dense decoder (Qwen3, Qwen2, Llama): one set of modules, options per architecture -----

FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


class DecoderConfig(msgspec.Struct, kw_only=True, frozen=True):
    """The fields of config.json a dense decoder uses (HF names, defaults resolved), and the
    options that tell the architectures apart."""

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
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Qwen3)
    qkv_bias: bool = False  # q/k/v projections have a bias (Qwen2)
    rope_scaling: dict[str, Any] | None = None  # Llama 3's frequency scaling
    rope_freq_factors: list[float] | None = None  # the same as a GGUF file stores it: divisors per frequency
    # mixture of experts (Qwen3-MoE): which layers route, and how
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = []
    shared_expert_intermediate_size: int = 0  # an always-on expert beside the routed ones, with a sigmoid gate

    def is_moe_layer(self, layer: int) -> bool:
        return (
            self.num_experts > 0
            and layer not in self.mlp_only_layers
            and (layer + 1) % max(1, self.decoder_sparse_step) == 0
        )


def parse_decoder_config(
    cls: type[DecoderConfig],
    raw: dict[str, Any],
    arch: str,
    *,
    qk_norm: bool,
    qkv_bias: bool,
    rope_types: tuple[str, ...] = ("default",),
    moe: bool = False,
) -> Any:
    """One architecture's config.json as ``cls``: :class:`UnsupportedModel` for a feature this
    neuron does not implement, :class:`BadCheckpoint` for a missing or mistyped field."""

    def unsupported(what: str) -> UnsupportedModel:
        return UnsupportedModel(f"{arch} with {what} is not supported by this neuron")

    if not qkv_bias and raw.get("attention_bias"):
        raise unsupported("attention_bias = true")
    if raw.get("mlp_bias"):
        raise unsupported("mlp_bias = true")
    if raw.get("use_sliding_window"):
        raise unsupported("use_sliding_window = true")
    if raw.get("hidden_act", "silu") != "silu":
        raise unsupported(f"hidden_act = {raw['hidden_act']!r}")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
    if rope_type not in rope_types:
        raise unsupported(f"rope type {rope_type!r}")
    theta = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
    try:
        heads = int(raw["num_attention_heads"])
        scaling = None
        if rope_type == "llama3":
            keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
            scaling = {k: float(rope[k]) for k in keys}
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
            qk_norm=qk_norm,
            qkv_bias=qkv_bias or bool(raw.get("attention_bias", False)),
            rope_scaling=scaling,
            rope_freq_factors=[float(f) for f in raw["rope_freq_factors"]] if raw.get("rope_freq_factors") else None,
            **(_moe_fields(raw) if moe else {}),
        )
    except KeyError as exc:
        raise BadCheckpoint(f"config.json lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise BadCheckpoint(f"config.json has a field of the wrong type: {exc}") from None


def _moe_fields(raw: dict[str, Any]) -> dict[str, Any]:
    # transformers 5 writes num_local_experts; released checkpoints say num_experts
    experts = int(raw["num_experts"] if "num_experts" in raw else raw["num_local_experts"])
    per_token = int(raw["num_experts_per_tok"])
    if not 0 < per_token <= experts:
        raise BadCheckpoint(f"num_experts_per_tok = {per_token} must be between 1 and num_experts = {experts}")
    return {
        "num_experts": experts,
        "num_experts_per_tok": per_token,
        "moe_intermediate_size": int(raw["moe_intermediate_size"]),
        "norm_topk_prob": bool(raw.get("norm_topk_prob", False)),
        "decoder_sparse_step": int(raw.get("decoder_sparse_step", 1) or 1),
        "mlp_only_layers": [int(i) for i in raw.get("mlp_only_layers") or []],
        "shared_expert_intermediate_size": int(raw.get("shared_expert_intermediate_size", 0) or 0),
    }


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer_idx: int, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_size, self.kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        sizes = (self.q_size, self.kv_size, self.kv_size)
        shards = dict(zip(FUSED["qkv_proj"], sizes, strict=True))
        self.qkv_proj = Linear(cfg.hidden_size, sum(sizes), shards=shards, bias=cfg.qkv_bias)
        self.o_proj = Linear(self.q_size, cfg.hidden_size)
        self.q_norm = self.k_norm = None
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, dtype=dtype, device=device)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: Batch, kv: PagedKV) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q, k = q.reshape(t, self.heads, self.head_dim), k.reshape(t, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        v = v.reshape(t, self.kv_heads, self.head_dim)
        out = paged_attention(q, k, v, self.layer_idx, batch, kv, self.head_dim**-0.5)
        return self.o_proj(out.reshape(t, self.q_size))


class GatedMLP(nn.Module):
    def __init__(self, cfg: DecoderConfig, intermediate_size: int | None = None) -> None:
        super().__init__()
        inter = intermediate_size or cfg.intermediate_size
        sizes = (inter, inter)
        shards = dict(zip(FUSED["gate_up_proj"], sizes, strict=True))
        self.gate_up_proj = Linear(cfg.hidden_size, sum(sizes), shards=shards)
        self.down_proj = Linear(inter, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class SparseMoE(nn.Module):
    """Qwen3-MoE's block: a router (``gate``, kept dense) scores the experts, each token goes to
    its ``num_experts_per_tok`` best (softmax in float32, then top-k, renormalized when
    ``norm_topk_prob``), and only the experts some token chose run, each over its own tokens at
    once; every expert is a gated MLP holding its weights through weight methods (quantized
    experts included). HF names: ``mlp.gate.weight``, ``mlp.experts.{i}.{gate,up,down}_proj``.

    Qwen3-Next and Qwen3.5-MoE add a shared expert every token goes through, scaled by
    ``sigmoid(shared_expert_gate(x))`` (``mlp.shared_expert.*``, ``mlp.shared_expert_gate``)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.top_k, self.norm_topk_prob = cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.gate = Linear(cfg.hidden_size, cfg.num_experts)
        self.experts = nn.ModuleList(GatedMLP(cfg, cfg.moe_intermediate_size) for _ in range(cfg.num_experts))
        self.shared_expert = self.shared_expert_gate = None
        if cfg.shared_expert_intermediate_size:
            self.shared_expert = GatedMLP(cfg, cfg.shared_expert_intermediate_size)
            self.shared_expert_gate = Linear(cfg.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # [T, k]
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(x)
        flat = chosen.reshape(-1)
        order = torch.argsort(flat, stable=True)  # the (token, slot) pairs grouped by expert
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()
        tokens = order // self.top_k
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            pairs = order[start : start + count]
            rows = tokens[start : start + count]
            start += count
            y = self.experts[expert](x.index_select(0, rows))
            out.index_add_(0, rows, y * weights.reshape(-1)[pairs, None])
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer_idx: int, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx, dtype=dtype, device=device)
        self.mlp = SparseMoE(cfg) if cfg.is_moe_layer(layer_idx) else GatedMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, device=device)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: Batch, kv: PagedKV) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    def __init__(self, cfg: DecoderConfig, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.dtype = dtype
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, i, dtype=dtype, device=device) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, device=device)
        self.rotary_emb = RotaryEmbedding(
            cfg.head_dim, cfg.rope_theta, device=device, scaling=cfg.rope_scaling, freq_factors=cfg.rope_freq_factors
        )

    def forward(self, batch: Batch, kv: PagedKV) -> torch.Tensor:
        """The final hidden states of every new token ``[T, hidden]`` (before the last norm)."""
        x = self.embed_tokens(batch.input_ids, self.dtype)
        cos, sin = self.rotary_emb(batch.positions, x.dtype)
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        for layer in self.layers:
            x = layer(x, cos, sin, batch, kv)
        return x


class CausalLM(nn.Module):
    """A decoder with its head: the model contract's ``forward(batch, kv) -> logits``.
    Subclasses name ``model_type`` and ``config_class``, and may change the decoder
    (``decoder_class``: a module with ``embed_tokens``, ``norm`` and ``forward(batch, kv)``),
    put it where a multimodal checkpoint keeps it (``wrapped``: at ``model.language_model``,
    the head at ``lm_head``) and name checkpoint tensors to leave unread (``skip_prefixes``: a
    vision tower, multi-token-prediction layers)."""

    model_type = "?"
    config_class: type = DecoderConfig
    decoder_class: type = DecoderModel
    wrapped = False
    skip_prefixes: tuple[str, ...] = ()

    def __init__(
        self, cfg: DecoderConfig, *, dtype: torch.dtype, device: torch.device, plan: WeightPlan | None = None
    ) -> None:
        """``dtype`` is the activations' (and the norms'); ``plan`` picks each matrix weight's
        method (default: dense in ``dtype``)."""
        super().__init__()
        self.config = cfg
        decoder = self.decoder_class(cfg, dtype=dtype, device=device)
        if self.wrapped:
            self.model = nn.Module()
            self.model.language_model = decoder
        else:
            self.model = decoder
        object.__setattr__(self, "decoder", decoder)  # a plain reference: its weights keep the names above
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size)
        tied = {"lm_head"} if cfg.tie_word_embeddings else set()
        bind_weights(self, plan or DensePlan(dtype), device, skip=tied)
        if tied:
            self.lm_head.share(decoder.embed_tokens)

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
        h = self.decoder(batch, kv)
        h = self.decoder.norm(h.index_select(0, batch.sample_indices))
        return self.lm_head(h).float()
