"""neuron.ops dense family: the bf16 GEMV and its few-rows form against float64 on every ISA the
build knows (those this machine cannot run are skipped, saying why: conftest.py), awkward shapes
included."""

from __future__ import annotations

import pytest
import torch

from neuron import ops


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize(("n", "k"), [(1, 16), (7, 33), (67, 1024), (130, 1000), (513, 3072)])
def test_gemv_bf16_matches_float64(isa, n, k):
    g = torch.Generator().manual_seed(n * k)
    w = torch.randn(n, k, generator=g).bfloat16()
    x = torch.randn(k, generator=g).bfloat16()
    ref = ops.gemv_bf16_ref(x, w)
    out32 = torch.full((n,), float("nan"))
    got32 = ops.gemv_bf16(x, w, out=out32)
    assert got32 is out32 and torch.isfinite(got32).all()
    assert rel_rms(got32, ref) < 1e-5  # float32 sums of exact products
    got = ops.gemv_bf16(x[None], w)
    assert got.shape == (1, n) and got.dtype == torch.bfloat16
    assert rel_rms(got, ref) < 4e-3  # bf16 rounding of the result


def test_every_isa_agrees_with_generic(simd_isa):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(300, 2048, generator=g).bfloat16()
    x = torch.randn(1, 2048, generator=g).bfloat16()
    ops.set_cpu_isa("generic")
    generic = ops.gemv_bf16(x, w, out=torch.empty(1, 300))
    ops.set_cpu_isa(simd_isa)
    assert ops.cpu_isa() == simd_isa
    torch.testing.assert_close(ops.gemv_bf16(x, w, out=torch.empty(1, 300)), generic, rtol=1e-5, atol=1e-4)


def test_linear_uses_the_kernel_for_one_row():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(300, 2048, generator=g).bfloat16()
    x = torch.randn(1, 2048, generator=g).bfloat16()
    from neuron.models.layers import Linear
    from neuron.models.methods import Dense

    lin = Linear(2048, 300)
    lin.bind([Dense(torch.bfloat16)], torch.device("cpu"))
    lin.weight.data.copy_(w)
    assert rel_rms(lin(x), ops.gemv_bf16_ref(x, w)) < 4e-3
    assert rel_rms(lin(torch.cat([x, x])), torch.cat([ops.gemv_bf16_ref(x, w)] * 2)) < 4e-3


@pytest.mark.parametrize(
    ("m", "n", "k"), [(2, 7, 33), (3, 67, 1024), (5, 31, 96), (7, 64, 40), (8, 130, 1000), (9, 65, 3072), (16, 200, 64)]
)
def test_matmul_bf16_matches_float64_for_a_few_rows(isa, m, n, k):
    g = torch.Generator().manual_seed(m * n + k)
    w = torch.randn(n, k, generator=g).bfloat16()
    x = torch.randn(m, k, generator=g).bfloat16()
    ref = x.double() @ w.double().T
    out32 = torch.full((m, n), float("nan"))
    got32 = ops.matmul_bf16(x, w, out=out32)
    assert got32 is out32 and torch.isfinite(got32).all()
    assert rel_rms(got32, ref) < 1e-5
    for j in range(m):  # every row is the GEMV of that row (same kernels, same sums)
        assert rel_rms(got32[j], ops.gemv_bf16(x[j], w, out=torch.empty(n))) < 1e-6
    got = ops.matmul_bf16(x, w)
    assert got.shape == (m, n) and got.dtype == torch.bfloat16 and rel_rms(got, ref) < 4e-3


