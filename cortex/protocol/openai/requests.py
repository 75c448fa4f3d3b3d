"""OpenAI chat and legacy completion requests as msgspec structs, plus range checks.

Decoding checks types (``msgspec`` names the field that is wrong); :func:`check_sampling` and
friends check values. Unknown fields are accepted and ignored, as OpenAI-compatible servers do,
except those a client relies on for the shape of the answer (``logprobs``, ``top_logprobs``,
``response_format``): they decode whatever their type and are checked here by value.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cortex.protocol.errors import ApiError, decode_body, invalid


class FunctionCall(msgspec.Struct, kw_only=True):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(msgspec.Struct, kw_only=True):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ContentPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None
    image_url: Any = None


class ChatMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class FunctionDef(msgspec.Struct, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, kw_only=True):
    type: str = "function"
    function: FunctionDef


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's extension: usage so far on every chunk


class SamplingFields(msgspec.Struct, kw_only=True):
    """Sampling and stopping fields shared by chat and legacy completions."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    ignore_eos: bool = False  # beyond OpenAI (as in vLLM): generate up to max_tokens regardless


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    logprobs: Any = None  # true: each token's log probability (checked by check_chat)
    top_logprobs: Any = None  # with logprobs: this many alternatives per token (0-20)
    response_format: Any = None  # text | json_object | json_schema (structured output, checked by value)


class CompletionRequest(SamplingFields, kw_only=True):
    prompt: str | list[Any]  # a string, [string], or token ids
    echo: bool = False
    suffix: str | None = None
    logprobs: Any = None  # an integer in this dialect: the alternatives listed per token (0-20)
    response_format: Any = None  # beyond OpenAI (vLLM takes it here too): as in chat


def decode_request(body: bytes, kind: type[msgspec.Struct]) -> Any:
    """Decodes a JSON body into ``kind``; a malformed body or a wrong field type is a 400 naming it."""
    return decode_body(body, kind)


def _range(value: float | None, name: str, lo: float, hi: float, *, lo_open: bool = False) -> None:
    if value is None:
        return
    if not -float("inf") < value < float("inf"):  # NaN or ±inf (JSON 1e999 is inf to some decoders)
        raise invalid(f"{name} must be a finite number, got {value}", param=name)
    ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise invalid(f"{name} must be in {bracket}{lo}, {hi}], got {value}", param=name)


def check_sampling(req: SamplingFields) -> None:
    """Value checks for the shared sampling fields; raises ApiError naming the field."""
    if not req.model:
        raise invalid("model must be a non-empty string", param="model")
    if req.n != 1:
        raise invalid(f"n must be 1 (one choice per request), got {req.n}", param="n")
    _range(req.temperature, "temperature", 0.0, 2.0)
    _range(req.top_p, "top_p", 0.0, 1.0, lo_open=True)
    _range(req.min_p, "min_p", 0.0, 1.0)
    _range(req.presence_penalty, "presence_penalty", -2.0, 2.0)
    _range(req.frequency_penalty, "frequency_penalty", -2.0, 2.0)
    _range(req.repetition_penalty, "repetition_penalty", 0.0, 10.0, lo_open=True)
    if req.top_k is not None and req.top_k < -1:
        raise invalid(f"top_k must be -1 (off), 0 (off) or positive, got {req.top_k}", param="top_k")
    if req.max_tokens is not None and req.max_tokens < 0:
        raise invalid(f"max_tokens must be >= 0, got {req.max_tokens}", param="max_tokens")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if len(stops) > 16:
        raise invalid("stop may hold at most 16 strings", param="stop")
    if any(not s for s in stops):
        raise invalid("stop strings must be non-empty", param="stop")


def _check_response_format(value: Any) -> None:
    """``text`` (or nothing), ``json_object``, or ``json_schema`` with its ``schema`` object."""
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("text", "json_object"):
        return
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise invalid(
                'response_format json_schema needs {"json_schema": {"name": "…", "schema": {…}}}',
                param="response_format.json_schema",
            )
        return
    shown = repr(kind) if isinstance(kind, str) else repr(value)
    raise invalid(f"response_format {shown} is not one of text, json_object, json_schema", param="response_format")


