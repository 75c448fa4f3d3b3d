"""Anthropic Messages requests (``/v1/messages``, ``/v1/messages/count_tokens``) as msgspec
structs, plus the value checks the API makes. Content blocks are a tagged union on ``type``;
unknown top-level fields (``container``, ``service_tier``…) and block fields (``cache_control``,
``citations``) are accepted and ignored. A bad field is a 400 whose message names it."""

from __future__ import annotations

from typing import Any

import msgspec

from cortex.protocol.errors import decode_body, invalid


class Base64Source(msgspec.Struct, tag="base64", tag_field="type", kw_only=True):
    media_type: str
    data: str


class UrlSource(msgspec.Struct, tag="url", tag_field="type", kw_only=True):
    url: str


class TextSource(msgspec.Struct, tag="text", tag_field="type", kw_only=True):
    data: str
    media_type: str = "text/plain"


class FileSource(msgspec.Struct, tag="file", tag_field="type", kw_only=True):
    file_id: str


class TextBlock(msgspec.Struct, tag="text", tag_field="type", kw_only=True):
    text: str


class ImageBlock(msgspec.Struct, tag="image", tag_field="type", kw_only=True):
    source: Base64Source | UrlSource | FileSource


class DocumentBlock(msgspec.Struct, tag="document", tag_field="type", kw_only=True):
    source: Base64Source | UrlSource | TextSource | FileSource
    title: str | None = None
    context: str | None = None


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type", kw_only=True):
    id: str
    name: str
    input: Any = msgspec.field(default_factory=dict)


class ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type", kw_only=True):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None = None
    is_error: bool = False


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type", kw_only=True):
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(msgspec.Struct, tag="redacted_thinking", tag_field="type", kw_only=True):
    data: str = ""


ContentBlock = (
    TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock
)
THINKING_TYPES = ("enabled", "adaptive", "between_tools", "disabled")
BLOCK_TYPES = ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking")


