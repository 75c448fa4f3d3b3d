"""Turning generated text into OpenAI message parts, chunk by chunk.

- :class:`StopMatcher` cuts the text at the first stop string (never emitting it) and holds
  back any tail that could still grow into one.
- :class:`OutputParser` routes ``<think>…</think>`` to reasoning and Qwen-style
  ``<tool_call>{"name": …, "arguments": …}</tool_call>`` blocks to tool calls; tags split across
  chunks are handled by holding back a possible tag prefix.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


def _partial_suffix(text: str, needles: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``needles``."""
    best = 0
    for needle in needles:
        for n in range(min(len(needle) - 1, len(text)), best, -1):
            if text.endswith(needle[:n]):
                best = n
                break
    return best


class StopMatcher:
    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, text: str) -> str:
        """Returns the text safe to emit now; sets ``stopped`` when a stop string appeared."""
        if self.stopped:
            return ""
        buf = self._held + text
        if not self.stops:
            return buf
        hits = [(at, n) for n, at in enumerate(buf.find(s) for s in self.stops) if at >= 0]
        if hits:
            first, which = min(hits)
            self.stopped = True
            self.matched = self.stops[which]
            self._held = ""
            return buf[:first]
        keep = _partial_suffix(buf, self.stops)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        out, self._held = self._held, ""
        return "" if self.stopped else out


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as OpenAI sends it


@dataclass
class Event:
    kind: str  # "content" | "reasoning" | "tool_call"
    text: str = ""
    tool_call: ToolCall | None = None


class OutputParser:
    """Splits the model's text into content, reasoning and tool calls.

    ``in_reasoning`` starts the parser inside a thought: templates that open ``<think>`` in the
    prompt (thinking on) never make the model emit the opening tag itself.
    """

    def __init__(self, *, in_reasoning: bool = False, parse_tools: bool = True) -> None:
        self.mode = "reasoning" if in_reasoning else "content"
        self.parse_tools = parse_tools
        self._held = ""
        self._tool_text = ""
        self._strip_lead = in_reasoning  # drop the newlines that follow a <think> tag
        self.tool_calls: list[ToolCall] = []

    def _tags(self) -> list[str]:
        if self.mode == "reasoning":
            return [THINK_CLOSE]
        if self.mode == "tool":
            return [TOOL_CLOSE]
        return [THINK_OPEN, TOOL_OPEN] if self.parse_tools else [THINK_OPEN]

    def _emit(self, out: list[Event], kind: str, text: str) -> None:
        if self._strip_lead:
            text = text.lstrip("\n")
            if text:
                self._strip_lead = False
        if not text:
            return
        if out and out[-1].kind == kind and kind != "tool_call":
            out[-1].text += text
        else:
            out.append(Event(kind, text))

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        buf = self._held + text
        self._held = ""
        while buf:
            tags = self._tags()
            hits = [(buf.find(t), t) for t in tags if buf.find(t) >= 0]
            if hits:
                pos, tag = min(hits)
                before = buf[:pos]
                self._take(out, before.rstrip("\n") if tag == THINK_CLOSE else before)
                buf = buf[pos + len(tag) :]
                self._switch(out, tag)
                continue
            keep = _partial_suffix(buf, tags)
            if self.mode == "reasoning":  # trailing newlines wait too: they may precede </think>
                rest = buf[: len(buf) - keep]
                keep += len(rest) - len(rest.rstrip("\n"))
            self._take(out, buf[: len(buf) - keep])
            self._held = buf[len(buf) - keep :]
            break
        return out

    def _take(self, out: list[Event], text: str) -> None:
        if self.mode == "tool":
            self._tool_text += text
        else:
            self._emit(out, self.mode, text)

    def _switch(self, out: list[Event], tag: str) -> None:
        if tag == THINK_OPEN:
            self.mode, self._strip_lead = "reasoning", True
        elif tag == THINK_CLOSE:
            self.mode, self._strip_lead = "content", True
        elif tag == TOOL_OPEN:
            self.mode, self._tool_text = "tool", ""
        elif tag == TOOL_CLOSE:
            self.mode = "content"
            call = _parse_tool_call(self._tool_text)
            if call is None:  # not a well-formed call: hand the text back as content
                self._emit(out, "content", TOOL_OPEN + self._tool_text + TOOL_CLOSE)
            else:
                self.tool_calls.append(call)
                out.append(Event("tool_call", tool_call=call))
                self._strip_lead = True

    def finish(self) -> list[Event]:
        """Flushes what was held back; an unterminated tool call comes back as content."""
        out: list[Event] = []
        held, self._held = self._held, ""
        if self.mode == "tool":
            self._emit(out, "content", TOOL_OPEN + self._tool_text + held)
        elif self.mode == "reasoning":
            self._emit(out, "reasoning", held.rstrip("\n"))
        else:
            self._emit(out, "content", held)
        return out


def _parse_tool_call(text: str) -> ToolCall | None:
    try:
        obj = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            json.loads(args)
        except json.JSONDecodeError:
            return None
        arguments = args
    else:
        arguments = json.dumps(args, ensure_ascii=False)
    return ToolCall(id="call_" + secrets.token_hex(12), name=obj["name"], arguments=arguments)
