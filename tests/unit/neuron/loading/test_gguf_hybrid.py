"""GGUF for the hybrids (llama.cpp's ``qwen3next``, ``qwen35``, ``qwen35moe``): a tiny random HF
checkpoint (built by transformers, as the model parity tests build them) exported at F32 loads
back with the logits of the safetensors model (40-token prompt, then decode steps) within 1e-5;
at Q8_0 it stays within quantization noise of it, and holds the very bytes of an in-situ Q8_0 load
where no matrix had to be dequantized; the metadata parses back to the same config; the file has
exactly llama.cpp's tensor names, and each tensor is what llama.cpp's converter
(``conversion/qwen.py``) makes of the HF one — checked against a transcription of the
converter's steps (reshape and permute, not our row orders); a legacy Qwen3-Next file (``ssm_in``)
reads the same; the engine serves a folder holding the file alone; what llama.cpp cannot load is
refused. ``tests/integration/test_llama_cpp.py`` runs the same files in llama.cpp itself."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import gguf
import msgspec
import numpy as np
import pytest
import torch
import transformers
from gguf.constants import MODEL_ARCH, MODEL_TENSOR, MODEL_TENSORS, TENSOR_NAMES
from tokenizers import Tokenizer

from neuron.demo import demo_template, perturb_hybrid, train_tokenizer
from neuron.engine.admission import Admission
from neuron.engine.engine import EngineRequest, Output
from neuron.engine.loaded import KVSettings, load_model, open_weights, release_model
from neuron.engine.sampling import SamplingParams
from neuron.engine.stepper import SingleSequence, pool_for
from neuron.engine.worker import DeviceWorker
from neuron.loading.gguf import PRE_TOKENIZERS, GgufPlan, GgufSource, gguf_tokenizer
from neuron.loading.gguf_export import export_gguf
from neuron.loading.isq import IsqPlan
from neuron.loading.safetensors import Checkpoint
from neuron.loading.weights import load_weights
from neuron.models import UnsupportedModel, architecture_for
from neuron.models.methods import DensePlan
from neuron.ops.quant import QuantTensor, dequantize, quantize

CPU = torch.device("cpu")
TEXT = "Hello world! <think>why</think> 12345 <|im_start|>user\nhi there<|im_end|>\n"
PROMPT, STEPS = 40, 6
COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64)
ARCH = {"qwen3next": MODEL_ARCH.QWEN3NEXT, "qwen35": MODEL_ARCH.QWEN35, "qwen35moe": MODEL_ARCH.QWEN35MOE}


def vision() -> dict:
    return dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=64, patch_size=4)


CASES = {
    # every layer routed with a shared expert; 2 value heads per key head, grouped (as HF has them)
    "qwen3-next": (
        "qwen3next",
        lambda v: transformers.Qwen3NextForCausalLM(
            transformers.Qwen3NextConfig(
                vocab_size=v,
                **COMMON,
                **MOE,
                linear_num_key_heads=2,
                linear_num_value_heads=4,
                linear_key_head_dim=32,
                linear_value_head_dim=32,
            )
        ),
    ),
    # dense, tied head, half the head rotated, 5 layers not at a fixed interval; value heads tiled
    # in 16-wide heads, so ssm_out's columns move by less than a Q8_0 block (read dequantized)
    "qwen3.5": (
        "qwen35",
        lambda v: transformers.Qwen3_5ForCausalLM(
            transformers.Qwen3_5TextConfig(
                vocab_size=v,
                **{**COMMON, "num_hidden_layers": 5},
                layer_types=["linear_attention", "full_attention", "linear_attention"] * 1
                + ["linear_attention", "full_attention"],
                linear_num_key_heads=2,
                linear_num_value_heads=4,
                linear_key_head_dim=16,
                linear_value_head_dim=16,
                tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
            )
        ),
    ),
    # 4 value heads per key head, 32-wide: ssm_out's columns move by whole Q8_0 blocks
    "qwen3.5-moe": (
        "qwen35moe",
        lambda v: transformers.Qwen3_5MoeForCausalLM(
            transformers.Qwen3_5MoeTextConfig(
                vocab_size=v,
                **COMMON,
                **MOE,
                linear_num_key_heads=2,
                linear_num_value_heads=8,
                linear_key_head_dim=32,
                linear_value_head_dim=32,
            )
        ),
    ),
    # the multimodal checkpoint: its text decoder at model.language_model, a vision tower beside
    "qwen3.5-vl": (
        "qwen35",
        lambda v: transformers.Qwen3_5ForConditionalGeneration(
            transformers.Qwen3_5Config(
                text_config=dict(
                    vocab_size=v,
                    **COMMON,
                    linear_num_key_heads=2,
                    linear_num_value_heads=4,
                    linear_key_head_dim=32,
                    linear_value_head_dim=32,
                ),
                vision_config=vision(),
            )
        ),
    ),
}


def write_tokenizer(out: Path, tok) -> None:
    tok.save(str(out / "tokenizer.json"))
    cfg = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    (out / "chat_template.jinja").write_text(demo_template())


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory) -> tuple[str, str, Path, dict, dict]:
    """(case, GGUF arch, HF folder, its config.json, its tensors by text-side name)."""
    arch, build_hf = CASES[request.param]
    tok = train_tokenizer(TEXT * 20, vocab_size=400)
    vocab = (tok.get_vocab_size() + 31) // 32 * 32
    torch.manual_seed(7)
    hf = build_hf(vocab).eval()
    perturb_hybrid(hf)
    out = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(out)
    write_tokenizer(out, tok)
    raw = json.loads((out / "config.json").read_text())
    ckpt = Checkpoint(out)
    tensors = {n.replace("model.language_model.", "model."): ckpt.read(n) for n in ckpt.names()}
    ckpt.close()
    return request.param, arch, out, raw, tensors


def build(raw: dict, plan, source):
    arch = architecture_for(raw)
    model = arch(arch.config_class.from_dict(raw), dtype=torch.float32, device=CPU, plan=plan)
    load_weights(model, source, redundant=model.tied_names, arch=arch.model_type, skip_prefixes=arch.skip_prefixes)
    return model


def run(model, vocab: int) -> torch.Tensor:
    """A 40-token prompt's logits, then those of six decode steps."""
    ids = torch.randint(0, vocab, (PROMPT + STEPS,), generator=torch.Generator().manual_seed(3))
    seq = SingleSequence(model, pool_for(model, PROMPT + STEPS + 16))
    prefill = seq.run(ids[:PROMPT], all_logits=True)
    steps = [seq.run(ids[i : i + 1]) for i in range(PROMPT, PROMPT + STEPS)]
    return torch.cat([prefill, torch.stack(steps)])


