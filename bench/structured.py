#!/usr/bin/env python3
"""What structured output costs a decode step: the time to compute one row's token mask (llguidance,
through ``neuron.engine.grammar``, the bitmask turned into a bool mask over the vocabulary) and to
feed it the sampled token, for the grammars the neuron builds: a JSON schema, any JSON object, and
a demanded call of one of two tools. Random walks (each step samples uniformly among the allowed
tokens) over a byte-level BPE tokenizer trained here with ``--vocab`` tokens; the table gives the
median and 90th percentile per step beside a decode step of the engine, as a share of it.

    python bench/structured.py [--vocab 32000] [--walks 20] [--steps 64] [--decode-ms 80]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import subprocess
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from neuron.demo import demo_text
from neuron.engine.grammar import Grammars

ANSWER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "temp": {"type": "integer", "minimum": -50, "maximum": 60},
        "sky": {"enum": ["clear", "cloudy", "rain"]},
    },
    "required": ["city", "temp", "sky"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
]


def tokenizer(vocab: int, seed: int) -> Tokenizer:
    """A byte-level BPE with ``vocab`` tokens, trained on the demo corpus and random words."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(40000)]
    corpus = [demo_text()] * 20 + [" ".join(rng.choices(words, k=2000)) for _ in range(400)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>", "<|im_end|>", "<tool_call>", "</tool_call>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def walk(make, vocab: int, steps: int, rng: random.Random) -> tuple[list[float], list[float]]:
    constraint = make()
    masks, feeds = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        allowed = constraint.mask(vocab)
        t1 = time.perf_counter()
        ids = allowed.nonzero().flatten().tolist()
        if not ids or constraint.is_done():
            break
        token = rng.choice(ids)
        t2 = time.perf_counter()
        ok = constraint.accept(token)
        t3 = time.perf_counter()
        masks.append(t1 - t0)
        feeds.append(t3 - t2)
        if not ok or constraint.is_done():
            break
    return masks, feeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32000, help="tokenizer size (default: %(default)s)")
    ap.add_argument("--walks", type=int, default=20, help="random walks per grammar (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=64, help="longest walk (default: %(default)s)")
    ap.add_argument(
        "--decode-ms", type=float, default=80.0, help="a decode step to compare with (default: %(default)s)"
    )
    args = ap.parse_args()
    import llguidance

    tok = tokenizer(args.vocab, seed=1)
    vocab = tok.get_vocab_size()
    grammars = Grammars(tok, vocab, {tok.token_to_id("<|im_end|>")})
    t0 = time.perf_counter()
    grammars.json(None)  # builds the llguidance tokenizer once
    setup_ms = (time.perf_counter() - t0) * 1e3
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print("# structured output: the cost of a token mask per decode step\n")
    print(f"- llguidance {llguidance.get_version()}, tokenizer of {vocab} tokens (first grammar {setup_ms:.0f} ms)")
    print(f"- {platform.processor() or platform.machine()}, torch {torch.__version__}, commit {commit or '?'}")
    print(f"- {args.walks} random walks of up to {args.steps} tokens per grammar\n")
    print("| grammar | build ms | mask p50 µs | mask p90 µs | feed p50 µs | share of a decode step |")
    print("|---|---|---|---|---|---|")
    cases = {
        "json_schema (3 fields)": lambda: grammars.json(ANSWER),
        "json_object": lambda: grammars.json(None),
        "tool call (required, 2 tools)": lambda: grammars.tool_call(TOOLS, None),
    }
    rng = random.Random(7)
    for name, make in cases.items():
        t0 = time.perf_counter()
        make()
        build_ms = (time.perf_counter() - t0) * 1e3
        masks, feeds = [], []
        for _ in range(args.walks):
            m, f = walk(make, vocab, args.steps, rng)
            masks += m
            feeds += f
        p50 = statistics.median(masks) * 1e6
        p90 = statistics.quantiles(masks, n=10)[-1] * 1e6 if len(masks) > 1 else p50
        feed = statistics.median(feeds) * 1e6
        share = (p50 + feed) / (args.decode_ms * 1e3)
        print(f"| {name} | {build_ms:.1f} | {p50:.0f} | {p90:.0f} | {feed:.0f} | {share:.2%} |", flush=True)


if __name__ == "__main__":
    main()
