"""One request's generation as the event loop sees it: submitted to the model's engine, which
batches it with the others on the device thread and hands back its tokens after each step.

Here, on the event loop, the tokens go through the streaming detokenizer (never splits a UTF-8
character), the stop-string matcher and the reasoning / tool-call parser, and come out as
:class:`Delta` values. A request that is cancelled (its client went away, a stop string matched)
leaves the engine's batch at its next step, which frees its blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tokenizers.decoders import DecodeStream

from cortex.protocol.errors import ApiError
from neuron.chat.output import Event, OutputParser, StopMatcher, ToolCall
from neuron.engine.engine import Constraint, EngineRequest, Output, TokenLogprob
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
    ignore_eos: bool = False
    logprobs: int | None = None  # per token: its log probability and this many alternatives
    constraint: Constraint | None = None  # structured output


@dataclass
class Delta:
    """A piece of output; the last one carries ``finish_reason``. ``logprobs`` are those of the
    tokens whose text this delta (or an earlier one that carried none) brought out."""

    events: list[Event]
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Outcome:
    prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the prefix cache supplied
    finish_reason: str | None = None
    stop_reason: str | None = None  # the stop string that ended generation (vLLM's field)
    tool_calls: list[ToolCall] = field(default_factory=list)
    prefill_secs: float = 0.0  # the prompt, up to the first token sampled (on the device)
    decode_secs: float = 0.0  # every later token (completion_tokens - 1 decode steps)

    def timings(self) -> dict[str, float | int]:
        """The generation's own timing in llama.cpp server's fields (``timings``): a gateway reads
        the decode speed from here, not from when chunks happen to arrive."""
        steps = max(0, self.completion_tokens - 1)
        prompt_ms, decode_ms = self.prefill_secs * 1000, self.decode_secs * 1000
        computed = self.prompt_tokens - self.cached_tokens
        return {
            "prompt_n": self.prompt_tokens,
            "cache_n": self.cached_tokens,
            "prompt_ms": round(prompt_ms, 3),
            "prompt_per_second": round(computed / self.prefill_secs, 3) if self.prefill_secs > 0 else 0.0,
            "predicted_n": steps,
            "predicted_ms": round(decode_ms, 3),
            "predicted_per_second": round(steps / self.decode_secs, 3) if self.decode_secs > 0 else 0.0,
        }


async def generate(lm: LoadedModel, req: GenerationRequest, outcome: Outcome) -> AsyncIterator[Delta]:
    """Yields output deltas; ``outcome`` is filled in as generation proceeds."""
    parser = OutputParser(in_reasoning=req.in_reasoning, parse_tools=req.parse_tools)
    parser.feed(req.answer_prefix)  # opens the forced call: nothing comes out until it closes
    stopper = StopMatcher(req.stop)
    if req.max_new_tokens <= 0:
        outcome.finish_reason = "length"
        yield Delta([], "length")
        return
    outputs: asyncio.Queue[Output] = asyncio.Queue()
    engine = lm.engine
    seq_id = engine.submit(
        EngineRequest(
            prompt_ids=req.prompt_ids,
            max_new_tokens=req.max_new_tokens,
            params=req.params,
            # a grammar ends with an end token: ignore_eos cannot apply to a structured answer
            stop_ids=frozenset() if req.ignore_eos and req.constraint is None else frozenset(lm.eos_ids),
            deliver=outputs.put_nowait,
            logprobs=req.logprobs,
            constraint=req.constraint,
        )
    )
    pending: list[TokenLogprob] = []  # log probabilities of tokens whose text has not come out yet
    done = False
    detok = DecodeStream(skip_special_tokens=True)
    finish = "length"
    try:
        while not done:
            out = await outputs.get()
            outcome.cached_tokens = out.cached_tokens
            outcome.prefill_secs, outcome.decode_secs = out.prefill_secs, out.decode_secs
            if out.finish == "abort":  # the engine closed (the model is going away)
                done = True
                raise ApiError("unavailable", "the model was unloaded during generation", code="model_unloading")
            if out.finish == "error":
                done = True
                raise ApiError("internal", f"generation failed: {out.error}")
            for i, token in enumerate(out.tokens):
                outcome.completion_tokens += 1
                if out.finish == "stop" and i == len(out.tokens) - 1:  # the end token: not part of the text
                    finish = "stop"
                    break
                if out.logprobs is not None:
                    pending.append(out.logprobs[i])
                piece = detok.step(lm.tokenizer, token)
                if piece:
                    events = parser.feed(stopper.feed(piece))
                    if events:
                        yield Delta(events, logprobs=pending)
                        pending = []
                    if stopper.stopped:
                        finish = "stop"
                        break
            if stopper.stopped or out.finish is not None:
                done = out.finish is not None
                break
    finally:
        if not done:  # cancelled, or a stop string: the sequence leaves the batch at the next step
            engine.abort(seq_id)
    tail = parser.feed(stopper.flush()) + parser.finish()
    outcome.tool_calls = parser.tool_calls
    if finish == "stop" and parser.tool_calls:
        finish = "tool_calls"
    outcome.finish_reason = finish
    outcome.stop_reason = stopper.matched
    yield Delta(tail, finish, logprobs=pending)
