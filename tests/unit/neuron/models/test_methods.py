"""Weight methods: a Linear holds dense or ggml-block storage per shard, fills each shard from
its own checkpoint tensor (quantizing a float tensor as it arrives), applies itself through
``qmatmul`` or, for long prompts, dequantized tiles and a GEMM, and reports its exact bytes; the
in-situ plan follows llama.cpp's Q4_K_M / Q5_K_M choices; a whole model quantized in situ gives
the logits of the dense model on the dequantized weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from neuron import ops
from neuron.demo import qwen3_config, random_weights
from neuron.engine.stepper import SingleSequence, pool_for
from neuron.loading.isq import IsqPlan, isq_types
from neuron.loading.safetensors import Checkpoint
from neuron.loading.weights import load_weights, planned_bytes, resident_bytes
from neuron.models.layers import Embedding, Linear
from neuron.models.methods import LONGEST_DIRECT_ROWS, Dense, DensePlan, Quant
from neuron.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from neuron.ops.quant import random_quant_tensor

CPU = torch.device("cpu")


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def roundtrip(w: torch.Tensor, qtype: str) -> torch.Tensor:
    return ops.dequantize(ops.quantize(w.float(), qtype))


def test_a_fused_linear_keeps_one_storage_per_run_of_equal_methods():
    g = torch.Generator().manual_seed(0)
    shards = {"q_proj": 96, "k_proj": 32, "v_proj": 32}
    ws = {name: torch.randn(rows, 256, generator=g) for name, rows in shards.items()}
    lin = Linear(256, 160, shards=shards)
    lin.bind([Quant("q4_k"), Quant("q4_k"), Quant("q6_k")], CPU)
    assert [(p.first, p.rows, p.method) for p in lin.parts] == [(0, 128, Quant("q4_k")), (128, 32, Quant("q6_k"))]
    for name, first, rows in lin.shard_rows():
        lin.fill(first, rows, ws[name])
    types = {"q_proj": "q4_k", "k_proj": "q4_k", "v_proj": "q6_k"}
    expected = torch.cat([roundtrip(ws[name], qtype) for name, qtype in types.items()])
    x = torch.randn(3, 256, generator=g)
    assert rel_rms(lin(x), x.double() @ expected.double().T) < 1.5e-2  # int8 activations
    assert lin.nbytes == 128 * 144 + 32 * 210  # Q4_K: 144 bytes per 256, Q6_K: 210
    assert lin.nbytes == sum(b.numel() for b in lin.buffers())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_long_prompt_goes_through_dequantized_tiles_and_a_gemm(dtype):
    g = torch.Generator().manual_seed(1)
    w = random_quant_tensor("q4_k", (1100, 512), generator=g)  # 1100 rows: two full tiles and a tail
    method = Quant("q4_k")
    x = torch.randn(LONGEST_DIRECT_ROWS + 5, 512, generator=g).to(dtype)
    ref = x.double() @ ops.dequantize_ref(w).T
    got = method.apply(w, x)
    assert got.dtype == dtype and got.shape == (LONGEST_DIRECT_ROWS + 5, 1100)
    assert rel_rms(got, ref) < (1e-6 if dtype == torch.float32 else 1e-2)
    short = method.apply(w, x[:3])  # the direct kernel
    assert rel_rms(short, ref[:3]) < 1.5e-2


def test_a_quantized_embedding_reads_its_rows_without_dequantizing_the_table():
    g = torch.Generator().manual_seed(2)
    table = torch.randn(50, 64, generator=g)
    emb = Embedding(50, 64)
    emb.bind(Quant("q8_0"), CPU)
    emb.fill(table)
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    got = emb(ids, torch.float32)
    assert torch.equal(got, roundtrip(table, "q8_0")[ids])
    assert emb.nbytes == 50 * 2 * 34


def test_the_isq_mix_follows_llama_cpp():
    plan = IsqPlan("q4_k_m", torch.bfloat16, num_layers=28, tied=False)
    # llama.cpp's use_more_bits for 28 layers: the first and last eighth, and every third between
    more = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27}
    for layer in range(28):
        for proj in ("self_attn.v_proj", "mlp.down_proj"):
            m = plan.method(f"model.layers.{layer}.{proj}.weight", (1024, 1024))
            assert m == Quant("q6_k" if layer in more else "q4_k"), (layer, proj)
        assert plan.method(f"model.layers.{layer}.self_attn.q_proj.weight", (1024, 1024)) == Quant("q4_k")
        assert plan.method(f"model.layers.{layer}.mlp.gate_proj.weight", (3072, 1024)) == Quant("q4_k")
    assert plan.method("lm_head.weight", (151936, 1024)) == Quant("q6_k")
    assert plan.method("model.embed_tokens.weight", (151936, 1024)) == Quant("q4_k")
    tied = IsqPlan("q5_k_m", torch.bfloat16, num_layers=28, tied=True)
    assert tied.method("model.embed_tokens.weight", (151936, 1024)) == Dense(torch.bfloat16)
    assert tied.method("model.layers.3.mlp.down_proj.weight", (1024, 3072)) == Quant("q5_k")
    pure = IsqPlan("q4_k", torch.bfloat16, num_layers=28, tied=False)
    assert pure.method("lm_head.weight", (151936, 1024)) == Quant("q4_k")  # a pure type: the head too
    assert pure.method("model.layers.0.self_attn.v_proj.weight", (128, 1024)) == Quant("q4_k")


def test_a_width_the_block_does_not_divide_falls_back():
    plan = IsqPlan("q6_k", torch.float32, num_layers=2, tied=False)
    assert plan.method("model.layers.0.mlp.up_proj.weight", (64, 96)) == Quant("q8_0")  # 96 = 3 x 32
    assert plan.method("model.layers.0.mlp.up_proj.weight", (64, 40)) == Dense(torch.float32)
    assert IsqPlan("q4_k", torch.float32, 2, False).method("lm_head.weight", (64, 96)) == Quant("q5_0")
    assert IsqPlan("iq4_xs", torch.float32, 2, False).method("lm_head.weight", (64, 96)) == Quant("iq4_nl")
    assert set(isq_types()) >= {"q8_0", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untied Qwen3 whose every width a K-quant block divides (256, 512)."""
    cfg = qwen3_config(
        300,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=False,
    )
    weights = random_weights(cfg, seed=5, std=0.05)
    out = tmp_path_factory.mktemp("isq")
    save_file(weights, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg))
    return out, cfg, weights


