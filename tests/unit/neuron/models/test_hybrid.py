"""The hybrid architectures (Qwen3-Next, Qwen3.5 dense and MoE, the multimodal Qwen3.5 wrapper)
against HF transformers on tiny random checkpoints in float32: logits of prompts of 17, 64 and
200 tokens within 1e-3; prefill then 20 decode steps equals prefilling the whole sequence;
greedy generation is HF's token for token; a batch of four sequences (prompt chunks and decodes
mixed, state slots out of order) gives what each gives alone. Configs vary the head ratios
(value heads = key heads, 2× and 4×), the partial rotary factor, tying, and MoE with and without
a dense layer between."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from neuron.demo import perturb_hybrid
from neuron.engine.kv_cache import BLOCK_TOKENS
from neuron.engine.stepper import SingleSequence, pool_for
from neuron.loading.safetensors import Checkpoint
from neuron.loading.weights import load_weights
from neuron.models import Batch, RecurrentState, architecture_for
from neuron.models.hybrid import GatedDeltaNet, HybridCausalLM
from neuron.models.layers import SparseMoE
from neuron.models.methods import LONGEST_DIRECT_ROWS

VOCAB = 160
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    linear_key_head_dim=16,
    linear_value_head_dim=8,
    max_position_embeddings=512,
)


def vision() -> dict:
    return dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=64, patch_size=4)


CASES = {
    # Qwen3-Next: MoE + shared expert on every layer but one, 2 value heads per key head, rotary on a quarter
    "qwen3-next": (
        transformers.Qwen3NextConfig,
        transformers.Qwen3NextForCausalLM,
        dict(
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            mlp_only_layers=[1],
        ),
    ),
    # Qwen3.5 dense: as many value heads as key heads, half the head rotated, tied head
    "qwen3.5-tied": (
        transformers.Qwen3_5TextConfig,
        transformers.Qwen3_5ForCausalLM,
        dict(
            linear_num_key_heads=2,
            linear_num_value_heads=2,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        ),
    ),
    # Qwen3.5 dense: 4 value heads per key head, 5 layers (two full-attention ones)
    "qwen3.5-gva4": (
        transformers.Qwen3_5TextConfig,
        transformers.Qwen3_5ForCausalLM,
        dict(
            linear_num_key_heads=1,
            linear_num_value_heads=4,
            num_hidden_layers=5,
            layer_types=["linear_attention", "full_attention"] + ["linear_attention"] * 2 + ["full_attention"],
        ),
    ),
    "qwen3.5-moe": (
        transformers.Qwen3_5MoeTextConfig,
        transformers.Qwen3_5MoeForCausalLM,
        dict(
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            num_experts=6,
            num_experts_per_tok=3,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=40,
        ),
    ),
}


def ours_from(folder, expect: str):
    raw = json.loads((folder / "config.json").read_text())
    arch = architecture_for(raw)
    assert arch.__name__ == expect
    model = arch(arch.config_class.from_dict(raw), dtype=torch.float32, device=torch.device("cpu"))
    ckpt = Checkpoint(folder)
    load_weights(model, ckpt, redundant=model.tied_names, arch=arch.model_type, skip_prefixes=arch.skip_prefixes)
    ckpt.close()
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    config_cls, model_cls, extra = CASES[request.param]
    torch.manual_seed(11)
    hf = model_cls(config_cls(**{**COMMON, **extra})).eval()
    perturb_hybrid(hf)
    out = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(out)
    return request.param, hf, ours_from(out, model_cls.__name__)


def ids_of(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def test_the_layers_follow_the_config(pair):
    name, hf, ours = pair
    cfg = hf.config
    assert isinstance(ours, HybridCausalLM)
    spec = ours.state_spec()
    assert len(spec) == cfg.num_hidden_layers
    for layer, kind, state in zip(ours.decoder.layers, cfg.layer_types, spec, strict=True):
        assert layer.layer_type == kind
        assert isinstance(state, RecurrentState) == (kind == "linear_attention")
        if kind == "linear_attention":
            assert isinstance(layer.linear_attn, GatedDeltaNet)
            assert layer.linear_attn.A_log.dtype == torch.float32
    moe = [isinstance(layer.mlp, SparseMoE) for layer in ours.decoder.layers]
    if name == "qwen3-next":
        assert moe == [True, False, True, True]
    else:
        assert all(moe) == name.endswith("moe") and any(moe) == name.endswith("moe")
    if name.endswith("moe") or name == "qwen3-next":
        assert ours.decoder.layers[0].mlp.shared_expert is not None


@pytest.mark.parametrize("length", [17, 64, 200])
def test_prefill_logits_match_transformers(pair, length):
    _, hf, ours = pair
    ids = ids_of(length, length)
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    got = SingleSequence(ours, pool_for(ours, length + 16)).run(ids, all_logits=True)
    assert (got - ref).abs().max().item() < 1e-3


def test_prefill_then_twenty_decode_steps_equals_one_prefill(pair):
    _, _, ours = pair
    ids = ids_of(70, 5)
    whole = SingleSequence(ours, pool_for(ours, 96)).run(ids, all_logits=True)
    seq = SingleSequence(ours, pool_for(ours, 96))
    first = seq.run(ids[:50], all_logits=True)
    steps = torch.stack([seq.run(ids[i : i + 1]) for i in range(50, 70)])
    assert (first - whole[:50]).abs().max().item() < 1e-4
    assert (steps - whole[50:]).abs().max().item() < 1e-4


def test_greedy_generation_is_transformers_token_for_token(pair):
    _, hf, ours = pair
    prompt = ids_of(23, 9)
    with torch.no_grad():
        out = hf.generate(
            prompt[None],
            attention_mask=torch.ones(1, 23, dtype=torch.long),
            max_new_tokens=12,
            min_new_tokens=12,
            do_sample=False,
            generation_config=transformers.GenerationConfig(eos_token_id=None, pad_token_id=0),
        )
    expected = out[0, 23:].tolist()
    seq = SingleSequence(ours, pool_for(ours, 64))
    logits = seq.run(prompt)
    got = []
    for _ in range(12):
        token = int(logits.argmax())
        got.append(token)
        logits = seq.run([token])
    assert got == expected


def test_a_batch_of_four_sequences_gives_what_each_gives_alone(pair):
    """Two steps of one batch: four prompts of different lengths (two of them in two chunks), then
    three decodes beside the fourth prompt's second chunk; each sequence in a state slot out of
    order, with its own blocks."""
    _, _, ours = pair
    prompts = [ids_of(n, 40 + n) for n in (9, 33, 20, 47)]
    alone = [SingleSequence(ours, pool_for(ours, 64)).run(p, all_logits=True) for p in prompts]
    # the decode tokens each sequence gets next: its own greedy choice
    nexts = [int(a[-1].argmax()) for a in alone]
    alone_next = []
    for p, t in zip(prompts, nexts, strict=True):
        seq = SingleSequence(ours, pool_for(ours, 80))
        seq.run(p)
        alone_next.append(seq.run([t]))

    pool = pool_for(ours, 4 * 64, state_slots=6)
    slots = [4, 1, 5, 2]
    blocks = [list(range(i * 4, i * 4 + 4)) for i in (3, 0, 2, 1)]
    first_chunk = [9, 33, 20, 30]  # the last prompt's rest comes in step two

    def batch(chunks: list[tuple[int, list[int], int]]) -> Batch:
        """chunks: (sequence, its new tokens, tokens before them)."""
        ids, pos, slot_map, starts, lens, tables, sample = [], [], [], [0], [], [], []
        for i, toks, before in chunks:
            ids += toks
            pos += range(before, before + len(toks))
            span = range(before, before + len(toks))
            slot_map += [blocks[i][p // BLOCK_TOKENS] * BLOCK_TOKENS + p % BLOCK_TOKENS for p in span]
            starts.append(starts[-1] + len(toks))
            lens.append(before + len(toks))
            tables.append(blocks[i])
        sample = list(range(starts[-1]))
        return Batch(
            input_ids=torch.tensor(ids),
            positions=torch.tensor(pos),
            query_starts=starts,
            context_lens=lens,
            block_tables=torch.tensor(tables),
            slot_mapping=torch.tensor(slot_map),
            sample_indices=torch.tensor(sample),
            state_slots=torch.tensor([slots[i] for i, _, _ in chunks]),
        )

    step1 = [(i, prompts[i][:n].tolist(), 0) for i, n in enumerate(first_chunk)]
    out1 = ours(batch(step1), pool)
    step2 = [(i, [nexts[i]], len(prompts[i])) for i in range(3)] + [(3, prompts[3][30:].tolist(), 30)]
    out2 = ours(batch(step2), pool)
    starts = [0, 9, 42, 62, 92]
    for i in range(4):
        n = first_chunk[i]
        assert (out1[starts[i] : starts[i] + n] - alone[i][:n]).abs().max().item() < 1e-4
    for i in range(3):
        assert (out2[i] - alone_next[i]).abs().max().item() < 1e-4
    assert (out2[3:] - alone[3][30:]).abs().max().item() < 1e-4


def test_the_multimodal_checkpoint_serves_its_text_side(tmp_path):
    """Qwen3_5ForConditionalGeneration keeps the decoder at model.language_model and a vision tower
    beside it: the tower is left unread and the text logits are HF's."""
    text = {**COMMON, "linear_num_key_heads": 2, "linear_num_value_heads": 4}
    cfg = transformers.Qwen3_5Config(text_config=text, vision_config=vision())
    torch.manual_seed(3)
    hf = transformers.Qwen3_5ForConditionalGeneration(cfg).eval()
    perturb_hybrid(hf)
    hf.save_pretrained(tmp_path)
    ours = ours_from(tmp_path, "Qwen3_5ForConditionalGeneration")
    assert ours.model_type == "qwen3_5" and hasattr(ours.model, "language_model")
    ids = ids_of(30, 2)
    with torch.no_grad():
        ref = hf(input_ids=ids[None]).logits[0]
    got = SingleSequence(ours, pool_for(ours, 48)).run(ids, all_logits=True)
    assert (got - ref).abs().max().item() < 1e-3


