"""The engine loop of one loaded model: continuous batching over the paged KV cache.

The engine owns the model's sequences. Each :meth:`Engine.step`, on the device's worker thread:

1. takes in new requests and aborts (cancelled or disconnected requests leave here, and their
   blocks go back to the pool);
2. schedules at most ``max_batch_tokens`` tokens: one decode token for every running sequence
   first (a sequence that needs a new block and finds none preempts the newest running one,
   which will be recomputed later), then prefill chunks, of running sequences still in their
   prompt and then of waiting ones, oldest first, admitted while blocks are free (each starts
   from its longest cached prefix);
3. runs one forward through the executor and samples every sequence that finished its known
   tokens (per-row parameters and seeded generators, so a request's output does not depend on
   what else is in the batch);
4. registers full blocks in the prefix cache, finishes sequences that produced an end token or
   reached their budget, and hands the new tokens to the event loop in one
   ``call_soon_threadsafe``; it never waits for the event loop.

A hybrid model's sequences also hold a recurrent-state slot (``neuron.engine.state_slots``) from
admission to their end or preemption. Their state cannot be cut back to a shorter prefix, so a
cached prefix serves them only up to a point where a state was kept: the last block boundary of
each prompt (its prefill chunk is cut to end there, and the state is copied aside, LRU), and the
last block boundary its answer reached (each decode that fills a block replaces the sequence's
previous such copy), so the next turn of a conversation skips the previous answer too.

Detokenizing, stop strings and SSE stay on the event loop (``neuron.engine.generation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from neuron.engine.kv_cache import BLOCK_TOKENS, BlockAllocator, BlockTable, KVPool, blocks_for
from neuron.engine.sampling import Sampler, SamplingParams, sample_rows
from neuron.engine.state_slots import KeptStates
from neuron.models import Batch

log = logging.getLogger(__name__)


class Executor(Protocol):
    """Runs a batch through the model on its device(s) (``neuron.engine.executor``)."""

    device: torch.device

    def execute(self, batch: Batch) -> torch.Tensor: ...


class Constraint(Protocol):
    """What a request's output must follow (a JSON schema, a tool call): which tokens may come
    next, and the token that came (``neuron.engine.grammar``). Used on the device thread."""

    def mask(self, vocab_size: int) -> torch.Tensor: ...  # bool [vocab_size]: allowed next
    def accept(self, token: int) -> bool: ...  # False: the constraint is broken (never expected)
    def is_done(self) -> bool: ...  # complete: nothing more may come but an end token


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability under the model, and the ``top`` most likely ones."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Output:
    """New tokens of one request after a step; ``finish`` once it is done (``stop``: an end
    token, ``length``: its budget, ``abort``: cancelled, ``error``: the step failed)."""

    tokens: list[int]
    finish: str | None = None
    logprobs: list[TokenLogprob] | None = None
    cached_tokens: int = 0  # prompt tokens the prefix cache supplied
    prefill_secs: float = 0.0  # admission to the first token (on the device)
    decode_secs: float = 0.0  # first token to the last one so far
    error: str | None = None


@dataclass
class EngineRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    stop_ids: frozenset[int]  # end tokens (none when the request ignores them)
    deliver: Callable[[Output], None]  # called on the event loop
    logprobs: int | None = None  # the sampled token's log probability and this many of the most likely
    constraint: Constraint | None = None  # structured output: only tokens it allows are sampled


@dataclass(eq=False)  # a sequence is itself: list membership compares identity, never token lists
class Sequence:
    id: int
    request: EngineRequest
    tokens: list[int]  # the prompt, then what was generated
    num_prompt: int
    sampler: Sampler
    table: BlockTable = field(default_factory=BlockTable)
    num_computed: int = 0  # leading tokens whose keys and values are in the cache
    cached_tokens: int = 0
    generated: int = 0
    admitted_at: float | None = None
    first_at: float | None = None
    preempted: int = 0
    state_slot: int | None = None  # its recurrent-state slot (hybrid models), while it holds one
    answer_key: int | None = None  # the key its state was last kept at while decoding

    @property
    def pending(self) -> int:
        """Known tokens whose keys and values are not computed yet."""
        return len(self.tokens) - self.num_computed


@dataclass
class EngineStats:
    steps: int = 0
    preemptions: int = 0
    batch_tokens: int = 0  # of the last step
    running: int = 0


class Engine:
    def __init__(
        self,
        executor: Executor,
        pool: KVPool,
        *,
        vocab_size: int,
        max_num_seqs: int,
        max_batch_tokens: int,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None] = lambda: None,
        kept_states: int = 0,
    ) -> None:
        """``kept_states``: how many prompt-end states a hybrid model keeps for prefix reuse
        (slots of ``pool.states`` beyond one per running sequence)."""
        self.executor = executor
        self.pool = pool
        self.states = pool.states
        self.kept = KeptStates(pool.states, kept_states) if pool.states is not None else None
        self.allocator = BlockAllocator(pool.num_blocks)
        self.vocab_size = vocab_size
        self.max_num_seqs = max_num_seqs
        self.max_batch_tokens = max_batch_tokens
        self.loop = loop
        self.wake = wake  # tells the device thread there is work
        self.stats = EngineStats()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # guards the inbox and the abort set (event loop <-> device thread)
        self._inbox: list[Sequence] = []
        self._aborts: set[int] = set()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    # --- from the event loop --------------------------------------------------------------

    def submit(self, request: EngineRequest) -> int:
        """Queues a request; returns its id (to abort it). Thread-safe."""
        total = len(request.prompt_ids) + request.max_new_tokens
        if blocks_for(total) > self.pool.num_blocks:
            raise ValueError(f"{total} tokens do not fit a KV pool of {self.pool.capacity_tokens}")
        sampler = Sampler(request.params, self.vocab_size, request.prompt_ids, self.executor.device)
        seq = Sequence(next(self._ids), request, list(request.prompt_ids), len(request.prompt_ids), sampler)
        with self._lock:
            self._inbox.append(seq)
        self.wake()
        return seq.id

    def abort(self, seq_id: int) -> None:
        """Takes a request out at the next step, wherever it is. Thread-safe."""
        with self._lock:
            self._aborts.add(seq_id)
        self.wake()

    # --- on the device thread -------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self._inbox or self._aborts)

    @torch.inference_mode()
    def step(self) -> None:
        """One step: take in, schedule, forward, sample, hand out."""
        outputs: list[tuple[Sequence, Output]] = []
        self._take_in(outputs)
        scheduled = self._schedule(outputs)
        if scheduled:
            try:
                self._run(scheduled, outputs)
            except Exception as exc:  # a failed step fails its sequences, not the neuron
                log.exception("engine step failed")
                for seq, _ in scheduled:
                    self._finish(seq)
                    outputs.append((seq, Output([], "error", error=f"{type(exc).__name__}: {exc}")))
        self.stats.running = len(self.running)
        self._hand_out(outputs)

    def _hand_out(self, outputs: list[tuple[Sequence, Output]]) -> None:
        if outputs:  # (a closed event loop is shutting down: nobody is listening)
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(_deliver, outputs)

    def close(self, reason: str = "abort") -> None:
        """Ends every sequence (the model is being unloaded). On the device thread."""
        outputs = []
        with self._lock:
            inbox, self._inbox = self._inbox, []
            self._aborts.clear()
        for seq in [*self.running, *self.waiting, *inbox]:
            self._finish(seq)
            outputs.append((seq, Output([], reason)))
        self._hand_out(outputs)

    def _take_in(self, outputs: list[tuple[Sequence, Output]]) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, set()
        self.waiting.extend(inbox)
        if not aborts:
            return
        for seq in [s for s in [*self.running, *self.waiting] if s.id in aborts]:
            self._finish(seq)
            outputs.append((seq, Output([], "abort")))

    def _finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.allocator.release(seq.table.blocks)
        seq.table = BlockTable()
        self._release_state(seq)

    def _release_state(self, seq: Sequence) -> None:
        if seq.state_slot is not None:
            self.states.release(seq.state_slot)
            seq.state_slot = None

    def _preempt(self, seq: Sequence) -> None:
        """Frees a running sequence's blocks; it waits again, first in line, and is recomputed
        (from its cached prefix) when there is room."""
        self.running.remove(seq)
        self.allocator.release(seq.table.blocks)
        self._release_state(seq)
        seq.table, seq.num_computed, seq.preempted = BlockTable(), 0, seq.preempted + 1
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1
        log.debug("preempted sequence %d (%d tokens) for lack of KV blocks", seq.id, len(seq.tokens))

    def _grow(self, seq: Sequence, tokens: int) -> bool:
        """Gives ``seq`` blocks for ``tokens`` computed tokens; False when the pool has too few."""
        need = blocks_for(tokens) - len(seq.table.blocks)
        if need <= 0:
            return True
        got = self.allocator.allocate(need)
        if got is None:
            return False
        seq.table.blocks.extend(got)
        return True

    def _schedule(self, outputs: list[tuple[Sequence, Output]]) -> list[tuple[Sequence, int]]:
        budget = self.max_batch_tokens
        scheduled: list[tuple[Sequence, int]] = []
        # decodes first, oldest first; a sequence short of a block preempts the newest running one
        for seq in list(self.running):
            if seq not in self.running or seq.pending != 1 or budget == 0:
                continue
            while not self._grow(seq, seq.num_computed + 1):
                victim = max(self.running, key=lambda s: s.id)
                self._preempt(victim)
                scheduled = [(s, n) for s, n in scheduled if s is not victim]
                if victim is seq:
                    break
            if seq in self.running:
                scheduled.append((seq, 1))
                budget -= 1
        # prefill chunks: running sequences still in their prompt, then waiting ones (admitted here)
        for seq in [s for s in self.running if s.pending > 1]:
            if budget == 0:
                break
            n = self._chunk(seq, budget)
            if n:
                scheduled.append((seq, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.num_computed == 0 and not seq.table.blocks:
                self._start_from_cache(seq)
            n = self._chunk(seq, budget)
            if n == 0:  # no blocks for it now: it waits (and everyone behind it: first come, first served)
                self.allocator.release(seq.table.blocks)  # holding cached blocks while waiting could starve others
                self._release_state(seq)
                seq.table, seq.num_computed = BlockTable(), 0
                if not self.running:  # nothing will ever free a block: the pool cannot hold it
                    self._finish(seq)
                    outputs.append((seq, Output([], "error", error="the KV pool is too small for this request")))
                    continue
                break
            self.waiting.popleft()
            self.running.append(seq)
            if seq.admitted_at is None:
                seq.admitted_at = time.perf_counter()
            scheduled.append((seq, n))
            budget -= n
        return scheduled

    def _start_from_cache(self, seq: Sequence) -> None:
        """Starts ``seq`` from its longest cached prefix (always leaving a token to compute, so
        the step that finishes the prompt has logits to sample from)."""
        first = seq.preempted == 0
        limit = len(seq.tokens) - 1
        keys: list[int] = []
        blocks, last_key = self.allocator.match(seq.tokens, limit, keys)
        if self.kept is not None:  # a hybrid resumes only where a state was kept
            seq.state_slot = self.states.allocate()
            if seq.state_slot is None:
                raise RuntimeError("no recurrent-state slot free for an admitted sequence")
            usable = len(blocks)
            while usable and keys[usable - 1] not in self.kept:
                usable -= 1
            self.allocator.release(blocks[usable:])
            blocks = blocks[:usable]
            last_key = keys[usable - 1] if usable else None
            if usable:
                self.kept.restore(last_key, seq.state_slot)
        seq.table = BlockTable(blocks=blocks, registered=len(blocks), last_key=last_key)
        seq.num_computed = len(blocks) * BLOCK_TOKENS
        if first:
            seq.cached_tokens = seq.num_computed
            self.allocator.stats.queried_tokens += seq.num_prompt
            self.allocator.stats.hit_tokens += min(seq.num_computed, seq.num_prompt)

    def _chunk(self, seq: Sequence, budget: int) -> int:
        """How many of ``seq``'s pending tokens to compute now (within ``budget`` and the free
        blocks); 0 when not even one fits."""
        n = min(seq.pending, budget)
        edge = self._keep_edge(seq)
        if seq.num_computed < edge < seq.num_computed + n:  # end the chunk where the state is kept
            n = edge - seq.num_computed
        while n > 0 and not self._grow(seq, seq.num_computed + n):
            free_tokens = (len(seq.table.blocks) + self.allocator.num_free) * BLOCK_TOKENS - seq.num_computed
            n = min(n - 1, max(0, free_tokens))
        return n

    def _keep_state(self, seq: Sequence, n: int) -> None:
        """After a step: keeps a hybrid sequence's state at its prompt's last block boundary, and
        at the newest block boundary its decoding reached (dropping the one before)."""
        edge = self._keep_edge(seq)
        key = seq.table.last_key
        if not edge or key is None or seq.num_computed % BLOCK_TOKENS:
            return
        if seq.num_computed == edge:
            self.kept.keep(key, seq.state_slot)
        elif n == 1 and seq.num_computed > edge and seq.num_computed > seq.num_prompt:
            if seq.answer_key is not None and seq.answer_key != key:
                self.kept.drop(seq.answer_key)
            if self.kept.keep(key, seq.state_slot):
                seq.answer_key = key

    def _keep_edge(self, seq: Sequence) -> int:
        """Where a hybrid sequence's state is kept: its prompt's last block boundary (0: nowhere)."""
        if self.kept is None or self.kept.capacity == 0:
            return 0
        return seq.num_prompt // BLOCK_TOKENS * BLOCK_TOKENS

    def _run(self, scheduled: list[tuple[Sequence, int]], outputs: list[tuple[Sequence, Output]]) -> None:
        device = self.executor.device
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts = [0]
        lengths: list[int] = []
        samplers: list[Sequence] = []
        sample_at: list[int] = []
        for seq, n in scheduled:
            begin = seq.num_computed
            ids.extend(seq.tokens[begin : begin + n])
            positions.extend(range(begin, begin + n))
            slots.extend(seq.table.slot(p) for p in range(begin, begin + n))
            starts.append(starts[-1] + n)
            lengths.append(begin + n)
            if begin + n == len(seq.tokens):  # every known token computed: this step samples the next
                samplers.append(seq)
                sample_at.append(starts[-1] - 1)
        width = max(len(seq.table.blocks) for seq, _ in scheduled)
        tables = torch.tensor(
            [seq.table.blocks + [0] * (width - len(seq.table.blocks)) for seq, _ in scheduled], dtype=torch.long
        )

        def on_device(values) -> torch.Tensor:
            return torch.as_tensor(values, dtype=torch.long).to(device, non_blocking=True)

        batch = Batch(
            input_ids=on_device(ids),
            positions=on_device(positions),
            query_starts=starts,
            context_lens=lengths,
            block_tables=tables.to(device, non_blocking=True),
            slot_mapping=on_device(slots),
            sample_indices=on_device(sample_at),
            state_slots=torch.tensor([seq.state_slot for seq, _ in scheduled]) if self.kept is not None else None,
        )
        self.stats.steps += 1
        self.stats.batch_tokens = len(ids)
        logits = self.executor.execute(batch)  # [len(samplers), vocab]; none when only prompts advanced
        for seq, n in scheduled:
            seq.num_computed += n
            self._register_full_blocks(seq)
            self._keep_state(seq, n)
        raw = _log_probs(logits, samplers)  # of the model's own distribution, before any mask or sampling
        self._constrain(logits, samplers)
        now = time.perf_counter()
        tokens = sample_rows(logits, [seq.sampler for seq in samplers]) if samplers else []
        for row, (seq, token) in enumerate(zip(samplers, tokens, strict=True)):
            seq.sampler.observe(token)
            seq.tokens.append(token)
            seq.generated += 1
            if seq.first_at is None:
                seq.first_at = now
            finish, error = None, None
            constraint = seq.request.constraint
            if constraint is not None and token not in seq.request.stop_ids and not constraint.accept(token):
                finish, error = "error", "the output broke its grammar"
            elif token in seq.request.stop_ids:
                finish = "stop"
            elif seq.generated >= seq.request.max_new_tokens:
                finish = "length"
            out = Output(
                [token],
                finish,
                logprobs=[_logprob_of(raw[row], token, seq.request.logprobs)] if row in raw else None,
                cached_tokens=seq.cached_tokens,
                prefill_secs=seq.first_at - (seq.admitted_at or seq.first_at),
                decode_secs=now - seq.first_at,
                error=error,
            )
            if finish is not None:
                self._finish(seq)
            outputs.append((seq, out))

    def _constrain(self, logits: torch.Tensor, samplers: list[Sequence]) -> None:
        """Sets to -inf every token a row's constraint does not allow; a complete constraint allows
        only the request's end tokens."""
        for row, seq in enumerate(samplers):
            constraint = seq.request.constraint
            if constraint is None:
                continue
            if constraint.is_done():
                allowed = torch.zeros(logits.shape[1], dtype=torch.bool)
                allowed[list(seq.request.stop_ids)] = True
            else:
                allowed = constraint.mask(logits.shape[1])
            logits[row].masked_fill_(~allowed.to(logits.device), float("-inf"))

    def _register_full_blocks(self, seq: Sequence) -> None:
        table = seq.table
        while (table.registered + 1) * BLOCK_TOKENS <= seq.num_computed:
            i = table.registered
            chunk = tuple(seq.tokens[i * BLOCK_TOKENS : (i + 1) * BLOCK_TOKENS])
            table.last_key = self.allocator.register(table.blocks[i], table.last_key, chunk)
            table.registered += 1


def _log_probs(logits: torch.Tensor, samplers: list[Sequence]) -> dict[int, torch.Tensor]:
    """Log-softmax of the rows whose requests want log probabilities, in one call."""
    rows = [row for row, seq in enumerate(samplers) if seq.request.logprobs is not None]
    if not rows:
        return {}
    index = torch.tensor(rows, device=logits.device)
    values = torch.log_softmax(logits.index_select(0, index).float(), dim=-1).cpu()
    return {row: values[i] for i, row in enumerate(rows)}


def _logprob_of(row: torch.Tensor, token: int, top: int | None) -> TokenLogprob:
    best: tuple[tuple[int, float], ...] = ()
    if top:
        values, ids = torch.topk(row, top)
        best = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(row[token]), best)


def _deliver(outputs: list[tuple[Sequence, Output]]) -> None:
    """On the event loop: each request's outputs of one step, in order."""
    for seq, out in outputs:
        try:
            seq.request.deliver(out)
        except Exception:  # one broken consumer must not lose the others' tokens
            log.exception("delivering tokens of sequence %d failed", seq.id)
