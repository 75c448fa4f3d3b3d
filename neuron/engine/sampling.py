"""Choosing the next token from logits: penalties, temperature, top-k, top-p, min-p, a seeded
generator per request (same seed, same output) and argmax at temperature 0.

Order, as in transformers and vLLM: repetition penalty (prompt and output tokens), presence and
frequency penalties (output tokens), temperature, then the truncations, then sampling.
Runs on the device's worker thread; tensors never reach the event loop.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch


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
        return self.temperature <= 0.0


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
            logits = torch.where(self.seen, penalised, logits)
        if self.counts is not None:
            logits = logits - p.frequency_penalty * self.counts - p.presence_penalty * (self.counts > 0).float()
        if p.greedy:
            return int(torch.argmax(logits))
        logits = logits / p.temperature
        ids = None
        if 0 < p.top_k < logits.shape[0]:  # work on the k best only: no full-vocabulary sort per token
            logits, ids = torch.topk(logits, p.top_k)
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the token that crosses it stays)
            drop = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= p.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        if p.min_p > 0.0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        choice = int(torch.multinomial(probs, 1, generator=self.generator))
        return choice if ids is None else int(ids[choice])
