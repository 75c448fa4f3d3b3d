"""OpenAI ``/v1/chat/completions`` and ``/v1/completions`` served by the local engine."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from sanic import Blueprint, Request, response

from cortex.protocol.errors import ApiError, invalid
from cortex.protocol.openai.requests import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingFields,
    StreamOptions,
    check_chat,
    check_completion,
    decode_request,
    forced_function,
    stop_strings,
)
from neuron.api.context import context_of
from neuron.api.sse import event, stream_events
from neuron.chat.output import THINK_CLOSE, THINK_OPEN, TOOL_OPEN, Event, ToolCall
from neuron.chat.text import TextSide, encode_prompt
from neuron.engine.admission import restart_error
from neuron.engine.engine import Constraint, TokenLogprob
from neuron.engine.generation import GenerationRequest, Outcome, generate
from neuron.engine.grammar import GrammarError
from neuron.engine.loaded import LoadedModel
from neuron.engine.sampling import SamplingParams

bp = Blueprint("inference")


# --- prompts --------------------------------------------------------------------------------


def _message_dict(m: ChatMessage) -> dict[str, Any]:
    content = m.content
    if isinstance(content, list):
        content = "\n".join(part.text or "" for part in content)
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
    if m.name is not None:
        out["name"] = m.name
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.reasoning_content is not None:
        out["reasoning_content"] = m.reasoning_content
    if m.tool_calls:
        calls = []
        for call in m.tool_calls:
            args: Any = call.function.arguments
            if isinstance(args, str):
                with contextlib.suppress(json.JSONDecodeError):  # else templates get the string as it came
                    args = json.loads(args) if args.strip() else {}
            calls.append(
                {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": args}}
            )
        out["tool_calls"] = calls
    return out


@dataclass(frozen=True)
class ChatPrompt:
    ids: list[int]
    in_reasoning: bool  # the prompt leaves a thought open
    answer_prefix: str  # the start of the answer the prompt already holds (a forced tool call)


def _forced_call(req: ChatCompletionRequest) -> str:
    """What a ``tool_choice`` that demands a call puts at the start of the answer: the opening of a
    tool call (``required``), or of a call to the named function. The model continues from there,
    so the call is made; a named function's arguments are the model's own."""
    if not req.tools or req.tool_choice in (None, "none", "auto"):
        return ""
    name = forced_function(req)
    if name is None:
        return TOOL_OPEN
    return TOOL_OPEN + '\n{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '


def chat_prompt(lm: LoadedModel | TextSide, req: ChatCompletionRequest) -> ChatPrompt:
    """The rendered conversation as token ids. A forced tool call or a structured answer closes
    an open thought first (it comes without thinking), and a forced call is opened."""
    tools = None
    if req.tools and req.tool_choice != "none":
        tools = [msgspec.to_builtins(t) for t in req.tools]
    extra = dict(req.chat_template_kwargs or {})
    text = lm.template.render([_message_dict(m) for m in req.messages], tools=tools, extra=extra)
    in_reasoning = text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE)
    forced = _forced_call(req)
    if forced or structured_format(req.response_format) is not None:
        if in_reasoning:
            text += THINK_CLOSE + "\n\n"
            in_reasoning = False
        text += forced
    ids = encode_prompt(lm, text, param="messages")
    return ChatPrompt(ids, in_reasoning, forced)


def structured_format(response_format: Any) -> dict[str, Any] | None:
    """``response_format`` as the JSON the answer must be: ``{"schema": …}`` (None: any object),
    or None when the answer is free text."""
    if not isinstance(response_format, dict) or response_format.get("type") in (None, "text"):
        return None
    if response_format["type"] == "json_object":
        return {"schema": None}
    return {"schema": response_format["json_schema"]["schema"]}


async def _constraint(lm: LoadedModel, req: ChatCompletionRequest | CompletionRequest) -> Constraint | None:
    """What the answer must follow: the JSON of ``response_format``, or the tool call
    ``tool_choice`` demands (its arguments held to the tool's schema). Built off the event loop."""
    wanted = structured_format(req.response_format)
    try:
        if wanted is not None:
            return await asyncio.to_thread(lm.grammars.json, wanted["schema"])
        if isinstance(req, ChatCompletionRequest) and req.tools and req.tool_choice not in (None, "none", "auto"):
            tools = [{"name": t.function.name, "parameters": t.function.parameters} for t in req.tools]
            return await asyncio.to_thread(lm.grammars.tool_call, tools, forced_function(req))
    except GrammarError as exc:
        param = "response_format" if wanted is not None else "tools"
        raise invalid(f"{param}: the schema cannot be used: {exc}", param=param) from None
    return None


def completion_prompt(lm: LoadedModel, req: CompletionRequest) -> list[int]:
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        vocab = lm.tokenizer.get_vocab_size()
        if any(not 0 <= t < vocab for t in prompt):
            raise invalid(f"prompt token ids must be in [0, {vocab})", param="prompt")
        return list(prompt)
    text = prompt[0] if isinstance(prompt, list) else prompt
    if not text:
        raise invalid("prompt must not be empty", param="prompt")
    return encode_prompt(lm, text, param="prompt")


def _sampling(lm: LoadedModel, req: SamplingFields) -> SamplingParams:
    d = lm.defaults

    def pick(value, default):
        return default if value is None else value

    return SamplingParams(
        temperature=pick(req.temperature, d.temperature),
        top_p=pick(req.top_p, d.top_p),
        top_k=max(0, pick(req.top_k, d.top_k)),
        min_p=pick(req.min_p, d.min_p),
        repetition_penalty=pick(req.repetition_penalty, d.repetition_penalty),
        presence_penalty=pick(req.presence_penalty, 0.0),
        frequency_penalty=pick(req.frequency_penalty, 0.0),
        seed=req.seed,
    )


def _budget(lm: LoadedModel, prompt_len: int, requested: int | None, field: str) -> int:
    room = lm.context_length - prompt_len
    if room <= 0:
        raise ApiError(
            "invalid_request",
            f"the prompt is {prompt_len} tokens but the model's context is {lm.context_length} tokens",
            param=field,
            code="context_length_exceeded",
        )
    return room if requested is None else min(requested, room)


def _usage(outcome: Outcome) -> dict[str, Any]:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens},  # the prefix cache's share
    }


