"""The gated DeltaNet ops against their float64 references, on every CPU ISA: the delta rule in both
forms (recurrent and chunked, lengths around the 64-token chunk), carried state (two-piece prefills,
prefill then decodes), extreme gates, strongly correlated keys, batches mixing decodes and prefills
over shuffled slots with mixed fresh flags, grouped value heads, Dk != Dv, bfloat16 inputs, final
states and the untouched slots; the conv with K = 4 and 2, sequences shorter than K - 1 and
continuation across calls; the gates at extreme values. Outputs are pre-filled with NaN so an
unwritten element fails; bad arguments raise naming what was wrong."""

from __future__ import annotations

import re

import pytest
import torch

from neuron import ops

# relative RMS against float64, per input dtype: o is rounded once to the input dtype; the states
# stay float32 whatever the inputs are
TOL_OUT = {torch.float32: 1e-5, torch.bfloat16: 5e-3}
TOL_STATE = 1e-5
MODES = ["recurrent", "chunked", "auto"]


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(torch.sqrt(((a - b) ** 2).mean()) / torch.sqrt((b**2).mean()).clamp_min(1e-300))


def starts_of(lens: list[int]) -> list[int]:
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return out


_REFS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


class Rule:
    """One gated_delta_rule case: random inputs for sequences of `lens` in a pool of `pool` slots."""

    def __init__(
        self,
        seed: int,
        lens: list[int],
        *,
        hk: int = 2,
        hv: int = 4,
        dk: int = 32,
        dv: int = 32,
        dtype: torch.dtype = torch.float32,
        pool: int | None = None,
        fresh: list[bool] | None = None,
        g_range: tuple[float, float] = (-1.5, 0.0),
        beta_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        rows = sum(lens)
        self.hk, self.hv, self.dk, self.dv, self.lens = hk, hv, dk, dv, lens
        self.qkv = torch.randn(rows, 2 * hk * dk + hv * dv, generator=gen).to(dtype)
        lo, hi = g_range
        self.g = lo + (hi - lo) * torch.rand(rows, hv, generator=gen)
        lo, hi = beta_range
        self.beta = lo + (hi - lo) * torch.rand(rows, hv, generator=gen)
        pool = pool if pool is not None else len(lens) + 2
        self.states = torch.randn(pool, hv, dk, dv, generator=gen) * 0.3
        self.slots = torch.randperm(pool, generator=gen)[: len(lens)]
        self.fresh = torch.tensor(fresh if fresh is not None else [False] * len(lens))
        self.starts = starts_of(lens)
        # the reference is shared by the cases with these arguments (every ISA and mode)
        self.key: tuple | None = (
            seed,
            tuple(lens),
            hk,
            hv,
            dk,
            dv,
            dtype,
            pool,
            tuple(self.fresh.tolist()),
            g_range,
            beta_range,
        )

    def kwargs(self) -> dict:
        return {"key_heads": self.hk, "key_dim": self.dk, "value_dim": self.dv}

    def run(self, mode: str, states: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.states.clone() if states is None else states
        out = torch.full((self.qkv.shape[0], self.hv, self.dv), float("nan"), dtype=self.qkv.dtype)
        got = ops.gated_delta_rule(
            self.qkv,
            self.g,
            self.beta,
            states,
            self.starts,
            self.slots,
            self.fresh,
            mode=mode,
            out=out,
            **self.kwargs(),
        )
        assert got is out
        assert not torch.isnan(got).any()
        return got, states

    def ref(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.key is None or self.key not in _REFS:
            ref = ops.gated_delta_rule_ref(
                self.qkv, self.g, self.beta, self.states, self.starts, self.slots, self.fresh, **self.kwargs()
            )
            if self.key is None:
                return ref
            _REFS[self.key] = ref
        return _REFS[self.key]

    def check(self, mode: str, tol_out: float | None = None, tol_state: float = TOL_STATE) -> None:
        got, states = self.run(mode)
        want, want_states = self.ref()
        assert rel_rms(got, want) < (tol_out or TOL_OUT[self.qkv.dtype])
        used = self.slots.tolist()
        assert rel_rms(states[used], want_states[used]) < tol_state
        unused = [s for s in range(self.states.shape[0]) if s not in used]
        assert torch.equal(states[unused], self.states[unused])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("length", [1, 5, 63, 64, 65, 200])
def test_delta_rule_matches_the_float64_recurrence_around_the_chunk_size(isa, mode, length):
    Rule(length, [length], dk=64, dv=64).check(mode)


@pytest.mark.parametrize("length", [1, 63, 65, 200])
def test_chunked_and_recurrent_agree(isa, length):
    case = Rule(length + 1, [length], hk=2, hv=4, dk=64, dv=64)
    o_rec, s_rec = case.run("recurrent")
    o_chunk, s_chunk = case.run("chunked")
    assert rel_rms(o_chunk, o_rec) < 1e-5
    assert rel_rms(s_chunk, s_rec) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_a_prefill_in_two_pieces_equals_one(isa, mode, dtype):
    whole = Rule(11, [150], dtype=dtype, fresh=[True])
    o_whole, s_whole = whole.run(mode)
    states = whole.states.clone()
    slot = whole.slots.tolist()
    pieces = []
    for r0, r1, fresh in ((0, 70, True), (70, 150, False)):
        pieces.append(
            ops.gated_delta_rule(
                whole.qkv[r0:r1].contiguous(),
                whole.g[r0:r1].contiguous(),
                whole.beta[r0:r1].contiguous(),
                states,
                [0, r1 - r0],
                slot,
                [fresh],
                mode=mode,
                **whole.kwargs(),
            )
        )
    assert rel_rms(torch.cat(pieces), o_whole) < TOL_OUT[dtype]
    assert rel_rms(states, s_whole) < TOL_STATE


def test_a_prefill_then_decode_steps_equals_one_longer_prefill(isa):
    case = Rule(12, [100], hk=2, hv=4, dk=64, dv=32, fresh=[True])
    o_whole, s_whole = case.run("auto")
    states = case.states.clone()
    slot = case.slots.tolist()
    rows = [slice(0, 90)] + [slice(t, t + 1) for t in range(90, 100)]
    outs = []
    for i, r in enumerate(rows):
        outs.append(
            ops.gated_delta_rule(
                case.qkv[r].contiguous(),
                case.g[r].contiguous(),
                case.beta[r].contiguous(),
                states,
                [0, r.stop - r.start],
                slot,
                [i == 0],
                mode="chunked" if i == 0 else "auto",
                **case.kwargs(),
            )
        )
    assert rel_rms(torch.cat(outs), o_whole) < 1e-5
    assert rel_rms(states, s_whole) < TOL_STATE


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
@pytest.mark.parametrize(
    ("g_range", "beta_range"),
    [
        ((-1e-4, 0.0), (0.0, 1.0)),  # almost no decay
        ((-20.0, -19.0), (0.0, 1.0)),  # the state all but forgotten at every token
        ((-1.0, 0.0), (0.0, 1e-4)),  # beta near 0: almost no writes
        ((-1.0, 0.0), (1.0 - 1e-4, 1.0)),  # beta near 1: each write replaces what the key held
        ((0.0, 0.0), (1.0, 1.0)),  # exactly no decay, exactly full writes
    ],
)
def test_extreme_gates(isa, mode, g_range, beta_range):
    Rule(13, [130, 1, 40], g_range=g_range, beta_range=beta_range).check(mode)


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
def test_strongly_correlated_keys(isa, mode):
    case = Rule(14, [150], hk=1, hv=2, dk=64, dv=64, beta_range=(0.5, 1.0), g_range=(-0.05, 0.0))
    kd = case.hk * case.dk
    keys = case.qkv[:, kd : 2 * kd]
    keys.copy_(keys[:1] + 0.02 * keys)  # every key within a few degrees of the first
    case.key = None
    case.check(mode)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_a_batch_mixing_decodes_and_prefills_over_shuffled_slots(isa, mode, dtype):
    lens = [1, 130, 1, 0, 64, 7, 1, 0, 70]
    fresh = [False, True, False, True, False, True, True, False, False]
    case = Rule(15, lens, dtype=dtype, pool=13, fresh=fresh)
    case.check(mode)
    _, states = case.run(mode)
    zero_length_fresh, zero_length_kept = int(case.slots[3]), int(case.slots[7])
    assert torch.equal(states[zero_length_fresh], torch.zeros_like(states[0]))  # started, nothing seen yet
    assert torch.equal(states[zero_length_kept], case.states[zero_length_kept])


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
@pytest.mark.parametrize(
    ("hk", "hv", "dk", "dv"),
    [
        (4, 4, 32, 32),  # Hv == Hk
        (2, 4, 64, 64),  # Hv = 2 Hk (Qwen3-Next's ratio)
        (2, 8, 32, 48),  # Hv = 4 Hk
        (1, 2, 64, 128),  # Dk != Dv
        (2, 2, 128, 64),
        (2, 4, 40, 24),  # off the SIMD widths: the generic kernels take these
    ],
)
def test_head_layouts(isa, mode, hk, hv, dk, dv):
    Rule(16 + hv + dk, [70, 1, 9], hk=hk, hv=hv, dk=dk, dv=dv).check(mode)


@pytest.mark.parametrize("mode", ["recurrent", "chunked"])
@pytest.mark.parametrize(("hk", "hv"), [(2, 4), (2, 8), (3, 3)])
def test_tiled_value_heads_are_the_grouped_ones_in_llama_cpps_order(isa, mode, hk, hv):
    """With value_heads_tiled, value head h reads key head h % Hk: the grouped case with its value
    heads (V, g, beta, state, output) moved to tiled order gives the same numbers, and the
    reference agrees."""
    case = Rule(31 + hv, [70, 1, 9], hk=hk, hv=hv, dk=32, dv=32)
    r = hv // hk
    grouped_of = torch.tensor([(h % hk) * r + h // hk for h in range(hv)])  # tiled h holds grouped grouped_of[h]
    qk = 2 * hk * case.dk
    v = case.qkv[:, qk:].reshape(-1, hv, case.dv)[:, grouped_of].reshape(case.qkv.shape[0], -1)
    qkv = torch.cat([case.qkv[:, :qk], v], dim=1).contiguous()
    g, beta = case.g[:, grouped_of].contiguous(), case.beta[:, grouped_of].contiguous()
    states = case.states[:, grouped_of].contiguous()
    out = torch.full((qkv.shape[0], hv, case.dv), float("nan"))
    args = (qkv, g, beta, states, case.starts, case.slots, case.fresh)
    got = ops.gated_delta_rule(*args, mode=mode, value_heads_tiled=True, out=out, **case.kwargs())
    want, want_states = case.ref()
    assert rel_rms(got, want[:, grouped_of]) < TOL_OUT[torch.float32]
    used = case.slots.tolist()
    assert rel_rms(states[used], want_states[used][:, grouped_of]) < TOL_STATE
    ref, _ = ops.gated_delta_rule_ref(
        qkv,
        g,
        beta,
        case.states[:, grouped_of],
        case.starts,
        case.slots,
        case.fresh,
        value_heads_tiled=True,
        **case.kwargs(),
    )
    assert rel_rms(got, ref) < TOL_OUT[torch.float32]
    if hv != hk:  # the flag matters
        plain = ops.gated_delta_rule(
            qkv,
            g,
            beta,
            case.states[:, grouped_of].contiguous(),
            case.starts,
            case.slots,
            case.fresh,
            mode=mode,
            **case.kwargs(),
        )
        assert rel_rms(plain, ref) > 1e-2


def test_the_model_shapes_in_bfloat16(isa):
    """Qwen3-Next's linear attention: 16 key heads, 32 value heads, 128 x 128."""
    case = Rule(17, [1, 66], hk=16, hv=32, dk=128, dv=128, dtype=torch.bfloat16)
    case.check("chunked")
    case.check("recurrent")


def test_the_scale_argument(isa):
    case = Rule(18, [20, 1])
    got = ops.gated_delta_rule(
        case.qkv,
        case.g,
        case.beta,
        case.states.clone(),
        case.starts,
        case.slots,
        case.fresh,
        scale=0.3,
        **case.kwargs(),
    )
    want, _ = ops.gated_delta_rule_ref(
        case.qkv, case.g, case.beta, case.states, case.starts, case.slots, case.fresh, scale=0.3, **case.kwargs()
    )
    assert rel_rms(got, want) < 1e-5


def test_the_isas_agree(simd_isa):
    case = Rule(19, [100, 1, 1, 30], hk=2, hv=4, dk=64, dv=64, dtype=torch.bfloat16)
    for mode in ("recurrent", "chunked"):
        ours = case.run(mode)
        ops.set_cpu_isa("generic")
        plain = case.run(mode)
        ops.set_cpu_isa(simd_isa)
        assert rel_rms(ours[0], plain[0]) < 5e-3 and rel_rms(ours[1], plain[1]) < 1e-5


def test_results_do_not_depend_on_the_thread_count(isa, restore_threads):
    case = Rule(20, [90, 1, 33, 1], hk=2, hv=4)
    results = []
    for n in (1, 2, 3):
        ops.set_num_threads(n)
        results.append([case.run(mode) for mode in ("recurrent", "chunked")])
    for other in results[1:]:
        for (o, s), (o0, s0) in zip(other, results[0], strict=True):
            assert torch.equal(o, o0) and torch.equal(s, s0)


# --- causal conv1d --------------------------------------------------------------------------------


def conv_case(seed: int, lens: list[int], channels: int, taps: int, dtype=torch.float32, w_dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lens), channels, generator=gen).to(dtype)
    w = (torch.randn(channels, taps, generator=gen) * 0.5).to(w_dtype)
    states = torch.randn(len(lens) + 3, channels, taps - 1, generator=gen)
    slots = torch.randperm(len(lens) + 3, generator=gen)[: len(lens)]
    return x, w, states, starts_of(lens), slots


def run_conv(x, w, states, starts, slots, fresh):
    out = torch.full(x.shape, float("nan"), dtype=x.dtype)
    y = ops.causal_conv1d(x, w, states, starts, slots, fresh, out=out)
    assert y is out and not torch.isnan(y).any()
    return y


CONV_TOL = {torch.float32: 2e-6, torch.bfloat16: 8e-3}  # max error relative to max |y|


@pytest.mark.parametrize(
    ("dtype", "w_dtype"),
    [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)],
)
@pytest.mark.parametrize("taps", [4, 2])
@pytest.mark.parametrize("channels", [40, 300, 769])
def test_conv_matches_the_float64_reference(isa, taps, channels, dtype, w_dtype):
    lens = [1, 2, 5, 0, 17, 1, 0]  # shorter than K - 1 too: the state shifts by what came
    fresh = [False, True, False, True, False, False, False]
    x, w, states, starts, slots = conv_case(channels + taps, lens, channels, taps, dtype, w_dtype)
    before = states.clone()
    y = run_conv(x, w, states, starts, slots, fresh)
    want, want_states = ops.causal_conv1d_ref(x, w, before, starts, slots, fresh)
    assert float((y.double() - want).abs().max() / want.abs().max()) < CONV_TOL[dtype]
    assert torch.equal(states, want_states.float())  # the state holds inputs: copied, never rounded


@pytest.mark.parametrize("taps", [4, 2])
def test_conv_continued_across_calls_equals_one_call(isa, taps):
    x, w, states, _, slots = conv_case(21, [40], 96, taps)
    whole_states = states.clone()
    y_whole = run_conv(x, w, whole_states, [0, 40], slots, [True])
    y_parts, r0 = [], 0
    for i, n in enumerate([1, 1, 2, 10, 1, 25]):
        y_parts.append(run_conv(x[r0 : r0 + n].contiguous(), w, states, [0, n], slots, [i == 0]))
        r0 += n
    assert torch.equal(torch.cat(y_parts), y_whole)
    assert torch.equal(states, whole_states)


def test_conv_zero_length_sequences_keep_or_zero_their_slot(isa):
    x, w, states, _, _ = conv_case(22, [3], 16, 4)
    before = states.clone()
    run_conv(x, w, states, [0, 3, 3, 3], [0, 1, 2], [False, True, False])
    assert torch.equal(states[1], torch.zeros_like(states[1]))
    assert torch.equal(states[2:], before[2:])


# --- gates ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gating_matches_the_float64_reference_at_extreme_values(isa, dtype):
    gen = torch.Generator().manual_seed(23)
    extremes = torch.tensor([-100.0, -30.0, -20.5, -1e-3, 0.0, 1e-3, 5.0, 19.9, 20.0, 20.1, 30.0, 100.0])
    a = torch.cat([torch.randn(40, 12, generator=gen) * 8, extremes[None].expand(12, 12)]).to(dtype)
    b = torch.cat([torch.randn(40, 12, generator=gen) * 8, extremes[:, None].expand(12, 12)]).to(dtype)
    a_log = torch.randn(12, generator=gen)
    dt_bias = torch.cat([torch.zeros(6), torch.randn(6, generator=gen)])
    g, beta = ops.gdn_gating(a.contiguous(), b.contiguous(), a_log, dt_bias)
    want_g, want_beta = ops.gdn_gating_ref(a, b, a_log, dt_bias)
    assert g.dtype == beta.dtype == torch.float32
    torch.testing.assert_close(g.double(), want_g, rtol=4e-6, atol=1e-37)
    torch.testing.assert_close(beta.double(), want_beta, rtol=4e-6, atol=1e-37)


@pytest.mark.parametrize("heads", [1, 32, 75])
def test_gating_shapes(isa, heads):
    gen = torch.Generator().manual_seed(heads)
    a, b = torch.randn(9, heads, generator=gen), torch.randn(9, heads, generator=gen)
    a_log, dt_bias = torch.randn(heads, generator=gen), torch.randn(heads, generator=gen)
    g, beta = ops.gdn_gating(a, b, a_log, dt_bias)
    want_g, want_beta = ops.gdn_gating_ref(a, b, a_log, dt_bias)
    torch.testing.assert_close(g.double(), want_g, rtol=4e-6, atol=0.0)
    torch.testing.assert_close(beta.double(), want_beta, rtol=4e-6, atol=0.0)


# --- bad arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "needle"),
    [
        (lambda a: {**a, "a": a["a"].double()}, TypeError, "a must be float32 or bfloat16"),
        (lambda a: {**a, "b": a["b"].bfloat16()}, TypeError, "b must be float32"),
        (lambda a: {**a, "b": a["b"][:2]}, ValueError, "b must be a's shape"),
        (lambda a: {**a, "a": a["a"].T}, ValueError, "a must be a contiguous"),
        (lambda a: {**a, "A_log": a["A_log"][:3]}, ValueError, "A_log must be [Hv]"),
        (lambda a: {**a, "dt_bias": a["dt_bias"].bfloat16()}, TypeError, "dt_bias must be float32"),
    ],
)
def test_gating_bad_arguments_raise_naming_what_was_wrong(change, error, needle):
    args = {"a": torch.randn(3, 4), "b": torch.randn(3, 4), "A_log": torch.zeros(4), "dt_bias": torch.zeros(4)}
    with pytest.raises(error, match=re.escape(needle)):
        ops.gdn_gating(**change(args))


TWO = {"query_starts": [0, 4, 5], "slots": [0, 1], "fresh": [False, False]}  # two sequences


@pytest.mark.parametrize(
    ("change", "error", "needle"),
    [
        (lambda a: {**a, "x": a["x"].double()}, TypeError, "x must be float32 or bfloat16"),
        (lambda a: {**a, "weight": a["weight"].bfloat16()}, TypeError, "weight must be float32"),
        (lambda a: {**a, "weight": torch.zeros(8, 9)}, ValueError, "weight must be [C = 8, K] with 1 <= K <= 8"),
        (lambda a: {**a, "conv_states": torch.zeros(4, 8, 2)}, ValueError, "conv_states must be [N, C, K - 1]"),
        (lambda a: {**a, "conv_states": torch.zeros(4, 8, 3).double()}, TypeError, "conv_states must be float32"),
        (lambda a: {**a, **TWO, "query_starts": [0, 2, 4]}, ValueError, "query_starts[2] (the last) must be T = 5"),
        (lambda a: {**a, **TWO, "slots": [1, 1]}, ValueError, "slots[1] = 1 repeats slots[0]"),
        (lambda a: {**a, **TWO, "slots": [1, 4]}, ValueError, "slots[1] = 4 is outside"),
        (lambda a: {**a, **TWO, "query_starts": [0, 6, 5]}, ValueError, "query_starts must be non-decreasing"),
        (lambda a: {**a, "query_starts": [1, 5]}, ValueError, "query_starts[0] must be 0"),
        (lambda a: {**a, "query_starts": torch.tensor([0, 5]).int()}, TypeError, "query_starts must be int64"),
        (lambda a: {**a, "slots": [0, 1]}, ValueError, "must have one entry per sequence"),
        (lambda a: {**a, "fresh": torch.tensor([0.0])}, TypeError, "fresh must be bool or int64"),
        (lambda a: {**a, "out": torch.empty(5, 8, dtype=torch.bfloat16)}, ValueError, "out must be"),
    ],
)
def test_conv_bad_arguments_raise_naming_what_was_wrong(change, error, needle):
    args = {
        "x": torch.randn(5, 8),
        "weight": torch.randn(8, 4),
        "conv_states": torch.zeros(4, 8, 3),
        "query_starts": [0, 5],
        "slots": [2],
        "fresh": [True],
    }
    with pytest.raises(error, match=re.escape(needle)):
        ops.causal_conv1d(**change(args))


@pytest.mark.parametrize(
    ("change", "error", "needle"),
    [
        (lambda a: {**a, "qkv": a["qkv"].half()}, TypeError, "qkv must be float32 or bfloat16"),
        (lambda a: {**a, "qkv": a["qkv"][:, :-1]}, ValueError, "qkv must be a contiguous"),
        (lambda a: {**a, "qkv": a["qkv"][:, :-1].contiguous()}, ValueError, "qkv must be [T, 2 * Hk * Dk + Hv * Dv]"),
        (lambda a: {**a, "g": a["g"].bfloat16()}, TypeError, "g must be float32"),
        (lambda a: {**a, "beta": a["beta"][:2]}, ValueError, "beta must be g's shape"),
        (lambda a: {**a, "key_heads": 3}, ValueError, "must be a multiple of key_heads = 3"),
        (lambda a: {**a, "key_dim": 512}, ValueError, "must be <= 256"),
        (lambda a: {**a, "key_dim": 0}, ValueError, "key_dim must be a whole number >= 1"),
        (lambda a: {**a, "states": a["states"][:, :2].contiguous()}, ValueError, "states must be [N, Hv, Dk, Dv]"),
        (lambda a: {**a, "states": a["states"].double()}, TypeError, "states must be float32"),
        (lambda a: {**a, "mode": "fast"}, ValueError, "mode must be 'auto', 'recurrent' or 'chunked'"),
        (lambda a: {**a, "slots": [3]}, ValueError, "slots[0] = 3 is outside the pool's slots [0, 3)"),
        (lambda a: {**a, "query_starts": [0, 3]}, ValueError, "(the last) must be T = 4"),
        (lambda a: {**a, "out": torch.empty(4, 4, 8).bfloat16()}, ValueError, "out must be a contiguous torch.float32"),
    ],
)
def test_delta_rule_bad_arguments_raise_naming_what_was_wrong(change, error, needle):
    hk, hv, dk, dv = 2, 4, 16, 8
    args = {
        "qkv": torch.randn(4, 2 * hk * dk + hv * dv),
        "g": -torch.rand(4, hv),
        "beta": torch.rand(4, hv),
        "states": torch.zeros(3, hv, dk, dv),
        "query_starts": [0, 4],
        "slots": [1],
        "fresh": [False],
        "key_heads": hk,
        "key_dim": dk,
        "value_dim": dv,
    }
    with pytest.raises(error, match=re.escape(needle)):
        ops.gated_delta_rule(**change(args))
