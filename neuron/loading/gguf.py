"""GGUF files (llama.cpp's format) as a weight source: tensors renamed to HF names, quantized
tensors handed over as ggml blocks (memory-mapped, never dequantized whole), the model's
config, tokenizer and chat template read from the metadata.

A model id whose folder holds ``.gguf`` files is a GGUF model; ``quant`` picks the file by its
file-type label (``Qwen3-8B-Q4_K_M.gguf``: case-insensitive, an exact label before a substring;
several candidates are a 400 listing them). Split files (``-00001-of-00003.gguf``) are one model.
Architectures: ``qwen3``, ``qwen2`` (Qwen2.5) and ``llama`` (Llama 3.x: q/k rows un-permuted,
``rope_freqs`` as the RoPE frequency divisors), ``qwen3moe``, and the hybrids ``qwen3next``
(Qwen3-Next), ``qwen35`` and ``qwen35moe`` (Qwen3.5 dense and MoE).

The hybrids are stored as llama.cpp's converter writes them (``conversion/qwen.py``:
``Qwen3NextModel``, ``_LinearAttentionVReorderBase``), and each conversion is undone on the way in:

- every ``*norm.weight`` but the DeltaNet output's (``ssm_norm``) holds ``1 + w`` (the norms are
  zero-centred, ``x · (1 + w)``): read back as ``w``; ``ssm_a`` holds ``-exp(A_log)``;
  ``ssm_conv1d`` is squeezed to ``[channels, kernel]``; ``dt_bias`` is ``ssm_dt.bias``;
- Qwen3-Next's ``in_proj_qkvz`` is split into ``attn_qkv`` (q | k | v) and ``attn_gate`` (z),
  ``in_proj_ba`` kept as ``ssm_ba`` (grouped per key head): read as Qwen3.5's separate
  ``in_proj_qkv`` / ``in_proj_z`` / ``in_proj_b`` / ``in_proj_a`` (rows picked out, so ggml
  blocks stay as they are) and the config says ``grouped_qkvz = false``; a legacy ``ssm_in``
  (``in_proj_qkvz`` as HF has it) is split the same way;
- Qwen3.5 tiles the value heads over the key heads (stored head ``j·n_k + g`` is HF's
  ``g·r + j``) in the V rows of ``attn_qkv`` and the conv, in ``attn_gate``, ``ssm_beta``,
  ``ssm_alpha``, ``ssm_a``, ``ssm_dt`` and the columns of ``ssm_out``. These are read as they are
  stored, and the config says ``value_heads_tiled = true``: the model's DeltaNet then pairs value
  head ``h`` with key head ``h % n_k`` (every other op is per value head and follows the order),
  so no matrix is moved or dequantized (``ssm_out``'s columns could not be moved inside K-quant
  blocks, which span two heads);
- a full-attention ``attn_q`` holds the query and its gate interleaved per head, as HF's
  ``q_proj``; MTP blocks past ``nextn_predict_layers`` are named ``mtp.…`` and left unread.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuron.models import BadCheckpoint, BadQuant, UnsupportedModel
from neuron.models.hybrid import FULL, LINEAR, grouped_qkvz_order
from neuron.models.methods import Dense, Method, Quant, Weight
from neuron.ops.quant import GGML_TYPE_IDS, QuantTensor, dequantize

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
# an MoE layer's experts with gate and up fused ([experts, 2 * rows, cols], gate first)
FUSED_EXPERT_NAMES = {"ffn_gate_up_exps.weight": ("gate_proj", "up_proj")}
# the hybrids' layer tensors beyond LAYER_NAMES (Qwen3-Next's ssm_ba and a legacy ssm_in are
# split apart, and a full-attention layer's attn_qkv is q | k | v fused: see GgufSource)
HYBRID_LAYER_NAMES = {
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "attn_qkv.weight": "linear_attn.in_proj_qkv.weight",
    "attn_gate.weight": "linear_attn.in_proj_z.weight",
    "ssm_beta.weight": "linear_attn.in_proj_b.weight",
    "ssm_alpha.weight": "linear_attn.in_proj_a.weight",
    "ssm_conv1d.weight": "linear_attn.conv1d.weight",
    "ssm_dt.bias": "linear_attn.dt_bias",
    "ssm_a": "linear_attn.A_log",
    "ssm_norm.weight": "linear_attn.norm.weight",
    "ssm_out.weight": "linear_attn.out_proj.weight",
    "ffn_gate_inp_shexp.weight": "mlp.shared_expert_gate.weight",
    "ffn_gate_shexp.weight": "mlp.shared_expert.gate_proj.weight",
    "ffn_up_shexp.weight": "mlp.shared_expert.up_proj.weight",
    "ffn_down_shexp.weight": "mlp.shared_expert.down_proj.weight",
}
# general.architecture -> HF names
HF_MODEL_TYPES = {
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen3moe": ("Qwen3MoeForCausalLM", "qwen3_moe"),
    "qwen3next": ("Qwen3NextForCausalLM", "qwen3_next"),
    "qwen35": ("Qwen3_5ForCausalLM", "qwen3_5_text"),
    "qwen35moe": ("Qwen3_5MoeForCausalLM", "qwen3_5_moe_text"),
}
HYBRID_ARCHS = ("qwen3next", "qwen35", "qwen35moe")
# model_type -> general.architecture, for the export (a multimodal Qwen3.5 exports its text side)
GGUF_ARCHS = {
    **{model_type: arch for arch, (_, model_type) in HF_MODEL_TYPES.items()},
    "qwen3_5": "qwen35",
    "qwen3_5_moe": "qwen35moe",
}
# the tensors llama.cpp keeps in float32 whatever the file type (its converter and llama-quant):
# 1-D tensors and norms besides these
FLOAT32_MATRICES = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "ssm_conv1d.weight")
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
class DeltaNetLayout:
    """Where llama.cpp keeps a gated DeltaNet layer's rows (Qwen3-Next, Qwen3.5): the head counts
    and sizes, and whether the value heads are tiled over the key heads (Qwen3.5: stored head
    ``j·n_k + g`` is HF's ``g·r + j``, ``r = value_heads / key_heads``) or grouped as HF has them
    (Qwen3-Next). The export takes its row orders from here; the reader keeps the stored order."""

    key_heads: int
    value_heads: int
    key_dim: int
    value_dim: int
    tiled: bool

    @property
    def qk_rows(self) -> int:
        return 2 * self.key_heads * self.key_dim

    @property
    def conv_dim(self) -> int:
        return self.qk_rows + self.value_heads * self.value_dim

    def stored_order(self, width: int) -> torch.Tensor | None:
        """For each stored row of a block of ``value_heads × width`` rows, the HF row it holds;
        None when the orders agree (nothing to move)."""
        if not self.tiled or self.key_heads == self.value_heads:
            return None
        r = self.value_heads // self.key_heads
        rows = torch.arange(self.value_heads * width).reshape(self.key_heads, r, width)
        return rows.transpose(0, 1).reshape(-1)

    def qkv_order(self) -> torch.Tensor | None:
        """:meth:`stored_order` of the q | k | v rows (and conv channels): q and k stay, the V rows move."""
        v = self.stored_order(self.value_dim)
        return None if v is None else torch.cat([torch.arange(self.qk_rows), self.qk_rows + v])

    def grouped_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Qwen3-Next's grouped projections: the rows of ``in_proj_qkvz`` that are q | k | v and
        z, and the rows of ``in_proj_ba`` that are b and a (llama.cpp's ``attn_qkv``,
        ``attn_gate``, and ``ssm_ba``'s halves)."""
        order = grouped_qkvz_order(self.key_heads, self.value_heads, self.key_dim, self.value_dim)
        qkvz = self.conv_dim + self.value_heads * self.value_dim
        hv = self.value_heads
        b, a = order[qkvz : qkvz + hv] - qkvz, order[qkvz + hv :] - qkvz
        return order[: self.conv_dim], order[self.conv_dim : qkvz], b, a


def _decimal(value: float) -> float:
    """A float32 metadata value as the decimal it was written from (``1e-06``, not
    ``9.99999997e-07``): the shortest one that rounds to the same float32."""
    return float(str(np.float32(value)))


def _minus_one(w: torch.Tensor) -> torch.Tensor:
    """A zero-centred norm's weight from llama.cpp's (which holds ``1 + w``)."""
    return w.float() - 1.0


def _a_log(ssm_a: torch.Tensor) -> torch.Tensor:
    """``A_log`` from llama.cpp's ``ssm_a = -exp(A_log)``."""
    return torch.log(-ssm_a.float())


def _conv_taps(w: torch.Tensor) -> torch.Tensor:
    """HF's ``[channels, 1, kernel]`` conv weight from llama.cpp's squeezed ``[channels, kernel]``."""
    return w.unsqueeze(1)


@dataclass(frozen=True)
class _Tensor:
    """One HF tensor as the file holds it: a stored tensor (or one expert's slice of it), the
    stored rows it takes (HF order; None: all, as they are) and the conversion of its values back
    to HF's."""

    name: str  # llama.cpp's
    ggml_type: int
    shape: tuple[int, ...]  # the HF tensor's
    data: np.ndarray
    stored: tuple[int, ...]  # the stored tensor's shape, HF order (rows, cols)
    rows: torch.Tensor | None = None
    fix: Callable[[torch.Tensor], torch.Tensor] | None = None


class GgufSource:
    """The tensors and metadata of one GGUF model (all its split parts), memory-mapped."""

    def __init__(self, paths: list[Path]) -> None:
        from gguf import GGUFReader

        self.paths = paths
        self.fields: dict[str, Any] = {}
        self.tensors: dict[str, _Tensor] = {}
        self.rope_freqs: np.ndarray | None = None
        readers = []
        for path in paths:
            try:
                reader = GGUFReader(path)
            except (OSError, ValueError, KeyError, IndexError) as exc:
                raise BadCheckpoint(f"{path.name} is not a readable GGUF file: {exc}") from None
            readers.append(reader)
            for key, field in reader.fields.items():
                if not key.startswith("GGUF.") and key not in self.fields:
                    self.fields[key] = field
        arch = self.architecture
        self.hybrid = arch in HYBRID_ARCHS
        self.num_layers = int(self.value(f"{arch}.block_count") or 0) - int(
            self.value(f"{arch}.nextn_predict_layers") or 0
        )
        self._layer_kinds = self._layer_types(arch) if self.hybrid else []
        self._deltanet: DeltaNetLayout | None = None
        for reader in readers:
            for t in reader.tensors:
                self._add(t)

    def _add(self, t) -> None:
        """Files one stored tensor under its HF name(s)."""
        if t.name == ROPE_FREQS:
            self.rope_freqs = np.array(t.data, dtype=np.float32).reshape(-1)
            return
        dims = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml ne[0] is the row length
        kind = int(t.tensor_type)
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", t.name)
        if m and self.hybrid and int(m.group(1)) >= self.num_layers:  # a multi-token-prediction block
            self.tensors[f"mtp.{t.name}"] = _Tensor(t.name, kind, dims, t.data, dims)
            return
        if m and len(dims) == 3 and m.group(2) in (*EXPERT_NAMES, *FUSED_EXPERT_NAMES):  # one HF tensor per expert
            per_expert = np.asarray(t.data).reshape(dims[0], -1)
            prefix = f"model.layers.{m.group(1)}.mlp.experts"
            for e in range(dims[0]):
                if m.group(2) in EXPERT_NAMES:
                    name = f"{prefix}.{e}.{EXPERT_NAMES[m.group(2)]}.weight"
                    self.tensors[name] = _Tensor(t.name, kind, dims[1:], per_expert[e], dims[1:])
                    continue
                half = dims[1] // 2
                for i, proj in enumerate(FUSED_EXPERT_NAMES[m.group(2)]):
                    rows = torch.arange(i * half, (i + 1) * half)
                    view = _Tensor(t.name, kind, (half, dims[2]), per_expert[e], dims[1:], rows=rows)
                    self.tensors[f"{prefix}.{e}.{proj}.weight"] = view
            return
        if m and self.hybrid:
            views = self._hybrid_views(int(m.group(1)), m.group(2), kind, dims, t)
            if views:
                self.tensors.update(views)
                return
        name = hf_name(t.name)
        fix = None
        if self.hybrid and name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
            fix = _minus_one  # llama.cpp folds the 1 of the zero-centred norms in
        self.tensors[name] = _Tensor(t.name, kind, dims, t.data, dims, fix=fix)

    def _hybrid_views(self, layer: int, short: str, kind: int, dims: tuple[int, ...], t) -> dict[str, _Tensor]:
        """The HF tensors one stored tensor of a hybrid's layer holds (empty: the plain name map)."""
        prefix = f"model.layers.{layer}."
        full = layer < len(self._layer_kinds) and self._layer_kinds[layer] == FULL

        def view(hf: str, shape: tuple[int, ...], **kw) -> tuple[str, _Tensor]:
            return prefix + hf, _Tensor(t.name, kind, shape, t.data, dims, **kw)

        rows_of = dims[0]
        if short == "attn_qkv.weight" and full:  # q (with its gate) | k | v fused
            kv = int(self.value(f"{self.architecture}.attention.head_count_kv")) * self._head_dim()
            q = rows_of - 2 * kv
            spans = (("q_proj", 0, q), ("k_proj", q, kv), ("v_proj", q + kv, kv))
            return dict(
                view(f"self_attn.{p}.weight", (n, dims[1]), rows=torch.arange(first, first + n))
                for p, first, n in spans
            )
        if short not in HYBRID_LAYER_NAMES and short not in ("ssm_ba.weight", "ssm_in.weight"):
            return {}
        if short == "post_attention_norm.weight":
            return dict([view(HYBRID_LAYER_NAMES[short], dims, fix=_minus_one)])
        if short.startswith("ffn_"):
            if short == "ffn_gate_inp_shexp.weight":  # [hidden], or [1, hidden]: HF's Linear(hidden, 1)
                hidden = dims[-1]
                return {prefix + HYBRID_LAYER_NAMES[short]: _Tensor(t.name, kind, (1, hidden), t.data, (1, hidden))}
            return dict([view(HYBRID_LAYER_NAMES[short], dims)])
        net = self.deltanet
        hv, dv = net.value_heads, net.value_dim
        if short == "ssm_ba.weight":  # Qwen3-Next: per key head, b then a of its value heads
            _, _, b, a = net.grouped_rows()
            return dict(
                [
                    view("linear_attn.in_proj_b.weight", (hv, dims[1]), rows=b),
                    view("linear_attn.in_proj_a.weight", (hv, dims[1]), rows=a),
                ]
            )
        if short == "ssm_in.weight":  # a legacy Qwen3-Next file: in_proj_qkvz as HF has it
            qkv, z, _, _ = net.grouped_rows()
            return dict(
                [
                    view("linear_attn.in_proj_qkv.weight", (net.conv_dim, dims[1]), rows=qkv),
                    view("linear_attn.in_proj_z.weight", (hv * dv, dims[1]), rows=z),
                ]
            )
        hf = HYBRID_LAYER_NAMES[short]  # Qwen3.5's tiled value heads stay as stored (see the module doc)
        if short == "ssm_conv1d.weight":
            return dict([view(hf, (dims[0], 1, dims[1]), fix=_conv_taps)])
        if short == "ssm_a":
            return dict([view(hf, dims, fix=_a_log)])
        return dict([view(hf, dims)])

    def _head_dim(self) -> int:
        arch = self.architecture
        heads = int(self.value(f"{arch}.attention.head_count") or 1)
        return int(self.value(f"{arch}.attention.key_length") or int(self.value(f"{arch}.embedding_length")) // heads)

    @property
    def deltanet(self) -> DeltaNetLayout:
        """The gated DeltaNet layers' layout, from the ``ssm.*`` metadata."""
        if self._deltanet is None:
            arch = self.architecture
            keys = ("group_count", "time_step_rank", "state_size", "inner_size")
            values = [self.value(f"{arch}.ssm.{k}") for k in keys]
            missing = [k for k, v in zip(keys, values, strict=True) if v is None]
            if missing:
                raise BadCheckpoint(f"the GGUF metadata lacks {', '.join(f'{arch}.ssm.{k}' for k in missing)}")
            key_heads, value_heads, state, inner = (int(v) for v in values)
            if not key_heads or not value_heads or value_heads % key_heads or inner % value_heads:
                raise BadCheckpoint(
                    f"the GGUF metadata's DeltaNet heads do not fit: {key_heads} key heads, {value_heads} value "
                    f"heads, inner size {inner}"
                )
            self._deltanet = DeltaNetLayout(key_heads, value_heads, state, inner // value_heads, arch != "qwen3next")
        return self._deltanet

    def _layer_types(self, arch: str) -> list[str]:
        """Each layer's kind as llama.cpp decides it: ``attention.recurrent_layers`` if the file
        has it, else every ``full_attention_interval``-th layer (4 by default) full attention."""
        recurrent = self.value(f"{arch}.attention.recurrent_layers")
        if recurrent is not None:
            return [LINEAR if bool(r) else FULL for r in list(recurrent)[: self.num_layers]]
        interval = int(self.value(f"{arch}.full_attention_interval") or 4)
        return [FULL if (i + 1) % interval == 0 else LINEAR for i in range(self.num_layers)]

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
        """The block type of a quantized tensor; None for a float one, or for one read
        dequantized (its values need converting)."""
        t = self.tensors[name]
        qtype = self._stored_qtype(t)
        if qtype is None or t.fix is not None:
            return None
        return qtype

    def _stored_qtype(self, t: _Tensor) -> str | None:
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
        stored = self._stored_qtype(t)
        rows = t.rows
        if stored is None:
            raw = t.data
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                if t.ggml_type == 30:  # bf16: numpy has no such dtype; the reader hands out the bits
                    values = torch.from_numpy(np.ascontiguousarray(raw).view(np.int16)).view(torch.bfloat16)
                else:
                    values = torch.from_numpy(np.ascontiguousarray(raw))
            values = values.reshape(t.stored)
        else:
            with warnings.catch_warnings():  # the mapping is read-only, and nothing writes to it
                warnings.simplefilter("ignore", UserWarning)
                data = torch.from_numpy(np.ascontiguousarray(t.data).reshape(-1).view(np.uint8))
            blocks = QuantTensor(data, stored, t.stored)  # type: ignore[arg-type]
            if rows is not None:  # whole rows of blocks move as they are
                blocks = _take_rows(blocks, rows)
                rows = None
            if self.qtype(name) is not None:
                return blocks
            values = dequantize(blocks, torch.float32)
        if rows is not None:
            values = values.index_select(0, rows)
        if t.fix is not None:
            values = t.fix(values)
        return values.reshape(t.shape)

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
        need("block_count")
        moe = bool(self.value(f"{arch}.expert_count"))
        # a MoE's dense MLP width may be absent (Qwen3.5-MoE has none)
        ffn = int(self.value(f"{arch}.feed_forward_length") or 0) if moe else int(need("feed_forward_length"))
        head_dim = int(self.value(f"{arch}.attention.key_length", hidden // heads))
        cfg = {
            "architectures": [cls],
            "model_type": model_type,
            "vocab_size": embed.shape[0],
            "hidden_size": hidden,
            "intermediate_size": ffn,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": int(self.value(f"{arch}.attention.head_count_kv", heads)),
            "head_dim": head_dim,
            "max_position_embeddings": int(self.value(f"{arch}.context_length", 4096)),
            "rms_norm_eps": _decimal(self.value(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": _decimal(self.value(f"{arch}.rope.freq_base", 10000.0)),
            "tie_word_embeddings": "lm_head.weight" not in self.tensors,
            "rope_freq_factors": self.rope_freqs.tolist() if self.rope_freqs is not None else None,
            **self._moe_config(arch),
        }
        if self.hybrid:
            cfg.update(self._hybrid_config(arch, head_dim))
        return cfg

    def _hybrid_config(self, arch: str, head_dim: int) -> dict[str, Any]:
        net = self.deltanet
        conv = self.value(f"{arch}.ssm.conv_kernel")
        if conv is None:
            raise BadCheckpoint(f"the GGUF metadata lacks {arch}.ssm.conv_kernel")
        rotary = int(self.value(f"{arch}.rope.dimension_count", head_dim))
        factor = rotary / head_dim
        while int(head_dim * factor) < rotary:  # so that HF's int(head_dim * factor) gives it back
            factor = math.nextafter(factor, math.inf)
        cfg = {
            "layer_types": list(self._layer_kinds),
            "linear_num_key_heads": net.key_heads,
            "linear_num_value_heads": net.value_heads,
            "linear_key_head_dim": net.key_dim,
            "linear_value_head_dim": net.value_dim,
            "linear_conv_kernel_dim": int(conv),
            "partial_rotary_factor": factor,
        }
        if arch == "qwen3next":
            cfg["grouped_qkvz"] = False  # the file keeps q | k | v, z, b and a apart (see the module doc)
        if net.tiled and net.key_heads != net.value_heads:
            cfg["value_heads_tiled"] = True  # read as stored (see the module doc)
        return cfg

    def _moe_config(self, arch: str) -> dict[str, Any]:
        experts = self.value(f"{arch}.expert_count")
        if not experts:
            return {}
        shared = self.value(f"{arch}.expert_shared_feed_forward_length")
        return {
            "num_experts": int(experts),
            "num_experts_per_tok": int(self.value(f"{arch}.expert_used_count") or 1),
            "moe_intermediate_size": int(self.value(f"{arch}.expert_feed_forward_length") or 0),
            "norm_topk_prob": True,  # llama.cpp renormalizes the top-k weights of qwen3moe and the hybrids
            "shared_expert_intermediate_size": int(shared) if shared else 0,
            # the layers without a router are dense (llama.cpp has no key for it: the tensors say)
            "mlp_only_layers": [
                i for i in range(self.num_layers) if f"model.layers.{i}.mlp.gate.weight" not in self.tensors
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
        return _take_rows(weight, order)
    return weight.index_select(0, order)


def _take_rows(weight: QuantTensor, rows: torch.Tensor) -> QuantTensor:
    """The rows ``rows`` of ggml blocks, in that order (a row's blocks are its own: they move whole)."""
    data = weight.data.view(weight.shape[0], weight.row_bytes).index_select(0, rows).reshape(-1)
    return QuantTensor(data, weight.qtype, (rows.numel(), weight.shape[1]))


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
    "qwen35": (  # Qwen3.5: letters with their combining marks
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
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
    raise UnsupportedModel("the tokenizer's pre-tokenizer has no GGUF equivalent (gpt-2, qwen2, llama-bpe or qwen35)")
