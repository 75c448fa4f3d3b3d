"""OpenAI chat and legacy completion requests: logprobs, top_logprobs and response_format out of
their ranges or shapes, and non-finite sampling numbers, are 400s naming the field, and what the
checks allow passes."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from cortex.protocol.errors import ApiError
from cortex.protocol.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    check_chat,
    check_completion,
    decode_request,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}


def chat(**fields: Any) -> ChatCompletionRequest:
    req = decode_request(json.dumps({**CHAT, **fields}).encode(), ChatCompletionRequest)
    check_chat(req)
    return req


def completion(**fields: Any) -> CompletionRequest:
    req = decode_request(json.dumps({**COMPLETION, **fields}).encode(), CompletionRequest)
    check_completion(req)
    return req


def refused(build, **fields: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        build(**fields)
    assert info.value.status == 400 and info.value.kind == "invalid_request"
    return info.value


@pytest.mark.parametrize(
    ("fields", "param", "needles"),
    [
        ({"logprobs": "yes"}, "logprobs", ["logprobs takes true or false, got 'yes'"]),
        ({"logprobs": 1}, "logprobs", ["got 1"]),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", ["an integer from 0 to 20, got 21"]),
        ({"logprobs": True, "top_logprobs": True}, "top_logprobs", ["got True"]),
        ({"top_logprobs": 3}, "top_logprobs", ["top_logprobs needs logprobs: true"]),
        ({"logprobs": False, "top_logprobs": 0}, "top_logprobs", ["needs logprobs: true"]),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", ['{"json_schema": {"name"']),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema", []),
        (
            {"response_format": {"type": "yaml"}},
            "response_format",
            ["'yaml' is not one of text, json_object, json_schema"],
        ),
        ({"response_format": "json"}, "response_format", ["response_format 'json' is not one of"]),
        ({"response_format": {}}, "response_format", ["response_format {} is not one of"]),
    ],
)
def test_bad_chat_logprobs_and_formats_are_named(fields, param, needles):
    err = refused(chat, **fields)
    assert err.param == param
    for needle in needles:
        assert needle in err.message, err.message


@pytest.mark.parametrize(
    ("fields", "param", "needle"),
    [
        ({"logprobs": 21}, "logprobs", "an integer from 0 to 20, got 21"),
        ({"logprobs": -1}, "logprobs", "got -1"),
        ({"logprobs": True}, "logprobs", "got True"),
        ({"response_format": {"type": "xml"}}, "response_format", "'xml' is not one of"),
    ],
)
def test_bad_completion_logprobs_and_formats_are_named(fields, param, needle):
    err = refused(completion, **fields)
    assert err.param == param
    assert needle in err.message, err.message


def test_what_the_checks_allow_passes():
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    accepted = [
        {},
        {"logprobs": False},
        {"logprobs": True},
        {"logprobs": True, "top_logprobs": 0},
        {"logprobs": True, "top_logprobs": 20},
        {"logprobs": None, "top_logprobs": None},
        {"response_format": None},
        {"response_format": {"type": "text"}},
        {"response_format": {"type": "json_object"}},
        {"response_format": schema},
    ]
    for fields in accepted:
        req = chat(**fields)
        assert req.logprobs == fields.get("logprobs") and req.response_format == fields.get("response_format")
    for fields in [{}, {"logprobs": None}, {"logprobs": 0}, {"logprobs": 5}, {"response_format": {"type": "text"}}]:
        assert completion(**fields).logprobs == fields.get("logprobs")


@pytest.mark.parametrize(
    "field", ["temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"]
)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_sampling_numbers_are_named(field, value):
    # JSON has no NaN or inf, and msgspec refuses 1e999 while decoding; a request built another
    # way (a translator, msgspec.convert of a Python dict) still meets the check
    req = msgspec.convert({**CHAT, field: value}, ChatCompletionRequest)
    with pytest.raises(ApiError) as info:
        check_chat(req)
    assert info.value.status == 400 and info.value.param == field
    assert f"{field} must be a finite number, got {value}" == info.value.message


@pytest.mark.parametrize("body", [b', "temperature": 1e999}', b', "top_p": -1e999}'])
def test_an_overflowing_json_number_is_a_400_naming_the_field(body):
    raw = json.dumps(CHAT).encode()[:-1] + body
    with pytest.raises(ApiError) as info:
        check_chat(decode_request(raw, ChatCompletionRequest))
    field = "temperature" if b"temperature" in body else "top_p"
    assert info.value.status == 400 and info.value.param == field, info.value


def test_sampling_bounds_themselves_are_accepted():
    req = chat(temperature=0.0, top_p=1.0, min_p=1.0, presence_penalty=-2.0, frequency_penalty=2.0)
    assert (req.temperature, req.top_p, req.min_p) == (0.0, 1.0, 1.0)
    req = chat(temperature=2.0, top_p=5e-324, min_p=0.0, repetition_penalty=10.0, top_k=-1)
    assert (req.temperature, req.top_p, req.repetition_penalty, req.top_k) == (2.0, 5e-324, 10.0, -1)
    assert refused(chat, repetition_penalty=0.0).param == "repetition_penalty"