class Message(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[ContentBlock]


class Tool(msgspec.Struct, kw_only=True):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None  # absent or "custom" for client tools


class ToolChoice(msgspec.Struct, kw_only=True):
    type: str
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(msgspec.Struct, kw_only=True):
    type: str
    budget_tokens: int | None = None


class OutputConfig(msgspec.Struct, kw_only=True):
    effort: str | None = None
    format: dict[str, Any] | None = None


class Metadata(msgspec.Struct, kw_only=True):
    user_id: str | None = None


class Conversation(msgspec.Struct, kw_only=True):
    """What ``count_tokens`` takes: everything that shapes the prompt."""

    model: str
    messages: list[Message]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    output_format: dict[str, Any] | None = None  # the structured-outputs beta's name of output_config.format


class MessagesRequest(Conversation, kw_only=True):
    max_tokens: int
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: Metadata | None = None


def _bad_block(where: str, value: str) -> str | None:
    if where.endswith("type") and ".content" in where:
        return f"content block type {value!r} is not supported (supported: {', '.join(BLOCK_TYPES)})"
    return None


def decode(body: bytes, kind: type[Conversation]) -> Any:
    """Decodes a request body; a malformed body or a wrong field is a 400 that names the field."""
    return decode_body(body, kind, _bad_block)


def output_schema_of(req: Conversation) -> dict[str, Any] | None:
    """The JSON schema the answer must follow (structured outputs: ``output_config.format``, or
    the beta's ``output_format``), or None."""
    where, fmt = "output_format", req.output_format
    if fmt is None and req.output_config is not None:
        where, fmt = "output_config.format", req.output_config.format
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise invalid(
            f'{where}: expected {{"type": "json_schema", "schema": {{…}}}}, got type {fmt.get("type")!r}', param=where
        )
    return fmt["schema"]


def _range(value: float | None, name: str, lo: float, hi: float) -> None:
    if value is not None and not lo <= value <= hi:
        raise invalid(f"{name}: must be between {lo:g} and {hi:g}, got {value}", param=name)


def check_conversation(req: Conversation) -> None:
    if not req.model:
        raise invalid("model: must be a non-empty string", param="model")
    if not req.messages:
        raise invalid("messages: at least one message is required", param="messages")
    tool_names = set()
    for i, tool in enumerate(req.tools or []):
        where = f"tools[{i}]"
        if tool.type not in (None, "custom"):
            raise invalid(
                f"{where}.type: {tool.type!r} is a tool Anthropic runs itself; this gateway takes client tools "
                '(no type, or "custom") with an input_schema',
                param=f"{where}.type",
            )
        if not tool.name:
            raise invalid(f"{where}.name: must be a non-empty string", param=f"{where}.name")
        if tool.input_schema is None:
            raise invalid(f"{where}.input_schema: Field required", param=f"{where}.input_schema")
        if tool.name in tool_names:
            raise invalid(f"{where}.name: tool names must be unique, {tool.name!r} appears twice", param=where)
        tool_names.add(tool.name)
    choice = req.tool_choice
    if choice is not None:
        if choice.type not in ("auto", "any", "tool", "none"):
            raise invalid(
                f"tool_choice.type: {choice.type!r} is not one of auto, any, tool, none", param="tool_choice.type"
            )
        if choice.type == "tool" and choice.name not in tool_names:
            raise invalid(f"tool_choice.name: {choice.name!r} is not one of the tools given", param="tool_choice.name")
    thinking = req.thinking
    if thinking is not None:
        if thinking.type not in THINKING_TYPES:
            raise invalid(
                f"thinking.type: {thinking.type!r} is not one of {', '.join(THINKING_TYPES)}", param="thinking.type"
            )
        if thinking.type == "enabled" and (thinking.budget_tokens is None or thinking.budget_tokens < 1):
            raise invalid("thinking.budget_tokens: a positive integer is required", param="thinking.budget_tokens")
    output_schema_of(req)  # a format that is not a JSON schema is a 400 naming it
    for i, m in enumerate(req.messages):
        if m.role not in ("user", "assistant"):
            raise invalid(
                f"messages[{i}].role: {m.role!r} is not one of user, assistant (the system prompt goes in `system`)",
                param=f"messages[{i}].role",
            )
        if isinstance(m.content, list):
            for j, block in enumerate(m.content):
                where = f"messages[{i}].content[{j}]"
                if m.role == "assistant" and isinstance(block, ToolResultBlock | ImageBlock | DocumentBlock):
                    raise invalid(f"{where}: a {block.__struct_config__.tag} block belongs in a user turn")
                if m.role == "user" and isinstance(block, ToolUseBlock | ThinkingBlock | RedactedThinkingBlock):
                    raise invalid(f"{where}: a {block.__struct_config__.tag} block belongs in an assistant turn")
                if isinstance(block, ToolUseBlock) and not isinstance(block.input, dict):
                    raise invalid(f"{where}.input: must be an object", param=f"{where}.input")


def check_messages(req: MessagesRequest) -> None:
    check_conversation(req)
    if req.max_tokens < 1:
        raise invalid(f"max_tokens: must be at least 1, got {req.max_tokens}", param="max_tokens")
    _range(req.temperature, "temperature", 0.0, 1.0)
    _range(req.top_p, "top_p", 0.0, 1.0)
    if req.top_k is not None and req.top_k < 0:
        raise invalid(f"top_k: must be >= 0, got {req.top_k}", param="top_k")
    stops = req.stop_sequences or []
    if len(stops) > 16:
        raise invalid("stop_sequences: at most 16 sequences", param="stop_sequences")
    if any(not s for s in stops):
        raise invalid("stop_sequences: sequences must be non-empty strings", param="stop_sequences")
    if req.thinking is not None and req.thinking.type == "enabled" and req.thinking.budget_tokens >= req.max_tokens:
        raise invalid(
            f"thinking.budget_tokens: must be less than max_tokens ({req.max_tokens})", param="thinking.budget_tokens"
        )
