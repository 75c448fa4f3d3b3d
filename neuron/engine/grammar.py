"""Structured output: what a request's answer must follow, as llguidance grammars turned into the
engine's per-row token masks.

- ``response_format`` ``json_object`` (any JSON object) and ``json_schema`` (that schema);
- a tool call that ``tool_choice`` demands: the prompt already ends with the opened call (see
  ``neuron.api.inference``), so the grammar is the rest of it in the Qwen / Hermes format the
  output parser reads, ``\\n{"name": …, "arguments": …}\\n</tool_call>`` (``required``: any of
  the tools) or ``ARGUMENTS}\\n</tool_call>`` (a named function, whose name the prompt holds),
  the arguments held to each tool's JSON schema.

JSON comes out as ``json.dumps`` writes it (``", "`` and ``": "``, no other whitespace: a weak model
cannot wander in it), and once the grammar is complete only the model's end tokens may follow.
llguidance parses (our choice over xgrammar: no torch, triton or transformers dependency, and masks
in tens of microseconds for these grammars, as ``bench/structured.py`` measures); this module only
builds grammars and masks. Where bytes are forced (a required key), llguidance's masks allow one
token at a time, so a token that runs on past them is not offered.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

# llguidance's JSON options (its "x-guidance" schema key): JSON as json.dumps writes it, the spacing
# models are trained on (Qwen's tool calls included), and no other whitespace to wander in.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
TOOL_CLOSE = "</tool_call>"


class GrammarError(ValueError):
    """A schema or grammar llguidance refuses (the request is wrong: a 400 naming it)."""


class LLConstraint:
    """An llguidance matcher as the engine's ``Constraint``."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher
        self._bits = torch.arange(32, dtype=torch.int32)

    def mask(self, vocab_size: int) -> torch.Tensor:
        words = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        allowed = ((words[:, None] >> self._bits) & 1).bool().reshape(-1)
        if allowed.numel() < vocab_size:
            allowed = torch.cat([allowed, torch.zeros(vocab_size - allowed.numel(), dtype=torch.bool)])
        return allowed[:vocab_size]

    def accept(self, token: int) -> bool:
        return bool(self.matcher.consume_token(token))

    def is_done(self) -> bool:
        return bool(self.matcher.is_stopped())


@dataclass
class Grammars:
    """Grammars for one model's tokenizer; the llguidance tokenizer is built once, on first use
    (call from a thread: it takes up to a second for a large vocabulary)."""

    tokenizer: Tokenizer
    vocab_size: int  # the model's (its logits may be wider than the tokenizer's vocabulary)
    eos_ids: set[int]
    _lltok: Any = None

    def _llg(self):
        import llguidance

        if self._lltok is None:
            self._lltok = llguidance.LLTokenizer(
                self.tokenizer.to_str(), n_vocab=self.vocab_size, eos_token=sorted(self.eos_ids) or None
            )
        return llguidance, self._lltok

    def _matcher(self, grammar: str) -> LLConstraint:
        llguidance, lltok = self._llg()
        matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return LLConstraint(matcher)

    def json(self, schema: dict[str, Any] | None) -> LLConstraint:
        """Any JSON object (``schema`` None), or a value of ``schema``."""
        llguidance, _ = self._llg()
        body = {"type": "object"} if schema is None else schema
        if not isinstance(body, dict):
            raise GrammarError(f"a JSON schema is an object, got {type(body).__name__}")
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(body, overrides=JSON_STYLE)
        except ValueError as exc:
            raise GrammarError(str(exc)) from None
        return self._matcher(grammar)

    def _close(self) -> str:
        """The lark spelling of the call's closing tag: its own token when it is one."""
        ids = self.tokenizer.encode(TOOL_CLOSE, add_special_tokens=False).ids
        return f"<[{ids[0]}]>" if len(ids) == 1 else json.dumps(TOOL_CLOSE)

    def tool_call(self, tools: list[dict[str, Any]], name: str | None) -> LLConstraint:
        """The rest of a demanded tool call: of any of ``tools`` (``name`` None), or the arguments
        of the named one (the prompt holds the call up to ``"arguments": ``)."""
        schemas = {t["name"]: _object_schema(t.get("parameters")) for t in tools}
        # the call's end: a newline (spaces or tabs before it allowed), then the closing tag
        end = f"NL {self._close()}\nNL: /[ \\t]*\\n/\n"
        if name is not None:
            lark = f"start: args {json.dumps('}')} {end}"
            lark += f"args: %json {json.dumps({**schemas[name], 'x-guidance': JSON_STYLE})}\n"
        else:
            calls = [
                {
                    "type": "object",
                    "properties": {"name": {"const": tool}, "arguments": schema},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for tool, schema in schemas.items()
            ]
            call = calls[0] if len(calls) == 1 else {"anyOf": calls}
            lark = f"start: {json.dumps(chr(10))} call {end}"
            lark += f"call: %json {json.dumps({**call, 'x-guidance': JSON_STYLE})}\n"
        llguidance, _ = self._llg()
        return self._matcher(llguidance.LLMatcher.grammar_from_lark(lark))


def _object_schema(parameters: Any) -> dict[str, Any]:
    """A tool's ``parameters`` as the schema of its arguments (none given: any object)."""
    if isinstance(parameters, dict) and parameters:
        return parameters
    return {"type": "object"}
