"""Anthropic Messages ⇄ OpenAI chat: each feature on a fixture written from the public API
references, with the exact expected output; streams fed as chunk sequences and checked event
by event; property tests for the request shape and the event grammar; and the official SDK's
own stream accumulator reading what we emit."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message as SdkMessage
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.protocol.anthropic.requests import (
    Conversation,
    MessagesRequest,
    check_conversation,
    check_messages,
    decode,
)
from cortex.protocol.errors import ApiError
from cortex.protocol.openai.chat import ChatChunk, ChatCompletion
from cortex.protocol.openai.requests import ChatCompletionRequest, check_chat
from cortex.translate.anthropic import MessagesStream, chat_request, message_response, tokenize_request
from cortex.translate.common import StreamError

BASE = {"model": "claude-x", "max_tokens": 100}


def translate(body: dict) -> dict:
    req = decode(json.dumps({**BASE, **body}).encode(), MessagesRequest)
    check_messages(req)
    return chat_request(req, "org/local")


def messages_of(body: dict) -> list[dict]:
    return translate(body)["messages"]


# --- requests -------------------------------------------------------------------------------


def test_a_plain_request_maps_its_fields_and_asks_for_no_thinking():
    out = translate({"messages": [{"role": "user", "content": "Hi"}]})
    assert out == {
        "model": "org/local",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 100,
        "chat_template_kwargs": {"enable_thinking": False},
    }


def test_system_as_a_string_and_as_blocks_stays_verbatim_and_first():
    assert messages_of({"system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}]}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    blocks = [
        {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Project rules: tabs."},
    ]
    assert messages_of({"system": blocks, "messages": [{"role": "user", "content": "Hi"}]}) == [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "You are a coding agent."},
                {"type": "text", "text": "Project rules: tabs."},
            ],
        },
        {"role": "user", "content": "Hi"},
    ]


def test_sampling_stop_and_metadata_fields():
    out = translate(
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "temperature": 0.3,
            "top_p": 0.9,
            "top_k": 20,
            "stop_sequences": ["\n\nHuman:", "END"],
            "metadata": {"user_id": "u-42"},
            "stream": True,
        }
    )
    assert out == {
        "model": "org/local",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 100,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 20,
        "stop": ["\n\nHuman:", "END"],
        "chat_template_kwargs": {"enable_thinking": False},
        "user": "u-42",
    }


def test_images_base64_and_url_become_image_url_parts():
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    assert messages_of({"messages": [{"role": "user", "content": content}]}) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


def test_tool_use_and_tool_results_round_trip_in_order():
    body = {
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
            {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": "Weather in Paris and the time?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Two tools.", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 21 C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "clock is"}, {"type": "text", "text": "broken"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "Summarise, please."},
                ],
            },
        ],
    }
    out = translate(body)
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        },
        {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}},
    ]
    assert out["tool_choice"] == "required" and out["parallel_tool_calls"] is False
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and the time?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "Two tools.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "toolu_2", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny, 21 C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: clock is\nbroken"},
        {"role": "user", "content": [{"type": "text", "text": "Summarise, please."}]},
    ]


def test_an_assistant_turn_of_only_tool_calls_has_null_content():
    msg = messages_of(
        {
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": [1]}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
            ],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        }
    )
    assert msg[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": '{"a":[1]}'}}],
    }
    assert msg[2] == {"role": "tool", "tool_call_id": "t", "content": ""}


def test_images_inside_a_tool_result_follow_it_as_a_user_message():
    msg = messages_of(
        {
            "messages": [
                {"role": "user", "content": "shot"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [
                                {"type": "text", "text": "screenshot:"},
                                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                            ],
                        }
                    ],
                },
            ],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        }
    )
    assert msg[2:] == [
        {"role": "tool", "tool_call_id": "t", "content": "screenshot:"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice(choice, expected):
    out = translate(
        {
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": choice,
        }
    )
    assert out["tool_choice"] == expected and "parallel_tool_calls" not in out


@pytest.mark.parametrize(
    ("thinking", "enabled"),
    [
        ({"type": "enabled", "budget_tokens": 50}, True),
        ({"type": "adaptive", "display": "summarized"}, True),
        ({"type": "between_tools"}, True),
        ({"type": "disabled"}, False),
    ],
)
def test_thinking_switches_the_template(thinking, enabled):
    out = translate({"messages": [{"role": "user", "content": "x"}], "thinking": thinking})
    assert out["chat_template_kwargs"] == {"enable_thinking": enabled}


def test_tokenize_request_counts_the_same_prompt_as_the_chat_request():
    body = {
        **BASE,
        "system": "S",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "thinking": {"type": "enabled", "budget_tokens": 10},
    }
    chat = chat_request(decode(json.dumps(body).encode(), MessagesRequest), "m")
    count = tokenize_request(decode(json.dumps(body).encode(), Conversation), "m")
    assert count == {k: chat[k] for k in ("model", "messages", "tools", "chat_template_kwargs")}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"messages": []}, "messages: at least one message"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role: 'system'"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens: must be at least 1"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 1.5}, "temperature: must be between 0 and 1"),
        ({"messages": [{"role": "user", "content": [{"type": "server_tool_use"}]}]}, "'server_tool_use' is not supp"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text: Field req"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}, "max_tokens: Expected `int`"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f"}]}, "tools[0].input_schema"),
        (
            {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "w"}]},
            "tools[0].type",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool", "name": "g"}}, "'g' is not"),
        ({"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled"}}, "budget_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "sometimes"}}, "thinking.type"),
        (
            {"messages": [{"role": "user", "content": "x"}], "output_config": {"format": {"type": "json_schema"}}},
            'expected {"type": "json_schema", "schema"',
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]},
            "belongs in a user turn",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
                ]
            },
            "Files API",
        ),
    ],
)
def test_bad_requests_name_the_field(body, needle):
    with pytest.raises(ApiError) as info:
        translate(body)
    assert info.value.status == 400 and needle in info.value.message, info.value.message


def test_missing_max_tokens_is_named():
    with pytest.raises(ApiError, match="max_tokens: Field required"):
        decode(b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}', MessagesRequest)


# --- whole responses ------------------------------------------------------------------------


def completion(message: dict, finish: str = "stop", stop_reason: Any = None) -> ChatCompletion:
    return msgspec.convert(
        {
            "choices": [{"message": message, "finish_reason": finish, "stop_reason": stop_reason}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5},
        },
        ChatCompletion,
    )


def test_a_text_answer():
    out = message_response(completion({"content": "Hello!"}), "claude-x", "msg_1")
    assert out == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    SdkMessage.model_validate(out)


def test_thinking_text_and_tool_calls_become_blocks_in_order():
    msg = {
        "content": "Let me check.",
        "reasoning_content": "Need the weather.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "clock", "arguments": ""}},
        ],
    }
    out = message_response(completion(msg, "tool_calls"), "claude-x", "msg_1")
    assert out["content"] == [
        {"type": "thinking", "thinking": "Need the weather.", "signature": ""},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "clock", "input": {}},
    ]
    assert out["stop_reason"] == "tool_use"
    SdkMessage.model_validate(out)


@pytest.mark.parametrize(
    ("finish", "stop_reason", "expected"),
    [
        ("stop", None, ("end_turn", None)),
        ("stop", "END", ("stop_sequence", "END")),
        ("length", None, ("max_tokens", None)),
        ("tool_calls", None, ("tool_use", None)),
    ],
)
def test_stop_reasons(finish, stop_reason, expected):
    out = message_response(completion({"content": "x"}, finish, stop_reason), "m")
    assert (out["stop_reason"], out["stop_sequence"]) == expected


def test_tool_arguments_that_are_not_an_object_are_a_502_naming_the_tool():
    msg = {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1, 2"}}]}
    with pytest.raises(ApiError) as info:
        message_response(completion(msg, "tool_calls"), "m")
    assert info.value.status == 502 and "'f'" in info.value.message


# --- streams --------------------------------------------------------------------------------


def parse_events(data: bytes) -> list[tuple[str, dict]]:
    """SSE bytes → (event name, payload); comments are dropped, names must match payload types."""
    events = []
    for block in data.split(b"\n\n"):
        if not block or block.startswith(b":"):
            continue
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        payload = json.loads(lines[b"data"])
        assert payload["type"] == lines[b"event"].decode()
        events.append((lines[b"event"].decode(), payload))
    return events


def chunk(delta: dict | None = None, finish: str | None = None, usage: tuple | None = None, **kw) -> ChatChunk:
    obj: dict[str, Any] = {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, **kw}]}
    if usage is not None:
        obj["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    return msgspec.convert(obj, ChatChunk)


def call(index: int, args: str, name: str | None = None, id: str | None = None) -> dict:
    fn: dict[str, Any] = {"arguments": args}
    if name is not None:
        fn["name"] = name
    out: dict[str, Any] = {"index": index, "function": fn}
    if id is not None:
        out["id"], out["type"] = id, "function"
    return {"tool_calls": [out]}


def run_stream(chunks: list[ChatChunk], fail: ApiError | None = None) -> list[tuple[str, dict]]:
    s = MessagesStream("claude-x", "msg_1")
    out = b"".join(s.feed(c) for c in chunks)
    out += s.fail(fail) if fail is not None else s.finish()
    return parse_events(out)


def sdk_message(events: list[tuple[str, dict]]):
    """What the official SDK's stream accumulator builds from our events."""
    snapshot, bufs = None, {}
    for _, payload in events:
        if payload["type"] == "ping":
            continue
        snapshot = accumulate_event(event=payload, current_snapshot=snapshot, json_bufs=bufs)
    return snapshot