def test_matmul_bf16_rejects_bad_input():
    w, x = torch.zeros(4, 8, dtype=torch.bfloat16), torch.zeros(3, 8, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16"):
        ops.matmul_bf16(x.float(), w)
    with pytest.raises(ValueError, match="x has 7 columns but w has K = 8"):
        ops.matmul_bf16(torch.zeros(3, 7, dtype=torch.bfloat16), w)
    with pytest.raises(ValueError, match="contiguous"):
        ops.matmul_bf16(torch.zeros(8, 3, dtype=torch.bfloat16).T, w)
    with pytest.raises(ValueError, match="out must be"):
        ops.matmul_bf16(x, w, out=torch.empty(3, 5))


def test_gemv_bf16_rejects_bad_input():
    w, x = torch.zeros(4, 8, dtype=torch.bfloat16), torch.zeros(8, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16"):
        ops.gemv_bf16(x.float(), w)
    with pytest.raises(ValueError, match="one row of K = 8"):
        ops.gemv_bf16(torch.zeros(2, 8, dtype=torch.bfloat16), w)
    with pytest.raises(ValueError, match="contiguous"):
        ops.gemv_bf16(x, torch.zeros(8, 4, dtype=torch.bfloat16).T)
    with pytest.raises(ValueError, match="out must be"):
        ops.gemv_bf16(x, w, out=torch.empty(5))


@pytest.mark.parametrize(("rows", "dim"), [(1, 128), (3, 1024), (37, 100)])
def test_rms_norm_bf16_matches_hf_semantics(isa, rows, dim):
    g = torch.Generator().manual_seed(rows * dim)
    x = (torch.randn(rows, dim, generator=g) * 3).bfloat16()
    w = torch.rand(dim, generator=g).bfloat16() + 0.5
    got = ops.rms_norm_bf16(x, w, 1e-6)
    h = torch.nn.functional.rms_norm(x.float(), (dim,), eps=1e-6).to(torch.bfloat16)
    torch_way = w * h
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    assert (got.float() - torch_way.float()).abs().max() <= 2**-7 * torch_way.float().abs().max()
    assert rel_rms(got, ops.rms_norm_ref(x, w, 1e-6)) < 6e-3  # two bf16 roundings


def test_rms_norm_bf16_takes_the_strided_heads_of_a_fused_projection(isa):
    g = torch.Generator().manual_seed(9)
    fused = torch.randn(5, 8 * 16 + 2 * 2 * 16, generator=g).bfloat16()  # [T, q + k + v], 8 q heads
    q = fused[:, : 8 * 16].view(5, 8, 16)
    assert not q.is_contiguous()
    w = torch.rand(16, generator=g).bfloat16() + 0.5
    got = ops.rms_norm_bf16(q, w, 1e-6)
    assert got.is_contiguous() and got.shape == (5, 8, 16)
    assert torch.equal(got, ops.rms_norm_bf16(q.contiguous(), w, 1e-6))
    assert rel_rms(got, ops.rms_norm_ref(q, w, 1e-6)) < 6e-3


def test_bf16_decode_step_of_the_model_matches_its_float_path():
    import json

    from neuron.demo import qwen3_config, random_weights
    from neuron.engine.stepper import SingleSequence, pool_for
    from neuron.models.qwen3 import Qwen3Config, Qwen3ForCausalLM

    cfg = qwen3_config(256, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=32)
    weights = random_weights(cfg, seed=4, std=0.1)
    models = {}
    for dtype in (torch.float32, torch.bfloat16):
        m = Qwen3ForCausalLM(
            Qwen3Config.from_dict(json.loads(json.dumps(cfg))), dtype=dtype, device=torch.device("cpu")
        )
        params = dict(m.named_parameters())
        with torch.no_grad():
            for name, t in weights.items():
                if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                    continue
                if name.endswith(("gate_proj.weight", "up_proj.weight")):
                    continue
                params[name].copy_(t)
            for i in range(2):
                p = f"model.layers.{i}."
                qkv = torch.cat([weights[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
                params[p + "self_attn.qkv_proj.weight"].copy_(qkv)
                gu = torch.cat([weights[p + "mlp.gate_proj.weight"], weights[p + "mlp.up_proj.weight"]])
                params[p + "mlp.gate_up_proj.weight"].copy_(gu)
        models[dtype] = m
    ids = torch.randint(0, 256, (12,), generator=torch.Generator().manual_seed(1))
    out = {}
    for dtype, m in models.items():
        seq = SingleSequence(m, pool_for(m, 16))
        seq.run(ids[:8])
        out[dtype] = torch.stack([seq.run(ids[i : i + 1]) for i in range(8, 12)])
    assert rel_rms(out[torch.bfloat16], out[torch.float32]) < 3e-2  # bf16 weights and activations
    assert torch.equal(out[torch.bfloat16].argmax(-1), out[torch.float32].argmax(-1))
