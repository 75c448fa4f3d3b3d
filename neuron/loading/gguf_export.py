"""``neuron quantize``: an HF-layout model -> one GGUF file that llama.cpp loads (its metadata,
tokenizer and chat template), each tensor quantized by the same plan as an in-situ load, so the
file holds the bytes a ``quant`` load of the safetensors would (or, ``f32`` / ``f16`` / ``bf16``,
every matrix in that float type). Norms, 1-D tensors, conv taps, MoE routers and the shared
expert's gate are float32 whatever the type, as llama.cpp's converter keeps them.

The hybrids (``qwen3next``, ``qwen35``, ``qwen35moe``) are written as llama.cpp's converter
writes them (``conversion/qwen.py``; ``neuron.loading.gguf`` lists the conversions and undoes
them): ``1 + w`` in the zero-centred norms, ``ssm_a = -exp(A_log)``, squeezed conv taps,
Qwen3-Next's ``in_proj_qkvz`` split into ``attn_qkv`` and ``attn_gate``, Qwen3.5's value heads
tiled, the layer kinds as ``full_attention_interval`` and ``attention.recurrent_layers``; a
multimodal Qwen3.5 writes its text side (the vision tower goes to an mmproj file llama.cpp
makes on its own), MTP layers are left out. What llama.cpp's loaders cannot take (DeltaNet key
and value heads of different sizes, a Qwen3-Next layer without experts) is refused.

Tensors are quantized and written one at a time (the header first, from the plan's sizes), so
memory stays at about one tensor whatever the model's size.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from neuron.loading.gguf import (
    FLOAT32_MATRICES,
    GGUF_ARCHS,
    HYBRID_ARCHS,
    HYBRID_LAYER_NAMES,
    LAYER_NAMES,
    PERMUTED,
    ROPE_FREQS,
    DeltaNetLayout,
    gguf_name,
    permute_rows,
    pre_tokenizer_name,
)
from neuron.loading.isq import IsqPlan, isq_types
from neuron.loading.safetensors import Checkpoint
from neuron.models import BadCheckpoint, BadQuant, UnsupportedModel, architecture_for
from neuron.models.hybrid import FULL, LINEAR
from neuron.models.methods import Dense, Quant
from neuron.ops.quant import GGML_TYPE_IDS, quantize

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp token types
FLOAT_GGML = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 30}
FLOAT_EXPORTS = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}  # matrices unquantized
MROPE_SECTIONS = (11, 11, 10, 0)  # llama.cpp's default for Qwen3.5 when the config names none
# the hybrids: HF name (in a layer) -> llama.cpp's (the dense decoder's, then the hybrids' own)
HYBRID_GGUF_NAMES = {
    **{hf: g for g, hf in LAYER_NAMES.items() if g != "ffn_norm.weight"},
    **{hf: g for g, hf in HYBRID_LAYER_NAMES.items()},
}


@dataclass(frozen=True)
class Exported:
    path: Path
    tensors: int
    bytes: int
    types: dict[str, int]  # tensors per stored type
    secs: float


def _file_type(quant: str) -> int | None:
    from gguf import LlamaFileType

    name = quant.upper()
    for candidate in (f"MOSTLY_{name}", f"MOSTLY_{name}_S", f"ALL_{name}"):
        if candidate in LlamaFileType.__members__:
            return int(LlamaFileType[candidate])
    return None


def _tokenizer_metadata(writer, src: Path, vocab_size: int) -> None:
    path = src / "tokenizer.json"
    if not path.is_file():
        raise BadCheckpoint("the model has no tokenizer.json to put in the GGUF file")
    tj = json.loads(path.read_text())
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedModel(f"tokenizer model {model.get('type')!r}: the export writes byte-level BPE only")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {t["id"]: t for t in tj.get("added_tokens") or []}
    for i, t in added.items():
        vocab[t["content"]] = i
    if max(vocab.values(), default=-1) >= vocab_size:
        raise BadCheckpoint(f"the tokenizer has ids past the model's vocab_size {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [UNUSED] * vocab_size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = NORMAL
    for i, t in added.items():
        types[i] = CONTROL if t.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tj))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    config = src / "tokenizer_config.json"
    cfg = json.loads(config.read_text()) if config.is_file() else {}
    gen_path = src / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}

    def token_id(value) -> int | None:
        value = value.get("content") if isinstance(value, dict) else value
        return vocab.get(value) if isinstance(value, str) else None

    eos = token_id(cfg.get("eos_token"))
    if eos is None:
        ids = gen.get("eos_token_id")
        eos = ids[0] if isinstance(ids, list) and ids else ids if isinstance(ids, int) else None
    if eos is not None:
        writer.add_eos_token_id(int(eos))
    bos = token_id(cfg.get("bos_token"))
    if bos is not None:
        writer.add_bos_token_id(int(bos))
    pad = token_id(cfg.get("pad_token"))
    if pad is not None:
        writer.add_pad_token_id(int(pad))
    writer.add_add_bos_token(bool(cfg.get("add_bos_token", False)))
    jinja = src / "chat_template.jinja"
    template = jinja.read_text() if jinja.is_file() else cfg.get("chat_template")
    if isinstance(template, str):
        writer.add_chat_template(template)


def _expert_order(name: str) -> tuple:
    """Checkpoint order, with an MoE layer's experts by their number (so they stack in order)."""
    m = re.fullmatch(r"(.*\.experts\.)(\d+)(\..*)", name)
    return (m.group(1), m.group(3), int(m.group(2))) if m else (name, "", -1)


