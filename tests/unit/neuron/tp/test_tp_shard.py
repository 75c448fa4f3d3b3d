"""Tensor parallelism on the CPU: two rank processes over gloo, each building its shard of a tiny
random checkpoint (``neuron.tp.shard``), give the logits one process gives with the whole model —
a prompt and decode steps, f32, within 1e-5 — for Qwen3 (kv heads split, and replicated when
there are fewer than ranks; the embedding and head vocab-parallel, tied or not, and replicated when
the vocabulary does not divide), Qwen2 (biases), Qwen3-MoE, a Qwen3.5 hybrid, Qwen3.5-MoE (shared
expert) and Qwen3-Next, dense and quantized in situ per shard; configs that do not divide are
refused naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from neuron.engine.stepper import SingleSequence, pool_for
from neuron.models import UnsupportedModel, architecture_for
from neuron.tp.comm import free_port
from neuron.tp.shard import Shard, ShardedSource, local_config, reduced_blocks

WORKER = Path(__file__).with_name("rank_worker.py")
sys.path.insert(0, str(WORKER.parent))
from rank_worker import build  # noqa: E402 (the same build the ranks use, with one rank)

VOCAB = 128
BASE = dict(
    vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, head_dim=16, intermediate_size=128
)
HYBRID = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)
CASES = {
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(num_key_value_heads=2)),
    "qwen3-kv1": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(num_key_value_heads=1)),
    "qwen2-bias": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(num_key_value_heads=2)),
    # the head shares the (vocab-parallel) embedding's rows
    "qwen3-tied": (
        transformers.Qwen3Config,
        transformers.Qwen3ForCausalLM,
        dict(num_key_value_heads=2, tie_word_embeddings=True),
    ),
    # a vocabulary that does not divide by the ranks: embedding and head replicated instead
    "qwen3-vocab130": (
        transformers.Qwen3Config,
        transformers.Qwen3ForCausalLM,
        dict(num_key_value_heads=2, vocab_size=130),
    ),
    "qwen3-moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM, dict(num_key_value_heads=2, **MOE)),
    "qwen3.5": (
        transformers.Qwen3_5TextConfig,
        transformers.Qwen3_5ForCausalLM,
        dict(num_key_value_heads=2, num_hidden_layers=4, **HYBRID),
    ),
    "qwen3.5-moe": (
        transformers.Qwen3_5MoeTextConfig,
        transformers.Qwen3_5MoeForCausalLM,
        dict(num_key_value_heads=2, num_hidden_layers=4, shared_expert_intermediate_size=64, **HYBRID, **MOE),
    ),
    "qwen3-next": (
        transformers.Qwen3NextConfig,
        transformers.Qwen3NextForCausalLM,
        dict(num_key_value_heads=2, num_hidden_layers=4, shared_expert_intermediate_size=64, **HYBRID, **MOE),
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    config_cls, model_cls, extra = CASES[request.param]
    torch.manual_seed(4)
    hf = model_cls(config_cls(**{**BASE, **extra}))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
            elif "norm" in name:
                p.uniform_(-0.3, 0.3) if "qwen3.5" in request.param or "next" in request.param else p.uniform_(0.7, 1.3)
            elif "experts" in name or "mlp.gate" in name or name.endswith(("A_log", "dt_bias")):
                p.normal_(0, 0.2)
    out = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(out)
    return request.param, out


TOKENS = [torch.randint(0, VOCAB, (21,), generator=torch.Generator().manual_seed(1)).tolist(), [3, 77, 12, 5]]


def one_rank(folder: Path, quant: str | None) -> torch.Tensor:
    model = build(folder, Shard(0, 1), quant)
    prompt, steps = TOKENS
    seq = SingleSequence(model, pool_for(model, 48))
    return torch.cat([seq.run(prompt, all_logits=True)] + [seq.run([t])[None] for t in steps])


def ranks(folder: Path, tmp: Path, world: int, quant: str | None) -> dict:
    out = tmp / "logits.pt"
    args = [str(folder), "", str(world), str(free_port()), str(out), "--tokens", json.dumps(TOKENS)]
    if quant:
        args += ["--quant", quant]
    procs = []
    for r in range(world):
        args[1] = str(r)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), *args], stderr=subprocess.PIPE, text=True))
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=240)
        if p.returncode:
            errors.append(err[-3000:])
    assert not errors, "\n".join(errors)
    return torch.load(out)


@pytest.mark.parametrize("quant", [None, "q8_0"])
def test_two_ranks_give_the_logits_of_one(checkpoint, tmp_path, quant):
    name, folder = checkpoint
    if quant and name not in ("qwen3", "qwen3.5", "qwen3-moe"):
        pytest.skip("in-situ quantization per shard: checked on a dense, a hybrid and an MoE model")
    want = one_rank(folder, quant)
    got = ranks(folder, tmp_path, 2, quant)
    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    assert got["blocks"] == 2 * layers  # two all-reduces a layer
    assert got["logits"].shape == want.shape
    assert (got["logits"] - want).abs().max().item() < 1e-5 * max(1.0, want.abs().max().item())


def test_a_rank_holds_its_slice(checkpoint):
    """Rank 1 of 2: half the query heads and MLP rows, the other half of the columns of o_proj."""
    name, folder = checkpoint
    from neuron.loading.safetensors import Checkpoint

    raw = json.loads((folder / "config.json").read_text())
    cfg = architecture_for(raw).config_class.from_dict(raw)
    full = Checkpoint(folder)
    src = ShardedSource(Checkpoint(folder), cfg, Shard(1, 2))
    q = "model.layers.1.self_attn.q_proj.weight" if "3.5" not in name and "next" not in name else None
    if q:
        rows = full.shape(q)[0]
        assert src.shape(q) == (rows // 2, 64)
        assert torch.equal(src.read(q), full.read(q)[rows // 2 :])
        o = "model.layers.1.self_attn.o_proj.weight"
        assert torch.equal(src.read(o), full.read(o)[:, full.shape(o)[1] // 2 :])
        k = "model.layers.1.self_attn.k_proj.weight"
        if cfg.num_key_value_heads == 1:  # replicated: every rank holds the one kv head
            assert torch.equal(src.read(k), full.read(k))
    norm = "model.norm.weight"
    assert torch.equal(src.read(norm), full.read(norm))
    embed = "model.embed_tokens.weight"
    if cfg.vocab_size % 2 == 0:  # vocab-parallel: rank 1 holds the second half of the rows
        assert torch.equal(src.read(embed), full.read(embed)[cfg.vocab_size // 2 :])
        assert local_config(cfg, Shard(1, 2)).vocab_size == cfg.vocab_size // 2
        if not cfg.tie_word_embeddings:
            assert torch.equal(src.read("lm_head.weight"), full.read("lm_head.weight")[cfg.vocab_size // 2 :])
    else:
        assert torch.equal(src.read(embed), full.read(embed))
        assert local_config(cfg, Shard(1, 2)).vocab_size == cfg.vocab_size
    local = local_config(cfg, Shard(1, 2))
    assert local.num_attention_heads == cfg.num_attention_heads // 2
    model = build(folder, Shard(0, 1), None)
    assert len(reduced_blocks(model)) == 2 * cfg.num_hidden_layers
    full.close()
    src.close()


def test_a_config_that_does_not_divide_is_refused_naming_the_field():
    from neuron.models.qwen3 import Qwen3Config

    cfg = Qwen3Config.from_dict({**BASE, "num_key_value_heads": 2, "num_attention_heads": 6})
    with pytest.raises(UnsupportedModel, match="num_attention_heads divisible by 4, got 6"):
        local_config(cfg, Shard(0, 4))
    cfg = Qwen3Config.from_dict({**BASE, "num_key_value_heads": 2, "intermediate_size": 130})
    with pytest.raises(UnsupportedModel, match="intermediate_size divisible by 4, got 130"):
        local_config(cfg, Shard(0, 4))
    with pytest.raises(ValueError, match="rank 2 is not one of 2 ranks"):
        Shard(2, 2)