def test_inconsistent_hybrid_configs_are_refused_naming_the_field():
    from neuron.models import BadCheckpoint
    from neuron.models.qwen3_5 import Qwen3_5Config

    base = {
        **COMMON,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    }
    with pytest.raises(BadCheckpoint, match="layer_types"):
        Qwen3_5Config.from_dict({**base, "layer_types": ["linear_attention"] * 3})
    with pytest.raises(BadCheckpoint, match="linear_num_value_heads = 3"):
        Qwen3_5Config.from_dict({**base, "linear_num_value_heads": 3})
    with pytest.raises(BadCheckpoint, match="linear_key_head_dim"):
        Qwen3_5Config.from_dict({k: v for k, v in base.items() if k != "linear_key_head_dim"})
    cfg = Qwen3_5Config.from_dict({k: v for k, v in base.items() if k != "layer_types"})
    assert cfg.layer_types == base["layer_types"]  # every fourth layer is full attention by default


def test_in_situ_quantization_takes_the_projections_and_experts_and_leaves_the_rest_dense(pair, tmp_path):
    """Q8_0 in situ: the DeltaNet projections, attention, experts and the shared expert are
    quantized (where their widths take 32-blocks); the router, the shared expert's gate, norms,
    conv taps, A_log and dt_bias stay as they were; the logits are those of the float model
    holding what each quantized weight dequantizes to (routing is discontinuous: quantization noise
    alone would flip experts), up to the int8 activations of the quantized products."""
    name, hf, dense = pair
    from neuron.loading.isq import IsqPlan
    from neuron.models.layers import Linear
    from neuron.ops.quant import QuantTensor, dequantize

    folder = tmp_path / "ckpt"
    hf.save_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    arch = architecture_for(raw)
    cfg = arch.config_class.from_dict(raw)
    plan = IsqPlan("q8_0", torch.float32, cfg.num_hidden_layers, cfg.tie_word_embeddings)
    quantized = arch(cfg, dtype=torch.float32, device=torch.device("cpu"), plan=plan)
    ckpt = Checkpoint(folder)
    load_weights(quantized, ckpt, redundant=quantized.tied_names, arch=arch.model_type)
    ckpt.close()

    def method(linear: Linear) -> str:
        return "q8_0" if linear.in_features % 32 == 0 else "float32"

    layers = quantized.decoder.layers
    gdn = next(layer.linear_attn for layer in layers if layer.layer_type == "linear_attention")
    assert [p.method.name for p in gdn.in_proj.parts] == ["q8_0"]
    assert gdn.out_proj.parts[0].method.name == method(gdn.out_proj)
    assert isinstance(gdn.conv1d.weight, torch.nn.Parameter) and gdn.A_log.dtype == torch.float32
    attn = next(layer.self_attn for layer in layers if layer.layer_type == "full_attention")
    assert attn.qkv_proj.parts[0].method.name == "q8_0"
    moe = next((layer.mlp for layer in layers if isinstance(layer.mlp, SparseMoE)), None)
    assert (moe is not None) == (name.endswith("moe") or name == "qwen3-next")
    if moe is not None:
        assert isinstance(moe.gate.parts[0].weight, torch.Tensor)
        assert isinstance(moe.shared_expert_gate.parts[0].weight, torch.Tensor)
        assert moe.experts[0].down_proj.parts[0].method.name == "q8_0"
        assert moe.shared_expert.gate_up_proj.parts[0].method.name == "q8_0"
    reference = ours_from(folder, arch.__name__)
    linears = dict(reference.named_modules())
    for mod_name, mod in quantized.named_modules():
        if isinstance(mod, Linear) and not mod.tied:
            parts = [dequantize(p.weight) if isinstance(p.weight, QuantTensor) else p.weight for p in mod.parts]
            with torch.no_grad():
                linears[mod_name].parts[0].weight.copy_(torch.cat(parts))
    embed = quantized.decoder.embed_tokens.weight
    with torch.no_grad():
        reference.decoder.embed_tokens.weight.copy_(dequantize(embed) if isinstance(embed, QuantTensor) else embed)
    ids = ids_of(LONGEST_DIRECT_ROWS + 3, 13)  # a prefill long enough for every product to take float activations
    n = LONGEST_DIRECT_ROWS + 16
    want = SingleSequence(reference, pool_for(reference, n)).run(ids, all_logits=True)
    got = SingleSequence(quantized, pool_for(quantized, n)).run(ids, all_logits=True)
    float_logits = SingleSequence(dense, pool_for(dense, n)).run(ids, all_logits=True)
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < 1e-4, rel
    assert (float_logits - want).abs().max().item() > 1e-4  # the weights did change
