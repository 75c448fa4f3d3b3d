"""OpenAI Responses requests (``POST /v1/responses``) as msgspec structs, plus the value checks.

Input items are a tagged union on ``type``; an item with a ``role`` and no ``type`` is a message,
as the API allows. Unknown fields (``include``, ``truncation``, ``prompt_cache_key``…) are accepted
and ignored, so output items a client sends back (with ``id``, ``status``, ``annotations``) decode.
The gateway keeps no state: anything that names a stored object (``previous_response_id``,
``conversation``, ``item_reference``, file ids) is a 400 that says so. A bad field is a 400 whose
message names it.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from cortex.protocol.errors import decode_body, invalid, invalid_field


class InputText(msgspec.Struct, tag="input_text", tag_field="type", kw_only=True):
    text: str


class InputImage(msgspec.Struct, tag="input_image", tag_field="type", kw_only=True):
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputFile(msgspec.Struct, tag="input_file", tag_field="type", kw_only=True):
    file_id: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None


class OutputText(msgspec.Struct, tag="output_text", tag_field="type", kw_only=True):
    text: str


class Refusal(msgspec.Struct, tag="refusal", tag_field="type", kw_only=True):
    refusal: str


ContentPart = InputText | InputImage | InputFile | OutputText | Refusal
OutputPart = InputText | InputImage | InputFile
PART_TYPES = ("input_text", "input_image", "input_file", "output_text", "refusal")


class MessageItem(msgspec.Struct, tag="message", tag_field="type", kw_only=True):
    role: str
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(msgspec.Struct, tag="function_call", tag_field="type", kw_only=True):
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(msgspec.Struct, tag="function_call_output", tag_field="type", kw_only=True):
    call_id: str
    output: str | list[OutputPart]
    id: str | None = None
    status: str | None = None


class SummaryText(msgspec.Struct, tag="summary_text", tag_field="type", kw_only=True):
    text: str


class ReasoningText(msgspec.Struct, tag="reasoning_text", tag_field="type", kw_only=True):
    text: str


class ReasoningItem(msgspec.Struct, tag="reasoning", tag_field="type", kw_only=True):
    id: str | None = None
    summary: list[SummaryText] = []
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None


class ItemReference(msgspec.Struct, tag="item_reference", tag_field="type", kw_only=True):
    id: str


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem | ItemReference
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning", "item_reference")
ROLES = ("user", "assistant", "system", "developer")


class Tool(msgspec.Struct, kw_only=True):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoice(msgspec.Struct, kw_only=True):
    type: str
    name: str | None = None


class Reasoning(msgspec.Struct, kw_only=True):
    effort: str | None = None
    summary: str | None = None


class TextFormat(msgspec.Struct, kw_only=True):
    type: str = "text"  # text | json_object | json_schema
    name: str | None = None
    schema: dict[str, Any] | None = None  # json_schema: what the answer must be
    strict: bool | None = None
    description: str | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: str | ToolChoice | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    stream: bool = False
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    store: bool | None = None
    text: TextConfig | None = None
    include: list[str] | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None


EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
SUMMARIES = ("auto", "concise", "detailed")

_ITEM_TYPE_RE = re.compile(r"^input\[\d+\]\.type$")


def _untyped_messages(raw: Any) -> None:
    """Tags ``{"role": …, "content": …}`` items as messages, so one tagged union decodes them all."""
    if isinstance(raw, dict) and isinstance(raw.get("input"), list):
        for item in raw["input"]:
            if isinstance(item, dict) and "type" not in item and "role" in item:
                item["type"] = "message"


def decode(body: bytes) -> ResponsesRequest:
    """Decodes a request body; a malformed body or a wrong field is a 400 that names the field."""
    raw = decode_body(body)
    _untyped_messages(raw)
    try:
        return msgspec.convert(raw, ResponsesRequest)
    except msgspec.ValidationError as exc:
        raise invalid_field(exc, _bad_type) from None


def _bad_type(where: str, value: str) -> str | None:
    if _ITEM_TYPE_RE.match(where):
        return f"input item type {value!r} is not supported (supported: {', '.join(ITEM_TYPES)})"
    if where.endswith(".type") and (".content[" in where or ".output[" in where):
        return f"content part type {value!r} is not supported (supported: {', '.join(PART_TYPES)})"
    return None


def _range(value: float | None, name: str, lo: float, hi: float) -> None:
    if value is not None and not lo <= value <= hi:
        raise invalid(f"{name}: must be between {lo:g} and {hi:g}, got {value}", param=name)


STATELESS = "this gateway is stateless and stores no responses; send the whole conversation in `input`"


def _check_stateless(req: ResponsesRequest) -> None:
    if req.previous_response_id is not None:
        raise invalid(f"previous_response_id: {STATELESS}", param="previous_response_id")
    if req.conversation is not None:
        raise invalid(f"conversation: {STATELESS}", param="conversation")
    if req.prompt is not None:
        raise invalid(
            "prompt: stored prompt templates are not available here; send instructions and input instead",
            param="prompt",
        )
    if req.background:
        raise invalid(
            "background: background responses need storage, which this gateway does not have; stream instead",
            param="background",
        )


def _check_tools(req: ResponsesRequest) -> None:
    names: set[str] = set()
    for i, tool in enumerate(req.tools or []):
        where = f"tools[{i}]"
        if tool.type != "function":
            raise invalid(
                f"{where}.type: {tool.type!r} is a tool OpenAI runs itself; this gateway takes function tools only",
                param=f"{where}.type",
            )
        if not tool.name:
            raise invalid(f"{where}.name: must be a non-empty string", param=f"{where}.name")
        if tool.name in names:
            raise invalid(f"{where}.name: tool names must be unique, {tool.name!r} appears twice", param=where)
        names.add(tool.name)
    choice = req.tool_choice
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise invalid(f"tool_choice: {choice!r} is not one of auto, none, required", param="tool_choice")
    elif choice is not None:
        if choice.type != "function":
            raise invalid(
                f"tool_choice.type: {choice.type!r} is not supported; use auto, none, required or a function",
                param="tool_choice.type",
            )
        if choice.name not in names:
            raise invalid(f"tool_choice.name: {choice.name!r} is not one of the tools given", param="tool_choice.name")


def _check_part(part: Any, where: str) -> None:
    if isinstance(part, InputImage):
        if part.file_id is not None:
            raise invalid(
                f"{where}.file_id: images by file id need OpenAI's Files API, which this gateway does not have; "
                "send image_url (an https or data: URL)",
                param=f"{where}.file_id",
            )
        if not part.image_url:
            raise invalid(f"{where}.image_url: Field required", param=f"{where}.image_url")
    elif isinstance(part, InputFile):
        raise invalid(f"{where}: input_file parts are not supported; send the text as input_text", param=where)


def _check_items(items: list[Any]) -> None:
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if isinstance(item, ItemReference):
            raise invalid(f"{where}: item_reference points at a stored item; {STATELESS}", param=where)
        if isinstance(item, MessageItem):
            if item.role not in ROLES:
                raise invalid(f"{where}.role: {item.role!r} is not one of {', '.join(ROLES)}", param=f"{where}.role")
            for j, part in enumerate(item.content if isinstance(item.content, list) else ()):
                _check_part(part, f"{where}.content[{j}]")
        elif isinstance(item, FunctionCallOutputItem):
            for j, part in enumerate(item.output if isinstance(item.output, list) else ()):
                _check_part(part, f"{where}.output[{j}]")


def check_responses(req: ResponsesRequest) -> None:
    """Value checks; raises ApiError naming the field."""
    if not req.model:
        raise invalid("model: must be a non-empty string", param="model")
    _check_stateless(req)
    if not req.input:
        raise invalid("input: must be a non-empty string or list of items", param="input")
    _range(req.temperature, "temperature", 0.0, 2.0)
    _range(req.top_p, "top_p", 0.0, 1.0)
    if req.max_output_tokens is not None and req.max_output_tokens < 1:
        raise invalid(f"max_output_tokens: must be at least 1, got {req.max_output_tokens}", param="max_output_tokens")
    if req.reasoning is not None:
        if req.reasoning.effort is not None and req.reasoning.effort not in EFFORTS:
            raise invalid(
                f"reasoning.effort: {req.reasoning.effort!r} is not one of {', '.join(EFFORTS)}",
                param="reasoning.effort",
            )
        if req.reasoning.summary is not None and req.reasoning.summary not in SUMMARIES:
            raise invalid(
                f"reasoning.summary: {req.reasoning.summary!r} is not one of {', '.join(SUMMARIES)}",
                param="reasoning.summary",
            )
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type not in ("text", "json_object", "json_schema"):
        raise invalid(
            f"text.format.type: {fmt.type!r} is not one of text, json_object, json_schema", param="text.format.type"
        )
    if fmt is not None and fmt.type == "json_schema" and fmt.schema is None:
        raise invalid("text.format.schema: a json_schema format needs its schema", param="text.format.schema")
    _check_tools(req)
    if isinstance(req.input, list):
        _check_items(req.input)