@pytest.fixture(scope="module")
def reference(case) -> torch.Tensor:
    _, _, path, raw, _ = case
    ckpt = Checkpoint(path)
    out = run(build(raw, DensePlan(torch.float32), ckpt), architecture_for(raw).config_class.from_dict(raw).vocab_size)
    ckpt.close()
    return out


def loaded(path: Path) -> tuple[GgufSource, torch.nn.Module]:
    source = GgufSource([path])
    return source, build(source.hf_config(), GgufPlan(source, torch.float32), source)


def test_an_f32_export_loads_with_the_logits_of_the_safetensors(case, reference, tmp_path):
    name, arch, path, _, _ = case
    out = export_gguf(path, tmp_path / "m-F32.gguf", "f32")
    assert set(out.types) == {"float32"}
    source, model = loaded(out.path)
    assert source.architecture == arch and source.file_type() == "f32"
    got = run(model, source.hf_config()["vocab_size"])
    assert (got - reference).abs().max().item() < 1e-5, name


def test_a_q8_0_export_stays_within_quantization_noise(case, reference, tmp_path):
    """Every matrix stays in its blocks as the file stores them (Qwen3.5's tiled value heads
    included: the model reads them in that order). Where a value head is a whole number of
    32-blocks the file holds the blocks an in-situ Q8_0 load quantizes, in another order, and both
    give the same logits (the bound leaves room for the sums in another order and the float
    rounding of ssm_a -> A_log and 1 + w - 1); 16-wide heads share blocks, so there the tiled
    file's blocks are other blocks. Against the float model, Q8_0 (weights, and int8 activations in qmatmul)
    moves the logits by a relative RMS of about 1% on the dense models (bound 3%); on the MoE
    ones the noise also flips the top-k experts of a token whose router scores nearly tie, which
    moves that token's logits wholesale: 6-16% over these seeds (bound 30%, a sanity check there:
    the in-situ equality is the MoE's real check)."""
    name, _, path, raw, _ = case
    out = export_gguf(path, tmp_path / "m-Q8_0.gguf", "q8_0")
    source, model = loaded(out.path)
    got = run(model, source.hf_config()["vocab_size"])
    cfg = architecture_for(raw).config_class.from_dict(raw)
    bound = 0.3 if cfg.num_experts else 0.03
    assert ((got - reference).norm() / reference.norm()).item() < bound, name
    plan = GgufPlan(source, torch.float32)
    out_proj = next(n for n in source.names() if n.endswith("linear_attn.out_proj.weight"))
    narrow = name == "qwen3.5"  # tiled 16-wide heads: two heads to a block
    assert plan.method(out_proj, source.shape(out_proj)).name == "q8_0"
    assert isinstance(source.read(out_proj), QuantTensor)
    tiled = name != "qwen3-next" and cfg.linear_num_key_heads != cfg.linear_num_value_heads
    assert model.decoder.layers[0].linear_attn.value_heads_tiled == tiled
    for n in source.names():  # routers, the shared expert's gate: dense, as the file keeps them
        if n.endswith(("mlp.gate.weight", "shared_expert_gate.weight")):
            assert source.qtype(n) is None and plan.method(n, source.shape(n)).name == "float32", n
    if narrow:
        return
    ckpt = Checkpoint(path)
    in_situ = build(raw, IsqPlan("q8_0", torch.float32, cfg.num_hidden_layers, cfg.tie_word_embeddings), ckpt)
    ckpt.close()
    assert (got - run(in_situ, cfg.vocab_size)).abs().max().item() < 1e-5, name


