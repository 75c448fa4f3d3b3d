"""OpenAI Responses ⇄ OpenAI chat.

Requests: ``instructions`` becomes a leading system message; message items become chat messages
(``developer`` as ``system``); a run of ``function_call`` items becomes the ``tool_calls`` of one
assistant message (the assistant message item just before it, if any); ``function_call_output``
becomes a ``tool`` message; a reasoning item's text becomes the ``reasoning_content`` of the next
assistant message.

Responses: a reasoning item, then a message item, then one ``function_call`` item per tool call.

Streams: :class:`ResponsesStream` turns chat chunks into the Responses event grammar as they come:
``response.created`` and ``response.in_progress``, then output items one at a time (added, content
deltas, done; ``output_index`` counting up from 0), then ``response.completed`` (or
``response.incomplete``) carrying the whole response. Every event has a ``sequence_number``
counting from 0; ``error`` ends a stream that fails after the first byte.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from cortex.protocol.errors import ApiError
from cortex.protocol.openai.chat import ChatCompletion, ToolCallDelta
from cortex.protocol.openai.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputText,
    MessageItem,
    OutputText,
    ReasoningItem,
    Refusal,
    ResponsesRequest,
)
from cortex.translate.common import ChunkTranslator, function_tool, prompt_fields

INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
NO_THINKING = ("none", "minimal")
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}  # a function tool without parameters


def new_id(prefix: str) -> str:
    return prefix + "_" + uuid.uuid4().hex


# --- request --------------------------------------------------------------------------------


def _part(part: Any) -> dict[str, Any]:
    if isinstance(part, InputText | OutputText):
        return {"type": "text", "text": part.text}
    if isinstance(part, Refusal):
        return {"type": "text", "text": part.refusal}
    assert isinstance(part, InputImage) and part.image_url
    return {"type": "image_url", "image_url": {"url": part.image_url}}


def _message(item: MessageItem) -> dict[str, Any]:
    role = "system" if item.role == "developer" else item.role
    if isinstance(item.content, str):
        return {"role": role, "content": item.content}
    parts = [_part(p) for p in item.content]
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": role, "content": parts[0]["text"]}
    return {"role": role, "content": parts or ""}


def _tool_messages(item: FunctionCallOutputItem) -> list[dict[str, Any]]:
    """A function's output as a ``tool`` message; images in it follow as a user message (the chat
    dialect has no images in tool messages)."""
    if isinstance(item.output, str):
        return [{"role": "tool", "tool_call_id": item.call_id, "content": item.output}]
    parts = [_part(p) for p in item.output]
    text = "\n".join(p["text"] for p in parts if p["type"] == "text")
    out = [{"role": "tool", "tool_call_id": item.call_id, "content": text}]
    images = [p for p in parts if p["type"] != "text"]
    if images:
        out.append({"role": "user", "content": images})
    return out


def _tool_call(item: FunctionCallItem) -> dict[str, Any]:
    return {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}


def _reasoning_text(item: ReasoningItem) -> str:
    """The reasoning as the model wrote it; summaries only when the full text was not sent."""
    if item.content:
        return "".join(c.text for c in item.content)
    return "\n\n".join(s.text for s in item.summary)


def chat_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    items = [MessageItem(role="user", content=req.input)] if isinstance(req.input, str) else req.input or []
    thoughts: list[str] = []
    prev: Any = None
    for item in items:
        if isinstance(item, ReasoningItem):
            text = _reasoning_text(item)
            if not text:  # encrypted reasoning is opaque to any model but OpenAI's
                continue
            thoughts.append(text)
        elif isinstance(item, FunctionCallOutputItem):
            messages += _tool_messages(item)
        elif isinstance(item, FunctionCallItem) and (
            isinstance(prev, FunctionCallItem) or (isinstance(prev, MessageItem) and prev.role == "assistant")
        ):
            messages[-1].setdefault("tool_calls", []).append(_tool_call(item))
        else:
            if isinstance(item, MessageItem):
                message = _message(item)
            else:
                message = {"role": "assistant", "content": None, "tool_calls": [_tool_call(item)]}
            if message["role"] == "assistant" and thoughts:
                message["reasoning_content"] = "\n\n".join(thoughts)
                thoughts = []
            messages.append(message)
        prev = item
    return messages


def _tools(req: ResponsesRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if req.tools:
        out["tools"] = [
            function_tool(t.name, t.description, t.parameters if t.parameters is not None else EMPTY_SCHEMA)
            for t in req.tools
        ]
    choice = req.tool_choice
    if isinstance(choice, str):
        out["tool_choice"] = choice
    elif choice is not None:
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    if req.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = req.parallel_tool_calls
    return out


def _thinking(req: ResponsesRequest) -> dict[str, Any]:
    """Hybrid models (Qwen3) are told through the template whether to think; with no ``reasoning``
    the template's own default stands."""
    effort = req.reasoning.effort if req.reasoning is not None else None
    if effort is None:
        return {}
    return {"chat_template_kwargs": {"enable_thinking": effort not in NO_THINKING}}


