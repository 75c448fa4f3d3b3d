"""What the dialects share: the prompt fields a token count needs, and the stream translator's
skeleton (usage bookkeeping, the walk over one chat chunk's deltas, tool calls taken one at a
time, as both Anthropic and the Responses API stream one content block / output item at a
time)."""

from __future__ import annotations

from typing import Any

from cortex.protocol.openai.chat import ChatChunk, ToolCallDelta

PROMPT_FIELDS = ("model", "messages", "tools", "tool_choice", "chat_template_kwargs")


def function_tool(name: str, description: str | None, parameters: dict[str, Any]) -> dict[str, Any]:
    """A tool in the chat dialect (``description`` only when given)."""
    function: dict[str, Any] = {"name": name}
    if description is not None:
        function["description"] = description
    function["parameters"] = parameters
    return {"type": "function", "function": function}


def prompt_fields(chat: dict[str, Any]) -> dict[str, Any]:
    """The neuron ``/tokenize`` body that counts exactly the prompt of chat request ``chat``."""
    return {k: chat[k] for k in PROMPT_FIELDS if k in chat}


class StreamError(Exception):
    """An upstream stream that cannot be translated faithfully."""


class ChunkTranslator:
    """Subclasses say what each piece becomes (``start``, ``_thought``, ``_text``,
    ``_tool_start``, ``_tool_args``, ``_end_block``); this class decides when."""

    dialect = "this dialect"

    def __init__(self) -> None:
        self.started = False
        self.ended = False
        self.input_tokens = 0
        self.output_tokens = 0
        self.open_tool: int | None = None  # the upstream index of the open tool call
        self.tools_seen: set[int] = set()
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None

    def start(self, input_tokens: int) -> bytes:
        raise NotImplementedError

    def _thought(self, text: str) -> bytes:
        raise NotImplementedError

    def _text(self, text: str) -> bytes:
        raise NotImplementedError

    def _tool_start(self, call: ToolCallDelta) -> bytes:
        """Opens a block for a new tool call (closing the open one first)."""
        raise NotImplementedError

    def _tool_more(self, call: ToolCallDelta) -> bytes:
        """A later delta of the open call, before its arguments are added (e.g. a late name)."""
        return b""

    def _tool_args(self, arguments: str) -> bytes:
        raise NotImplementedError

    def _end_block(self) -> bytes:
        """Closes the open block, if any."""
        raise NotImplementedError

    def _close(self) -> bytes:
        self.open_tool = None
        return self._end_block()

    def _tool(self, call: ToolCallDelta) -> bytes:
        fn = call.function
        arguments = fn.arguments if fn is not None else None
        if call.index == self.open_tool:
            out = self._tool_more(call)
        elif call.index in self.tools_seen:
            if not arguments and not call.id:
                return b""  # an empty delta for a finished call changes nothing
            raise StreamError(
                f"the neuron went back to tool call {call.index} after starting another; "
                f"{self.dialect} streams one block at a time"
            )
        else:
            self.tools_seen.add(call.index)
            out = self._tool_start(call)
            self.open_tool = call.index
        if arguments:
            out += self._tool_args(arguments)
        return out

    def feed(self, chunk: ChatChunk) -> bytes:
        """The events one upstream chunk makes (often none, or one delta)."""
        out = b""
        usage = chunk.usage
        if usage is not None:
            self.output_tokens = usage.completion_tokens
        if not self.started:
            out = self.start(usage.prompt_tokens if usage is not None else 0)
        elif usage is not None and usage.prompt_tokens:
            self.input_tokens = usage.prompt_tokens
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            thought = delta.thought
            if thought:
                out += self._thought(thought)
            if delta.content:
                out += self._text(delta.content)
            for call in delta.tool_calls or ():
                out += self._tool(call)
            if choice.finish_reason is not None:
                self.finish_reason, self.stop_reason = choice.finish_reason, choice.stop_reason
                out += self._close()
        return out