def _tool_call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    if index is not None:
        out["index"] = index
    return out


def _through_intake(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Any]]:
    """Runs an inference handler inside the neuron's intake: refused with 503 while the neuron
    restarts, and counted until the handler returns (a streamed response's last byte included),
    so a restart waits for it."""

    @functools.wraps(handler)
    async def run(request: Request):
        intake = context_of(request).intake
        request.ctx.ticket = intake.enter()
        try:
            return await handler(request)
        finally:
            intake.leave()

    return run


async def _abortable(request: Request, work: Awaitable[Any]) -> Any:
    """Runs a whole answer's generation so that a restart that stops it makes the answer a 503
    (``neuron_restarting``) instead of a cut connection."""
    task = asyncio.ensure_future(work)
    aborted = False

    def abort() -> None:
        nonlocal aborted
        aborted = True
        task.cancel()

    request.ctx.ticket.abort = abort
    try:
        return await task
    except asyncio.CancelledError:
        handler = asyncio.current_task()
        if aborted and handler is not None and handler.cancelling() == 0:  # our abort, not a client gone
            raise restart_error() from None
        raise


QUEUE_HEADER = "x-neuron-queue-ms"  # how long the request waited for admission (the gateway adds it to its own)


async def _admitted(request: Request, lm: LoadedModel, endpoint: str) -> dict[str, str]:
    """Waits for the model's admission; returns the response headers that say how long it took."""
    ctx = context_of(request)
    started = time.monotonic()
    await lm.admission.acquire()
    ctx.metrics.requests_started(lm.model_id, endpoint)
    return {QUEUE_HEADER: f"{(time.monotonic() - started) * 1000:.1f}"}


# --- chat -----------------------------------------------------------------------------------


