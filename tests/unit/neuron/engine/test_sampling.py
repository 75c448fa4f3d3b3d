"""Sampling: argmax at temperature 0, truncations keep what they promise, penalties move the
right logits, and a seed fixes the output. Then properties over every value the API accepts (the
bounds, denormals, tiny values) and awkward logits (±inf, NaN, ±3.4e38, ties, rows masked to -inf,
float32/bfloat16/float16, vocab 1..300): the sampler never raises and stays in the vocabulary."""

from __future__ import annotations

import math

import msgspec
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cortex.protocol.openai.requests import ChatCompletionRequest, check_chat
from neuron.engine.sampling import Sampler, SamplingParams, sample_rows

CPU = torch.device("cpu")


def draws(params: SamplingParams, logits: torch.Tensor, n: int = 400, prompt=()) -> list[int]:
    s = Sampler(params, logits.shape[0], list(prompt), CPU)
    return [s.sample(logits) for _ in range(n)]


def test_temperature_zero_is_argmax_first_index_on_ties():
    logits = torch.tensor([0.1, 3.0, 3.0, -1.0])
    assert set(draws(SamplingParams(temperature=0.0), logits, 5)) == {1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_batch_samples_each_row_as_its_sampler_alone_would(dtype):
    """Plain greedy rows share one argmax; penalised and sampled rows go alone: every row's token
    is what its own sampler picks, NaN is never chosen, ties go to the first index."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 50, generator=gen).to(dtype)
    logits[1, :] = float("nan")
    logits[1, 7] = 1.0  # the only real logit of a NaN row
    logits[2, 4] = logits[2, 9] = 50.0  # a tie
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.8, seed=11),
        SamplingParams(temperature=0.0, repetition_penalty=1.5),
        SamplingParams(temperature=0.0),
    ]
    prompt = [int(logits[4].float().argmax())]  # penalised away: the penalty must be applied
    batch = [Sampler(p, 50, prompt, CPU) for p in params]
    alone = [Sampler(p, 50, prompt, CPU).sample(logits[i]) for i, p in enumerate(params)]
    assert sample_rows(logits, batch) == alone
    assert alone[1] == 7 and alone[2] == 4
    assert sample_rows(logits[[0, 5]], [batch[0], batch[5]]) == [alone[0], alone[5]]


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


# --- properties: the sampler is total over everything the API accepts ------------------------

INF = float("inf")
F32_MAX = torch.finfo(torch.float32).max
DENORMALS = [5e-324, 1e-310, 1e-45]  # the smallest double, a double denormal, a float32 denormal
SPECIAL_LOGITS = [0.0, -0.0, 1.0, -1.0, 1e-45, 65504.0, 1e38, -1e38, F32_MAX, -F32_MAX, INF, -INF]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _bounded(lo: float, hi: float, extra: list[float], *, exclude_min: bool = False) -> st.SearchStrategy[float]:
    """Values in [lo, hi] (or (lo, hi]), with the bounds, denormals and tiny values drawn often."""
    edges = [v for v in [lo, hi, *extra] if (v > lo if exclude_min else v >= lo) and v <= hi]
    return st.one_of(st.sampled_from(edges), st.floats(lo, hi, exclude_min=exclude_min, allow_subnormal=True))


TEMPERATURES = _bounded(0.0, 2.0, [*DENORMALS, 1e-30, 1e-6, 9.99e-6, 1e-5, 1.0001e-5, 1e-4, 1.0])
PENALTIES = _bounded(-2.0, 2.0, [0.0, *DENORMALS, -5e-324])


@st.composite
def sampling_params(draw: st.DrawFn, temperature: st.SearchStrategy[float] = TEMPERATURES) -> SamplingParams:
    return SamplingParams(
        temperature=draw(temperature),
        top_p=draw(_bounded(0.0, 1.0, [*DENORMALS, 1e-300, 1e-30, 1e-8, 0.5, 0.999999], exclude_min=True)),
        top_k=draw(st.one_of(st.sampled_from([-1, 0, 1, 2]), st.integers(-1, 320))),
        min_p=draw(_bounded(0.0, 1.0, [*DENORMALS, 1e-30, 0.5, 0.999999])),
        repetition_penalty=draw(
            _bounded(0.0, 10.0, [*DENORMALS, 1e-300, 1e-40, 1e-30, 1e-5, 0.5, 1.0, 2.0], exclude_min=True)
        ),
        presence_penalty=draw(PENALTIES),
        frequency_penalty=draw(PENALTIES),
        seed=draw(st.integers(-(2**63), 2**64 - 1)),
    )


def _logit(allow_nan: bool) -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from(SPECIAL_LOGITS),
        st.floats(-30.0, 30.0, width=32),
        st.floats(width=32, allow_nan=allow_nan),  # includes ±inf, denormals and ±3.4e38
    )


@st.composite
def logit_rows(draw: st.DrawFn, allow_nan: bool = False) -> torch.Tensor:
    """One row of logits, vocab 1..300: ties from a small pool, huge magnitudes, ±inf, a mask of
    -inf over part or all of the row, in float32, bfloat16 or float16."""
    pool = draw(st.lists(_logit(allow_nan), min_size=1, max_size=4))
    values = draw(st.lists(st.one_of(st.sampled_from(pool), _logit(allow_nan)), min_size=1, max_size=300))
    row = torch.tensor(values, dtype=torch.float32)
    mask = draw(st.sampled_from(["none", "every_other", "all_but_last", "all"]))
    if mask == "every_other":
        row[::2] = -INF
    elif mask == "all_but_last":
        row[:-1] = -INF
    elif mask == "all":
        row[:] = -INF
    return row.to(draw(st.sampled_from(DTYPES)))


class Case:
    """Logits, params, prompt and the tokens generated so far (observed before sampling)."""

    def __init__(self, logits: torch.Tensor, params: SamplingParams, prompt: list[int], observed: list[int]):
        self.logits, self.params, self.prompt, self.observed = logits, params, prompt, observed

    def sampler(self, **changes) -> Sampler:
        params = SamplingParams(**{**self.params.__dict__, **changes})
        s = Sampler(params, self.logits.shape[0], self.prompt, CPU)
        for t in self.observed:
            s.observe(t)
        return s

    def __repr__(self) -> str:
        return f"Case({self.logits!r}, {self.params!r}, prompt={self.prompt}, observed={self.observed})"


@st.composite
def cases(draw: st.DrawFn, allow_nan: bool = False, temperature: st.SearchStrategy[float] = TEMPERATURES) -> Case:
    logits = draw(logit_rows(allow_nan))
    token = st.integers(0, logits.shape[0] - 1)
    return Case(
        logits,
        draw(sampling_params(temperature)),
        draw(st.lists(token, max_size=8)),
        draw(st.lists(token, max_size=8)),
    )


def penalised_ref(case: Case) -> list[float]:
    """The logits after the penalties, in float64, element by element: a penalised finite logit
    stays finite (clamped to the float32 range), ±inf are left alone, NaN counts as -inf."""
    p = case.params
    seen = set(case.prompt) | set(case.observed)
    out = []
    for i, v in enumerate(case.logits.double().tolist()):
        if math.isnan(v):
            out.append(-INF)
            continue
        if p.repetition_penalty != 1.0 and i in seen and math.isfinite(v):
            v = v / p.repetition_penalty if v > 0 else v * p.repetition_penalty
            v = max(-F32_MAX, min(F32_MAX, v))
        n = case.observed.count(i)
        out.append(v - p.frequency_penalty * n - p.presence_penalty * (n > 0))
    return out


def is_a_best(ref: list[float], token: int, k: int = 1) -> bool:
    """Whether ``ref[token]`` is among the ``k`` largest, up to float32 rounding."""
    kth = sorted(ref, reverse=True)[min(k, len(ref)) - 1]
    if math.isinf(kth):
        return ref[token] >= kth
    return ref[token] >= kth - 1e-6 * (1.0 + abs(kth))


def accepted_by_the_api(p: SamplingParams) -> None:
    req = msgspec.convert(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], **p.__dict__}, ChatCompletionRequest
    )
    check_chat(req)


PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(case=cases(allow_nan=True))
def test_sample_never_raises_and_returns_a_token_of_the_vocabulary(case):
    accepted_by_the_api(case.params)
    before = case.logits.clone()
    s = case.sampler()
    for _ in range(3):
        token = s.sample(case.logits)
        assert type(token) is int and 0 <= token < case.logits.shape[0], token
        s.observe(token)
    torch.testing.assert_close(case.logits, before, rtol=0, atol=0, equal_nan=True)  # the caller's logits


@PROPERTY
@given(case=cases(allow_nan=True))
def test_a_minus_inf_or_nan_logit_is_never_picked_while_another_is_possible(case):
    row = case.logits.float()
    possible = ~torch.isnan(row) & (row > -INF)
    token = case.sampler().sample(case.logits)
    if bool(possible.any()):
        assert bool(possible[token]), f"picked {token} with logit {row[token].item()}"


@PROPERTY
@given(case=cases(allow_nan=True))
def test_the_same_seed_gives_the_same_tokens(case):
    a, b = case.sampler(), case.sampler()
    for _ in range(3):
        ta, tb = a.sample(case.logits), b.sample(case.logits)
        assert ta == tb
        a.observe(ta)
        b.observe(tb)


@PROPERTY
@given(case=cases(temperature=st.just(0.0)))
def test_temperature_zero_is_the_argmax_after_penalties(case):
    token = case.sampler().sample(case.logits)
    ref = penalised_ref(case)
    assert is_a_best(ref, token), f"picked {token} ({ref[token]}), best is {max(ref)}"


@PROPERTY
@given(case=cases(temperature=_bounded(0.0, 1e-5, [*DENORMALS, 1e-30, 1e-10, 9.999e-6], exclude_min=True)))
def test_a_tiny_temperature_is_greedy(case):
    assume(case.params.temperature < 1e-5)
    assert case.sampler().sample(case.logits) == case.sampler(temperature=0.0).sample(case.logits)


@PROPERTY
@given(case=cases(), k=st.integers(1, 5))
def test_top_k_picks_among_the_k_best(case, k):
    s = case.sampler(top_k=k)
    ref = penalised_ref(case)
    for _ in range(3):
        token = s.sample(case.logits)
        assert is_a_best(ref, token, k), f"picked {token} ({ref[token]}), top {k}: {sorted(ref)[-k:]}"


@PROPERTY
@given(case=cases(), cut=st.sampled_from(["min_p", "top_p", "top_k"]))
def test_the_tightest_truncations_leave_only_a_best_token(case, cut):
    change = {"min_p": {"min_p": 1.0}, "top_p": {"top_p": 1e-9}, "top_k": {"top_k": 1}}[cut]
    token = case.sampler(**change).sample(case.logits)
    ref = penalised_ref(case)
    assert is_a_best(ref, token), f"picked {token} ({ref[token]}), best is {max(ref)}"
