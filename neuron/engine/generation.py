"""One request's generation, driven from the event loop one device job at a time: the prompt
in chunks (bounded memory), then a decode job per token. Between jobs the loop sees
cancellation, so a client that goes away stops its generation at the next token.

Output goes through the streaming detokenizer (never splits a UTF-8 character), the stop-string
matcher and the reasoning / tool-call parser, and comes out as :class:`Delta` values.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tokenizers.decoders import DecodeStream

from neuron.chat.output import Event, OutputParser, StopMatcher, ToolCall
from neuron.engine.loaded import LoadedModel
from neuron.engine.sampling import SamplingParams


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    stop: list[str] = field(default_factory=list)
    in_reasoning: bool = False
    answer_prefix: str = ""  # the answer's start, already in the prompt (a forced tool call)
    parse_tools: bool = True
    prefill_chunk: int = 512
    ignore_eos: bool = False


@dataclass
class Delta:
    """A piece of output; the last one carries ``finish_reason``."""

    events: list[Event]
    finish_reason: str | None = None


@dataclass
class Outcome:
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: str | None = None  # the stop string that ended generation (vLLM's field)
    tool_calls: list[ToolCall] = field(default_factory=list)
    prefill_secs: float = 0.0  # the prompt, up to the first token sampled
    decode_secs: float = 0.0  # every later token (completion_tokens - 1 decode steps)

    def timings(self) -> dict[str, float | int]:
        """The generation's own timing in llama.cpp server's fields (``timings``): a gateway reads
        the decode speed from here, not from when chunks happen to arrive."""
        steps = max(0, self.completion_tokens - 1)
        prompt_ms, decode_ms = self.prefill_secs * 1000, self.decode_secs * 1000
        return {
            "prompt_n": self.prompt_tokens,
            "prompt_ms": round(prompt_ms, 3),
            "prompt_per_second": round(self.prompt_tokens / self.prefill_secs, 3) if self.prefill_secs > 0 else 0.0,
            "predicted_n": steps,
            "predicted_ms": round(decode_ms, 3),
            "predicted_per_second": round(steps / self.decode_secs, 3) if self.decode_secs > 0 else 0.0,
        }


async def generate(lm: LoadedModel, req: GenerationRequest, outcome: Outcome) -> AsyncIterator[Delta]:
    """Yields output deltas; ``outcome`` is filled in as generation proceeds."""
    worker, prompt = lm.worker, req.prompt_ids
    parser = OutputParser(in_reasoning=req.in_reasoning, parse_tools=req.parse_tools)
    parser.feed(req.answer_prefix)  # opens the forced call: nothing comes out until it closes
    stopper = StopMatcher(req.stop)
    if req.max_new_tokens <= 0:
        outcome.finish_reason = "length"
        yield Delta([], "length")
        return
    started = time.perf_counter()
    seq = await worker.run(lm.start_sequence, prompt, len(prompt) + req.max_new_tokens, req.params)
    token: int | None = None
    for start in range(0, len(prompt), req.prefill_chunk):
        chunk = prompt[start : start + req.prefill_chunk]
        token = await worker.run(lm.prefill, seq, chunk, sample=start + req.prefill_chunk >= len(prompt))
    assert token is not None
    first = time.perf_counter()
    outcome.prefill_secs = first - started
    detok = DecodeStream(skip_special_tokens=True)
    finish = "length"
    while True:
        outcome.completion_tokens += 1
        if token in lm.eos_ids and not req.ignore_eos:
            finish = "stop"
            break
        piece = detok.step(lm.tokenizer, token)
        if piece:
            events = parser.feed(stopper.feed(piece))
            if events:
                yield Delta(events)
            if stopper.stopped:
                finish = "stop"
                break
        if outcome.completion_tokens >= req.max_new_tokens:
            break
        token = await worker.run(lm.decode, seq, token)
        outcome.decode_secs = time.perf_counter() - first
    tail = parser.feed(stopper.flush()) + parser.finish()
    outcome.tool_calls = parser.tool_calls
    if finish == "stop" and parser.tool_calls:
        finish = "tool_calls"
    outcome.finish_reason = finish
    outcome.stop_reason = stopper.matched
    yield Delta(tail, finish)