@bp.post("/v1/chat/completions")
@_through_intake
async def chat_completions(request: Request):
    ctx = context_of(request)
    req: ChatCompletionRequest = decode_request(request.body, ChatCompletionRequest)
    check_chat(req)
    lm = ctx.residency.get(req.model)
    prompt = await asyncio.to_thread(chat_prompt, lm, req)
    prompt_ids = prompt.ids
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    field = "max_completion_tokens" if req.max_completion_tokens is not None else "messages"
    gen = GenerationRequest(
        prompt_ids=prompt_ids,
        max_new_tokens=_budget(lm, len(prompt_ids), requested, field),
        params=_sampling(lm, req),
        stop=stop_strings(req),
        in_reasoning=prompt.in_reasoning,
        answer_prefix=prompt.answer_prefix,
        parse_tools=bool(req.tools) and req.tool_choice != "none" and structured_format(req.response_format) is None,
        ignore_eos=req.ignore_eos,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        constraint=await _constraint(lm, req),
    )
    outcome = Outcome(prompt_tokens=len(prompt_ids))
    cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
    queued = await _admitted(request, lm, "chat")
    try:
        if req.stream:
            env = _Envelope(cid, "chat.completion.chunk", created, req.model, outcome, req.stream_options)
            await stream_events(request, lambda emit: _stream_chat(emit, lm, gen, env), headers=queued)
            return None
        answer = await _abortable(request, _complete_chat(lm, gen, outcome, cid, created, req.model))
        return response.json(answer, headers=queued)
    finally:
        lm.admission.release()
        ctx.metrics.requests_finished(lm.model_id, "chat", outcome)


async def _complete_chat(lm, gen, outcome, cid, created, model) -> dict[str, Any]:
    content, reasoning = [], []
    logprobs = []
    async for delta in generate(lm, gen, outcome):
        logprobs += delta.logprobs
        for ev in delta.events:
            if ev.kind == "reasoning":
                reasoning.append(ev.text)
            elif ev.kind == "content":
                content.append(ev.text)
    text = "".join(content)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if outcome.tool_calls:
        message["tool_calls"] = [_tool_call_json(c) for c in outcome.tool_calls]
        message["content"] = text.strip() or None
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": outcome.finish_reason,
                "stop_reason": outcome.stop_reason,
                "logprobs": _chat_logprobs(lm, logprobs) if gen.logprobs is not None else None,
            }
        ],
        "usage": _usage(outcome),
        "timings": outcome.timings(),
    }


def _token_text(lm: LoadedModel, token: int) -> str:
    return lm.tokenizer.decode([token], skip_special_tokens=False)


