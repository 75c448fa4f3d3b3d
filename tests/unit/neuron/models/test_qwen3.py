"""Our Qwen3 against HF transformers on tiny random checkpoints saved in HF layout: logits of a
chunked prefill and of 16 decode steps through the paged KV cache (f32, 1e-4 max abs), a batch
of several sequences at once, and greedy generation token for token."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from transformers import Qwen3Config as HFConfig
from transformers import Qwen3ForCausalLM as HFQwen3

from neuron.api.errors import api_error_of
from neuron.engine.stepper import SingleSequence, pool_for
from neuron.loading.safetensors import Checkpoint
from neuron.loading.weights import load_weights
from neuron.models import BadCheckpoint, Batch, UnsupportedModel
from neuron.models.qwen3 import Qwen3Config, Qwen3ForCausalLM

CASES = {
    # name: (tie_word_embeddings, num_attention_heads, num_key_value_heads, head_dim)
    "tied-gqa4-headdim24": (True, 8, 2, 24),  # head_dim != hidden / heads (64 / 8 = 8)
    "untied-mha-headdim16": (False, 4, 4, 16),  # GQA ratio 1
}


@pytest.fixture(scope="module", params=sorted(CASES))
def tiny_qwen3(request, tmp_path_factory):
    tie, heads, kv_heads, head_dim = CASES[request.param]
    torch.manual_seed(1234)
    cfg = HFConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
    )
    hf = HFQwen3(cfg).eval()
    with torch.no_grad():  # norms away from 1 so a missed norm weight shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    out = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(out)
    ours = Qwen3ForCausalLM(
        Qwen3Config.from_dict(json.loads((out / "config.json").read_text())),
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    used = load_weights(ours, Checkpoint(out), redundant=ours.tied_names, arch="qwen3")
    assert len(used) == 3 * 11 + 2 + (0 if tie else 1)
    return hf, ours


def test_prefill_and_decode_logits_match_transformers(tiny_qwen3):
    hf, ours = tiny_qwen3
    ids = torch.randint(0, 320, (40,), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    seq = SingleSequence(ours, pool_for(ours, 64 + 32), first_block=2)  # blocks 2.. : not the pool's first
    prefill = torch.cat([seq.run(ids[:11], all_logits=True), seq.run(ids[11:24], all_logits=True)])
    steps = [seq.run(ids[i : i + 1]) for i in range(24, 40)]  # 16 decode steps
    assert (prefill - ref[:24]).abs().max().item() < 1e-4
    assert (torch.stack(steps) - ref[24:]).abs().max().item() < 1e-4
    assert torch.equal(torch.stack(steps).argmax(-1), ref[24:].argmax(-1))


def test_greedy_generation_matches_transformers_generate(tiny_qwen3):
    hf, ours = tiny_qwen3
    prompt = torch.randint(0, 320, (9,), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = hf.generate(
            prompt[None],
            attention_mask=torch.ones(1, 9, dtype=torch.long),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            generation_config=transformers.GenerationConfig(eos_token_id=None, pad_token_id=0),
        )[0, 9:].tolist()
    seq = SingleSequence(ours, pool_for(ours, 9 + 32))
    token = int(seq.run(prompt).argmax())
    got = [token]
    for _ in range(31):
        token = int(seq.run([token]).argmax())
        got.append(token)
    assert got == expected


def test_a_batch_of_sequences_gives_each_what_it_gives_alone(tiny_qwen3):
    """Three sequences in one forward (a chunk after cached tokens, a first chunk, a decode),
    their blocks interleaved in the pool, against each run alone."""
    _, ours = tiny_qwen3
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, 320, (n,), generator=gen).tolist() for n in (37, 20, 52)]
    alone = []
    for p in prompts:
        seq = SingleSequence(ours, pool_for(ours, 64))
        alone.append(seq.run(p, all_logits=True))
    pool = pool_for(ours, 16 * 16)
    tables = [[9, 2, 5, 11], [0, 7], [3, 14, 1, 8]]
    done = [21, 0, 51]  # tokens already in the cache before the batched step
    for p, table, n in zip(prompts, tables, done, strict=True):  # fill each sequence's earlier tokens
        if n:
            seq = SingleSequence(ours, pool, blocks=0)
            seq.blocks = table
            seq.run(p[:n])
    ids, positions, slots, starts, lengths = [], [], [], [0], []
    for p, table, n in zip(prompts, tables, done, strict=True):
        ids += p[n:]
        positions += list(range(n, len(p)))
        slots += [table[i // 16] * 16 + i % 16 for i in range(n, len(p))]
        starts.append(starts[-1] + len(p) - n)
        lengths.append(len(p))
    width = max(len(t) for t in tables)
    batch = Batch(
        input_ids=torch.tensor(ids),
        positions=torch.tensor(positions),
        query_starts=starts,
        context_lens=lengths,
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]),
        slot_mapping=torch.tensor(slots),
        sample_indices=torch.arange(len(ids)),
    )
    logits = ours(batch, pool)
    for i, n in enumerate(done):
        got = logits[starts[i] : starts[i + 1]]
        assert (got - alone[i][n:]).abs().max().item() < 1e-5, i


def test_a_sharded_checkpoint_loads_tensor_by_tensor(tmp_path, tiny_qwen3):
    hf, ours = tiny_qwen3
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    again = Qwen3ForCausalLM(ours.config, dtype=torch.float32, device=torch.device("cpu"))
    load_weights(again, Checkpoint(tmp_path), redundant=again.tied_names, arch="qwen3")
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_loader_names_every_missing_and_unused_tensor(tmp_path):
    from safetensors.torch import save_file

    from neuron.demo import qwen3_config, random_weights

    cfg = qwen3_config(64, num_hidden_layers=1)
    weights = random_weights(cfg)
    del weights["model.layers.0.self_attn.k_proj.weight"]
    weights["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(weights, str(tmp_path / "model.safetensors"))
    model = Qwen3ForCausalLM(Qwen3Config.from_dict(cfg), dtype=torch.float32, device=torch.device("cpu"))
    with pytest.raises(BadCheckpoint) as err:
        load_weights(model, Checkpoint(tmp_path), arch="qwen3")
    answer = api_error_of(err.value, "t/m")
    assert answer.status == 400 and answer.code == "bad_checkpoint" and "'t/m' cannot be used" in answer.message
    assert "missing: model.layers.0.self_attn.k_proj.weight;" in answer.message
    assert "unused: model.layers.0.self_attn.extra.weight" in answer.message


@pytest.mark.parametrize(
    ("override", "what"),
    [
        ({"attention_bias": True}, "attention_bias"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
    ],
)
def test_unsupported_variants_are_refused_naming_the_feature(override, what):
    from neuron.demo import qwen3_config

    with pytest.raises(UnsupportedModel) as err:
        Qwen3Config.from_dict({**qwen3_config(64), **override})
    assert what in str(err.value)