def test_a_text_stream_has_exactly_anthropics_event_sequence():
    events = run_stream(
        [
            chunk({"role": "assistant", "content": ""}, usage=(12, 0)),
            chunk({"content": "Hel"}, usage=(12, 1)),
            chunk({"content": "lo"}, usage=(12, 2)),
            chunk({}, "stop", usage=(12, 3)),
        ]
    )
    assert events == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 12,
                        "output_tokens": 0,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {
                    "input_tokens": 12,
                    "output_tokens": 3,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    final = sdk_message(events)
    assert final.content[0].text == "Hello" and final.usage.output_tokens == 3 and final.usage.input_tokens == 12


def test_tool_arguments_split_across_many_chunks_arrive_whole():
    args = '{"path": "src/main.py", "content": "print(\\"héllo\\")\\n"}'
    pieces = [args[i : i + 3] for i in range(0, len(args), 3)]
    chunks = [chunk({"role": "assistant", "content": ""}, usage=(9, 0))]
    chunks.append(chunk(call(0, "", name="write_file", id="call_w")))
    chunks += [chunk(call(0, p)) for p in pieces]
    chunks.append(chunk({}, "tool_calls", usage=(9, len(pieces))))
    events = run_stream(chunks)
    names = [e for e, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * len(pieces),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1][1]["content_block"] == {"type": "tool_use", "id": "call_w", "name": "write_file", "input": {}}
    joined = "".join(p["delta"]["partial_json"] for e, p in events if e == "content_block_delta")
    assert joined == args
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    final = sdk_message(events)
    assert final.content[0].input == json.loads(args)


def test_text_thinking_and_two_tool_calls_interleaved_get_increasing_indices():
    events = run_stream(
        [
            chunk({"role": "assistant", "content": ""}, usage=(5, 0)),
            chunk({"reasoning_content": "Think"}),
            chunk({"reasoning_content": "ing."}),
            chunk({"content": "Sure."}),
            chunk(call(0, '{"a":', name="f", id="c0")),
            chunk(call(0, " 1}")),
            chunk({"content": " And"}),
            chunk(call(1, '{"b": 2}', name="g", id="c1")),
            chunk({}, "tool_calls", usage=(5, 9)),
        ]
    )
    starts = [(p["index"], p["content_block"]["type"]) for e, p in events if e == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "text"), (2, "tool_use"), (3, "text"), (4, "tool_use")]
    assert_grammar(events)
    final = sdk_message(events)
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "text", "tool_use"]
    assert final.content[0].thinking == "Thinking." and final.content[1].text == "Sure."
    assert final.content[2].input == {"a": 1} and final.content[4].input == {"b": 2}
    assert final.content[4].id == "c1" and final.stop_reason == "tool_use"