def _chat_logprobs(lm: LoadedModel, entries: list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat ``logprobs``: each token with its log probability, its bytes and the top ones."""

    def one(token: int, logprob: float) -> dict[str, Any]:
        text = _token_text(lm, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries]
    return {"content": content, "refusal": None}


def _completion_logprobs(lm: LoadedModel, entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions' ``logprobs``: parallel lists, text offsets from ``offset``."""
    tokens = [_token_text(lm, e.token) for e in entries]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{_token_text(lm, t): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


def _chat_delta(ev: Event, tool_index: int) -> dict[str, Any]:
    if ev.kind == "content":
        return {"content": ev.text}
    if ev.kind == "reasoning":
        return {"reasoning_content": ev.text}
    assert ev.tool_call is not None
    return {"tool_calls": [_tool_call_json(ev.tool_call, tool_index)]}


@dataclass(frozen=True)
class _Envelope:
    """The fields every chunk of one streamed response repeats, and its usage policy: on the
    finishing chunk, on a last chunk of its own with ``include_usage``, and on every chunk with
    ``continuous_usage_stats`` (vLLM's option; a translating gateway reads the prompt's size
    from the first chunk)."""

    id: str
    object: str
    created: int
    model: str
    outcome: Outcome
    options: StreamOptions | None

    def event(self, choices: list[dict[str, Any]], *, final: bool = False) -> bytes:
        body: dict[str, Any] = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if final or (self.options is not None and self.options.continuous_usage_stats):
            body["usage"] = _usage(self.outcome)
        if final:
            body["timings"] = self.outcome.timings()
        return event(body)

    def choice(
        self, key: str, value: Any, finish: str | None = None, logprobs: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        out = {"index": 0, key: value, "finish_reason": finish, "logprobs": logprobs}
        if finish is not None:
            out["stop_reason"] = self.outcome.stop_reason
        return [out]

    async def finish(self, emit, logprobs: dict[str, Any] | None = None) -> None:
        """The finishing chunk (with usage), and the usage chunk when the client asked for it."""
        empty = "" if self.object == "text_completion" else {}
        key = "text" if self.object == "text_completion" else "delta"
        await emit(self.event(self.choice(key, empty, self.outcome.finish_reason, logprobs), final=True))
        if self.options is not None and self.options.include_usage:
            await emit(self.event([], final=True))


async def _stream_chat(emit, lm, gen, env: _Envelope) -> None:
    await emit(env.event(env.choice("delta", {"role": "assistant", "content": ""})))
    tools = 0
    pending: list[TokenLogprob] = []
    wanted = gen.logprobs is not None
    async for delta in generate(lm, gen, env.outcome):
        pending += delta.logprobs
        for ev in delta.events:  # a delta's log probabilities ride on its first chunk
            lp = _chat_logprobs(lm, pending) if wanted and pending else None
            await emit(env.event(env.choice("delta", _chat_delta(ev, tools), logprobs=lp)))
            pending = []
            tools += ev.kind == "tool_call"
    await env.finish(emit, _chat_logprobs(lm, pending) if wanted and pending else None)


# --- legacy completions ---------------------------------------------------------------------


@bp.post("/v1/completions")
@_through_intake
async def completions(request: Request):
    ctx = context_of(request)
    req: CompletionRequest = decode_request(request.body, CompletionRequest)
    check_completion(req)
    lm = ctx.residency.get(req.model)
    prompt_ids = await asyncio.to_thread(completion_prompt, lm, req)
    requested = 16 if req.max_tokens is None else req.max_tokens
    gen = GenerationRequest(
        prompt_ids=prompt_ids,
        max_new_tokens=_budget(lm, len(prompt_ids), requested, "max_tokens"),
        params=_sampling(lm, req),
        stop=stop_strings(req),
        parse_tools=False,
        ignore_eos=req.ignore_eos,
        logprobs=req.logprobs if isinstance(req.logprobs, int) and not isinstance(req.logprobs, bool) else None,
        constraint=await _constraint(lm, req),
    )
    outcome = Outcome(prompt_tokens=len(prompt_ids))
    cid, created = "cmpl-" + uuid.uuid4().hex[:24], int(time.time())
    echo = lm.tokenizer.decode(prompt_ids, skip_special_tokens=False) if req.echo else ""
    queued = await _admitted(request, lm, "completions")
    try:
        if req.stream:
            env = _Envelope(cid, "text_completion", created, req.model, outcome, req.stream_options)
            await stream_events(request, lambda emit: _stream_completion(emit, lm, gen, env, echo), headers=queued)
            return None
        parts = [echo]
        entries: list[TokenLogprob] = []

        async def whole() -> None:
            async for delta in generate(lm, gen, outcome):
                parts.extend(ev.text for ev in delta.events)
                entries.extend(delta.logprobs)

        await _abortable(request, whole())
        return response.json(
            {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "choices": [
                    {
                        "index": 0,
                        "text": "".join(parts),
                        "finish_reason": outcome.finish_reason,
                        "stop_reason": outcome.stop_reason,
                        "logprobs": _completion_logprobs(lm, entries, len(echo)) if gen.logprobs is not None else None,
                    }
                ],
                "usage": _usage(outcome),
                "timings": outcome.timings(),
            },
            headers=queued,
        )
    finally:
        lm.admission.release()
        ctx.metrics.requests_finished(lm.model_id, "completions", outcome)


async def _stream_completion(emit, lm, gen, env: _Envelope, echo: str) -> None:
    if echo:
        await emit(env.event(env.choice("text", echo)))
    offset, pending = len(echo), []
    wanted = gen.logprobs is not None
    async for delta in generate(lm, gen, env.outcome):
        pending += delta.logprobs
        text = "".join(ev.text for ev in delta.events)
        if text:
            lp = _completion_logprobs(lm, pending, offset) if wanted else None
            await emit(env.event(env.choice("text", text, logprobs=lp)))
            offset += len(text)
            pending = []
    await env.finish(emit, _completion_logprobs(lm, pending, offset) if wanted and pending else None)
