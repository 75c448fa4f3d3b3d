"""Choosing the next token from logits: penalties, temperature, top-k, top-p, min-p, a seeded
generator per request (same seed, same output) and argmax at temperature 0.

Order, as in transformers and vLLM: repetition penalty (prompt and output tokens), presence and
frequency penalties (output tokens), temperature, then the truncations, then sampling.
Runs on the device's worker thread; tensors never reach the event loop.

Total over every value the API accepts and any logits: temperatures below ``GREEDY_BELOW`` are
argmax; the temperature divides logits minus their max, so nothing overflows and the best token
has mass; a penalised finite logit stays finite; NaN counts as -inf; the most likely token
survives every truncation. So ``torch.multinomial`` always gets a valid distribution (on CUDA a
bad one is a device-side assert, not an exception), without a sync or a per-token Python loop.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

GREEDY_BELOW = 1e-5  # temperatures under this are argmax, as in vLLM (_SAMPLING_EPS)
F32_MAX = torch.finfo(torch.float32).max
INF = float("inf")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        """Argmax: at temperature 0 and below GREEDY_BELOW (and for a NaN temperature), where
        sampling is argmax but for exact ties and the division overflows for large logits."""
        return not self.temperature >= GREEDY_BELOW


class Sampler:
    """Per-sequence sampling state: the seeded generator and the token counts penalties need."""

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_ids: list[int], device: torch.device) -> None:
        self.params = params
        self.device = device
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed % (2**63))
        self.needs_counts = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device) if self.needs_counts else None
        self.seen: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            if prompt_ids:
                self.seen[torch.tensor(prompt_ids, device=device)] = True

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits: greedy with no penalty, so a batch of such rows is one argmax."""
        return self.params.greedy and self.counts is None and self.seen is None

    def observe(self, token: int) -> None:
        """Records a generated token for the penalties."""
        if self.counts is not None:
            self.counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True

    def sample(self, logits: torch.Tensor) -> int:
        p = self.params
        logits = logits.float()
        if self.seen is not None:
            penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
            # a tiny penalty overflows the division (or is 0 in float32: -inf * 0 is NaN): a finite logit
            # stays finite, and ±inf stay as they are
            penalised = penalised.clamp_(-F32_MAX, F32_MAX)
            logits = torch.where(self.seen & torch.isfinite(logits), penalised, logits)
        if self.counts is not None:
            logits = logits - p.frequency_penalty * self.counts - p.presence_penalty * (self.counts > 0).float()
        logits = logits.nan_to_num(nan=-INF, posinf=INF, neginf=-INF)  # a NaN logit is never chosen
        if p.greedy:
            return int(torch.argmax(logits))
        # Subtracting the max first keeps the division from overflowing: every scaled logit is <= 0 and
        # the best are exactly 0, so the softmax below always has mass. When the max is ±inf the
        # subtraction gives NaN for the tokens that equal it; they become 0 (the only candidates).
        scaled = ((logits - logits.max()) / p.temperature).nan_to_num_(nan=0.0, posinf=INF, neginf=-INF)
        ids = None
        if 0 < p.top_k < scaled.shape[0]:  # work on the k best only: no full-vocabulary sort per token
            scaled, ids = torch.topk(scaled, p.top_k)
        probs = torch.softmax(scaled, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the token that crosses it stays), and
            # always the most likely token (a top_p that is 0 in float32 would drop them all)
            drop = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= p.top_p
            drop[0] = False
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        if p.min_p > 0.0:  # min(…, 1): the most likely token always stays
            probs = probs.masked_fill(probs < min(p.min_p, 1.0) * probs.max(), 0.0)
        choice = int(torch.multinomial(probs, 1, generator=self.generator))
        return choice if ids is None else int(ids[choice])


def sample_rows(logits: torch.Tensor, samplers: list[Sampler]) -> list[int]:
    """The next token of every row of ``logits`` (``[rows, vocab]``), row ``i`` by ``samplers[i]``.

    The plain greedy rows (most of a batch of coding agents at temperature 0) share one argmax;
    every other row samples on its own, so a row's choice never depends on its neighbours.
    """
    tokens = [0] * len(samplers)
    plain = [i for i, s in enumerate(samplers) if s.plain_greedy]
    if plain:
        rows = (
            logits if len(plain) == len(samplers) else logits.index_select(0, torch.tensor(plain, device=logits.device))
        )
        rows = rows.float().nan_to_num(nan=-INF, posinf=INF, neginf=-INF)  # a NaN logit is never chosen
        for i, token in zip(plain, rows.argmax(dim=1).tolist(), strict=True):
            tokens[i] = token
    for i, sampler in enumerate(samplers):
        if not sampler.plain_greedy:
            tokens[i] = sampler.sample(logits[i])
    return tokens