def test_a_stop_sequence_is_reported():
    events = run_stream([chunk({"content": "Once"}, usage=(3, 1)), chunk({}, "stop", stop_reason="END")])
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_an_upstream_error_mid_stream_ends_with_an_error_event():
    err = ApiError("upstream", "neuron beast broke off the stream")
    events = run_stream([chunk({"content": "Hal"}, usage=(3, 1))], fail=err)
    assert [e for e, _ in events] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "neuron beast broke off the stream"},
    }


def test_going_back_to_a_closed_tool_call_is_refused_not_dropped():
    s = MessagesStream("m")
    s.feed(chunk(call(0, "{}", name="f", id="a")))
    s.feed(chunk(call(1, "{}", name="g", id="b")))
    with pytest.raises(StreamError, match="tool call 0"):
        s.feed(chunk(call(0, "x")))


def test_keepalive_is_a_comment_before_message_start_and_a_ping_after():
    s = MessagesStream("m")
    assert s.keepalive().startswith(b":")
    s.start(4)
    assert parse_events(s.keepalive()) == [("ping", {"type": "ping"})]
    assert s.start(5) == b""  # one message_start only


def test_without_usage_the_input_count_arrives_in_message_delta():
    events = run_stream([chunk({"content": "x"}), chunk({}, "stop", usage=(11, 1))])
    assert events[0][1]["message"]["usage"]["input_tokens"] == 0
    assert events[-2][1]["usage"]["input_tokens"] == 11
    assert sdk_message(events).usage.input_tokens == 11


