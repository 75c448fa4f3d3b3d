"""What a neuron answers on ``/v1/chat/completions``, as msgspec structs the translators decode:
the whole completion and the streamed chunk. Lenient where servers differ (``reasoning`` or
``reasoning_content``, usage on any chunk, ``stop_reason`` only from vLLM-style servers)."""

from __future__ import annotations

from typing import Any

import msgspec

from cortex.protocol.errors import ApiError


class FunctionDelta(msgspec.Struct, kw_only=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct, kw_only=True):
    index: int = 0
    id: str | None = None
    type: str | None = None
    function: FunctionDelta | None = None


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Delta(msgspec.Struct, kw_only=True):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # the newer vLLM name
    tool_calls: list[ToolCallDelta] | None = None

    @property
    def thought(self) -> str | None:
        return self.reasoning_content if self.reasoning_content is not None else self.reasoning


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatChunk(msgspec.Struct, kw_only=True):
    """One ``data:`` event of a streamed chat completion (or the error event a server sends after
    the first byte)."""

    choices: list[ChunkChoice] = []
    usage: Usage | None = None
    error: dict[str, Any] | None = None


class AssistantMessage(msgspec.Struct, kw_only=True):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @property
    def thought(self) -> str | None:
        return self.reasoning_content if self.reasoning_content is not None else self.reasoning


class Choice(msgspec.Struct, kw_only=True):
    message: AssistantMessage
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    choices: list[Choice]
    usage: Usage | None = None


_completion = msgspec.json.Decoder(ChatCompletion)


def decode_completion(data: bytes) -> ChatCompletion:
    """A neuron's whole chat answer; anything else is the neuron's fault (502)."""
    try:
        return _completion.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError("upstream", f"the neuron's answer is not a chat completion: {exc}") from None
