"""Sampling: argmax at temperature 0, truncations keep what they promise, penalties move the
right logits, and a seed fixes the output."""

from __future__ import annotations

import torch

from neuron.engine.sampling import Sampler, SamplingParams

CPU = torch.device("cpu")


def draws(params: SamplingParams, logits: torch.Tensor, n: int = 400, prompt=()) -> list[int]:
    s = Sampler(params, logits.shape[0], list(prompt), CPU)
    return [s.sample(logits) for _ in range(n)]


def test_temperature_zero_is_argmax_first_index_on_ties():
    logits = torch.tensor([0.1, 3.0, 3.0, -1.0])
    assert set(draws(SamplingParams(temperature=0.0), logits, 5)) == {1}


def test_top_k_one_equals_greedy_and_top_k_limits_the_support():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0, 2.5])
    assert set(draws(SamplingParams(top_k=1), logits, 50)) == {3}
    assert set(draws(SamplingParams(top_k=2), logits)) == {3, 4}


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    seen = set(draws(SamplingParams(top_p=0.6), probs.log()))
    assert seen == {0, 1}


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    probs = torch.tensor([0.6, 0.3, 0.06, 0.04])
    assert set(draws(SamplingParams(min_p=0.2), probs.log())) == {0, 1}


def test_same_seed_same_sequence_different_seed_differs():
    logits = torch.zeros(1000)
    a = draws(SamplingParams(seed=7), logits, 30)
    assert a == draws(SamplingParams(seed=7), logits, 30)
    assert a != draws(SamplingParams(seed=8), logits, 30)


def test_repetition_penalty_applies_to_prompt_tokens_and_both_signs():
    logits = torch.tensor([2.0, 1.9, -1.0, -1.1])
    s = Sampler(SamplingParams(temperature=0.0, repetition_penalty=2.0), 4, [0, 2], CPU)
    assert s.sample(logits) == 1  # 2.0 / 2 = 1.0 < 1.9
    s2 = Sampler(SamplingParams(temperature=0.0, repetition_penalty=2.0), 4, [1], CPU)
    assert s2.sample(torch.tensor([-5.0, -1.0, -1.5, -9.0])) == 2  # -1 * 2 = -2 < -1.5


def test_presence_and_frequency_penalties_use_output_counts():
    s = Sampler(SamplingParams(temperature=0.0, frequency_penalty=1.0), 3, [], CPU)
    logits = torch.tensor([5.0, 4.5, 0.0])
    assert s.sample(logits) == 0
    s.observe(0)
    assert s.sample(logits) == 1  # 5 - 1 < 4.5
    p = Sampler(SamplingParams(temperature=0.0, presence_penalty=0.4), 3, [], CPU)
    p.observe(0)
    p.observe(0)
    assert p.sample(logits) == 0  # 5 - 0.4 (once, however often) > 4.5
