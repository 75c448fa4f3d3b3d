"""GGUF files (llama.cpp's format) as a weight source: tensors renamed to HF names, quantized
tensors handed over as ggml blocks (memory-mapped, never dequantized whole), the model's
config, tokenizer and chat template read from the metadata.

A model id whose folder holds ``.gguf`` files is a GGUF model; ``quant`` picks the file by its
file-type label (``Qwen3-8B-Q4_K_M.gguf``: case-insensitive, an exact label before a substring;
several candidates are a 400 listing them). Split files (``-00001-of-00003.gguf``) are one model.
Architectures: ``qwen3``, ``qwen2`` (Qwen2.5) and ``llama`` (Llama 3.x: q/k rows un-permuted,
``rope_freqs`` as the RoPE frequency divisors).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuron.models import BadCheckpoint, BadQuant, UnsupportedModel
from neuron.models.methods import Dense, Method, Quant, Weight
from neuron.ops.quant import GGML_TYPE_IDS, QuantTensor

# llama.cpp's tensor names -> HF names: the whole model, then one layer's (``blk.N.``)
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight",  # an MoE router
}
# an MoE layer's experts, stacked in one 3-D tensor per projection: [experts, rows, cols]
EXPERT_NAMES = {
    "ffn_gate_exps.weight": "gate_proj",
    "ffn_up_exps.weight": "up_proj",
    "ffn_down_exps.weight": "down_proj",
}
# general.architecture -> HF names
HF_MODEL_TYPES = {
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen3moe": ("Qwen3MoeForCausalLM", "qwen3_moe"),
}
# llama.cpp stores Llama's q and k rows interleaved per head (its RoPE pairs neighbours; HF's
# pairs halves): these rows are permuted on the way in and out
PERMUTED = {"self_attn.q_proj.weight": "attention.head_count", "self_attn.k_proj.weight": "attention.head_count_kv"}
ROPE_FREQS = "rope_freqs.weight"  # Llama 3's frequency divisors, a tensor in GGUF
# ggml type id -> our block type name; the float types are read as tensors
QTYPE_OF_GGML = {ggml_id: name for name, ggml_id in GGML_TYPE_IDS.items()}
FLOAT_TYPES = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def hf_name(name: str) -> str:
    """The HF name of a llama.cpp tensor name (unknown names stay as they are)."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if m and m.group(2) in LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{LAYER_NAMES[m.group(2)]}"
    return name


def gguf_name(name: str) -> str:
    """The llama.cpp name of an HF tensor name (the inverse of :func:`hf_name`)."""
    for g, h in GLOBAL_NAMES.items():
        if h == name:
            return g
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if m:
        e = re.fullmatch(r"mlp\.experts\.\d+\.(\w+)\.weight", m.group(2))
        if e:
            for g, h in EXPERT_NAMES.items():
                if h == e.group(1):
                    return f"blk.{m.group(1)}.{g}"
        for g, h in LAYER_NAMES.items():
            if h == m.group(2):
                return f"blk.{m.group(1)}.{g}"
    raise BadCheckpoint(f"tensor {name!r} has no GGUF name")


