"""Interop with llama.cpp (``llama-cpp-python``, the ``llamacpp`` extra; skipped without it): a
GGUF file from ``neuron quantize`` loads in llama.cpp with the same tokenization, and on the same
file our logits match llama.cpp's: exactly (within float32 noise) for float32 weights, for each
architecture — which checks names, norms, GQA, Llama's permuted q/k rows and its RoPE
frequency divisors; for the hybrids (qwen3next, qwen35, qwen35moe) the zero-centred norms, ssm_a,
the conv taps, Qwen3-Next's split projections and Qwen3.5's tiled value heads — and within the
two engines' own int8-activation noise at Q8_0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install helexa[llamacpp])")
gguf = pytest.importorskip("gguf")

from neuron.demo import (  # noqa: E402
    demo_template,
    demo_text,
    perturb_hybrid,
    qwen3_config,
    random_weights,
    train_tokenizer,
    write_model_dir,
)
from neuron.engine.stepper import SingleSequence, pool_for  # noqa: E402
from neuron.loading.gguf import GgufPlan, GgufSource, gguf_tokenizer  # noqa: E402
from neuron.loading.gguf_export import export_gguf  # noqa: E402
from neuron.loading.weights import load_weights  # noqa: E402
from neuron.models import architecture_for  # noqa: E402

TOKENS = 256
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def write_hf(out: Path, arch: str) -> Path:
    tok = train_tokenizer(demo_text())
    cfg = qwen3_config(
        (tok.get_vocab_size() + 255) // 256 * 256,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=False,
    )
    weights = random_weights(cfg, seed=1, std=0.08)
    if arch in ("qwen2", "llama"):  # no per-head norms; Qwen2 has q/k/v biases, Llama the scaled RoPE
        weights = {k: v for k, v in weights.items() if "q_norm" not in k and "k_norm" not in k}
        cfg.update(architectures=[f"{arch.capitalize()}ForCausalLM"], model_type=arch)
    if arch == "qwen2":
        g = torch.Generator().manual_seed(5)
        for layer in range(cfg["num_hidden_layers"]):
            for name, rows in (("q", 512), ("k", 128), ("v", 128)):
                weights[f"model.layers.{layer}.self_attn.{name}_proj.bias"] = torch.randn(rows, generator=g) * 0.3
    if arch == "llama":
        cfg["rope_scaling"] = LLAMA3_ROPE
    if arch == "qwen3_moe":  # every layer routed, as llama.cpp's qwen3moe has it
        cfg.update(architectures=["Qwen3MoeForCausalLM"], num_experts=4, num_experts_per_tok=2)
        cfg.update(moe_intermediate_size=256, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])
        g = torch.Generator().manual_seed(6)
        for layer in range(cfg["num_hidden_layers"]):
            prefix = f"model.layers.{layer}.mlp."
            for proj in ("gate_proj", "up_proj", "down_proj"):
                del weights[prefix + proj + ".weight"]
            weights[prefix + "gate.weight"] = torch.randn(4, 512, generator=g) * 0.3
            for e in range(4):
                for proj, shape in (("gate_proj", (256, 512)), ("up_proj", (256, 512)), ("down_proj", (512, 256))):
                    weights[f"{prefix}experts.{e}.{proj}.weight"] = torch.randn(*shape, generator=g) * 0.08
    return write_model_dir(out, tok, cfg, weights, template=demo_template())


HYBRID_COMMON = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    linear_num_key_heads=2,
    linear_num_value_heads=4,  # Qwen3.5 tiles them in the file
    linear_key_head_dim=64,  # llama.cpp sizes both DeltaNet heads by ssm.state_size
    linear_value_head_dim=64,
    max_position_embeddings=512,
)
HYBRID_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128, shared_expert_intermediate_size=256)


def write_hybrid(out: Path, arch: str) -> Path:
    """A tiny random hybrid built by transformers (norms, gates and decays away from their
    defaults), in HF layout with a trained tokenizer."""
    import transformers

    tok = train_tokenizer(demo_text())
    vocab = (tok.get_vocab_size() + 255) // 256 * 256
    if arch == "qwen3_next":
        config = transformers.Qwen3NextConfig(vocab_size=vocab, **HYBRID_COMMON, **HYBRID_MOE)
        model_cls = transformers.Qwen3NextForCausalLM
    elif arch == "qwen3_5":
        config = transformers.Qwen3_5TextConfig(vocab_size=vocab, **HYBRID_COMMON)
        model_cls = transformers.Qwen3_5ForCausalLM
    else:
        config = transformers.Qwen3_5MoeTextConfig(vocab_size=vocab, **HYBRID_COMMON, **HYBRID_MOE)
        model_cls = transformers.Qwen3_5MoeForCausalLM
    torch.manual_seed(2)
    hf = model_cls(config).eval()
    perturb_hybrid(hf, expert_std=0.08)
    hf.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    return write_model_dir(out, tok, cfg, None, template=demo_template())


def as_float32(src: Path, dst: Path) -> Path:
    """The same GGUF file with every tensor dequantized to F32 (written with gguf's writer)."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch=arch)
    scalar = {
        gguf.GGUFValueType.STRING: writer.add_string,
        gguf.GGUFValueType.UINT32: writer.add_uint32,
        gguf.GGUFValueType.INT32: writer.add_int32,
        gguf.GGUFValueType.FLOAT32: writer.add_float32,
        gguf.GGUFValueType.BOOL: writer.add_bool,
    }
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key == "general.file_type":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, field.contents())
        else:
            scalar[kind](key, field.contents())
    for t in reader.tensors:
        writer.add_tensor(t.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def both(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """(our log-probs, llama.cpp's, our token ids, llama.cpp's) over one teacher-forced text."""
    source = GgufSource([path])
    raw = source.hf_config()
    arch = architecture_for(raw)
    cpu = torch.device("cpu")
    ours = arch(arch.config_class.from_dict(raw), dtype=torch.float32, device=cpu, plan=GgufPlan(source, torch.float32))
    load_weights(ours, source, redundant=ours.tied_names, arch=arch.model_type)
    text = demo_text()[:3000]
    ids = gguf_tokenizer(source).encode(text).ids[:TOKENS]
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0
    )
    their_ids = llm.tokenize(text.encode(), add_bos=False, special=True)[:TOKENS]
    llm.eval(ids)
    theirs = torch.log_softmax(torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float64), -1)
    seq = SingleSequence(ours, pool_for(ours, TOKENS + 16))
    prefill = seq.run(ids[:200], all_logits=True)
    steps = [seq.run(ids[i : i + 1]) for i in range(200, len(ids))]  # the decode kernels too
    mine = torch.log_softmax(torch.cat([prefill, torch.stack(steps)]).double(), -1)
    return mine, theirs, ids, their_ids


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p.exp() * (p - q)).sum(-1)


