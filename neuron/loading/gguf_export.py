"""``neuron quantize``: an HF-layout model -> one GGUF file that llama.cpp loads (its metadata,
tokenizer and chat template), each tensor quantized by the same plan as an in-situ load, so the
file holds the bytes a ``quant`` load of the safetensors would.

Tensors are quantized and written one at a time (the header first, from the plan's sizes), so
memory stays at about one tensor whatever the model's size.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuron.loading.gguf import HF_MODEL_TYPES, PERMUTED, ROPE_FREQS, gguf_name, permute_rows, pre_tokenizer_name
from neuron.loading.isq import IsqPlan, isq_types
from neuron.loading.safetensors import Checkpoint
from neuron.models import BadCheckpoint, BadQuant, UnsupportedModel, architecture_for
from neuron.models.methods import Dense, Quant
from neuron.ops.quant import GGML_TYPE_IDS, quantize

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp token types
FLOAT_GGML = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 30}


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
    for candidate in (f"MOSTLY_{name}", f"MOSTLY_{name}_S"):
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


def export_gguf(
    src: Path, dst: Path, quant: str, *, progress: Callable[[int, int, str], None] | None = None
) -> Exported:
    """Writes ``src`` (an HF folder: config.json, safetensors, tokenizer.json) to ``dst`` with
    every matrix quantized by ``quant``'s plan; ``progress(done, total, tensor)`` after each."""
    from gguf import GGMLQuantizationType, GGUFWriter

    t0 = time.perf_counter()
    name = quant.strip().lower()
    if name not in isq_types():
        raise BadQuant(f"type {quant!r} is not one this neuron quantizes to: expected one of {', '.join(isq_types())}")
    raw = json.loads((src / "config.json").read_text())
    arch_cls = architecture_for(raw)
    cfg = arch_cls.config_class.from_dict(raw)
    gguf_arch = next((g for g, (_, mt) in HF_MODEL_TYPES.items() if mt == arch_cls.model_type), None)
    if gguf_arch is None:
        raise UnsupportedModel(f"model_type {arch_cls.model_type!r} has no GGUF export here")
    plan = IsqPlan(name, torch.float32, cfg.num_hidden_layers, cfg.tie_word_embeddings)
    ckpt = Checkpoint(src)
    try:
        names = [n for n in ckpt.names() if not (cfg.tie_word_embeddings and n == "lm_head.weight")]
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
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_vocab_size(cfg.vocab_size)
        if cfg.num_experts:
            if not cfg.norm_topk_prob:
                raise UnsupportedModel(
                    "llama.cpp's qwen3moe renormalizes the top-k weights: norm_topk_prob must be true"
                )
            writer.add_expert_count(cfg.num_experts)
            writer.add_expert_used_count(cfg.num_experts_per_tok)
            writer.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        _tokenizer_metadata(writer, src, cfg.vocab_size)
        units: dict[str, list[str]] = {}  # GGUF tensor -> its HF tensors (an MoE layer's experts, stacked)
        for n in sorted(names, key=_expert_order):
            units.setdefault(gguf_name(n), []).append(n)
        plans: list[tuple[list[str], str, Dense | Quant]] = []
        types: dict[str, int] = {}
        for gname, group in units.items():
            n = group[0]
            shape = ckpt.shape(n)
            method = plan.method(n, (shape[0], shape[1])) if len(shape) == 2 else None  # norms: float32
            dtype = ckpt.read(n).dtype if isinstance(method, Dense) else torch.float32
            if isinstance(method, Quant):
                nbytes, raw_type = method.nbytes(shape[0], shape[1]), GGML_TYPE_IDS[method.qtype]
                label = method.qtype
            else:
                method = Dense(dtype)
                nbytes, raw_type = int(np.prod(shape)) * dtype.itemsize, FLOAT_GGML[dtype]
                label = method.name
            types[label] = types.get(label, 0) + len(group)
            full = [len(group), *shape] if len(group) > 1 else list(shape)
            # numpy order, as the writer takes it (it stores ggml's reversed order itself)
            ggml_type = GGMLQuantizationType(raw_type)
            writer.add_tensor_info(gname, full, np.dtype(np.float32), nbytes * len(group), ggml_type)
            plans.append((group, gname, method))
        factors = _rope_factors(cfg)
        if factors is not None:  # Llama 3's scaled RoPE: llama.cpp reads the divisors from a tensor
            writer.add_tensor_info(ROPE_FREQS, [factors.shape[0]], np.dtype(np.float32), factors.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = 0
        for i, (group, gname, method) in enumerate(plans):
            parts = []
            for n in group:
                tensor = ckpt.read(n)
                if gguf_arch == "llama" and any(n.endswith(suffix) for suffix in PERMUTED):
                    heads = cfg.num_attention_heads if "q_proj" in n else cfg.num_key_value_heads
                    tensor = permute_rows(tensor, heads)
                if isinstance(method, Quant):
                    parts.append(quantize(tensor.float().contiguous(), method.qtype).data.numpy())
                else:
                    parts.append(tensor.to(method.dtype).contiguous().view(torch.uint8).numpy().reshape(-1))
            data = parts[0] if len(parts) == 1 else np.concatenate(parts)
            writer.write_tensor_data(data)
            total += data.nbytes
            if progress is not None:
                progress(i + 1, len(plans), gname)
        if factors is not None:
            writer.write_tensor_data(factors)
        writer.close()
    finally:
        ckpt.close()
    return Exported(dst, sum(len(g) for g, _, _ in plans), total, types, time.perf_counter() - t0)
