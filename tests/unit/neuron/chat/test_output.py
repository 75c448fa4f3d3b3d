"""Stop strings, reasoning and tool-call parsing, fed in every possible split of the text."""

from __future__ import annotations

import json

import pytest
from tokenizers.decoders import DecodeStream

from neuron.chat.output import OutputParser, StopMatcher
from neuron.demo import demo_text, train_tokenizer


def splits(text: str):
    yield [text]
    for size in (1, 2, 3, 7):
        yield [text[i : i + size] for i in range(0, len(text), size)]


def run_parser(chunks: list[str], **kw):
    parser = OutputParser(**kw)
    events = [e for c in chunks for e in parser.feed(c)] + parser.finish()
    content = "".join(e.text for e in events if e.kind == "content")
    reasoning = "".join(e.text for e in events if e.kind == "reasoning")
    calls = [e.tool_call for e in events if e.kind == "tool_call"]
    return content, reasoning, calls


THOUGHT_AND_CALLS = (
    "<think>\nThe user wants the weather.\nTwo cities.\n</think>\n\n"
    "Checking.<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    "</tool_call>\n<tool_call>\n"
    '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}\n'
    "</tool_call>"
)


@pytest.mark.parametrize("chunks", list(splits(THOUGHT_AND_CALLS)), ids=lambda c: f"{len(c)}-chunks")
def test_reasoning_content_and_two_tool_calls_are_separated(chunks):
    content, reasoning, calls = run_parser(chunks)
    assert reasoning == "The user wants the weather.\nTwo cities."
    assert content == "Checking."
    assert [c.name for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)


@pytest.mark.parametrize("chunks", list(splits("I was thinking.\n</think>\n\nAnswer: 42")), ids=lambda c: str(len(c)))
def test_a_prompt_that_opened_the_thought_starts_in_reasoning(chunks):
    content, reasoning, calls = run_parser(chunks, in_reasoning=True)
    assert (reasoning, content, calls) == ("I was thinking.", "Answer: 42", [])


def test_malformed_tool_call_and_unterminated_blocks_come_back_as_content():
    content, _, calls = run_parser(["a <tool_call>not json</tool_call> b"])
    assert (content, calls) == ("a <tool_call>not json</tool_call> b", [])
    content, _, calls = run_parser(['x <tool_call>{"name": "f"'])
    assert (content, calls) == ('x <tool_call>{"name": "f"', [])


def test_tool_tags_are_plain_text_when_no_tools_were_offered():
    content, _, calls = run_parser(['<tool_call>{"name": "f", "arguments": {}}</tool_call>'], parse_tools=False)
    assert calls == [] and content.startswith("<tool_call>")


TEXT = "The answer is 42. STOP here and more after ### end"


@pytest.mark.parametrize("chunks", list(splits(TEXT)), ids=lambda c: str(len(c)))
def test_stop_string_is_never_emitted_and_ends_the_text(chunks):
    matcher = StopMatcher(["###", "STOP"])
    out = ""
    for c in chunks:
        out += matcher.feed(c)
        if matcher.stopped:
            break
    assert matcher.stopped
    assert out == "The answer is 42. "


def test_text_held_back_for_a_possible_stop_is_released_when_it_is_not_one():
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("ab ST") == "ab "
    assert matcher.feed("ORM") == "STORM"
    assert matcher.feed("x ST") == "x "
    assert matcher.flush() == "ST"
    assert not matcher.stopped


def test_streaming_detokenization_never_splits_a_character():
    tok = train_tokenizer(demo_text(), vocab_size=300)
    text = "naïve café, 世界 and 🙂🙂 — done"
    ids = tok.encode(text).ids
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    stream = DecodeStream(skip_special_tokens=True)
    pieces = [stream.step(tok, i) for i in ids]
    assert "".join(p for p in pieces if p) == text
    assert not any("\ufffd" in p for p in pieces if p)