def test_the_metadata_parses_back_to_the_same_config(case, tmp_path):
    name, _, path, raw, _ = case
    source = GgufSource([export_gguf(path, tmp_path / "m-Q8_0.gguf", "q8_0").path])
    theirs = architecture_for(raw).config_class.from_dict(raw)
    rebuilt = source.hf_config()
    ours = architecture_for(rebuilt).config_class.from_dict(rebuilt)
    if name == "qwen3-next":  # the file keeps the projections apart, so the layers read them apart
        assert theirs.grouped_qkvz and not ours.grouped_qkvz
        ours = msgspec.structs.replace(ours, grouped_qkvz=True)
    else:  # Qwen3.5's value heads stay in the file's tiled order
        assert ours.value_heads_tiled and not theirs.value_heads_tiled
        ours = msgspec.structs.replace(ours, value_heads_tiled=False)
    fields = ours.__struct_fields__
    assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}, name
    assert rebuilt["model_type"] == {"qwen3-next": "qwen3_next", "qwen3.5-moe": "qwen3_5_moe_text"}.get(
        name, "qwen3_5_text"
    )


def expected_names(arch: str, cfg) -> set[str]:
    """llama.cpp's tensor names for this config, from gguf.constants (each checked to be one of the arch's)."""
    allowed = MODEL_TENSORS[ARCH[arch]]
    names = set()

    def add(t: MODEL_TENSOR, suffix: str = ".weight", bid: int | None = None) -> None:
        assert t in allowed, (arch, t)
        names.add(TENSOR_NAMES[t].format(bid=bid) + suffix)

    add(MODEL_TENSOR.TOKEN_EMBD)
    add(MODEL_TENSOR.OUTPUT_NORM)
    if not cfg.tie_word_embeddings:
        add(MODEL_TENSOR.OUTPUT)
    for i, kind in enumerate(cfg.layer_types):
        add(MODEL_TENSOR.ATTN_NORM, bid=i)
        add(MODEL_TENSOR.ATTN_POST_NORM, bid=i)
        if kind == "full_attention":
            for t in (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K, MODEL_TENSOR.ATTN_V, MODEL_TENSOR.ATTN_OUT):
                add(t, bid=i)
            add(MODEL_TENSOR.ATTN_Q_NORM, bid=i)
            add(MODEL_TENSOR.ATTN_K_NORM, bid=i)
        else:
            add(MODEL_TENSOR.ATTN_QKV, bid=i)
            add(MODEL_TENSOR.ATTN_GATE, bid=i)
            if arch == "qwen3next":
                add(MODEL_TENSOR.SSM_BETA_ALPHA, bid=i)
            else:
                add(MODEL_TENSOR.SSM_BETA, bid=i)
                add(MODEL_TENSOR.SSM_ALPHA, bid=i)
            add(MODEL_TENSOR.SSM_CONV1D, bid=i)
            add(MODEL_TENSOR.SSM_DT, ".bias", bid=i)
            add(MODEL_TENSOR.SSM_A, "", bid=i)
            add(MODEL_TENSOR.SSM_NORM, bid=i)
            add(MODEL_TENSOR.SSM_OUT, bid=i)
        if cfg.num_experts:
            for t in (
                MODEL_TENSOR.FFN_GATE_INP,
                MODEL_TENSOR.FFN_GATE_EXP,
                MODEL_TENSOR.FFN_UP_EXP,
                MODEL_TENSOR.FFN_DOWN_EXP,
                MODEL_TENSOR.FFN_GATE_INP_SHEXP,
                MODEL_TENSOR.FFN_GATE_SHEXP,
                MODEL_TENSOR.FFN_UP_SHEXP,
                MODEL_TENSOR.FFN_DOWN_SHEXP,
            ):
                add(t, bid=i)
        else:
            for t in (MODEL_TENSOR.FFN_GATE, MODEL_TENSOR.FFN_UP, MODEL_TENSOR.FFN_DOWN):
                add(t, bid=i)
    return names