def _rope_factors(cfg) -> np.ndarray | None:
    """The divisor of each RoPE frequency that Llama 3's scaling applies (llama.cpp's rope_freqs)."""
    if not cfg.rope_scaling:
        return None
    from neuron.models.layers import llama3_inv_freq

    exponent = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim
    base = 1.0 / (cfg.rope_theta**exponent)
    return (base / llama3_inv_freq(base, cfg.rope_scaling)).numpy().astype(np.float32)


# --- what each tensor of the file is made of --------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """One tensor of the file: llama.cpp's name, the HF tensors it is made of (an MoE layer's
    experts, stacked in order; one otherwise), the shape one of them is stored in (HF order), the
    conversion of HF's values (None: as they are), and whether the plan quantizes it (else it is
    float32, as llama.cpp keeps norms, vectors and conv taps)."""

    gguf: str
    sources: list[str]
    shape: tuple[int, ...]
    make: Callable[[torch.Tensor], torch.Tensor] | None = None
    matrix: bool = True


def _pick_rows(w: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return w if rows is None else w.index_select(0, rows)


def _pick_cols(w: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
    return w if cols is None else w.index_select(1, cols)


def _plus_one(w: torch.Tensor) -> torch.Tensor:
    """llama.cpp's zero-centred norm weight: ``1 + w`` (its RMSNorm multiplies by the weight)."""
    return w.float() + 1.0