def chat_request(req: ResponsesRequest, model: str) -> dict[str, Any]:
    """The OpenAI chat request for a (checked) Responses request, addressed to ``model``."""
    out: dict[str, Any] = {"model": model, "messages": chat_messages(req)}
    if req.stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if req.max_output_tokens is not None:
        out["max_tokens"] = req.max_output_tokens
    for key in ("temperature", "top_p", "user"):
        value = getattr(req, key)
        if value is not None:
            out[key] = value
    out.update(_tools(req))
    out.update(_thinking(req))
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        spec = {"name": fmt.name or "response", "schema": fmt.schema, "strict": bool(fmt.strict)}
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    return out


def tokenize_request(req: ResponsesRequest, model: str) -> dict[str, Any]:
    """The neuron ``/tokenize`` body that counts exactly the prompt ``chat_request`` would send."""
    return prompt_fields(chat_request(req, model))


# --- response -------------------------------------------------------------------------------


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _text_format(req: ResponsesRequest) -> dict[str, Any]:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return {"type": "text"}
    out: dict[str, Any] = {"type": fmt.type}
    if fmt.type == "json_schema":
        out.update(name=fmt.name or "response", schema=fmt.schema, strict=bool(fmt.strict))
    return out


def _response(
    req: ResponsesRequest,
    model: str,
    response_id: str,
    created_at: int,
    *,
    output: list[dict[str, Any]],
    status: str,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Response object; everything but ``output``, ``status`` and ``usage`` echoes the request."""
    reason = INCOMPLETE_REASONS.get(finish_reason or "")
    choice: Any = req.tool_choice
    if choice is None:
        choice = "auto"
    elif not isinstance(choice, str):
        choice = {"type": "function", "name": choice.name}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "incomplete" if reason else status,
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "model": model,
        "output": output,
        "usage": usage,
        "instructions": req.instructions,
        "tools": [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
                "strict": t.strict,
            }
            for t in req.tools or []
        ],
        "tool_choice": choice,
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_output_tokens": req.max_output_tokens,
        "previous_response_id": None,
        "reasoning": (
            {"effort": req.reasoning.effort, "summary": req.reasoning.summary} if req.reasoning is not None else None
        ),
        "text": {"format": _text_format(req)},
        "truncation": "disabled",
        "metadata": req.metadata or {},
        "user": req.user,
        "store": False,
        "background": False,
    }


def _reasoning_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [{"type": "reasoning_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def _message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_output_text(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def _call_parts(call: ToolCallDelta) -> tuple[str, str, str]:
    """The call id, name and arguments of an upstream tool call (an id is made up if missing)."""
    fn = call.function
    return call.id or new_id("call"), (fn.name if fn else None) or "", (fn.arguments if fn else None) or ""


def response_object(
    completion: ChatCompletion, req: ResponsesRequest, model_name: str, response_id: str | None = None
) -> dict[str, Any]:
    """The Response for a whole chat completion; ``model_name`` is the name the client sent. When
    the output was cut short, its last item is ``incomplete``."""
    if not completion.choices:
        raise ApiError("upstream", "the neuron answered with no choices")
    choice = completion.choices[0]
    msg = choice.message
    output: list[dict[str, Any]] = []
    if msg.thought:
        output.append(_reasoning_item(new_id("rs"), msg.thought, "completed"))
    if msg.content:
        output.append(_message_item(new_id("msg"), msg.content, "completed"))
    for call in msg.tool_calls or []:
        output.append(_call_item(new_id("fc"), *_call_parts(call), "completed"))
    if output and choice.finish_reason in INCOMPLETE_REASONS:
        output[-1]["status"] = "incomplete"
    usage = completion.usage
    return _response(
        req,
        model_name,
        response_id or new_id("resp"),
        int(time.time()),
        output=output,
        status="completed",
        finish_reason=choice.finish_reason,
        usage=_usage(usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0),
    )


# --- stream ---------------------------------------------------------------------------------

KEEPALIVE = b": keep-alive\n\n"


class ResponsesStream(ChunkTranslator):
    """One streamed Response, built from chat chunks as they arrive. Output items open one at a
    time; what each holds so far is kept, so the done events and the final response repeat it."""

    dialect = "the Responses API"

    def __init__(self, req: ResponsesRequest, model: str, response_id: str | None = None) -> None:
        super().__init__()
        self.req = req
        self.model = model
        self.id = response_id or new_id("resp")
        self.created_at = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # closed items, as sent in their done events
        self.open_kind: str | None = None  # "reasoning" | "message" | "function_call"
        self.open_id = ""
        self.open_parts: list[str] = []  # the open item's text or arguments so far
        self.open_call: tuple[str, str] = ("", "")  # call_id and name of the open function call

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(payload) + b"\n\n"

    def _snapshot(self, status: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        return _response(
            self.req,
            self.model,
            self.id,
            self.created_at,
            output=list(self.output),
            status=status,
            finish_reason=self.finish_reason,
            usage=usage,
        )

    def start(self, input_tokens: int) -> bytes:
        """``response.created`` and ``response.in_progress``; once, before anything else."""
        if self.started:
            return b""
        self.started = True
        self.input_tokens = input_tokens
        response = self._snapshot("in_progress")
        return self._event("response.created", {"response": response}) + self._event(
            "response.in_progress", {"response": response}
        )

    def keepalive(self) -> bytes:
        return KEEPALIVE

    def _item(self, status: str) -> dict[str, Any]:
        """The open item as it stands; with status ``in_progress`` it is the empty item just added."""
        text = "".join(self.open_parts) if status != "in_progress" else None
        if self.open_kind == "reasoning":
            return _reasoning_item(self.open_id, text, status)
        if self.open_kind == "message":
            return _message_item(self.open_id, text, status)
        return _call_item(self.open_id, *self.open_call, text or "", status)

    def _end_block(self) -> bytes:
        if self.open_kind is None:
            return b""
        index = len(self.output)
        text = "".join(self.open_parts)
        status = "incomplete" if self.finish_reason in INCOMPLETE_REASONS else "completed"
        item = self._item(status)
        at = {"item_id": self.open_id, "output_index": index}
        if self.open_kind == "message":
            out = self._event("response.output_text.done", {**at, "content_index": 0, "text": text, "logprobs": []})
            out += self._event("response.content_part.done", {**at, "content_index": 0, "part": _output_text(text)})
        elif self.open_kind == "reasoning":
            out = self._event("response.reasoning_text.done", {**at, "content_index": 0, "text": text})
            part = {"type": "reasoning_text", "text": text}
            out += self._event("response.content_part.done", {**at, "content_index": 0, "part": part})
        else:
            out = self._event("response.function_call_arguments.done", {**at, "arguments": text, "name": item["name"]})
        out += self._event("response.output_item.done", {"output_index": index, "item": item})
        self.output.append(item)
        self.open_kind, self.open_parts = None, []
        return out

    def _open(self, kind: str, prefix: str) -> bytes:
        out = self._close()
        self.open_kind, self.open_id = kind, new_id(prefix)
        index = len(self.output)
        out += self._event("response.output_item.added", {"output_index": index, "item": self._item("in_progress")})
        at = {"item_id": self.open_id, "output_index": index, "content_index": 0}
        if kind == "message":
            out += self._event("response.content_part.added", {**at, "part": _output_text("")})
        elif kind == "reasoning":
            out += self._event("response.content_part.added", {**at, "part": {"type": "reasoning_text", "text": ""}})
        return out

    def _thought(self, text: str) -> bytes:
        return self._item_text("reasoning", text)

    def _text(self, text: str) -> bytes:
        return self._item_text("message", text)

    def _item_text(self, kind: str, text: str) -> bytes:
        out = b"" if self.open_kind == kind else self._open(kind, "rs" if kind == "reasoning" else "msg")
        self.open_parts.append(text)
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        fields: dict[str, Any] = {"item_id": self.open_id, "output_index": len(self.output), "content_index": 0}
        fields["delta"] = text
        if kind == "message":
            fields["logprobs"] = []
        return out + self._event(name, fields)

    def _tool_start(self, call: ToolCallDelta) -> bytes:
        out = self._close()  # before the new call's id and name replace the open one's
        call_id, name, _ = _call_parts(call)
        self.open_call = (call_id, name)
        return out + self._open("function_call", "fc")

    def _tool_more(self, call: ToolCallDelta) -> bytes:
        if call.function is not None and call.function.name and not self.open_call[1]:
            self.open_call = (self.open_call[0], call.function.name)  # a name that came late
        return b""

    def _tool_args(self, arguments: str) -> bytes:
        self.open_parts.append(arguments)
        fields = {"item_id": self.open_id, "output_index": len(self.output), "delta": arguments}
        return self._event("response.function_call_arguments.delta", fields)

    def finish(self) -> bytes:
        """The end: the open item's done events, then ``response.completed`` (or
        ``response.incomplete``) with every output item and the usage."""
        if self.ended:
            return b""
        out = self.start(0) + self._close()
        self.ended = True
        response = self._snapshot("completed", _usage(self.input_tokens, self.output_tokens))
        return out + self._event(f"response.{response['status']}", {"response": response})

    def fail(self, err: ApiError) -> bytes:
        """An ``error`` event ends the stream; nothing follows it."""
        if self.ended:
            return b""
        self.ended = True
        code = err.code if err.code is not None else err.kind
        return self._event("error", {"code": code, "message": err.message, "param": err.param})