MAX_TOP_LOGPROBS = 20


def _check_chat_logprobs(req: ChatCompletionRequest) -> None:
    if req.logprobs is not None and not isinstance(req.logprobs, bool):
        raise invalid(f"logprobs takes true or false, got {req.logprobs!r}", param="logprobs")
    top = req.top_logprobs
    if top is None:
        return
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise invalid(
            f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {top!r}", param="top_logprobs"
        )
    if not req.logprobs:
        raise invalid("top_logprobs needs logprobs: true", param="top_logprobs")


def check_chat(req: ChatCompletionRequest) -> None:
    check_sampling(req)
    _check_chat_logprobs(req)
    _check_response_format(req.response_format)
    if not req.messages:
        raise invalid("messages must be a non-empty list", param="messages")
    if req.max_completion_tokens is not None and req.max_completion_tokens < 0:
        raise invalid(
            f"max_completion_tokens must be >= 0, got {req.max_completion_tokens}", param="max_completion_tokens"
        )
    check_tool_choice(req)
    for i, m in enumerate(req.messages):
        if m.role not in ("system", "developer", "user", "assistant", "tool"):
            raise invalid(
                f"messages[{i}].role {m.role!r} is not one of system, developer, user, assistant, tool",
                param=f"messages[{i}].role",
            )
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                if part.type != "text":
                    raise invalid(
                        f"messages[{i}].content[{j}] has type {part.type!r}: this model takes text only",
                        param=f"messages[{i}].content[{j}].type",
                    )
                if part.text is None:
                    raise invalid(f"messages[{i}].content[{j}].text is missing", param=f"messages[{i}].content[{j}]")


def forced_function(req: ChatCompletionRequest) -> str | None:
    """The function ``tool_choice`` names (``{"type": "function", "function": {"name": …}}``), if any."""
    choice = req.tool_choice
    if isinstance(choice, dict):
        fn = choice.get("function")
        return fn.get("name") if isinstance(fn, dict) else None
    return None


def check_tool_choice(req: ChatCompletionRequest) -> None:
    choice = req.tool_choice
    if choice is None or choice in ("none", "auto"):
        return
    if isinstance(choice, str) and choice != "required":
        raise invalid(f"tool_choice must be none, auto, required or a function, got {choice!r}", param="tool_choice")
    if not req.tools:
        raise invalid("tool_choice asks for a tool call but no tools were given", param="tool_choice")
    if isinstance(choice, dict):
        name = forced_function(req)
        if choice.get("type", "function") != "function" or not isinstance(name, str):
            raise invalid(
                'tool_choice must look like {"type": "function", "function": {"name": "…"}}', param="tool_choice"
            )
        if name not in {t.function.name for t in req.tools}:
            raise invalid(f"tool_choice names {name!r}, which is not one of the tools given", param="tool_choice")


def check_completion(req: CompletionRequest) -> None:
    check_sampling(req)
    lp = req.logprobs
    if (
        lp is not None
        and lp is not False
        and (not isinstance(lp, int) or isinstance(lp, bool) or not 0 <= lp <= MAX_TOP_LOGPROBS)
    ):
        raise invalid(
            f"logprobs (the alternatives to list per token) must be an integer from 0 to {MAX_TOP_LOGPROBS}, "
            f"got {lp!r}",
            param="logprobs",
        )
    _check_response_format(req.response_format)
    if req.suffix:
        raise invalid("suffix (fill-in-the-middle) is not supported", param="suffix")
    prompt = req.prompt
    if isinstance(prompt, list):
        if not prompt:
            raise invalid("prompt must not be empty", param="prompt")
        if all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise invalid("prompt as a list must hold exactly one string (one choice per request)", param="prompt")
        elif not all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            raise invalid("prompt must be a string, a list of one string, or a list of token ids", param="prompt")


def stop_strings(req: SamplingFields) -> list[str]:
    return [req.stop] if isinstance(req.stop, str) else list(req.stop or [])


__all__ = [
    "ApiError",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "Tool",
    "check_chat",
    "check_completion",
    "decode_request",
    "stop_strings",
]
