"""The built-in demo model: a tiny Qwen3 with random (seeded) weights, a byte-level BPE tokenizer
trained on text the package ships, and a Qwen-style chat template with tools and reasoning.

It says nothing meaningful, but it takes every path a real model takes, loads in well under a
second, and is what ``cortex up`` serves when nothing else is configured. The building blocks
(tokenizer training, config, weights, writing the directory) are reused by the tests to build
models with chosen weights.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKUP_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
DEMO_ID = "helexa/demo"


def demo_text() -> str:
    return (files("neuron") / "data" / "demo_corpus.txt").read_text()


def demo_template() -> str:
    return (files("neuron") / "data" / "chat_template.jinja").read_text()


def train_tokenizer(text: str, *, vocab_size: int = 1024, extra_tokens: list[str] | None = None) -> Tokenizer:
    """Byte-level BPE (as Qwen uses) with ChatML specials and the reasoning / tool markup as
    single tokens; ``extra_tokens`` become whole (non-special) tokens too."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in MARKUP_TOKENS + list(extra_tokens or [])])
    return tok


def qwen3_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    cfg = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    cfg.update(overrides)
    return cfg


def random_weights(cfg: dict[str, Any], *, seed: int = 0, std: float = 0.02) -> dict[str, torch.Tensor]:
    """HF-named random weights for a Qwen3 config (norms are ones)."""
    g = torch.Generator().manual_seed(seed)
    h, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    w = {"model.embed_tokens.weight": rand(cfg["vocab_size"], h), "model.norm.weight": torch.ones(h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.update(
            {
                p + "self_attn.q_proj.weight": rand(q, h),
                p + "self_attn.k_proj.weight": rand(kv, h),
                p + "self_attn.v_proj.weight": rand(kv, h),
                p + "self_attn.o_proj.weight": rand(h, q),
                p + "self_attn.q_norm.weight": torch.ones(hd),
                p + "self_attn.k_norm.weight": torch.ones(hd),
                p + "mlp.gate_proj.weight": rand(inter, h),
                p + "mlp.up_proj.weight": rand(inter, h),
                p + "mlp.down_proj.weight": rand(h, inter),
                p + "input_layernorm.weight": torch.ones(h),
                p + "post_attention_layernorm.weight": torch.ones(h),
            }
        )
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = rand(cfg["vocab_size"], h)
    return w


def perturb_hybrid(hf: torch.nn.Module, *, expert_std: float = 0.1) -> None:
    """Moves a (random) HF hybrid or MoE model's norms, gates and decays away from their
    defaults and initialises the experts HF leaves empty, so that a weight a loader misses or
    converts wrongly changes the logits."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5) if "linear_attn.norm" not in name else p.uniform_(0.5, 1.5)
            elif name.endswith(("A_log", "dt_bias")):
                p.uniform_(-1.0, 1.0)
            elif "experts" in name or "mlp.gate" in name or "shared_expert" in name:
                p.normal_(0, expert_std)


def write_model_dir(
    out: Path,
    tokenizer: Tokenizer,
    cfg: dict[str, Any],
    weights: dict[str, torch.Tensor] | None,
    *,
    template: str,
    generation: dict[str, Any] | None = None,
) -> Path:
    """Writes an HF-layout model directory: config, generation config, tokenizer, template, weights
    (``None``: the folder has them already)."""
    out.mkdir(parents=True, exist_ok=True)
    im_end, eot = tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")
    gen = {
        "eos_token_id": [im_end, eot],
        "pad_token_id": eot,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
    }
    gen.update(generation or {})
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    tokenizer.save(str(out / "tokenizer.json"))
    tok_cfg = {
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "model_max_length": cfg["max_position_embeddings"],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(template)
    if weights is not None:
        save_file(
            {k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"), metadata={"format": "pt"}
        )
    return out


def write_demo_model(out: Path, *, seed: int = 0) -> Path:
    tokenizer = train_tokenizer(demo_text())
    vocab = (tokenizer.get_vocab_size() + 63) // 64 * 64
    cfg = qwen3_config(vocab)
    return write_model_dir(out, tokenizer, cfg, random_weights(cfg, seed=seed), template=demo_template())