def tiled(t: torch.Tensor, dim: int, key_heads: int, per_key: int, width: int) -> torch.Tensor:
    """llama.cpp's _reorder_v_heads: value heads from grouped (by key head) to tiled, along ``dim``."""
    shape = list(t.shape)
    t = t.reshape(*shape[:dim], key_heads, per_key, width, *shape[dim + 1 :])
    return t.transpose(dim, dim + 1).reshape(shape)


def split_qkvz(w: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's split of Qwen3-Next's in_proj_qkvz into attn_qkv and attn_gate."""
    kd, vd = cfg.linear_key_head_dim, cfg.linear_value_head_dim
    nk, nv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    sizes = [kd, kd, nv // nk * vd, nv // nk * vd]
    x = w.permute(1, 0).contiguous().view(-1, nk, sum(sizes))
    q, k, v, z = torch.split(x, sizes, dim=-1)
    flat = [p.contiguous().view(cfg.hidden_size, -1) for p in (q, k, v, z)]
    return torch.cat(flat[:3], dim=-1).permute(1, 0), flat[3].permute(1, 0)


def test_the_file_has_llama_cpp_s_names_and_conversions(case, tmp_path):
    _, arch, path, raw, hf = case
    cfg = architecture_for(raw).config_class.from_dict(raw)
    out = export_gguf(path, tmp_path / "m-Q8_0.gguf", "q8_0")
    reader = gguf.GGUFReader(out.path)
    stored = {t.name: t for t in reader.tensors}
    assert set(stored) == expected_names(arch, cfg)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.architecture"] == arch
    assert fields[f"{arch}.ssm.state_size"] == cfg.linear_key_head_dim
    assert fields[f"{arch}.ssm.group_count"] == cfg.linear_num_key_heads
    assert fields[f"{arch}.ssm.time_step_rank"] == cfg.linear_num_value_heads
    assert fields[f"{arch}.ssm.inner_size"] == cfg.linear_num_value_heads * cfg.linear_value_head_dim
    assert fields[f"{arch}.ssm.conv_kernel"] == 4
    assert fields[f"{arch}.rope.dimension_count"] == cfg.rotary_dim
    assert fields[f"{arch}.attention.recurrent_layers"] == [t == "linear_attention" for t in cfg.layer_types]
    assert fields[f"{arch}.full_attention_interval"] == 4  # the period (qwen3.5: none, so llama.cpp's default)
    assert (f"{arch}.rope.dimension_sections" in fields) == (arch != "qwen3next")
    if cfg.num_experts:
        assert fields[f"{arch}.expert_shared_feed_forward_length"] == 64

    def values(gname: str) -> torch.Tensor:
        t = stored[gname]
        if t.tensor_type.name == "F32":
            return torch.from_numpy(np.array(t.data, dtype=np.float32))
        rows = int(np.prod(t.shape[1:]))
        data = torch.from_numpy(np.array(t.data).reshape(-1).view(np.uint8))
        return dequantize(QuantTensor(data, t.tensor_type.name.lower(), (rows, int(t.shape[0]))))

    float32 = {"F32"}
    nk, nv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    kd, vd, r = cfg.linear_key_head_dim, cfg.linear_value_head_dim, nv // nk
    for i, kind in enumerate(cfg.layer_types):
        blk, layer = f"blk.{i}.", f"model.layers.{i}."
        assert torch.equal(values(blk + "attn_norm.weight"), hf[layer + "input_layernorm.weight"] + 1)
        assert torch.equal(
            values(blk + "post_attention_norm.weight"), hf[layer + "post_attention_layernorm.weight"] + 1
        )
        if kind == "full_attention":
            assert torch.equal(values(blk + "attn_q_norm.weight"), hf[layer + "self_attn.q_norm.weight"] + 1)
            assert stored[blk + "attn_q.weight"].data.shape[0] == 2 * cfg.num_attention_heads * cfg.head_dim
            continue
        la = layer + "linear_attn."
        a_log, dt = hf[la + "A_log"], hf[la + "dt_bias"]
        conv = hf[la + "conv1d.weight"].squeeze()
        if arch == "qwen3next":  # grouped as HF: split, nothing reordered
            qkv, z = split_qkvz(hf[la + "in_proj_qkvz.weight"], cfg)
            assert torch.equal(values(blk + "ssm_ba.weight"), quantized(hf[la + "in_proj_ba.weight"]))
            out_proj = hf[la + "out_proj.weight"]
        else:
            qkv, z = hf[la + "in_proj_qkv.weight"], hf[la + "in_proj_z.weight"]
            qkv = torch.cat([qkv[: 2 * nk * kd], tiled(qkv[2 * nk * kd :], 0, nk, r, vd)])
            z = tiled(z, 0, nk, r, vd)
            for g, h in (("ssm_beta", "in_proj_b"), ("ssm_alpha", "in_proj_a")):
                assert torch.equal(values(f"{blk}{g}.weight"), quantized(tiled(hf[f"{la}{h}.weight"], 0, nk, r, 1)))
            a_log, dt = tiled(a_log, 0, nk, r, 1), tiled(dt, 0, nk, r, 1)
            conv = torch.cat([conv[: 2 * nk * kd], tiled(conv[2 * nk * kd :], 0, nk, r, vd)])
            out_proj = tiled(hf[la + "out_proj.weight"], 1, nk, r, vd)
        assert torch.equal(values(blk + "attn_qkv.weight"), quantized(qkv))
        assert torch.equal(values(blk + "attn_gate.weight"), quantized(z))
        assert torch.equal(values(blk + "ssm_out.weight"), quantized(out_proj))
        assert torch.equal(values(blk + "ssm_a"), -torch.exp(a_log))
        assert torch.equal(values(blk + "ssm_dt.bias"), dt)
        assert torch.equal(values(blk + "ssm_conv1d.weight"), conv)  # [channels, kernel]: ggml ne {kernel, channels}
        assert list(stored[blk + "ssm_conv1d.weight"].shape) == [4, conv.shape[0]]
        assert torch.equal(values(blk + "ssm_norm.weight"), hf[la + "norm.weight"])  # no 1 folded in
        for g in ("ssm_a", "ssm_dt.bias", "ssm_conv1d.weight", "ssm_norm.weight", "attn_norm.weight"):
            assert stored[blk + g].tensor_type.name in float32, g
        assert stored[blk + "attn_qkv.weight"].tensor_type.name == "Q8_0"
    assert torch.equal(values("output_norm.weight"), hf["model.norm.weight"] + 1)
    if cfg.num_experts:
        assert stored["blk.0.ffn_gate_inp.weight"].tensor_type.name in float32
        assert stored["blk.0.ffn_gate_inp_shexp.weight"].tensor_type.name in float32
        assert torch.equal(
            values("blk.0.ffn_gate_inp_shexp.weight").reshape(1, -1), hf["model.layers.0.mlp.shared_expert_gate.weight"]
        )
        assert list(stored["blk.0.ffn_gate_exps.weight"].shape) == [64, 32, 4]


def quantized(w: torch.Tensor) -> torch.Tensor:
    """``w`` through Q8_0 and back, as the export stores a matrix."""
    return dequantize(quantize(w.float().contiguous(), "q8_0"))


def copy_gguf(src: Path, dst: Path, tensors: dict[str, np.ndarray]) -> Path:
    """``src``'s metadata with ``tensors`` (float32, numpy order) instead of its own, written by gguf's writer."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(dst), arch=reader.fields["general.architecture"].contents())
    scalar = {
        gguf.GGUFValueType.STRING: writer.add_string,
        gguf.GGUFValueType.UINT32: writer.add_uint32,
        gguf.GGUFValueType.INT32: writer.add_int32,
        gguf.GGUFValueType.FLOAT32: writer.add_float32,
        gguf.GGUFValueType.BOOL: writer.add_bool,
    }
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, field.contents())
        else:
            scalar[field.types[0]](key, field.contents())
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.mark.parametrize("case", ["qwen3-next"], indirect=True)
def test_a_legacy_or_fused_qwen3_next_file_reads_the_same(case, reference, tmp_path):
    """Older llama.cpp converters wrote Qwen3-Next's in_proj_qkvz whole, as HF has it, as ssm_in
    (llama.cpp still loads it): its rows are split into q | k | v and z on the way in. llama.cpp
    also takes a full-attention layer's q (with its gate) | k | v fused as attn_qkv."""
    _, _, path, _, hf = case
    out = export_gguf(path, tmp_path / "m-F32.gguf", "f32")
    tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(out.path).tensors}
    fused = ("attn_qkv.weight", "attn_gate.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight")
    legacy = {n: v for n, v in tensors.items() if not n.endswith(fused)}
    for i in range(4):
        layer = f"model.layers.{i}."
        if i == 3:  # the full-attention layer
            parts = [hf[f"{layer}self_attn.{p}_proj.weight"] for p in "qkv"]
            legacy["blk.3.attn_qkv.weight"] = torch.cat(parts).numpy()
        else:
            legacy[f"blk.{i}.ssm_in.weight"] = hf[f"{layer}linear_attn.in_proj_qkvz.weight"].numpy()
    source, model = loaded(copy_gguf(out.path, tmp_path / "legacy.gguf", legacy))
    assert "model.layers.0.linear_attn.in_proj_qkv.weight" in source.names()
    assert "model.layers.3.self_attn.q_proj.weight" in source.names()
    assert (run(model, source.hf_config()["vocab_size"]) - reference).abs().max().item() < 1e-5