def _ssm_a(a_log: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return _pick_rows(-torch.exp(a_log.float()), rows)


def _conv_rows(w: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """HF's ``[channels, 1, kernel]`` conv squeezed to llama.cpp's ``[channels, kernel]``, channels reordered."""
    return _pick_rows(w.squeeze(1), rows)


def _plain_unit(name: str, shape: tuple[int, ...], cfg, arch: str) -> _Unit:
    """A tensor of the dense archs and qwen3moe: renamed, Llama's q/k rows permuted."""
    make = None
    if arch == "llama" and any(name.endswith(suffix) for suffix in PERMUTED):
        heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
        make = partial(permute_rows, heads=heads)
    return _Unit(gguf_name(name), [name], shape, make, len(shape) == 2)


def _hybrid_units(name: str, shape: tuple[int, ...], net: DeltaNetLayout) -> list[_Unit]:
    """The tensors of the file one HF tensor of a hybrid becomes, converted as llama.cpp's
    converter does (``conversion/qwen.py``; the reader undoes each step)."""
    if name == "model.norm.weight":
        return [_Unit("output_norm.weight", [name], shape, _plus_one, False)]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if m is None or re.fullmatch(r"mlp\.experts\.\d+\.\w+\.weight", m.group(2)):
        return [_Unit(gguf_name(name), [name], shape)]
    blk, rest = f"blk.{m.group(1)}.", m.group(2)
    hv, dv = net.value_heads, net.value_dim
    if rest == "linear_attn.in_proj_qkvz.weight":  # Qwen3-Next: split into q | k | v and z
        qkv, z, _, _ = net.grouped_rows()
        return [
            _Unit(blk + "attn_qkv.weight", [name], (qkv.numel(), shape[1]), partial(_pick_rows, rows=qkv)),
            _Unit(blk + "attn_gate.weight", [name], (z.numel(), shape[1]), partial(_pick_rows, rows=z)),
        ]
    if rest == "linear_attn.in_proj_ba.weight":  # Qwen3-Next: kept grouped per key head
        return [_Unit(blk + "ssm_ba.weight", [name], shape)]
    short = HYBRID_GGUF_NAMES.get(rest)
    if short is None:
        raise BadCheckpoint(f"tensor {name!r} has no GGUF name")
    g = blk + short
    if rest.endswith("norm.weight") and rest != "linear_attn.norm.weight":
        return [_Unit(g, [name], shape, _plus_one, False)]
    if rest == "linear_attn.in_proj_qkv.weight":
        return [_Unit(g, [name], shape, partial(_pick_rows, rows=net.qkv_order()))]
    if rest == "linear_attn.in_proj_z.weight":
        return [_Unit(g, [name], shape, partial(_pick_rows, rows=net.stored_order(dv)))]
    if rest in ("linear_attn.in_proj_b.weight", "linear_attn.in_proj_a.weight"):
        return [_Unit(g, [name], shape, partial(_pick_rows, rows=net.stored_order(1)))]
    if rest == "linear_attn.dt_bias":
        return [_Unit(g, [name], (hv,), partial(_pick_rows, rows=net.stored_order(1)), False)]
    if rest == "linear_attn.A_log":
        return [_Unit(g, [name], (hv,), partial(_ssm_a, rows=net.stored_order(1)), False)]
    if rest == "linear_attn.conv1d.weight":
        conv = partial(_conv_rows, rows=net.qkv_order())
        return [_Unit(g, [name], (shape[0], shape[-1]), conv, False)]
    if rest == "linear_attn.out_proj.weight":
        return [_Unit(g, [name], shape, partial(_pick_cols, cols=net.stored_order(dv)))]
    return [_Unit(g, [name], shape, None, len(shape) == 2)]


def _hybrid_checks(cfg, arch: str) -> None:
    """What llama.cpp's loaders for the hybrids need beyond the HF config's own rules."""
    if cfg.linear_key_head_dim != cfg.linear_value_head_dim:
        raise UnsupportedModel(
            f"llama.cpp's {arch} sizes both DeltaNet heads by ssm.state_size: linear_key_head_dim "
            f"{cfg.linear_key_head_dim} must equal linear_value_head_dim {cfg.linear_value_head_dim}"
        )
    if arch == "qwen35":
        if cfg.num_experts:
            raise UnsupportedModel("a Qwen3.5 with experts is Qwen3_5Moe: qwen35 has a dense MLP")
        return
    dense = [i for i in range(cfg.num_hidden_layers) if not cfg.is_moe_layer(i)]
    if dense:
        raise UnsupportedModel(f"llama.cpp's {arch} routes every layer through experts: layers {dense} are dense")
    if not cfg.shared_expert_intermediate_size:
        raise UnsupportedModel(f"llama.cpp's {arch} needs the shared expert: shared_expert_intermediate_size is 0")
    if not cfg.norm_topk_prob:
        raise UnsupportedModel(f"llama.cpp's {arch} renormalizes the top-k weights: norm_topk_prob must be true")


def _attention_interval(raw_text: dict, layer_types: list[str]) -> int:
    """llama.cpp's full_attention_interval: the config's, else the period of the layer kinds, else 4."""
    if raw_text.get("full_attention_interval"):
        return int(raw_text["full_attention_interval"])
    first = layer_types.index(FULL) + 1
    periodic = all((t == FULL) == ((i + 1) % first == 0) for i, t in enumerate(layer_types))
    return first if periodic else 4


def _hybrid_metadata(writer, cfg, raw_text: dict, arch: str) -> None:
    """The keys llama.cpp's hybrid loaders read beyond a decoder's (its converter's set_gguf_parameters)."""
    writer.add_ssm_conv_kernel(cfg.linear_conv_kernel_dim)
    writer.add_ssm_state_size(cfg.linear_key_head_dim)
    writer.add_ssm_group_count(cfg.linear_num_key_heads)
    writer.add_ssm_time_step_rank(cfg.linear_num_value_heads)
    writer.add_ssm_inner_size(cfg.linear_value_head_dim * cfg.linear_num_value_heads)
    writer.add_array(f"{arch}.attention.recurrent_layers", [t == LINEAR for t in cfg.layer_types])
    writer.add_full_attention_interval(_attention_interval(raw_text, cfg.layer_types))
    if cfg.shared_expert_intermediate_size:
        writer.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    if arch != "qwen3next":  # Qwen3.5's interleaved M-RoPE: llama.cpp requires the sections
        rope = raw_text.get("rope_parameters") or raw_text.get("rope_scaling") or {}
        sections = [int(s) for s in rope.get("mrope_section") or MROPE_SECTIONS]
        writer.add_rope_dimension_sections((sections + [0] * 4)[:4])


@dataclass(frozen=True)
class _FloatPlan:
    """Every matrix in one float type: an ``f32`` / ``f16`` / ``bf16`` export."""

    dtype: torch.dtype

    def method(self, name: str, shape: tuple[int, int]) -> Dense:
        return Dense(self.dtype)


def export_gguf(
    src: Path, dst: Path, quant: str, *, progress: Callable[[int, int, str], None] | None = None
) -> Exported:
    """Writes ``src`` (an HF folder: config.json, safetensors, tokenizer.json) to ``dst`` with
    every matrix quantized by ``quant``'s plan (or, ``f32`` / ``f16`` / ``bf16``, in that float
    type); ``progress(done, total, tensor)`` after each."""
    from gguf import GGMLQuantizationType, GGUFWriter

    t0 = time.perf_counter()
    name = quant.strip().lower()
    if name not in isq_types() and name not in FLOAT_EXPORTS:
        expected = ", ".join((*FLOAT_EXPORTS, *isq_types()))
        raise BadQuant(f"type {quant!r} is not one this neuron quantizes to: expected one of {expected}")
    raw = json.loads((src / "config.json").read_text())
    arch_cls = architecture_for(raw)
    cfg = arch_cls.config_class.from_dict(raw)
    gguf_arch = GGUF_ARCHS.get(arch_cls.model_type)
    if gguf_arch is None:
        raise UnsupportedModel(f"model_type {arch_cls.model_type!r} has no GGUF export here")
    hybrid = gguf_arch in HYBRID_ARCHS
    raw_text = raw.get("text_config") or raw
    net = None
    if hybrid:
        _hybrid_checks(cfg, gguf_arch)
        net = DeltaNetLayout(
            cfg.linear_num_key_heads,
            cfg.linear_num_value_heads,
            cfg.linear_key_head_dim,
            cfg.linear_value_head_dim,
            gguf_arch != "qwen3next",
        )
    float_dtype = FLOAT_EXPORTS.get(name)
    if float_dtype is not None:
        plan: _FloatPlan | IsqPlan = _FloatPlan(float_dtype)
    else:
        plan = IsqPlan(name, torch.float32, cfg.num_hidden_layers, cfg.tie_word_embeddings)
    ckpt = Checkpoint(src)
    try:
        # a multimodal checkpoint: its text decoder, the vision tower and MTP layers left out
        text = {}
        for n in ckpt.names():
            if n.startswith(arch_cls.skip_prefixes):
                continue
            text[n.replace("model.language_model.", "model.", 1)] = n
        names = [n for n in text if not (cfg.tie_word_embeddings and n == "lm_head.weight")]
        dst.parent.mkdir(parents=True, exist_ok=True)
        writer = GGUFWriter(str(dst), arch=gguf_arch)
        writer.add_name(src.name)
        writer.add_quantization_version(2)
        ftype = _file_type(name)
        if ftype is not None:
            writer.add_file_type(ftype)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        if not hybrid or cfg.intermediate_size:
            writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_rope_dimension_count(cfg.rotary_dim if hybrid else cfg.head_dim)
        writer.add_vocab_size(cfg.vocab_size)
        if cfg.num_experts:
            if not cfg.norm_topk_prob:
                raise UnsupportedModel(
                    f"llama.cpp's {gguf_arch} renormalizes the top-k weights: norm_topk_prob must be true"
                )
            writer.add_expert_count(cfg.num_experts)
            writer.add_expert_used_count(cfg.num_experts_per_tok)
            writer.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        if hybrid:
            _hybrid_metadata(writer, cfg, raw_text, gguf_arch)
        _tokenizer_metadata(writer, src, cfg.vocab_size)
        units: dict[str, _Unit] = {}  # by GGUF name; an MoE layer's experts stack into one
        for n in sorted(names, key=_expert_order):
            shape = tuple(ckpt.shape(text[n]))
            made = _hybrid_units(n, shape, net) if net is not None else [_plain_unit(n, shape, cfg, gguf_arch)]
            for unit in made:
                if unit.gguf in units:
                    units[unit.gguf].sources.append(n)
                else:
                    units[unit.gguf] = unit
        plans: list[tuple[_Unit, Dense | Quant]] = []
        types: dict[str, int] = {}
        for unit in units.values():
            shape = unit.shape
            if not unit.matrix:
                method: Dense | Quant = Dense(torch.float32)
            else:
                method = plan.method(unit.sources[0], (shape[0], shape[1]))
                if isinstance(method, Dense):
                    if unit.gguf.endswith(FLOAT32_MATRICES):  # llama.cpp keeps routers and gates in float32
                        method = Dense(torch.float32)
                    elif float_dtype is None:  # kept dense by the plan: as the checkpoint has it
                        method = Dense(ckpt.read(text[unit.sources[0]]).dtype)
            if isinstance(method, Quant):
                nbytes, raw_type = method.nbytes(shape[0], shape[1]), GGML_TYPE_IDS[method.qtype]
            else:
                nbytes, raw_type = math.prod(shape) * method.dtype.itemsize, FLOAT_GGML[method.dtype]
            types[method.name] = types.get(method.name, 0) + len(unit.sources)
            full = [len(unit.sources), *shape] if len(unit.sources) > 1 else list(shape)
            # numpy order, as the writer takes it (it stores ggml's reversed order itself)
            ggml_type = GGMLQuantizationType(raw_type)
            writer.add_tensor_info(unit.gguf, full, np.dtype(np.float32), nbytes * len(unit.sources), ggml_type)
            plans.append((unit, method))
        factors = _rope_factors(cfg)
        if factors is not None:  # Llama 3's scaled RoPE: llama.cpp reads the divisors from a tensor
            writer.add_tensor_info(ROPE_FREQS, [factors.shape[0]], np.dtype(np.float32), factors.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = 0
        for i, (unit, method) in enumerate(plans):
            parts = []
            for n in unit.sources:
                tensor = ckpt.read(text[n])
                if unit.make is not None:
                    tensor = unit.make(tensor)
                if isinstance(method, Quant):
                    parts.append(quantize(tensor.float().contiguous(), method.qtype).data.numpy())
                else:
                    parts.append(tensor.to(method.dtype).contiguous().view(torch.uint8).numpy().reshape(-1))
            data = parts[0] if len(parts) == 1 else np.concatenate(parts)
            writer.write_tensor_data(data)
            total += data.nbytes
            if progress is not None:
                progress(i + 1, len(plans), unit.gguf)
        if factors is not None:
            writer.write_tensor_data(factors)
        writer.close()
    finally:
        ckpt.close()
    return Exported(dst, sum(len(u.sources) for u, _ in plans), total, types, time.perf_counter() - t0)