HYBRIDS = ("qwen3_next", "qwen3_5", "qwen3_5_moe")


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama", "qwen3_moe", *HYBRIDS])
def test_our_gguf_loads_in_llama_cpp_and_both_compute_the_same_model(arch, tmp_path):
    hf = write_hybrid(tmp_path / arch, arch) if arch in HYBRIDS else write_hf(tmp_path / arch, arch)
    quantized = export_gguf(hf, tmp_path / f"{arch}-Q8_0.gguf", "q8_0").path
    mine, theirs, ids, their_ids = both(as_float32(quantized, tmp_path / f"{arch}-F32.gguf"))
    assert their_ids == ids  # tokenization identical
    assert kl(theirs, mine).mean().item() < 1e-6
    assert torch.equal(mine.argmax(-1), theirs.argmax(-1))

    mine, theirs, _, _ = both(quantized)
    divergence = kl(theirs, mine)
    agree = (mine.argmax(-1) == theirs.argmax(-1)).double().mean().item()
    # both engines quantize activations to int8 in their own way; on this flat random model that
    # leaves a KL of about 1e-3 between them (0 at float32, above); an MoE router turns that noise
    # into a different expert for the odd token
    bound = 2e-2 if arch in ("qwen3_moe", "qwen3_next", "qwen3_5_moe") else 5e-3
    assert divergence.mean().item() < bound, (arch, divergence.mean().item(), agree)
    assert agree > 0.85, (arch, agree)