def test_what_llama_cpp_cannot_load_is_refused(tmp_path):
    """Its loaders size both DeltaNet heads by ssm.state_size, and give Qwen3-Next experts (and the
    shared expert) in every layer."""
    tok = train_tokenizer(TEXT * 20, vocab_size=400)
    vocab = (tok.get_vocab_size() + 31) // 32 * 32
    qwen35 = transformers.Qwen3_5TextConfig(
        vocab_size=vocab,
        **COMMON,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=32,
        linear_value_head_dim=16,
    )
    qwen3next = transformers.Qwen3NextConfig(
        vocab_size=vocab,
        **COMMON,
        **MOE,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=32,
        linear_value_head_dim=32,
        mlp_only_layers=[1],
    )
    for config, model_cls, message in (
        (qwen35, transformers.Qwen3_5ForCausalLM, "linear_key_head_dim 32 must equal linear_value_head_dim 16"),
        (qwen3next, transformers.Qwen3NextForCausalLM, r"every layer through experts: layers \[1\] are dense"),
    ):
        out = tmp_path / model_cls.__name__
        model_cls(config).save_pretrained(out)
        write_tokenizer(out, tok)
        with pytest.raises(UnsupportedModel, match=message):
            export_gguf(out, tmp_path / "m.gguf", "q8_0")