# --- properties -----------------------------------------------------------------------------

text = st.text(min_size=0, max_size=8)
block = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, text),
    st.builds(
        lambda d: {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": d}},
        st.text("abcXYZ019+/=", min_size=1, max_size=8),
    ),
)
assistant_block = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, text),
    st.builds(lambda t: {"type": "thinking", "thinking": t, "signature": "s"}, text),
    st.builds(
        lambda i, a: {"type": "tool_use", "id": f"t{i}", "name": "f", "input": {"a": a}},
        st.integers(0, 99),
        st.integers(),
    ),
)
result_block = st.builds(
    lambda i, c, e: {"type": "tool_result", "tool_use_id": f"t{i}", "content": c, "is_error": e},
    st.integers(0, 99),
    st.one_of(text, st.lists(st.builds(lambda t: {"type": "text", "text": t}, text), max_size=3)),
    st.booleans(),
)
user_turn = st.builds(
    lambda c: {"role": "user", "content": c}, st.one_of(text, st.lists(st.one_of(block, result_block), max_size=4))
)
assistant_turn = st.builds(
    lambda c: {"role": "assistant", "content": c}, st.one_of(text, st.lists(assistant_block, max_size=4))
)
requests = st.fixed_dictionaries(
    {"messages": st.lists(st.one_of(user_turn, assistant_turn), min_size=1, max_size=6)},
    optional={
        "system": st.one_of(text, st.lists(st.builds(lambda t: {"type": "text", "text": t}, text), max_size=3)),
        "temperature": st.floats(0, 1),
        "top_k": st.integers(0, 100),
        "stop_sequences": st.lists(st.text(min_size=1, max_size=4), max_size=4),
        "stream": st.booleans(),
        "tools": st.just([{"name": "f", "input_schema": {"type": "object"}}]),
        "thinking": st.sampled_from([{"type": "enabled", "budget_tokens": 10}, {"type": "disabled"}]),
    },
)