def gguf_groups(model_dir: Path) -> dict[str, list[Path]]:
    """Each model file (its split parts in order) by the file name without the split suffix."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(model_dir.rglob("*.gguf")):
        if "mmproj" in path.name.lower():  # a vision projector beside the model, not a model
            continue
        key = _SPLIT.sub(".gguf", str(path.relative_to(model_dir)))
        groups.setdefault(key, []).append(path)
    return groups


def _labels(key: str) -> list[str]:
    """The dash/dot/underscore-separated label runs of a file name, lower case: every suffix run
    of its words (``qwen3-8b-q4_k_m`` -> ``q4_k_m``, ``k_m``, ``m``, ``8b-q4_k_m`` ...)."""
    stem = Path(key).name.lower().removesuffix(".gguf")
    words = re.split(r"[-.]", stem)
    return ["-".join(words[i:]) for i in range(len(words))]


def _matching(names: list[str], want: str) -> list[str]:
    """The files whose type label is ``want``, else those whose name holds it."""
    exact = [k for k in names if want in _labels(k)]
    return exact or [k for k in names if want in Path(k).name.lower()]


def gguf_files(model_dir: Path, quant: str | None, *, beside_safetensors: bool = False) -> list[Path] | None:
    """The GGUF file (its split parts) of ``model_dir`` that ``quant`` picks; None when the folder
    holds no GGUF file, or (``beside_safetensors``) when ``quant`` names none of them: the
    safetensors are the model then. :class:`BadQuant` when ``quant`` matches none or several."""
    groups = gguf_groups(model_dir)
    if not groups:
        return None
    names = sorted(groups)
    want = quant.strip().lower() if quant is not None else None
    found = _matching(names, want) if want is not None else []
    if beside_safetensors and (not want or not found):
        return None
    if want is None:
        if len(groups) == 1:
            return groups[names[0]]
        raise BadQuant(f"this model has several GGUF files; say which with quant: {', '.join(names)}")
    if len(found) == 1:
        return groups[found[0]]
    if not found:
        raise BadQuant(f"quant {quant!r} matches none of this model's GGUF files: {', '.join(names)}")
    raise BadQuant(f"quant {quant!r} matches several GGUF files: {', '.join(found)}")


@dataclass(frozen=True)
class _Tensor:
    name: str  # llama.cpp's
    ggml_type: int
    shape: tuple[int, int] | tuple[int]  # HF order (rows, cols)
    data: np.ndarray


class GgufSource:
    """The tensors and metadata of one GGUF model (all its split parts), memory-mapped."""

    def __init__(self, paths: list[Path]) -> None:
        from gguf import GGUFReader

        self.paths = paths
        self.fields: dict[str, Any] = {}
        self.tensors: dict[str, _Tensor] = {}
        self.rope_freqs: np.ndarray | None = None
        for path in paths:
            try:
                reader = GGUFReader(path)
            except (OSError, ValueError, KeyError, IndexError) as exc:
                raise BadCheckpoint(f"{path.name} is not a readable GGUF file: {exc}") from None
            for key, field in reader.fields.items():
                if not key.startswith("GGUF.") and key not in self.fields:
                    self.fields[key] = field
            for t in reader.tensors:
                if t.name == ROPE_FREQS:
                    self.rope_freqs = np.array(t.data, dtype=np.float32).reshape(-1)
                    continue
                dims = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml ne[0] is the row length
                m = re.fullmatch(r"blk\.(\d+)\.(.+)", t.name)
                if m and m.group(2) in EXPERT_NAMES and len(dims) == 3:  # one HF tensor per expert
                    per_expert = np.asarray(t.data).reshape(dims[0], -1)
                    for e in range(dims[0]):
                        name = f"model.layers.{m.group(1)}.mlp.experts.{e}.{EXPERT_NAMES[m.group(2)]}.weight"
                        self.tensors[name] = _Tensor(t.name, int(t.tensor_type), dims[1:], per_expert[e])
                    continue
                self.tensors[hf_name(t.name)] = _Tensor(t.name, int(t.tensor_type), dims, t.data)

    def value(self, key: str, default: Any = None) -> Any:
        field = self.fields.get(key)
        if field is None:
            return default
        return field.contents()

    @property
    def architecture(self) -> str:
        return str(self.value("general.architecture", "?"))

    def names(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def qtype(self, name: str) -> str | None:
        """The block type of a quantized tensor; None for a float one."""
        t = self.tensors[name]
        if t.ggml_type in FLOAT_TYPES:
            return None
        if t.ggml_type not in QTYPE_OF_GGML:
            raise UnsupportedModel(f"tensor {t.name} has ggml type {t.ggml_type}, which this neuron cannot read")
        return QTYPE_OF_GGML[t.ggml_type]

    def read(self, name: str) -> Weight:
        weight = self._read(name)
        heads = self._permuted_heads(name)
        return weight if heads is None else permute_rows(weight, heads, inverse=True)

    def _permuted_heads(self, name: str) -> int | None:
        if self.architecture != "llama":
            return None
        for suffix, key in PERMUTED.items():
            if name.endswith(suffix):
                return int(self.value(f"llama.{key}") or self.value("llama.attention.head_count"))
        return None

    def _read(self, name: str) -> Weight:
        t = self.tensors[name]
        qtype = self.qtype(name)
        if qtype is None:
            raw = t.data
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                if t.ggml_type == 30:  # bf16: numpy has no such dtype; the reader hands out the bits
                    tensor = torch.from_numpy(np.ascontiguousarray(raw).view(np.int16)).view(torch.bfloat16)
                else:
                    tensor = torch.from_numpy(np.ascontiguousarray(raw))
            return tensor.reshape(t.shape)
        with warnings.catch_warnings():  # the mapping is read-only, and nothing writes to it
            warnings.simplefilter("ignore", UserWarning)
            data = torch.from_numpy(np.ascontiguousarray(t.data).reshape(-1).view(np.uint8))
        return QuantTensor(data, qtype, t.shape)  # type: ignore[arg-type]

    def close(self) -> None:
        self.tensors.clear()

    # --- metadata ---------------------------------------------------------------------------

    def hf_config(self) -> dict[str, Any]:
        """The model's config.json as HF would write it, from the metadata."""
        arch = self.architecture
        if arch not in HF_MODEL_TYPES:
            supported = ", ".join(sorted(HF_MODEL_TYPES))
            raise UnsupportedModel(f"GGUF architecture {arch!r} is not supported: this neuron reads {supported}")
        cls, model_type = HF_MODEL_TYPES[arch]

        def need(key: str) -> Any:
            v = self.value(f"{arch}.{key}")
            if v is None:
                raise BadCheckpoint(f"the GGUF metadata lacks {arch}.{key}")
            return v

        embed = self.tensors.get("model.embed_tokens.weight")
        if embed is None:
            raise BadCheckpoint("the GGUF file has no token_embd.weight")
        hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
        return {
            "architectures": [cls],
            "model_type": model_type,
            "vocab_size": embed.shape[0],
            "hidden_size": hidden,
            "intermediate_size": int(need("feed_forward_length")),
            "num_hidden_layers": int(need("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(self.value(f"{arch}.attention.head_count_kv", heads)),
            "head_dim": int(self.value(f"{arch}.attention.key_length", hidden // heads)),
            "max_position_embeddings": int(self.value(f"{arch}.context_length", 4096)),
            "rms_norm_eps": float(self.value(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(self.value(f"{arch}.rope.freq_base", 10000.0)),
            "tie_word_embeddings": "lm_head.weight" not in self.tensors,
            "rope_freq_factors": self.rope_freqs.tolist() if self.rope_freqs is not None else None,
            **self._moe_config(arch),
        }

    def _moe_config(self, arch: str) -> dict[str, Any]:
        experts = self.value(f"{arch}.expert_count")
        if not experts:
            return {}
        return {
            "num_experts": int(experts),
            "num_experts_per_tok": int(self.value(f"{arch}.expert_used_count") or 1),
            "moe_intermediate_size": int(self.value(f"{arch}.expert_feed_forward_length") or 0),
            "norm_topk_prob": True,  # llama.cpp renormalizes the top-k weights of qwen3moe
            # the layers without a router are dense (llama.cpp has no key for it: the tensors say)
            "mlp_only_layers": [
                i
                for i in range(int(self.value(f"{arch}.block_count") or 0))
                if f"model.layers.{i}.mlp.gate.weight" not in self.tensors
            ],
        }

    def end_token_ids(self) -> set[int]:
        """The end-of-sequence and end-of-turn tokens the metadata names."""
        keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
        return {int(v) for v in (self.value(k) for k in keys) if v is not None}

    def file_type(self) -> str | None:
        """The file's type label as llama.cpp names it (``q4_k_m``), from ``general.file_type``."""
        from gguf import LlamaFileType

        value = self.value("general.file_type")
        try:
            name = LlamaFileType(int(value)).name if value is not None else None
        except ValueError:
            return None
        return name.removeprefix("MOSTLY_").removeprefix("ALL_").lower() if name else None

    def chat_template(self) -> str | None:
        value = self.value("tokenizer.chat_template")
        return str(value) if value is not None else None


def permute_rows(weight: Weight, heads: int, *, inverse: bool = False) -> Weight:
    """llama.cpp's q/k row order for Llama from HF's (``inverse``: back). Within each head, HF's
    row ``j * D/2 + i`` (the two halves RoPE pairs) is llama.cpp's row ``2 * i + j``. Rows move
    whole, so ggml blocks are moved without dequantizing."""
    rows = weight.shape[0]
    dim = rows // heads
    h, j, i = torch.meshgrid(torch.arange(heads), torch.arange(2), torch.arange(dim // 2), indexing="ij")
    ggml_of_hf = (h * dim + 2 * i + j).reshape(-1)  # for each HF row, where llama.cpp keeps it
    order = ggml_of_hf if inverse else torch.argsort(ggml_of_hf)
    if isinstance(weight, QuantTensor):
        data = weight.data.view(rows, weight.row_bytes).index_select(0, order).reshape(-1)
        return QuantTensor(data, weight.qtype, weight.shape)
    return weight.index_select(0, order)


@dataclass(frozen=True)
class GgufPlan:
    """Every tensor keeps the type the file stores it in; float tensors become ``dtype``."""

    source: GgufSource
    dtype: torch.dtype

    def method(self, name: str, shape: tuple[int, int]) -> Method:
        qtype = self.source.qtype(name) if name in self.source.tensors else None
        return Quant(qtype) if qtype is not None else Dense(self.dtype)


# llama.cpp's pre-tokenizer names -> the split regex before byte-level BPE (None: GPT-2's own)
PRE_TOKENIZERS: dict[str, str | None] = {
    "gpt-2": None,
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+"
    ),
    "llama-bpe": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+"
    ),
}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types that are added tokens


def gguf_tokenizer(source: GgufSource):
    """A ``tokenizers`` byte-level BPE built from ``tokenizer.ggml.*`` (llama.cpp's ``gpt2``
    tokenizer model): the same vocabulary, merges, pre-tokenizer split and added tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = source.value("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedModel(f"GGUF tokenizer model {kind!r} is not supported: this neuron reads byte-level BPE")
    pre = str(source.value("tokenizer.ggml.pre", "gpt-2"))
    pre = {"gpt2": "gpt-2", "default": "gpt-2"}.get(pre, pre)
    if pre not in PRE_TOKENIZERS:
        known = ", ".join(PRE_TOKENIZERS)
        raise UnsupportedModel(f"GGUF pre-tokenizer {pre!r} is not supported: expected one of {known}")
    tokens = list(source.value("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise BadCheckpoint("the GGUF metadata has no tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in source.value("tokenizer.ggml.merges") or []]
    types = list(source.value("tokenizer.ggml.token_type") or [1] * len(tokens))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    pattern = PRE_TOKENIZERS[pre]
    if pattern is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    added = [
        AddedToken(t, special=ttype == CONTROL, normalized=False)
        for t, ttype in zip(tokens, types, strict=False)
        if ttype in (CONTROL, USER_DEFINED)
    ]
    tok.add_tokens(added)
    return tok


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer name of an HF ``tokenizer.json`` (for the GGUF export)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        split = next((p for p in parts if p.get("type") == "Split"), None)
        pattern = (split or {}).get("pattern", {}).get("Regex")
        for name, regex in PRE_TOKENIZERS.items():
            if regex is not None and regex == pattern:
                return name
    raise UnsupportedModel("the tokenizer's pre-tokenizer has no GGUF equivalent (gpt-2, qwen2 or llama-bpe)")
