"""Qwen2 (q/k/v bias) and Llama 3 (scaled RoPE) against HF transformers on tiny random
checkpoints saved in HF layout: logits of a chunked prefill and of decode steps through the
paged KV cache (f32, 1e-4), and greedy generation token for token; then the same models
quantized in situ, and written to GGUF and read back, give the same logits as each other."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers

from neuron.demo import demo_template, train_tokenizer
from neuron.engine.stepper import SingleSequence, pool_for
from neuron.loading.gguf import GgufPlan, GgufSource
from neuron.loading.gguf_export import export_gguf
from neuron.loading.isq import IsqPlan
from neuron.loading.safetensors import Checkpoint
from neuron.loading.weights import load_weights
from neuron.models import UnsupportedModel, architecture_for
from neuron.models.layers import CausalLM
from neuron.models.methods import LONGEST_DIRECT_ROWS

VOCAB = 320
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rope_theta=10000.0,
)
CASES = {
    "qwen3-moe": (
        transformers.Qwen3MoeConfig,
        transformers.Qwen3MoeForCausalLM,
        dict(
            tie_word_embeddings=False,
            head_dim=64,
            num_experts=6,
            num_experts_per_tok=2,
            moe_intermediate_size=128,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[1],  # a dense layer between two routed ones
        ),
    ),
    "qwen3-moe-unnormalized-step2": (
        transformers.Qwen3MoeConfig,
        transformers.Qwen3MoeForCausalLM,
        dict(
            tie_word_embeddings=True,
            head_dim=64,
            num_experts=8,
            num_experts_per_tok=3,
            moe_intermediate_size=64,
            norm_topk_prob=False,
            decoder_sparse_step=2,  # layers 1 (and 3, ...) route
            mlp_only_layers=[],
        ),
    ),
    "qwen2-tied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
    "llama3-scaled-rope": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(
            tie_word_embeddings=False,
            head_dim=64,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,  # small, so the scaling touches these positions
            },
        ),
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    config_cls, model_cls, extra = CASES[request.param]
    torch.manual_seed(77)
    hf = model_cls(config_cls(**COMMON, **extra)).eval()
    with torch.no_grad():  # norms and biases away from their defaults so a missed one shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0, 0.5)
            elif "experts" in name or name.endswith("mlp.gate.weight"):
                p.normal_(0, 0.1)  # HF leaves stacked experts uninitialised
    out = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(out)
    raw = json.loads((out / "config.json").read_text())
    arch = architecture_for(raw)
    ours = arch(arch.config_class.from_dict(raw), dtype=torch.float32, device=torch.device("cpu"))
    ckpt = Checkpoint(out)
    load_weights(ours, ckpt, redundant=ours.tied_names, arch=arch.model_type)
    ckpt.close()
    return request.param, hf, ours, out


def test_the_architecture_is_ours_and_the_options_follow_the_config(pair):
    name, _, ours, _ = pair
    assert isinstance(ours, CausalLM)
    cfg = ours.config
    if name.startswith("qwen3-moe"):
        from neuron.models.layers import GatedMLP, SparseMoE

        kinds = [type(layer.mlp) for layer in ours.model.layers]
        expected = [SparseMoE, GatedMLP, SparseMoE] if name == "qwen3-moe" else [GatedMLP, SparseMoE, GatedMLP]
        assert ours.model_type == "qwen3_moe" and cfg.qk_norm and kinds == expected
    elif name.startswith("qwen2"):
        assert ours.model_type == "qwen2" and cfg.qkv_bias and not cfg.qk_norm and cfg.tie_word_embeddings
        assert ours.model.layers[0].self_attn.qkv_proj.bias is not None
    else:
        assert ours.model_type == "llama" and not cfg.qkv_bias and cfg.rope_scaling["factor"] == 8.0


def test_prefill_and_decode_logits_match_transformers(pair):
    _, hf, ours, _ = pair
    ids = torch.randint(0, VOCAB, (120,), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    seq = SingleSequence(ours, pool_for(ours, LONGEST_DIRECT_ROWS + 64))
    prefill = torch.cat([seq.run(ids[:70], all_logits=True), seq.run(ids[70:100], all_logits=True)])
    steps = torch.stack([seq.run(ids[i : i + 1]) for i in range(100, 120)])
    assert (prefill - ref[:100]).abs().max().item() < 1e-4
    assert (steps - ref[100:]).abs().max().item() < 1e-4


def test_greedy_generation_matches_transformers_generate(pair):
    _, hf, ours, _ = pair
    prompt = torch.randint(0, VOCAB, (9,), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = hf.generate(
            prompt[None],
            attention_mask=torch.ones(1, 9, dtype=torch.long),
            max_new_tokens=20,
            min_new_tokens=20,
            do_sample=False,
            generation_config=transformers.GenerationConfig(eos_token_id=None, pad_token_id=0),
        )[0, 9:].tolist()
    seq = SingleSequence(ours, pool_for(ours, 32))
    got = [int(seq.run(prompt).argmax())]
    for _ in range(19):
        got.append(int(seq.run([got[-1]]).argmax()))
    assert got == expected


def test_a_gguf_export_reads_back_as_the_in_situ_load(pair, tmp_path):
    name, _, ours, path = pair
    if name == "qwen3-moe-unnormalized-step2":
        with pytest.raises(UnsupportedModel, match="norm_topk_prob"):  # llama.cpp always renormalizes
            export_gguf(path, tmp_path / "m-Q8_0.gguf", "q8_0")
        return
    tok = train_tokenizer("a tiny corpus for a tiny tokenizer " * 20, vocab_size=300)
    tok.save(str(path / "tokenizer.json"))
    (path / "chat_template.jinja").write_text(demo_template())
    out = export_gguf(path, tmp_path / "m-Q8_0.gguf", "q8_0")
    source = GgufSource([out.path])
    raw = source.hf_config()
    arch = architecture_for(raw)
    assert arch is type(ours)
    cpu = torch.device("cpu")
    from_gguf = arch(
        arch.config_class.from_dict(raw), dtype=torch.float32, device=cpu, plan=GgufPlan(source, torch.float32)
    )
    load_weights(from_gguf, source, redundant=from_gguf.tied_names, arch=arch.model_type)
    cfg = ours.config
    in_situ = arch(
        cfg, dtype=torch.float32, device=cpu, plan=IsqPlan("q8_0", torch.float32, 3, cfg.tie_word_embeddings)
    )
    ckpt = Checkpoint(path)
    load_weights(in_situ, ckpt, redundant=in_situ.tied_names, arch=arch.model_type)
    ckpt.close()
    ids = torch.randint(0, VOCAB, (LONGEST_DIRECT_ROWS + 3,), generator=torch.Generator().manual_seed(2))
    a = SingleSequence(from_gguf, pool_for(from_gguf, LONGEST_DIRECT_ROWS + 64)).run(ids, all_logits=True)
    b = SingleSequence(in_situ, pool_for(in_situ, LONGEST_DIRECT_ROWS + 64)).run(ids, all_logits=True)
    assert (a - b).abs().max().item() < 1e-5, name  # rope and eps round-trip through float32 metadata


def test_an_moe_model_quantized_in_situ_keeps_its_router_dense(pair):
    name, _, ours, path = pair
    if not name.startswith("qwen3-moe"):
        pytest.skip("for the MoE cases")
    cfg = ours.config
    plan = IsqPlan("q8_0", torch.float32, cfg.num_hidden_layers, cfg.tie_word_embeddings)
    quantized = type(ours)(cfg, dtype=torch.float32, device=torch.device("cpu"), plan=plan)
    ckpt = Checkpoint(path)
    load_weights(quantized, ckpt, redundant=quantized.tied_names, arch="qwen3_moe")
    ckpt.close()
    moe = next(layer.mlp for layer in quantized.model.layers if hasattr(layer.mlp, "experts"))
    assert isinstance(moe.gate.parts[0].weight, torch.Tensor)  # the router: dense
    assert moe.experts[0].down_proj.parts[0].method.name == "q8_0"
    # the reference: the dense model holding what each quantized weight dequantizes to (routing is
    # discontinuous, so quantization noise alone would flip some tokens' experts)
    from neuron.models.layers import Linear
    from neuron.ops.quant import QuantTensor, dequantize

    reference = copy.deepcopy(ours)
    dense_linears = dict(reference.named_modules())
    for mod_name, mod in quantized.named_modules():
        if isinstance(mod, Linear) and not mod.tied:
            parts = [dequantize(p.weight) if isinstance(p.weight, QuantTensor) else p.weight for p in mod.parts]
            with torch.no_grad():
                dense_linears[mod_name].parts[0].weight.copy_(torch.cat(parts))
    embed = quantized.model.embed_tokens.weight
    with torch.no_grad():
        reference.model.embed_tokens.weight.copy_(dequantize(embed) if isinstance(embed, QuantTensor) else embed)
    ids = torch.randint(0, VOCAB, (LONGEST_DIRECT_ROWS + 3,), generator=torch.Generator().manual_seed(6))
    a = SingleSequence(quantized, pool_for(quantized, LONGEST_DIRECT_ROWS + 64)).run(ids, all_logits=True)
    b = SingleSequence(reference, pool_for(reference, LONGEST_DIRECT_ROWS + 64)).run(ids, all_logits=True)
    # an expert that few tokens chose multiplies through qmatmul (int8 activations), the rest exactly
    rel = ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()
    assert rel < 5e-3, rel