@settings(max_examples=300, deadline=None)
@given(requests)
def test_any_valid_request_translates_to_a_valid_openai_request(body):
    out = translate(body)
    chat = msgspec.convert(out, ChatCompletionRequest)  # the neuron's own request type decodes it
    check_chat_shape(chat)
    assert out["model"] == "org/local" and out["max_tokens"] == 100
    system = body.get("system")
    if system:  # never dropped, always first, verbatim
        first = out["messages"][0]
        assert first["role"] == "system"
        assert first["content"] == (system if isinstance(system, str) else [dict(b) for b in system])
    sent_ids = [c["id"] for m in out["messages"] if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    wanted = [
        b["id"]
        for m in body["messages"]
        if m["role"] == "assistant" and isinstance(m["content"], list)
        for b in m["content"]
        if b["type"] == "tool_use"
    ]
    assert sent_ids == wanted  # no tool call lost, none invented, order kept
    results = [m["tool_call_id"] for m in out["messages"] if m["role"] == "tool"]
    assert results == [
        b["tool_use_id"]
        for m in body["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
        for b in m["content"]
        if b["type"] == "tool_result"
    ]


def check_chat_shape(chat: ChatCompletionRequest) -> None:
    """What the neuron checks, less the text-only restriction of a text model."""
    for m in chat.messages:
        assert m.role in ("system", "user", "assistant", "tool")
        if m.role == "tool":
            assert isinstance(m.content, str) and m.tool_call_id
        for call_ in m.tool_calls or []:
            assert isinstance(json.loads(call_.function.arguments), dict)
    text_only = msgspec.structs.replace(
        chat,
        messages=[
            msgspec.structs.replace(m, content=[p for p in m.content if p.type == "text"])
            if isinstance(m.content, list)
            else m
            for m in chat.messages
        ],
    )
    check_chat(text_only)


def assert_grammar(events: list[tuple[str, dict]]) -> None:
    """Anthropic's stream grammar: message_start first and once; blocks one at a time, indices
    0, 1, 2… each started, then only its own deltas, then stopped; message_delta then
    message_stop last — or an error event last; pings anywhere after message_start."""
    names = [e for e, _ in events]
    if names == ["error"]:  # failed before anything was said
        return
    assert names[0] == "message_start" and names.count("message_start") == 1
    if names[-1] == "error":
        assert "message_stop" not in names
        body = events[:-1]
    else:
        assert names[-2:] == ["message_delta", "message_stop"] and names.count("message_stop") == 1
        body = events[:-2]
    open_index, next_index = None, 0
    for name, p in body[1:]:
        if name == "ping":
            continue
        if name == "content_block_start":
            assert open_index is None and p["index"] == next_index
            open_index, next_index = p["index"], next_index + 1
        elif name == "content_block_delta":
            assert p["index"] == open_index
        elif name == "content_block_stop":
            assert p["index"] == open_index
            open_index = None
        else:
            raise AssertionError(f"unexpected {name} inside the message")
    if names[-1] != "error":
        assert open_index is None


piece = st.one_of(
    st.builds(lambda t: ("content", t), st.text(max_size=5)),
    st.builds(lambda t: ("reasoning", t), st.text(max_size=5)),
    st.builds(lambda t: ("args", t), st.text(max_size=5)),
    st.just(("new_tool", "")),
    st.just(("usage", "")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(piece, max_size=30), st.sampled_from(["stop", "length", "tool_calls", None]), st.booleans())
def test_any_chunk_stream_satisfies_the_grammar_and_loses_nothing(pieces, finish, failed):
    chunks, tools, args = [], -1, {}
    want_text = want_thought = ""
    in_tool = False  # servers stream a call's arguments together, right after its start
    for kind, value in pieces:
        in_tool, was_in_tool = kind in ("new_tool", "args", "usage") and (kind == "new_tool" or in_tool), in_tool
        if kind == "content":
            chunks.append(chunk({"content": value}))
            want_text += value
        elif kind == "reasoning":
            chunks.append(chunk({"reasoning_content": value}))
            want_thought += value
        elif kind == "new_tool":
            tools += 1
            args[tools] = ""
            chunks.append(chunk(call(tools, "", name=f"f{tools}", id=f"c{tools}")))
        elif kind == "args" and was_in_tool:
            chunks.append(chunk(call(tools, value)))
            args[tools] += value
        else:
            chunks.append(chunk({}, usage=(4, len(chunks))))
    if finish is not None:
        chunks.append(chunk({}, finish, usage=(4, len(chunks))))
    events = run_stream(chunks, fail=ApiError("upstream", "x") if failed else None)
    assert_grammar(events)
    blocks: dict[int, dict] = {}
    for name, p in events:
        if name == "content_block_start":
            blocks[p["index"]] = {**p["content_block"], "json": ""}
        elif name == "content_block_delta":
            d = p["delta"]
            b = blocks[p["index"]]
            if d["type"] == "text_delta":
                b["text"] += d["text"]
            elif d["type"] == "thinking_delta":
                b["thinking"] += d["thinking"]
            else:
                b["json"] += d["partial_json"]
    ordered = [blocks[i] for i in sorted(blocks)]
    assert "".join(b["text"] for b in ordered if b["type"] == "text") == want_text
    assert "".join(b["thinking"] for b in ordered if b["type"] == "thinking") == want_thought
    assert [b["json"] for b in ordered if b["type"] == "tool_use"] == [args[i] for i in sorted(args)]
    assert [b["id"] for b in ordered if b["type"] == "tool_use"] == [f"c{i}" for i in sorted(args)]


def test_check_conversation_accepts_count_tokens_bodies_without_max_tokens():
    req = decode(b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}', Conversation)
    check_conversation(req)
    assert tokenize_request(req, "m")["messages"] == [{"role": "user", "content": "x"}]


@pytest.mark.parametrize("where", ["output_config", "output_format"])
def test_structured_outputs_reach_the_neuron_as_a_json_schema_response_format(where):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt = {"type": "json_schema", "schema": schema}
    body = {"messages": [{"role": "user", "content": "x"}]}
    body.update({"output_config": {"format": fmt}} if where == "output_config" else {"output_format": fmt})
    out = translate(body)
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    check_chat(msgspec.json.decode(msgspec.json.encode(out), type=ChatCompletionRequest))  # the neuron takes it
