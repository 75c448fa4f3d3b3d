"""Anthropic Messages ⇄ OpenAI chat.

Requests: ``system`` stays verbatim as the first message (its blocks as text parts, in order);
a user turn's ``tool_result`` blocks become ``role: "tool"`` messages in place, with the turn's
other blocks around them kept in order; an assistant turn's thinking, text and ``tool_use``
blocks become one assistant message (``reasoning_content``, content, ``tool_calls``).

Responses: thinking first, then text, then one ``tool_use`` block per tool call.

Streams: :class:`MessagesStream` turns chat chunks into Anthropic's event grammar as they come:
``message_start``, then content blocks one at a time (start, deltas, stop, indices counting up
from 0), then ``message_delta`` and ``message_stop``; ``ping`` while waiting, ``error`` for a
failure after the first byte.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec

from cortex.protocol.anthropic import errors as anthropic_errors
from cortex.protocol.anthropic.requests import (
    Base64Source,
    Conversation,
    DocumentBlock,
    FileSource,
    ImageBlock,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    TextSource,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
    output_schema_of,
)
from cortex.protocol.errors import ApiError, invalid
from cortex.protocol.openai.chat import ChatCompletion, ToolCallDelta
from cortex.translate.common import ChunkTranslator, function_tool, prompt_fields

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


# --- request --------------------------------------------------------------------------------


def _image_part(source: Base64Source | UrlSource | FileSource, where: str) -> dict[str, Any]:
    if isinstance(source, Base64Source):
        url = f"data:{source.media_type};base64,{source.data}"
    elif isinstance(source, UrlSource):
        url = source.url
    else:
        raise invalid(f"{where}.source: file sources need Anthropic's Files API, which this gateway does not have")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: DocumentBlock, where: str) -> dict[str, Any]:
    if not isinstance(block.source, TextSource):
        raise invalid(f"{where}.source: only plain-text documents (source type 'text') can be passed on")
    head = "\n".join(x for x in (block.title, block.context) if x)
    return {"type": "text", "text": f"{head}\n\n{block.source.data}" if head else block.source.data}


def _user_part(block: Any, where: str) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, ImageBlock):
        return _image_part(block.source, where)
    assert isinstance(block, DocumentBlock)
    return _document_part(block, where)


def _tool_messages(block: ToolResultBlock, where: str) -> list[dict[str, Any]]:
    """A tool result as a ``tool`` message; images in it follow as a user message (the chat
    dialect has no images in tool messages). ``is_error`` is said in the text the model reads."""
    content = block.content
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    else:
        for k, part in enumerate(content or []):
            if isinstance(part, ImageBlock):
                images.append(_image_part(part.source, f"{where}.content[{k}]"))
            else:
                texts.append(_user_part(part, f"{where}.content[{k}]")["text"])
    text = "\n".join(texts)
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    out = [{"role": "tool", "tool_call_id": block.tool_use_id, "content": text}]
    if images:
        out.append({"role": "user", "content": images})
    return out


def _user_messages(content: str | list, i: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if isinstance(block, ToolResultBlock):
            if parts:
                out.append({"role": "user", "content": parts})
                parts = []
            out += _tool_messages(block, where)
        else:
            parts.append(_user_part(block, where))
    if parts or not out:
        out.append({"role": "user", "content": parts})
    return out


def _assistant_message(content: str | list) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts, thoughts, calls = [], [], []
    for block in content:
        if isinstance(block, TextBlock):
            texts.append({"type": "text", "text": block.text})
        elif isinstance(block, ThinkingBlock):
            thoughts.append(block.thinking)
        elif isinstance(block, ToolUseBlock):
            arguments = msgspec.json.encode(block.input).decode()
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
        else:  # redacted thinking is opaque to any model but Anthropic's
            assert isinstance(block, RedactedThinkingBlock)
    message: dict[str, Any] = {"role": "assistant"}
    if len(texts) == 1:
        message["content"] = texts[0]["text"]
    else:
        message["content"] = texts or (None if calls else "")
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    return message


def chat_messages(req: Conversation) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if isinstance(req.system, str):
        if req.system:
            messages.append({"role": "system", "content": req.system})
    elif req.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": b.text} for b in req.system]})
    for i, m in enumerate(req.messages):
        if m.role == "user":
            messages += _user_messages(m.content, i)
        else:
            messages.append(_assistant_message(m.content))
    return messages


def _tools(req: Conversation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if req.tools:
        out["tools"] = [function_tool(t.name, t.description, t.input_schema) for t in req.tools]
    choice = req.tool_choice
    if choice is not None:
        if choice.type == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use:
            out["parallel_tool_calls"] = False
    return out


def _thinking(req: Conversation) -> dict[str, Any]:
    """Anthropic thinks only when asked; hybrid models (Qwen3) are told so through the template."""
    enabled = req.thinking is not None and req.thinking.type != "disabled"
    return {"chat_template_kwargs": {"enable_thinking": enabled}}


def chat_request(req: MessagesRequest, model: str) -> dict[str, Any]:
    """The OpenAI chat request for a (checked) Anthropic request, addressed to ``model``."""
    out: dict[str, Any] = {"model": model, "messages": chat_messages(req), "max_tokens": req.max_tokens}
    if req.stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    for key in ("temperature", "top_p", "top_k"):
        value = getattr(req, key)
        if value is not None:
            out[key] = value
    if req.stop_sequences:
        out["stop"] = list(req.stop_sequences)
    out.update(_tools(req))
    out.update(_thinking(req))
    schema = output_schema_of(req)
    if schema is not None:  # structured outputs: the neuron holds the answer to the schema
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    if req.metadata is not None and req.metadata.user_id is not None:
        out["user"] = req.metadata.user_id
    return out


def tokenize_request(req: Conversation, model: str) -> dict[str, Any]:
    """The neuron ``/tokenize`` body that counts exactly the prompt ``chat_request`` would send."""
    return prompt_fields({"model": model, "messages": chat_messages(req), **_tools(req), **_thinking(req)})


# --- response -------------------------------------------------------------------------------


def _stop(finish_reason: str | None, stop_reason: str | int | None) -> tuple[str, str | None]:
    if finish_reason == "stop" and isinstance(stop_reason, str):
        return "stop_sequence", stop_reason
    return STOP_REASONS.get(finish_reason or "stop", "end_turn"), None


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _tool_input(call: ToolCallDelta) -> dict[str, Any]:
    name = call.function.name if call.function else None
    raw = (call.function.arguments if call.function else None) or ""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ApiError(
            "upstream",
            f"the model called {name!r} with arguments that are not a JSON object: {raw[:200]!r}",
            code="bad_tool_arguments",
        )
    return value


def message_response(completion: ChatCompletion, model: str, message_id: str | None = None) -> dict[str, Any]:
    """The Anthropic message for a whole chat completion; ``model`` is the name the client sent."""
    if not completion.choices:
        raise ApiError("upstream", "the neuron answered with no choices")
    choice = completion.choices[0]
    msg = choice.message
    content: list[dict[str, Any]] = []
    if msg.thought:
        content.append({"type": "thinking", "thinking": msg.thought, "signature": ""})
    if msg.content:
        content.append({"type": "text", "text": msg.content})
    for call in msg.tool_calls or []:
        content.append(
            {
                "type": "tool_use",
                "id": call.id or "toolu_" + uuid.uuid4().hex[:24],
                "name": call.function.name if call.function else "",
                "input": _tool_input(call),
            }
        )
    stop_reason, stop_sequence = _stop(choice.finish_reason, choice.stop_reason)
    usage = completion.usage
    return {
        "id": message_id or new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0),
    }


# --- stream ---------------------------------------------------------------------------------


def _event(name: bytes, obj: Any) -> bytes:
    return b"event: " + name + b"\ndata: " + msgspec.json.encode(obj) + b"\n\n"


PING = b'event: ping\ndata: {"type":"ping"}\n\n'
WAITING = b": waiting\n\n"  # before message_start only a comment may keep the connection alive
_TEXT_BLOCK = {"type": "text", "text": ""}
_THINKING_BLOCK = {"type": "thinking", "thinking": "", "signature": ""}
_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_DELTA_FIELDS = {
    "text": (b',"delta":{"type":"text_delta","text":', b"}}\n\n"),
    "thinking": (b',"delta":{"type":"thinking_delta","thinking":', b"}}\n\n"),
    "tool_use": (b',"delta":{"type":"input_json_delta","partial_json":', b"}}\n\n"),
}


class MessagesStream(ChunkTranslator):
    """One streamed Anthropic message, built from chat chunks as they arrive."""

    dialect = "Anthropic"

    def __init__(self, model: str, message_id: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.id = message_id or new_message_id()
        self.next_index = 0
        self.open_kind: str | None = None  # "text" | "thinking" | "tool_use"

    def start(self, input_tokens: int) -> bytes:
        """``message_start``; once, before anything else."""
        if self.started:
            return b""
        self.started = True
        self.input_tokens = input_tokens
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(input_tokens, 0),
        }
        return _event(b"message_start", {"type": "message_start", "message": message})

    def keepalive(self) -> bytes:
        return PING if self.started else WAITING

    def _end_block(self) -> bytes:
        if self.open_kind is None:
            return b""
        self.open_kind = None
        index = self.next_index - 1
        return b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n' % index

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.open_kind = kind
        index = self.next_index
        self.next_index += 1
        return out + _event(
            b"content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
        )

    def _delta(self, kind: str, text: str) -> bytes:
        head, tail = _DELTA_FIELDS[kind]
        return _DELTA_HEAD + str(self.next_index - 1).encode() + head + msgspec.json.encode(text) + tail

    def _thought(self, text: str) -> bytes:
        out = b"" if self.open_kind == "thinking" else self._open("thinking", _THINKING_BLOCK)
        return out + self._delta("thinking", text)

    def _text(self, text: str) -> bytes:
        out = b"" if self.open_kind == "text" else self._open("text", _TEXT_BLOCK)
        return out + self._delta("text", text)

    def _tool_start(self, call: ToolCallDelta) -> bytes:
        fn = call.function
        block = {
            "type": "tool_use",
            "id": call.id or "toolu_" + uuid.uuid4().hex[:24],
            "name": (fn.name if fn else None) or "",
            "input": {},
        }
        return self._open("tool_use", block)

    def _tool_args(self, arguments: str) -> bytes:
        return self._delta("tool_use", arguments)

    def finish(self) -> bytes:
        """The end: the open block's stop, ``message_delta`` and ``message_stop``."""
        if self.ended:
            return b""
        out = self.start(0) + self._close()
        self.ended = True
        stop_reason, stop_sequence = _stop(self.finish_reason, self.stop_reason)
        out += _event(
            b"message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": _usage(self.input_tokens, self.output_tokens),
            },
        )
        return out + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'

    def fail(self, err: ApiError) -> bytes:
        """An ``error`` event ends the stream (Anthropic sends no ``message_stop`` after it)."""
        if self.ended:
            return b""
        self.ended = True
        return anthropic_errors.render_sse(err)
