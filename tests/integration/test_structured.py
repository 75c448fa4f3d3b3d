"""Structured outputs on the random demo model, through a real ``neuron serve`` (openai SDK) and a
real ``cortex serve`` in front of it (anthropic SDK, the Responses API): a ``json_schema`` answer
always parses and validates against the schema, ``json_object`` is always a JSON object, and a
demanded tool call is always a valid call of that tool, 20 seeds (or samples) each, whatever the
model would have said."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import jsonschema
import openai
import pytest
from integration.conftest import launch_gateway
from integration.services import FleetUnderTest

SEEDS = range(20)
ANSWER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "temp": {"type": "integer", "minimum": -50, "maximum": 60},
        "sky": {"enum": ["clear", "cloudy", "rain"]},
    },
    "required": ["city", "temp", "sky"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
CLOCK = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}},
    "required": ["zone"],
    "additionalProperties": False,  # (with room for more keys a random model may wander in them)
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Time", "parameters": CLOCK}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]


@pytest.fixture(scope="module")
def client(running_neuron) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=running_neuron.url + "/v1", api_key="x", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def gateway(running_neuron, tmp_path_factory) -> Iterator[FleetUnderTest]:
    fleet = launch_gateway(
        tmp_path_factory.mktemp("structured-gateway"),
        {"real": running_neuron.url},
        models=[{"id": "helexa/demo", "min_devices": 0}],
    )
    try:
        yield fleet
    finally:
        fleet.gateway.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_json_schema_answer_always_validates(client, stream):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}}
    for seed in SEEDS:
        kwargs = dict(
            model="helexa/demo", messages=ASK, max_tokens=200, temperature=1.0, seed=seed, response_format=fmt
        )
        if stream:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(stream=True, **kwargs)
                if c.choices
            )
        else:
            out = client.chat.completions.create(**kwargs)
            assert out.choices[0].finish_reason == "stop", out
            text = out.choices[0].message.content
        jsonschema.validate(json.loads(text), ANSWER)


def test_a_json_object_answer_is_always_an_object(client):
    for seed in range(5):
        out = client.chat.completions.create(
            model="helexa/demo",
            messages=ASK,
            max_tokens=300,
            temperature=0.7,
            seed=seed,
            response_format={"type": "json_object"},
        )
        if out.choices[0].finish_reason == "stop":  # an unbounded object may run past max_tokens
            assert isinstance(json.loads(out.choices[0].message.content), dict)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_demanded_tool_call_is_always_a_valid_call_of_that_tool(client, choice):
    for seed in SEEDS:
        out = client.chat.completions.create(
            model="helexa/demo",
            messages=ASK,
            tools=TOOLS,
            tool_choice=choice,
            max_tokens=200,
            temperature=1.0,
            seed=seed,
        )
        assert out.choices[0].finish_reason == "tool_calls", out
        [call] = out.choices[0].message.tool_calls
        if isinstance(choice, dict):
            assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_a_schema_llguidance_cannot_use_is_a_400_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="helexa/demo",
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        )
    assert err.value.param == "response_format" and "cannot be used" in err.value.message


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_time"}])
def test_anthropic_tool_choice_any_and_tool_give_a_valid_tool_use(gateway, choice):
    tools = [
        {"name": t["function"]["name"], "description": "x", "input_schema": t["function"]["parameters"]} for t in TOOLS
    ]
    with anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0, timeout=120) as claude:
        for _ in SEEDS:  # no seed in this dialect: 20 samples
            msg = claude.messages.create(
                model="helexa/demo",
                max_tokens=200,
                messages=ASK,
                tools=tools,
                tool_choice=choice,
                extra_body={"temperature": 1.0},  # (this SDK no longer sends it)
            )
            assert msg.stop_reason == "tool_use", msg
            [use] = [b for b in msg.content if b.type == "tool_use"]
            if choice["type"] == "tool":
                assert use.name == "get_time"
            jsonschema.validate(use.input, SCHEMAS[use.name])


def test_anthropic_output_format_and_responses_text_format_give_valid_json(gateway):
    for i in range(5):
        r = httpx.post(
            gateway.url + "/v1/messages",
            json={
                "model": "helexa/demo",
                "max_tokens": 200,
                "messages": ASK,
                "temperature": 1.0,
                "output_config": {"format": {"type": "json_schema", "schema": ANSWER}},
            },
            headers={"anthropic-version": "2023-06-01"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        jsonschema.validate(json.loads(r.json()["content"][0]["text"]), ANSWER)
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=120) as oai:
            resp = oai.responses.create(
                model="helexa/demo",
                input="Weather?",
                max_output_tokens=200,
                temperature=1.0,
                text={"format": {"type": "json_schema", "name": "answer", "schema": ANSWER, "strict": True}},
            )
        jsonschema.validate(json.loads(resp.output_text), ANSWER)
        assert resp.text.format.type == "json_schema" and i >= 0