@pytest.mark.parametrize("case", ["qwen3-next", "qwen3.5"], indirect=True)
def test_the_engine_serves_a_hybrid_gguf_file_as_the_safetensors(case, tmp_path):
    """A folder holding the Q8_0 file alone: the engine's load (config, footprint, text side,
    weights from the metadata and the file) greedy-decodes what the same file gives token by
    token through the model directly."""
    _, _, path, _, _ = case
    folder = tmp_path / "gguf"
    export_gguf(path, folder / "m-Q8_0.gguf", "q8_0")
    weights = open_weights(folder, torch.float32, None)
    assert weights.quant == "q8_0" and weights.planned_bytes(torch.float32) > 0
    weights.source.close()
    source, model = loaded(folder / "m-Q8_0.gguf")
    prompt = torch.randint(0, source.hf_config()["vocab_size"], (23,), generator=torch.Generator().manual_seed(5))
    seq = SingleSequence(model, pool_for(model, 64))
    logits, expected = seq.run(prompt), []
    for _ in range(10):
        expected.append(int(logits.argmax()))
        logits = seq.run([expected[-1]])

    async def main() -> list[int]:
        worker = DeviceWorker(CPU)
        kv = KVSettings(kv_cache_mb=None, share=1.0, max_num_seqs=4, max_batch_tokens=64)
        lm = await worker.run(
            load_model,
            "h",
            folder,
            worker,
            torch.float32,
            Admission("h", 4, 8, 5),
            kv,
            free_bytes=lambda: 1 << 34,
            progress=lambda f: None,
            loop=asyncio.get_running_loop(),
        )
        outputs: asyncio.Queue[Output] = asyncio.Queue()
        greedy = SamplingParams(temperature=0.0)
        lm.engine.submit(EngineRequest(prompt.tolist(), 10, greedy, frozenset(), outputs.put_nowait))
        got = []
        while True:
            out = await outputs.get()
            got += out.tokens
            if out.finish is not None:
                break
        await worker.run(release_model, lm)
        worker.close()
        return got

    assert asyncio.run(main()) == expected


@pytest.mark.parametrize("case", ["qwen3.5"], indirect=True)
def test_qwen3_5_s_pre_tokenizer_is_written_and_read_as_llama_cpp_s_qwen35(case, tmp_path):
    """Qwen3.5's split regex keeps combining marks with their letters: llama.cpp names it qwen35."""
    _, _, path, _, _ = case
    folder = tmp_path / "m"
    shutil.copytree(path, folder)
    tj = json.loads((folder / "tokenizer.json").read_text())
    split = {"type": "Split", "pattern": {"Regex": PRE_TOKENIZERS["qwen35"]}, "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, byte_level]}
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    source = GgufSource([export_gguf(folder, tmp_path / "m-Q8_0.gguf", "q8_0").path])
    assert source.value("tokenizer.ggml.pre") == "qwen35"
    theirs = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in ("नमस्ते दुनिया", "e\u0301te\u0301 cafe\u0301!", TEXT, "a  b\n\nc 123"):
        assert gguf_tokenizer(source).encode(text).ids == theirs.encode(text).ids, text