def build(cfg: dict, plan, path) -> Qwen3ForCausalLM:
    model = Qwen3ForCausalLM(Qwen3Config.from_dict(cfg), dtype=torch.float32, device=CPU, plan=plan)
    ckpt = Checkpoint(path)
    try:
        load_weights(model, ckpt, redundant=model.tied_names, arch="qwen3")
    finally:
        ckpt.close()
    return model


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_a_model_quantized_in_situ_gives_the_logits_of_its_dequantized_weights(checkpoint, tmp_path, quant):
    path, cfg, weights = checkpoint
    plan = IsqPlan(quant, torch.float32, num_layers=cfg["num_hidden_layers"], tied=False)
    quantized = build(cfg, plan, path)
    # the reference: the dense model on what each tensor's method stored, dequantized
    dq = {}
    for name, w in weights.items():
        method = plan.method(name, tuple(w.shape)) if w.ndim == 2 else Dense(torch.float32)
        dq[name] = roundtrip(w, method.qtype) if isinstance(method, Quant) else w
    assert {plan.method(n, tuple(w.shape)) for n, w in weights.items() if w.ndim == 2} >= (
        {Quant("q4_k"), Quant("q6_k")} if quant == "q4_k_m" else {Quant("q8_0")}
    )
    save_file(dq, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    dense = build(cfg, DensePlan(torch.float32), tmp_path)

    ids = torch.randint(0, 300, (LONGEST_DIRECT_ROWS + 8,), generator=torch.Generator().manual_seed(3))
    runs = {}
    for key, model in (("quant", quantized), ("dense", dense)):
        seq = SingleSequence(model, pool_for(model, LONGEST_DIRECT_ROWS + 64))
        prefill = seq.run(ids[:-4], all_logits=True)  # long enough for the dequantized-tile GEMM
        steps = torch.stack([seq.run(ids[i : i + 1]) for i in range(len(ids) - 4, len(ids))])  # qmatmul
        runs[key] = (prefill, steps)
    assert (runs["quant"][0] - runs["dense"][0]).abs().max().item() < 1e-4
    # int8 activations in the decode kernel (one scale per 256 for the K-quants), through 8 layers
    assert rel_rms(runs["quant"][1], runs["dense"][1]) < 5e-2

    ckpt = Checkpoint(path)
    try:
        planned = planned_bytes(ckpt, plan, torch.float32)
    finally:
        ckpt.close()
    resident = resident_bytes(quantized)
    assert 0 <= resident - planned <= 1024  # the rotary tables are the only unplanned bytes
    assert resident < resident_bytes(dense) / (3 if quant == "q8_0" else 5)
