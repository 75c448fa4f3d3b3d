"""GGUF: a file written by the ``gguf`` package's own writer (F32, F16, Q8_0, Q4_K, Q6_K tensors
mixed) loads with the logits of our dense path on its weights dequantized by ``gguf``; the
export (``neuron quantize``) writes the bytes an in-situ load holds, so both give the same
logits; the tokenizer rebuilt from the metadata gives the HF tokenizer's ids; ``quant`` picks a
model's file by its type label."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from neuron.chat.text import load_text_side
from neuron.demo import demo_template, qwen3_config, random_weights, train_tokenizer, write_model_dir
from neuron.engine.loaded import open_weights
from neuron.engine.stepper import SingleSequence, pool_for
from neuron.loading.gguf import GgufPlan, GgufSource, gguf_files, gguf_name, gguf_tokenizer, permute_rows
from neuron.loading.gguf_export import export_gguf
from neuron.loading.isq import IsqPlan
from neuron.loading.safetensors import Checkpoint
from neuron.loading.weights import load_weights
from neuron.models import BadQuant, architecture_for
from neuron.models.methods import LONGEST_DIRECT_ROWS, DensePlan
from neuron.ops.quant import quantize

CPU = torch.device("cpu")
TEXT = "Hello world! <think>why</think> 12345 <|im_start|>user\nhi there<|im_end|>\n"


def wide_config(vocab: int, tie: bool) -> dict:
    return qwen3_config(
        vocab,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=tie,
    )


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory) -> tuple[Path, dict, dict]:
    """An untied tiny Qwen3 in HF layout (tokenizer trained here), every width a K-quant divides."""
    tok = train_tokenizer(TEXT * 20, vocab_size=400)
    cfg = wide_config((tok.get_vocab_size() + 31) // 32 * 32, tie=False)
    weights = random_weights(cfg, seed=9, std=0.05)
    out = write_model_dir(tmp_path_factory.mktemp("hf") / "tiny", tok, cfg, weights, template=demo_template())
    return out, cfg, weights


def build(cfg: dict, plan, source):
    arch = architecture_for(cfg)
    model = arch(arch.config_class.from_dict(cfg), dtype=torch.float32, device=CPU, plan=plan)
    load_weights(model, source, redundant=model.tied_names, arch="qwen3")
    return model


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    seq = SingleSequence(model, pool_for(model, LONGEST_DIRECT_ROWS + 64))
    return seq.run(ids, all_logits=True)


def test_the_export_holds_the_bytes_of_an_in_situ_load(hf_model, tmp_path):
    path, cfg, _ = hf_model
    out = export_gguf(path, tmp_path / "tiny-Q4_K_M.gguf", "q4_k_m")
    assert out.types["q6_k"] >= 1 and out.types["q4_k"] >= 1 and out.types["float32"] == 2 * 8 * 2 + 1
    reader = gguf.GGUFReader(out.path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    # llama.cpp's use_more_bits for 8 layers: 0, 3, 6, 7
    assert [types[f"blk.{i}.attn_v.weight"] for i in range(8)] == ["Q6_K", "Q4_K", "Q4_K", "Q6_K"] + ["Q4_K"] * 2 + [
        "Q6_K"
    ] * 2
    assert [types[f"blk.{i}.ffn_down.weight"] for i in range(8)] == [types[f"blk.{i}.attn_v.weight"] for i in range(8)]
    assert reader.fields["general.architecture"].contents() == "qwen3"

    source = GgufSource([out.path])
    assert source.hf_config()["num_hidden_layers"] == 8 and source.file_type() == "q4_k_m"
    from_gguf = build(source.hf_config(), GgufPlan(source, torch.float32), source)
    ckpt = Checkpoint(path)
    in_situ = build(cfg, IsqPlan("q4_k_m", torch.float32, 8, False), ckpt)
    ckpt.close()
    ids = torch.randint(0, cfg["vocab_size"], (LONGEST_DIRECT_ROWS + 10,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits(from_gguf, ids), logits(in_situ, ids))  # the same bytes, the same logits
    # a whole part of the file's own type is the memory map itself, not a copy
    o_proj = from_gguf.model.layers[0].self_attn.o_proj.parts[0].weight
    assert o_proj.data.data_ptr() == source.read("model.layers.0.self_attn.o_proj.weight").data.data_ptr()
    embed = from_gguf.model.embed_tokens.weight
    assert embed.data.data_ptr() == source.read("model.embed_tokens.weight").data.data_ptr()
    short = ids[:5]  # the decode kernel's path too
    assert torch.equal(logits(from_gguf, short), logits(in_situ, short))


def test_the_tokenizer_and_template_come_from_the_metadata(hf_model, tmp_path):
    path, _, _ = hf_model
    out = export_gguf(path, tmp_path / "m-Q8_0.gguf", "q8_0")
    source = GgufSource([out.path])
    ours, theirs = gguf_tokenizer(source), Tokenizer.from_file(str(path / "tokenizer.json"))
    for text in (TEXT, "  spaces\tand\nnewlines ", "emoji 🙂 and ünïcode", "<tool_call>{}</tool_call>"):
        assert ours.encode(text).ids == theirs.encode(text).ids, text
        ids = theirs.encode(text).ids
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids, skip_special_tokens=False)
        assert ours.decode(ids) == theirs.decode(ids)  # specials dropped alike
    side = load_text_side("t/m", tmp_path)  # a folder with the GGUF file alone
    assert side.context_length == 4096 and side.tokenizer.encode(TEXT).ids == theirs.encode(TEXT).ids
    assert side.eos_ids == {theirs.token_to_id("<|im_end|>")}
    rendered = side.template.render([{"role": "user", "content": "hi"}])
    assert rendered.endswith("<|im_start|>assistant\n") and "hi" in rendered


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_a_file_of_the_gguf_writer_gives_the_logits_of_its_dequantized_weights(tmp_path, arch):
    """Written with gguf's own writer, mixed per tensor as in a Q4_K_M file (Llama's q/k rows in
    llama.cpp's order); the reference dequantizes with gguf itself."""
    tok = train_tokenizer(TEXT * 20, vocab_size=400)
    cfg = wide_config((tok.get_vocab_size() + 31) // 32 * 32, tie=arch != "llama")
    weights = random_weights(cfg, seed=2, std=0.05)
    if arch != "qwen3":
        weights = {k: v for k, v in weights.items() if "q_norm" not in k and "k_norm" not in k}
        cfg.update(architectures=[f"{arch.capitalize()}ForCausalLM"], model_type=arch)
    if arch == "qwen2":
        g = torch.Generator().manual_seed(3)
        for layer in range(cfg["num_hidden_layers"]):
            for name, rows in (("q", 256), ("k", 128), ("v", 128)):
                weights[f"model.layers.{layer}.self_attn.{name}_proj.bias"] = torch.randn(rows, generator=g) * 0.3
    kinds = [gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K, gguf.GGMLQuantizationType.F16]
    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), arch=arch)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_key_length(cfg["head_dim"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(cfg["rope_theta"])
    dequantized = {}
    for i, (name, w) in enumerate(sorted(weights.items())):
        if w.ndim == 1:
            writer.add_tensor(gguf_name(name), w.numpy())  # F32
            dequantized[name] = w
            continue
        heads = {"q_proj": cfg["num_attention_heads"], "k_proj": cfg["num_key_value_heads"]}.get(name.split(".")[-2])
        stored = permute_rows(w, heads) if arch == "llama" and heads else w
        if name == "model.embed_tokens.weight":
            kind = gguf.GGMLQuantizationType.Q8_0
            data = gguf.quants.quantize(stored.numpy(), kind)  # gguf's own quantizer
        else:
            kind = kinds[i % len(kinds)]
            if kind == gguf.GGMLQuantizationType.F16:
                data = stored.numpy().astype(np.float16)
            else:
                data = quantize(stored, kind.name.lower()).data.numpy().reshape(w.shape[0], -1)
        if kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name(name), data)
        else:
            writer.add_tensor(gguf_name(name), data, raw_dtype=kind)
        values = torch.from_numpy(gguf.quants.dequantize(data, kind).astype(np.float32).reshape(w.shape))
        dequantized[name] = permute_rows(values, heads, inverse=True) if arch == "llama" and heads else values
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    source = GgufSource([tmp_path / "model.gguf"])
    stored_types = {source.qtype(n) for n in source.names()}
    assert stored_types == {None, "q8_0", "q4_k", "q6_k"}
    assert source.hf_config()["model_type"] == arch
    from_gguf = build(source.hf_config(), GgufPlan(source, torch.float32), source)
    save_file(dequantized, str(tmp_path / "model.safetensors"))
    dense = build(cfg, DensePlan(torch.float32), Checkpoint(tmp_path))
    ids = torch.randint(0, cfg["vocab_size"], (LONGEST_DIRECT_ROWS + 6,), generator=torch.Generator().manual_seed(4))
    assert (logits(from_gguf, ids) - logits(dense, ids)).abs().max().item() < 1e-4


def test_quant_picks_the_file_by_its_type_label(tmp_path):
    for name in ("Qwen3-8B-Q4_K_M.gguf", "Qwen3-8B-Q8_0.gguf", "Qwen3-8B-Q4_K.gguf", "mmproj-Qwen3-8B-F16.gguf"):
        (tmp_path / name).write_bytes(b"")
    split = tmp_path / "Q6_K"
    split.mkdir()
    parts = [split / f"Qwen3-8B-Q6_K-0000{i}-of-00002.gguf" for i in (1, 2)]
    for p in parts:
        p.write_bytes(b"")
    assert gguf_files(tmp_path, "q4_k_m") == [tmp_path / "Qwen3-8B-Q4_K_M.gguf"]
    assert gguf_files(tmp_path, "Q8_0") == [tmp_path / "Qwen3-8B-Q8_0.gguf"]
    assert gguf_files(tmp_path, "q4_k") == [tmp_path / "Qwen3-8B-Q4_K.gguf"]  # the exact label, not q4_k_m
    assert gguf_files(tmp_path, "q6_k") == parts  # split parts in order, one model
    with pytest.raises(BadQuant) as err:
        gguf_files(tmp_path, "q5_k_m")
    assert "matches none" in str(err.value) and "Qwen3-8B-Q8_0.gguf" in str(err.value)
    with pytest.raises(BadQuant) as err:
        gguf_files(tmp_path, None)
    assert "several GGUF files" in str(err.value) and err.value.param == "quant"
    with pytest.raises(BadQuant, match="several"):
        gguf_files(tmp_path, "qwen3")  # a substring of every file
    assert gguf_files(tmp_path / "Q6_K", None) == parts
    (tmp_path / "empty").mkdir()
    assert gguf_files(tmp_path / "empty", None) is None


def test_open_weights_reads_a_gguf_folder_and_counts_its_bytes(hf_model, tmp_path):
    path, _, _ = hf_model
    export_gguf(path, tmp_path / "tiny-Q8_0.gguf", "q8_0")
    export_gguf(path, tmp_path / "tiny-Q4_K_M.gguf", "q4_k_m")
    small, big = open_weights(tmp_path, torch.float32, "q4_k_m"), open_weights(tmp_path, torch.float32, "Q8_0")
    try:
        assert small.quant == "q4_k_m" and big.quant == "q8_0" and small.gguf is not None
        norms = sum(int(np.prod(small.source.shape(n))) * 4 for n in small.source.names() if "norm" in n)
        assert big.planned_bytes(torch.float32) > small.planned_bytes(torch.float32) > norms
    finally:
        small.source.close()
        big.source.close()
    dense = open_weights(path, torch.float32, None)
    assert dense.gguf is None and dense.quant is None
    dense.source.close()
    export_gguf(path, path / "gguf" / "tiny-Q8_0.gguf", "q8_0")  # beside the safetensors, one level down
    for quant, gguf_file, held in ((None, False, None), ("q8_0", True, "q8_0"), ("q4_k", False, "q4_k")):
        both = open_weights(path, torch.float32, quant)  # a GGUF file when quant names one, else the safetensors
        assert (both.gguf is not None) == gguf_file and both.quant == held, quant
        both.source.close()
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 8
