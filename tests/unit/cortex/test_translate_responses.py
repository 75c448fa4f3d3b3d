"""OpenAI Responses ⇄ chat translation: exact chat bodies for each request feature, whole Response
objects, and streams checked event by event and through the official SDK's own accumulator."""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import msgspec
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from cortex.protocol.errors import ApiError
from cortex.protocol.openai.chat import ChatChunk, ChatCompletion
from cortex.protocol.openai.responses import check_responses, decode
from cortex.translate import responses as tr
from cortex.translate.common import StreamError

EVENT = TypeAdapter(ResponseStreamEvent)


@pytest.fixture
def ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Item ids numbered in the order they are made: ``msg_1``, ``fc_2``…"""
    counter = itertools.count(1)
    monkeypatch.setattr(tr, "new_id", lambda prefix: f"{prefix}_{next(counter)}")


def request(**body: Any) -> Any:
    body.setdefault("model", "qwen")
    body.setdefault("input", "hi")
    req = decode(json.dumps(body).encode())
    check_responses(req)
    return req


def chat(**body: Any) -> dict[str, Any]:
    return tr.chat_request(request(**body), "Qwen/Qwen3-8B")


def rejected(body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        check_responses(decode(json.dumps(body).encode()))
    assert info.value.status == 400
    return info.value


# --- request --------------------------------------------------------------------------------


def test_string_input_with_instructions_and_sampling():
    body = chat(input="Hello", instructions="Be brief.", temperature=0.2, top_p=0.9, max_output_tokens=64, user="u1")
    assert body == {
        "model": "Qwen/Qwen3-8B",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
    }


def test_message_items_and_their_parts():
    items = [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "More rules."}]},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"},
            ],
        },
        {
            "type": "message",
            "id": "msg_old",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "A cat.", "annotations": [], "logprobs": []}],
        },
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        {"role": "user", "content": []},
    ]
    assert chat(input=items)["messages"] == [
        {"role": "system", "content": "Rules."},
        {"role": "system", "content": "More rules."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
            ],
        },
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "No."},
        {"role": "user", "content": ""},
    ]


def test_function_calls_join_the_assistant_message_before_them():
    items = [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": "Looking."},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": '{"city":"Rome"}', "id": "fc_x"},
        {"type": "function_call_output", "call_id": "c1", "output": "rain"},
        {"type": "function_call_output", "call_id": "c2", "output": "sun"},
        {"type": "function_call", "call_id": "c3", "name": "clock", "arguments": "{}", "status": "completed"},
        {"type": "function_call_output", "call_id": "c3", "output": "noon"},
    ]
    assert chat(input=items)["messages"] == [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
                {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        {"role": "tool", "tool_call_id": "c2", "content": "sun"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c3", "type": "function", "function": {"name": "clock", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c3", "content": "noon"},
    ]


def test_function_call_after_a_user_message_starts_an_assistant_message():
    items = [
        {"role": "user", "content": "x"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"role": "user", "content": "y"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
    ]
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert chat(input=items)["messages"] == [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", **call}]},
        {"role": "user", "content": "y"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c2", **call}]},
    ]


def test_function_call_output_parts():
    output = [
        {"type": "input_text", "text": "line 1"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
        {"type": "input_text", "text": "line 2"},
    ]
    items = [
        {"role": "user", "content": "shot?"},
        {"type": "function_call", "call_id": "c1", "name": "screenshot", "arguments": ""},
        {"type": "function_call_output", "call_id": "c1", "output": output},
    ]
    assert chat(input=items)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "c1", "content": "line 1\nline 2"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
    ]


def test_reasoning_items_go_to_the_next_assistant_message():
    items = [
        {"role": "user", "content": "q1"},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "short"}],
            "content": [{"type": "reasoning_text", "text": "long "}, {"type": "reasoning_text", "text": "thought"}],
        },
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {
            "type": "reasoning",
            "id": "rs_2",
            "summary": [{"type": "summary_text", "text": "s1"}, {"type": "summary_text", "text": "s2"}],
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "reasoning", "id": "rs_3", "summary": [], "encrypted_content": "gAAA"},
        {"role": "assistant", "content": "a2"},
    ]
    assert chat(input=items)["messages"] == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1", "reasoning_content": "long thought"},
        {"role": "user", "content": "q2"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            "reasoning_content": "s1\n\ns2",
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "assistant", "content": "a2"},
    ]


def test_reasoning_between_a_message_and_a_call_starts_a_new_assistant_message():
    items = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "first"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "then"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    ]
    assert chat(input=items)["messages"][1:] == [
        {"role": "assistant", "content": "first"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            "reasoning_content": "then",
        },
    ]


def test_encrypted_reasoning_does_not_split_a_turn():
    items = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "first"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    ]
    assert chat(input=items)["messages"][1:] == [
        {
            "role": "assistant",
            "content": "first",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
    ]


WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
    ],
)
def test_tools_and_tool_choice(tool_choice, expected):
    body = chat(tools=[WEATHER, {"type": "function", "name": "clock"}], tool_choice=tool_choice)
    assert body == {
        "model": "Qwen/Qwen3-8B",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {
                "type": "function",
                "function": {"name": "weather", "description": "Current weather", "parameters": WEATHER["parameters"]},
            },
            {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}},
        ],
        "tool_choice": expected,
    }


def test_parallel_tool_calls_passes_through():
    body = chat(tools=[WEATHER], parallel_tool_calls=False)
    assert body["parallel_tool_calls"] is False
    assert "parallel_tool_calls" not in chat(tools=[WEATHER])


@pytest.mark.parametrize(
    ("reasoning", "extra"),
    [
        ({"effort": "high"}, {"chat_template_kwargs": {"enable_thinking": True}}),
        ({"effort": "low", "summary": "auto"}, {"chat_template_kwargs": {"enable_thinking": True}}),
        ({"effort": "minimal"}, {"chat_template_kwargs": {"enable_thinking": False}}),
        ({"effort": "none"}, {"chat_template_kwargs": {"enable_thinking": False}}),
        ({"summary": "detailed"}, {}),
        (None, {}),
    ],
)
def test_reasoning_effort_switches_thinking(reasoning, extra):
    body = chat(reasoning=reasoning) if reasoning is not None else chat()
    assert body == {"model": "Qwen/Qwen3-8B", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_stream_asks_for_usage():
    assert chat(stream=True, store=True, include=["reasoning.encrypted_content"], metadata={"k": "v"}) == {
        "model": "Qwen/Qwen3-8B",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_tokenize_request_counts_the_same_prompt():
    req = request(
        instructions="Be brief.",
        tools=[WEATHER],
        tool_choice="required",
        reasoning={"effort": "high"},
        max_output_tokens=9,
        stream=True,
    )
    body = tr.chat_request(req, "m")
    assert tr.tokenize_request(req, "m") == {
        "model": "m",
        "messages": body["messages"],
        "tools": body["tools"],
        "tool_choice": "required",
        "chat_template_kwargs": {"enable_thinking": True},
    }


def test_output_items_sent_back_as_input_round_trip():
    completion = msgspec.convert(
        {
            "choices": [
                {
                    "message": {
                        "content": "Checking.",
                        "reasoning_content": "need weather",
                        "tool_calls": [{"id": "c1", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}],
                    },
                    "finish_reason": "tool_calls",
                }
            ]
        },
        ChatCompletion,
    )
    first = request(input="Oslo?", tools=[WEATHER])
    output = tr.response_object(completion, first, "qwen")["output"]
    items = [
        {"role": "user", "content": "Oslo?"},
        *output,
        {"type": "function_call_output", "call_id": "c1", "output": "rain"},
    ]
    assert tr.chat_request(request(input=items, tools=[WEATHER]), "m")["messages"] == [
        {"role": "user", "content": "Oslo?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "need weather",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    ]


# --- request errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (b"", "the request body is empty", None),
        (b"{not json", "malformed JSON body", None),
        (b"[]", "Expected `object`, got `array`", None),
        (b'{"input": "hi"}', "model: Field required", "model"),
        (b'{"model": 7, "input": "hi"}', "model: Expected `str`, got `int`", "model"),
        (b'{"model": "m", "input": [{"content": "hi"}]}', "input[0].type: Field required", "input[0].type"),
        (
            b'{"model": "m", "input": [{"type": "computer_call_output", "call_id": "c"}]}',
            "input[0].type: input item type 'computer_call_output' is not supported (supported: message, "
            "function_call, function_call_output, reasoning, item_reference)",
            "input[0].type",
        ),
        (
            b'{"model": "m", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]}',
            "input[0].content[0].type: content part type 'input_audio' is not supported",
            "input[0].content[0].type",
        ),
        (
            b'{"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}',
            "input[0].call_id: Field required",
            "input[0].call_id",
        ),
        (
            b'{"model": "m", "input": "hi", "temperature": "hot"}',
            "temperature: Expected `float | null`, got `str`",
            "temperature",
        ),
    ],
)
def test_decode_names_the_bad_field(body, message, param):
    with pytest.raises(ApiError) as info:
        decode(body)
    assert info.value.status == 400
    assert message in info.value.message
    assert info.value.param == param


@pytest.mark.parametrize(
    ("fields", "message", "param"),
    [
        ({"model": ""}, "model: must be a non-empty string", "model"),
        ({"input": ""}, "input: must be a non-empty", "input"),
        ({"input": []}, "input: must be a non-empty", "input"),
        ({"temperature": 2.5}, "temperature: must be between 0 and 2, got 2.5", "temperature"),
        ({"top_p": 1.5}, "top_p: must be between 0 and 1, got 1.5", "top_p"),
        ({"max_output_tokens": 0}, "max_output_tokens: must be at least 1, got 0", "max_output_tokens"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role: 'tool' is not one of", "input[0].role"),
        ({"previous_response_id": "resp_1"}, "send the whole conversation in `input`", "previous_response_id"),
        ({"conversation": "conv_1"}, "this gateway is stateless", "conversation"),
        ({"conversation": {"id": "conv_1"}}, "this gateway is stateless", "conversation"),
        ({"background": True}, "background:", "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt:", "prompt"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "this gateway is stateless", "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
            "input[0].content[0].file_id: images by file id need OpenAI's Files API",
            "input[0].content[0].file_id",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "detail": "auto"}]}]},
            "input[0].content[0].image_url: Field required",
            "input[0].content[0].image_url",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_data": "AAAA"}]}]},
            "input_file parts are not supported",
            "input[0].content[0]",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_file"}]}]},
            "input_file parts are not supported",
            "input[0].output[0]",
        ),
        (
            {"tools": [{"type": "web_search"}]},
            "tools[0].type: 'web_search' is a tool OpenAI runs itself",
            "tools[0].type",
        ),
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "'file_search'", "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name: must be a non-empty string", "tools[0].name"),
        ({"tools": [WEATHER, WEATHER]}, "'weather' appears twice", "tools[1]"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "clock"}},
            "tool_choice.name: 'clock' is not one of the tools given",
            "tool_choice.name",
        ),
        ({"tool_choice": "any"}, "tool_choice: 'any' is not one of auto, none, required", "tool_choice"),
        ({"tool_choice": {"type": "web_search_preview"}}, "'web_search_preview' is not supported", "tool_choice.type"),
        ({"reasoning": {"effort": "huge"}}, "reasoning.effort: 'huge' is not one of", "reasoning.effort"),
        ({"reasoning": {"summary": "all"}}, "reasoning.summary: 'all' is not one of", "reasoning.summary"),
        ({"text": {"format": {"type": "json_schema"}}}, "needs its schema", "text.format.schema"),
        (
            {"text": {"format": {"type": "xml"}}},
            "'xml' is not one of text, json_object, json_schema",
            "text.format.type",
        ),
    ],
)
def test_check_rejects(fields, message, param):
    err = rejected({"model": "m", "input": "hi", **fields})
    assert message in err.message
    assert err.param == param


def test_check_accepts_a_full_request():
    request(
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        instructions="Be brief.",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "weather"},
        temperature=0,
        top_p=1,
        max_output_tokens=1,
        reasoning={"effort": "medium", "summary": "auto"},
        text={"format": {"type": "text"}, "verbosity": "low"},
        store=False,
        truncation="auto",
        service_tier="auto",
    )


# --- response -------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish_reason: str = "stop", usage: tuple[int, int] = (12, 5)):
    return msgspec.convert(
        {
            "choices": [{"message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]},
        },
        ChatCompletion,
    )


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def echoes(**fields: Any) -> dict[str, Any]:
    """The request echoes of a Response for a request with no optional fields, updated by ``fields``."""
    return {
        "instructions": None,
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "temperature": None,
        "top_p": None,
        "max_output_tokens": None,
        "previous_response_id": None,
        "reasoning": None,
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "metadata": {},
        "user": None,
        "store": False,
        "background": False,
        **fields,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def test_text_response(ids):
    obj = tr.response_object(completion({"content": "Hello!"}), request(), "qwen", "resp_abc")
    assert obj == {
        "id": "resp_abc",
        "object": "response",
        "created_at": obj["created_at"],
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "model": "qwen",
        "output": [message_item("msg_1", "Hello!")],
        "usage": usage(12, 5),
        **echoes(),
    }
    assert isinstance(obj["created_at"], int)
    parsed = Response.model_validate(obj)
    assert parsed.output_text == "Hello!"
    assert parsed.usage is not None and parsed.usage.total_tokens == 17


def test_reasoning_text_and_tool_calls_response(ids):
    message = {
        "content": "Let me check.",
        "reasoning_content": "Two cities.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}},
        ],
    }
    req = request(
        instructions="Be brief.",
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=True,
        temperature=0.7,
        top_p=0.8,
        max_output_tokens=100,
        reasoning={"effort": "high", "summary": "auto"},
        metadata={"trace": "t1"},
        user="u1",
        store=True,
    )
    obj = tr.response_object(completion(message, "tool_calls"), req, "qwen")
    assert obj["id"].startswith("resp_")
    assert obj == {
        "id": obj["id"],
        "object": "response",
        "created_at": obj["created_at"],
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "model": "qwen",
        "output": [
            reasoning_item("rs_1", "Two cities."),
            message_item("msg_2", "Let me check."),
            call_item("fc_3", "call_1", "weather", '{"city":"Oslo"}'),
            call_item("fc_4", "call_2", "weather", '{"city": "Rome"}'),
        ],
        "usage": usage(12, 5),
        **echoes(
            instructions="Be brief.",
            tools=[WEATHER],
            tool_choice="required",
            temperature=0.7,
            top_p=0.8,
            max_output_tokens=100,
            reasoning={"effort": "high", "summary": "auto"},
            metadata={"trace": "t1"},
            user="u1",
        ),
    }
    parsed = Response.model_validate(obj)
    assert parsed.output_text == "Let me check."
    calls = [item for item in parsed.output if item.type == "function_call"]
    assert [(c.call_id, c.arguments) for c in calls] == [("call_1", '{"city":"Oslo"}'), ("call_2", '{"city": "Rome"}')]


def test_tool_choice_function_echo_validates(ids):
    req = request(tools=[{"type": "function", "name": "clock"}], tool_choice={"type": "function", "name": "clock"})
    obj = tr.response_object(completion({"tool_calls": [{"function": {"name": "clock"}}]}, "tool_calls"), req, "q")
    assert obj["tool_choice"] == {"type": "function", "name": "clock"}
    assert obj["tools"] == [
        {"type": "function", "name": "clock", "description": None, "parameters": None, "strict": None}
    ]
    item = obj["output"][0]
    assert item["call_id"].startswith("call_")
    assert item == call_item("fc_1", item["call_id"], "clock", "")
    Response.model_validate(obj)


def test_length_makes_an_incomplete_response(ids):
    obj = tr.response_object(completion({"content": "Once upon a"}, "length", (3, 4)), request(), "qwen", "resp_1")
    assert obj["status"] == "incomplete"
    assert obj["incomplete_details"] == {"reason": "max_output_tokens"}
    assert obj["output"] == [message_item("msg_1", "Once upon a", "incomplete")]
    parsed = Response.model_validate(obj)
    assert parsed.output_text == "Once upon a"
    assert parsed.incomplete_details is not None and parsed.incomplete_details.reason == "max_output_tokens"


def test_content_filter_makes_an_incomplete_response(ids):
    obj = tr.response_object(completion({"content": "Well"}, "content_filter"), request(), "qwen")
    assert (obj["status"], obj["incomplete_details"]) == ("incomplete", {"reason": "content_filter"})
    Response.model_validate(obj)


def test_empty_completion_has_no_output():
    obj = tr.response_object(completion({"content": ""}), request(), "qwen")
    assert obj["output"] == []
    assert Response.model_validate(obj).output_text == ""


def test_no_choices_is_an_upstream_error():
    with pytest.raises(ApiError) as info:
        tr.response_object(msgspec.convert({"choices": []}, ChatCompletion), request(), "qwen")
    assert info.value.status == 502


# --- stream ---------------------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: tuple[int, int] | None = None):
    body: dict[str, Any] = {"choices": [] if delta is None else [{"delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    return msgspec.convert(body, ChatChunk)


def tool(index: int, arguments: str | None = None, call_id: str | None = None, name: str | None = None):
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call["id"], call["type"], call["function"]["name"] = call_id, "function", name
    return {"tool_calls": [call]}


def parse(data: bytes) -> list[dict[str, Any]]:
    """The events of an SSE byte stream; comments are dropped, each event name must match its type."""
    events = []
    for block in data.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        event = json.loads(lines[1][len("data: ") :])
        assert event["type"] == lines[0][len("event: ") :]
        events.append(event)
    return events


def run(chunks: list[ChatChunk], req: Any = None, **kw: Any) -> tuple[tr.ResponsesStream, list[dict[str, Any]]]:
    kw.setdefault("response_id", "resp_test")
    stream = tr.ResponsesStream(req if req is not None else request(stream=True), "qwen", **kw)
    data = b"".join(stream.feed(c) for c in chunks) + stream.finish()
    assert stream.ended
    return stream, parse(data)


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def sdk_replay(events: list[dict[str, Any]]) -> list[Any]:
    """Feeds the events to the SDK's own stream accumulator; its events, the last carrying the
    final response."""
    state = ResponseStreamState(input_tools=openai.omit, text_format=openai.omit)
    out = []
    for event in events:
        out += state.handle_event(EVENT.validate_python(event))
    return out


OPEN_MESSAGE = ["response.output_item.added", "response.content_part.added"]
CLOSE_MESSAGE = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
OPEN_REASONING = ["response.output_item.added", "response.content_part.added"]
CLOSE_REASONING = ["response.reasoning_text.done", "response.content_part.done", "response.output_item.done"]
CLOSE_CALL = ["response.function_call_arguments.done", "response.output_item.done"]
START = ["response.created", "response.in_progress"]


def test_plain_text_stream(ids):
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        chunk(usage=(7, 2)),
    ]
    stream, events = run(chunks, response_id="resp_s")
    at = {"item_id": "msg_1", "output_index": 0}
    in_progress = {
        "id": "resp_s",
        "object": "response",
        "created_at": stream.created_at,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "model": "qwen",
        "output": [],
        "usage": None,
        **echoes(),
    }
    done_item = message_item("msg_1", "Hello")
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    assert events == [
        {"type": "response.created", "response": in_progress, "sequence_number": 0},
        {"type": "response.in_progress", "response": in_progress, "sequence_number": 1},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []},
            "sequence_number": 2,
        },
        {"type": "response.content_part.added", **at, "content_index": 0, "part": part, "sequence_number": 3},
        {
            "type": "response.output_text.delta",
            **at,
            "content_index": 0,
            "delta": "Hel",
            "logprobs": [],
            "sequence_number": 4,
        },
        {
            "type": "response.output_text.delta",
            **at,
            "content_index": 0,
            "delta": "lo",
            "logprobs": [],
            "sequence_number": 5,
        },
        {
            "type": "response.output_text.done",
            **at,
            "content_index": 0,
            "text": "Hello",
            "logprobs": [],
            "sequence_number": 6,
        },
        {
            "type": "response.content_part.done",
            **at,
            "content_index": 0,
            "part": {**part, "text": "Hello"},
            "sequence_number": 7,
        },
        {"type": "response.output_item.done", "output_index": 0, "item": done_item, "sequence_number": 8},
        {
            "type": "response.completed",
            "response": {**in_progress, "status": "completed", "output": [done_item], "usage": usage(7, 2)},
            "sequence_number": 9,
        },
    ]
    final = sdk_replay(events)[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == "Hello"


def test_reasoning_then_text_stream(ids):
    chunks = [
        chunk({"reasoning_content": "Think"}),
        chunk({"reasoning": "ing."}),
        chunk({"content": "Answer."}, "stop", usage=(3, 9)),
    ]
    _, events = run(chunks)
    assert types(events) == [
        *START,
        *OPEN_REASONING,
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        *CLOSE_REASONING,
        *OPEN_MESSAGE,
        "response.output_text.delta",
        *CLOSE_MESSAGE,
        "response.completed",
    ]
    assert events[2]["item"] == {
        "id": "rs_1",
        "type": "reasoning",
        "summary": [],
        "content": [],
        "status": "in_progress",
    }
    assert events[3]["part"] == {"type": "reasoning_text", "text": ""}
    assert [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"] == ["Think", "ing."]
    assert events[6] == {
        "type": "response.reasoning_text.done",
        "item_id": "rs_1",
        "output_index": 0,
        "content_index": 0,
        "text": "Thinking.",
        "sequence_number": 6,
    }
    assert events[7]["part"] == {"type": "reasoning_text", "text": "Thinking."}
    final = events[-1]["response"]
    assert final["output"] == [reasoning_item("rs_1", "Thinking."), message_item("msg_2", "Answer.")]
    assert final["usage"] == usage(3, 9)
    response = sdk_replay(events)[-1].response
    assert response.output_text == "Answer."
    assert response.output[0].content[0].text == "Thinking."


def test_tool_call_arguments_split_across_chunks(ids):
    arguments = '{"city": "Zürich", "units": "metric", "days": [1, 2, 3]}'
    pieces = [arguments[i : i + 3] for i in range(0, len(arguments), 3)]
    chunks = [
        chunk(tool(0, "", "call_7", "weather")),
        *(chunk(tool(0, piece)) for piece in pieces),
        chunk({}, "tool_calls"),
        chunk(usage=(20, 30)),
    ]
    _, events = run(chunks, request(stream=True, tools=[WEATHER]))
    assert types(events) == [
        *START,
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * len(pieces),
        *CLOSE_CALL,
        "response.completed",
    ]
    assert events[2]["item"] == call_item("fc_1", "call_7", "weather", "", "in_progress")
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert all(e["item_id"] == "fc_1" and e["output_index"] == 0 for e in deltas)
    assert "".join(e["delta"] for e in deltas) == arguments
    assert events[-3] == {
        "type": "response.function_call_arguments.done",
        "item_id": "fc_1",
        "output_index": 0,
        "arguments": arguments,
        "name": "weather",
        "sequence_number": len(events) - 3,
    }
    assert events[-2]["item"] == call_item("fc_1", "call_7", "weather", arguments)
    assert events[-1]["response"]["output"] == [events[-2]["item"]]
    response = sdk_replay(events)[-1].response
    assert [(o.type, o.call_id, o.arguments) for o in response.output] == [("function_call", "call_7", arguments)]


def test_text_and_two_tool_calls(ids):
    chunks = [
        chunk({"content": "Checking "}),
        chunk({"content": "both."}),
        chunk(tool(0, '{"city":', "call_a", "weather")),
        chunk(tool(0, '"Oslo"}')),
        chunk(tool(1, "", "call_b", "weather")),
        chunk(tool(1, '{"city":"Rome"}')),
        chunk({}, "tool_calls", usage=(5, 6)),
    ]
    _, events = run(chunks, request(stream=True, tools=[WEATHER]))
    assert types(events) == [
        *START,
        *OPEN_MESSAGE,
        "response.output_text.delta",
        "response.output_text.delta",
        *CLOSE_MESSAGE,
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        *CLOSE_CALL,
        "response.output_item.added",
        "response.function_call_arguments.delta",
        *CLOSE_CALL,
        "response.completed",
    ]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == [
        message_item("msg_1", "Checking both."),
        call_item("fc_2", "call_a", "weather", '{"city":"Oslo"}'),
        call_item("fc_3", "call_b", "weather", '{"city":"Rome"}'),
    ]
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == [0, 1, 2]
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"] == done
    assert final["usage"] == usage(5, 6)
    response = sdk_replay(events)[-1].response
    assert response.output_text == "Checking both."
    assert [o.arguments for o in response.output if o.type == "function_call"] == ['{"city":"Oslo"}', '{"city":"Rome"}']


def test_length_ends_with_response_incomplete(ids):
    _, events = run([chunk({"content": "Once upon"}), chunk({"content": " a"}, "length"), chunk(usage=(4, 2))])
    assert types(events) == [
        *START,
        *OPEN_MESSAGE,
        "response.output_text.delta",
        "response.output_text.delta",
        *CLOSE_MESSAGE,
        "response.incomplete",
    ]
    assert events[-2]["item"] == message_item("msg_1", "Once upon a", "incomplete")
    final = events[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"] == [events[-2]["item"]]
    assert final["usage"] == usage(4, 2)
    replayed = sdk_replay(events)[-1]
    assert replayed.type == "response.incomplete"
    assert replayed.response.output_text == "Once upon a"


def test_upstream_error_mid_stream_is_the_last_event(ids):
    stream = tr.ResponsesStream(request(stream=True), "qwen")
    data = stream.feed(chunk({"content": "Hi"}))
    data += stream.fail(ApiError("upstream", "the neuron went away", code="upstream_closed"))
    assert stream.ended
    assert stream.finish() == b""
    assert stream.fail(ApiError("internal", "again")) == b""
    events = parse(data)
    assert types(events) == [*START, *OPEN_MESSAGE, "response.output_text.delta", "error"]
    assert events[-1] == {
        "type": "error",
        "code": "upstream_closed",
        "message": "the neuron went away",
        "param": None,
        "sequence_number": 5,
    }
    assert sdk_replay(events)[-1].type == "error"


def test_error_code_defaults_to_the_kind():
    stream = tr.ResponsesStream(request(stream=True), "qwen")
    events = parse(stream.start(3) + stream.fail(ApiError("timeout", "too slow")))
    assert events[-1] == {
        "type": "error",
        "code": "timeout",
        "message": "too slow",
        "param": None,
        "sequence_number": 2,
    }


def test_going_back_to_a_closed_tool_call_is_a_stream_error():
    stream = tr.ResponsesStream(request(stream=True), "qwen")
    stream.feed(chunk(tool(0, "{}", "call_a", "f")))
    stream.feed(chunk(tool(1, "{}", "call_b", "g")))
    with pytest.raises(StreamError):
        stream.feed(chunk(tool(0, "x")))


def test_start_is_once_and_usage_before_start_sets_input_tokens():
    stream = tr.ResponsesStream(request(stream=True), "qwen")
    assert not stream.started
    first = parse(stream.feed(chunk(usage=(42, 0))))
    assert types(first) == START
    assert stream.started
    assert stream.start(0) == b""
    assert stream.keepalive() == b": keep-alive\n\n"
    events = parse(stream.finish())
    assert types(events) == ["response.completed"]
    assert events[0]["sequence_number"] == 2
    assert events[0]["response"]["usage"] == usage(42, 0)
    assert events[0]["response"]["output"] == []
    assert stream.finish() == b""


def test_a_chunk_without_usage_implies_start_zero():
    stream = tr.ResponsesStream(request(stream=True), "qwen")
    events = parse(stream.feed(chunk({"content": "x"})) + stream.finish())
    assert types(events)[:2] == START
    assert events[-1]["response"]["usage"] == usage(0, 0)


def test_finish_alone_is_an_empty_completed_response():
    _, events = run([])
    assert types(events) == [*START, "response.completed"]
    assert [e["sequence_number"] for e in events] == [0, 1, 2]
    assert sdk_replay(events)[-1].response.output == []


def test_the_sdk_client_reads_the_stream_over_http():
    """The SDK end to end: its SSE reader, event types and accumulator, over a mocked transport."""
    req = request(stream=True, tools=[WEATHER])
    chunks = [
        chunk({"reasoning_content": "hmm"}),
        chunk({"content": "Sure"}),
        chunk(tool(0, '{"city":', "call_1", "weather")),
        chunk(tool(0, '"Oslo"}'), "tool_calls", usage=(9, 9)),
    ]

    def handler(_: httpx.Request) -> httpx.Response:
        stream = tr.ResponsesStream(req, "qwen")
        body = stream.keepalive() + b"".join(stream.feed(c) + stream.keepalive() for c in chunks) + stream.finish()
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        client = openai.OpenAI(api_key="unused", base_url="http://cortex.test/v1", http_client=http)
        with client.responses.stream(model="qwen", input="hi") as stream:
            seen = [event.type for event in stream]
            final = stream.get_final_response()
    assert seen[0] == "response.created" and seen[-1] == "response.completed"
    assert final.output_text == "Sure"
    assert [(o.type, getattr(o, "arguments", None)) for o in final.output] == [
        ("reasoning", None),
        ("message", None),
        ("function_call", '{"city":"Oslo"}'),
    ]


# --- stream properties ----------------------------------------------------------------------

piece = st.text(min_size=1, max_size=8)
segment = st.one_of(
    st.tuples(st.just("text"), st.lists(piece, min_size=1, max_size=4)),
    st.tuples(st.just("reasoning"), st.lists(piece, min_size=1, max_size=4)),
    st.tuples(st.just("tool"), st.lists(st.text(max_size=8), max_size=5)),
)


@settings(max_examples=150, deadline=None)
@given(
    segments=st.lists(segment, max_size=8),
    finish=st.sampled_from([None, "stop", "tool_calls", "length"]),
    with_usage=st.booleans(),
)
def test_stream_grammar(segments, finish, with_usage):
    chunks: list[ChatChunk] = []
    text, reasoning, arguments = "", "", []
    for kind, pieces in segments:
        if kind == "tool":
            index = len(arguments)
            arguments.append("".join(pieces))
            chunks.append(chunk(tool(index, pieces[0] if pieces else None, f"call_{index}", f"fn_{index}")))
            chunks += [chunk(tool(index, p)) for p in pieces[1:]]
        else:
            for p in pieces:
                chunks.append(chunk({"content": p} if kind == "text" else {"reasoning_content": p}))
            if kind == "text":
                text += "".join(pieces)
            else:
                reasoning += "".join(pieces)
    if finish is not None:
        chunks.append(chunk({}, finish))
    if with_usage:
        chunks.append(chunk(usage=(11, 22)))
    _, events = run(chunks)

    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert types(events)[:2] == START
    assert types(events).count("response.created") == 1
    terminal = "response.incomplete" if finish == "length" else "response.completed"
    assert events[-1]["type"] == terminal
    assert sum(e["type"] in ("response.completed", "response.incomplete") for e in events) == 1

    open_item: dict[str, Any] | None = None
    done_items: list[dict[str, Any]] = []
    texts: dict[str, str] = {"message": "", "reasoning": ""}
    calls: dict[str, str] = {}
    for event in events[2:-1]:
        kind = event["type"]
        if kind == "response.output_item.added":
            assert open_item is None, "an item was added before the previous one was done"
            assert event["output_index"] == len(done_items)
            open_item = event["item"]
        elif kind == "response.output_item.done":
            assert open_item is not None and event["output_index"] == len(done_items)
            assert event["item"]["id"] == open_item["id"] and event["item"]["type"] == open_item["type"]
            done_items.append(event["item"])
            open_item = None
        else:
            assert open_item is not None, f"{kind} outside an item"
            assert event["item_id"] == open_item["id"] and event["output_index"] == len(done_items)
            if kind == "response.output_text.delta":
                texts["message"] += event["delta"]
            elif kind == "response.reasoning_text.delta":
                texts["reasoning"] += event["delta"]
            elif kind == "response.function_call_arguments.delta":
                calls[open_item["id"]] = calls.get(open_item["id"], "") + event["delta"]
    assert open_item is None

    assert texts == {"message": text, "reasoning": reasoning}
    function_calls = [item for item in done_items if item["type"] == "function_call"]
    assert [item["arguments"] for item in function_calls] == arguments
    assert [calls.get(item["id"], "") for item in function_calls] == arguments
    assert [item["call_id"] for item in function_calls] == [f"call_{i}" for i in range(len(arguments))]
    assert events[-1]["response"]["output"] == done_items
    assert events[-1]["response"]["usage"] == usage(11 if with_usage else 0, 22 if with_usage else 0)

    replayed = sdk_replay(events)[-1]
    assert replayed.type == terminal
    assert replayed.response.output_text == text


def test_text_formats_reach_the_neuron_as_response_formats_and_are_echoed():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    out = chat(input="hi", text={"format": {"type": "json_schema", "name": "count", "schema": schema, "strict": True}})
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "count", "schema": schema, "strict": True},
    }
    assert chat(input="hi", text={"format": {"type": "json_object"}})["response_format"] == {"type": "json_object"}
    assert "response_format" not in chat(input="hi", text={"format": {"type": "text"}})
    req = request(input="hi", text={"format": {"type": "json_schema", "name": "count", "schema": schema}})
    assert tr._text_format(req) == {"type": "json_schema", "name": "count", "schema": schema, "strict": False}
