"""The translated dialects through real processes: ``cortex serve`` in front of neuron test
doubles (scripted chat chunks) and in front of a real ``neuron serve``, with the official
``anthropic`` and ``openai`` SDKs as clients: ``messages.create`` / ``messages.stream``, tool
loops, ``count_tokens``, images, errors; ``responses.create`` / ``responses.stream``."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from integration.services import FleetUnderTest

MODEL = "org/local"
ALIASES = {"claude-sonnet-5": MODEL, "claude-*": MODEL}
HI = [{"role": "user", "content": "Hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ARGS = '{"city": "Paris", "note": "\\u00e9t\\u00e9 \\"quoted\\""}'


def tool_script(args: str = ARGS, pieces: int = 7) -> list[dict]:
    """Text, then one tool call whose arguments arrive in ``pieces`` chunks."""
    step = max(1, len(args) // pieces)
    parts = [args[i : i + step] for i in range(0, len(args), step)]
    script = [{"delta": {"content": "Let me check."}}]
    script.append(
        {
            "delta": {
                "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}]
            }
        }
    )
    script += [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}} for p in parts]
    script.append({"delta": {}, "finish_reason": "tool_calls"})
    return script


@pytest.fixture
def fleet(start_fleet) -> FleetUnderTest:
    return start_fleet(
        {"a": {"loaded": [MODEL], "token_delay": 0.001, "prompt_tokens": 31}},
        models=[{"id": MODEL, "min_devices": 0}, {"id": "org/cold", "min_devices": 0}],
        aliases=ALIASES,
        gateway={"keepalive_secs": 0.2},
    )


def claude(fleet: FleetUnderTest, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fleet.url, api_key=key, max_retries=0, timeout=30)


# --- Anthropic through the test double ------------------------------------------------------


def test_messages_create_translates_both_ways(fleet):
    with claude(fleet) as client:
        out = client.messages.create(
            model="claude-sonnet-5",
            max_tokens=64,
            system=[{"type": "text", "text": "Be brief."}],
            messages=HI,
            stop_sequences=["END"],
            extra_body={"temperature": 0.2},  # older clients send it; this SDK no longer does
        )
    assert out.type == "message" and out.role == "assistant" and out.model == "claude-sonnet-5"
    assert [b.type for b in out.content] == ["text"] and out.content[0].text == "reply from a"
    assert out.stop_reason == "end_turn" and out.stop_sequence is None
    assert out.usage.input_tokens == 31 and out.usage.output_tokens == 5
    sent = fleet.stats("a")["last_body"]
    assert sent == {
        "model": MODEL,
        "messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, *HI],
        "max_tokens": 64,
        "temperature": 0.2,
        "stop": ["END"],
        "chat_template_kwargs": {"enable_thinking": False},
    }


def test_messages_stream_text_has_real_input_usage_at_message_start(fleet):
    with claude(fleet) as client, client.messages.stream(model="claude-3-haiku", max_tokens=64, messages=HI) as s:
        events = list(s)
        final = s.get_final_message()
    assert events[0].type == "message_start" and events[0].message.usage.input_tokens == 31
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "a-0 a-1 a-2 a-3 a-4 " == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5 and final.usage.input_tokens == 31
    assert fleet.stats("a")["last_body"]["model"] == MODEL  # "claude-*" reached the local model


def test_messages_stream_tool_use_with_split_arguments(fleet):
    fleet.control("a", script=tool_script())
    with (
        claude(fleet) as client,
        client.messages.stream(model="claude-sonnet-5", max_tokens=64, messages=HI, tools=[WEATHER]) as s,
    ):
        events = list(s)
        final = s.get_final_message()
    starts = [(e.index, e.content_block.type) for e in events if e.type == "content_block_start"]
    assert starts == [(0, "text"), (1, "tool_use")]
    tool = final.content[1]
    assert tool.type == "tool_use" and tool.id == "call_1" and tool.name == "get_weather"
    assert tool.input == json.loads(ARGS)
    assert final.stop_reason == "tool_use"
    sent = fleet.stats("a")["last_body"]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": WEATHER["input_schema"],
            },
        }
    ]
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


def test_a_two_step_tool_loop(fleet):
    fleet.control("a", script=tool_script())
    with claude(fleet) as client:
        first = client.messages.create(model="claude-sonnet-5", max_tokens=64, messages=HI, tools=[WEATHER])
        assert first.stop_reason == "tool_use" and first.content[0].text == "Let me check."
        call = first.content[1]
        assert call.input == json.loads(ARGS)
        fleet.control("a", script=[{"delta": {"content": "Sunny in Paris."}}, {"delta": {}, "finish_reason": "stop"}])
        history = [
            *HI,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}]},
        ]
        second = client.messages.create(model="claude-sonnet-5", max_tokens=64, messages=history, tools=[WEATHER])
    assert second.content[0].text == "Sunny in Paris." and second.stop_reason == "end_turn"
    sent = fleet.stats("a")["last_body"]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": json.dumps(json.loads(ARGS), separators=(",", ":"), ensure_ascii=False),
                },
            }
        ],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}


def test_count_tokens_asks_the_neuron_and_never_loads(fleet):
    fleet.control("a", prompt_tokens=123)
    with claude(fleet) as client:
        warm = client.messages.count_tokens(model="claude-sonnet-5", messages=HI, system="S", tools=[WEATHER])
        cold = client.messages.count_tokens(model="org/cold", messages=HI)
    assert warm.input_tokens == 123 and cold.input_tokens == 123
    stats = fleet.stats("a")
    assert stats["loads"] == [] and "org/cold" not in stats["models"]
    assert stats["last_tokenize"] == {
        "model": "org/cold",
        "messages": HI,
        "chat_template_kwargs": {"enable_thinking": False},
    }


def test_an_image_is_passed_on_as_an_image_url(fleet):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
        {"type": "text", "text": "What is this?"},
    ]
    with claude(fleet) as client:
        out = client.messages.create(
            model="claude-sonnet-5", max_tokens=16, messages=[{"role": "user", "content": content}]
        )
    assert out.content[0].text == "reply from a"
    assert fleet.stats("a")["last_body"]["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
        {"type": "text", "text": "What is this?"},
    ]


def test_errors_come_in_anthropics_envelope_as_the_sdks_exception_types(fleet):
    with claude(fleet) as client:
        with pytest.raises(anthropic.NotFoundError) as nf:
            client.messages.create(model="gpt-nope", max_tokens=5, messages=HI)
        assert nf.value.body["type"] == "error" and nf.value.body["error"]["type"] == "not_found_error"
        assert "gpt-nope" in nf.value.body["error"]["message"]
        with pytest.raises(anthropic.BadRequestError) as bad:
            client.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "system", "content": "x"}])
        assert bad.value.body["error"]["type"] == "invalid_request_error"
        assert "messages[0].role" in bad.value.body["error"]["message"]
    raw = httpx.post(fleet.url + "/v1/messages", content=b"{not json", timeout=10)
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    assert raw.json()["request_id"].startswith("req_")
    missing = httpx.post(fleet.url + "/v1/messages", json={"model": "m", "messages": HI}, timeout=10)
    assert missing.status_code == 400 and "max_tokens" in missing.json()["error"]["message"]


def test_a_failure_mid_stream_is_an_error_event_the_sdk_raises(fleet):
    fleet.control("a", script=tool_script(), error_after=3)
    with (
        claude(fleet) as client,
        pytest.raises(anthropic.APIStatusError) as info,
        client.messages.stream(model="claude-x", max_tokens=64, messages=HI) as s,
    ):
        for _ in s:
            pass
    assert "fake failure mid-stream" in str(info.value)


def test_a_cold_load_opens_the_message_at_once_and_pings_while_it_loads(fleet):
    fleet.control("a", load_secs=1.5)
    body = {"model": "org/cold", "max_tokens": 16, "messages": HI, "stream": True}
    started = time.monotonic()
    seen: list[tuple[float, str]] = []
    with httpx.Client(timeout=30) as c, c.stream("POST", fleet.url + "/v1/messages", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("event: "):
                seen.append((time.monotonic() - started, line[7:]))
    names = [n for _, n in seen]
    assert names[0] == "message_start" and seen[0][0] < 1.0  # before the load finished
    assert names.count("ping") >= 3
    assert names[-1] == "message_stop" and "content_block_delta" in names
    assert max(t for t, n in seen if n == "ping") < min(t for t, n in seen if n == "content_block_start")


def test_a_silent_upstream_gets_pings_between_deltas(fleet):
    fleet.control("a", stall_secs=1.0)  # a long prefill, or a queue, after the first token
    body = {"model": MODEL, "max_tokens": 16, "messages": HI, "stream": True}
    with httpx.Client(timeout=30) as c, c.stream("POST", fleet.url + "/v1/messages", json=body) as r:
        names = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    deltas = [i for i, n in enumerate(names) if n == "content_block_delta"]
    pings = [i for i, n in enumerate(names) if n == "ping"]
    assert len(pings) >= 3 and deltas[0] < pings[0] < pings[-1] < deltas[1]
    assert names[-1] == "message_stop"


def test_models_list_answers_anthropic_clients_in_their_shape(fleet):
    with claude(fleet) as client:
        ids = [m.id for m in client.models.list()]
        page = client.models.list()
    assert MODEL in ids and "claude-sonnet-5" in ids and "claude-*" not in ids
    assert page.data[0].type == "model" and page.data[0].display_name == page.data[0].id


def test_api_keys_apply_in_the_anthropic_dialect(start_fleet):
    fleet = start_fleet({"a": {"loaded": [MODEL]}}, extra='[auth]\napi_keys = ["sk-good"]')
    with claude(fleet, key="sk-bad") as client, pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(model=MODEL, max_tokens=5, messages=HI)
    assert info.value.body["error"]["type"] == "authentication_error"
    with claude(fleet, key="sk-good") as client:
        assert client.messages.create(model=MODEL, max_tokens=5, messages=HI).content[0].text == "reply from a"


def test_a_fleet_that_cannot_serve_now_is_overloaded_with_retry_after(start_fleet):
    fleet = start_fleet({"a": {"load_fail": {MODEL: 507}}}, models=[{"id": MODEL, "min_devices": 0}])
    with claude(fleet) as client, pytest.raises(anthropic.ServiceUnavailableError) as info:
        client.messages.create(model=MODEL, max_tokens=5, messages=HI)
    assert info.value.response.headers["retry-after"] == "5"
    assert info.value.body["error"]["type"] == "overloaded_error" and "org/local" in info.value.body["error"]["message"]


# --- OpenAI Responses through the test double -----------------------------------------------


def oai(fleet: FleetUnderTest) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_responses_create_and_stream_text(fleet):
    with oai(fleet) as client:
        out = client.responses.create(model="claude-sonnet-5", input="Hi", instructions="Be brief.")
        assert out.output_text == "reply from a" and out.status == "completed"
        assert out.usage.input_tokens == 31 and out.usage.output_tokens == 5
        sent = fleet.stats("a")["last_body"]
        assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        with client.responses.stream(model=MODEL, input="Hi") as s:
            deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
            final = s.get_final_response()
    assert "".join(deltas) == "a-0 a-1 a-2 a-3 a-4 " == final.output_text
    with oai(fleet) as client:
        counted = client.responses.input_tokens.count(model="claude-sonnet-5", input="Hi", instructions="Be brief.")
    assert counted.input_tokens == 31 and fleet.stats("a")["last_tokenize"]["messages"][0]["role"] == "system"


def test_responses_function_call_loop(fleet):
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["input_schema"]}
    fleet.control("a", script=tool_script())
    with oai(fleet) as client:
        with client.responses.stream(model=MODEL, input="Weather?", tools=[tool]) as s:
            arg_deltas = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
            first = s.get_final_response()
        calls = [o for o in first.output if o.type == "function_call"]
        assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id == "call_1"
        assert "".join(arg_deltas) == ARGS == calls[0].arguments
        fleet.control("a", script=[{"delta": {"content": "Sunny."}}, {"delta": {}, "finish_reason": "stop"}])
        second = client.responses.create(
            model=MODEL,
            input=[
                {"role": "user", "content": "Weather?"},
                *[o.model_dump(exclude_none=True) for o in first.output],
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ],
            tools=[tool],
        )
    assert second.output_text == "Sunny."
    sent = fleet.stats("a")["last_body"]["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert sent[-2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ARGS}


def test_responses_errors_are_openai_envelopes(fleet):
    with oai(fleet) as client:
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(model=MODEL, input="Hi", previous_response_id="resp_123")
        assert "previous_response_id" in info.value.body["message"]
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="nope", input="Hi")


# --- through a real neuron ------------------------------------------------------------------


@pytest.fixture
def real_fleet(running_neuron, start_fleet) -> Iterator[FleetUnderTest]:
    yield start_fleet({}, endpoints={"real": running_neuron.url}, aliases={"claude-*": "test/tools"})


def test_end_to_end_through_a_real_neuron(real_fleet, running_neuron):
    with claude(real_fleet) as client:
        tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
        with client.messages.stream(model="claude-sonnet-5", max_tokens=64, messages=HI, tools=[tool]) as s:
            events = list(s)
            first = s.get_final_message()
        counted = client.messages.count_tokens(model="claude-sonnet-5", messages=HI, tools=[tool])
        assert events[0].message.usage.input_tokens == counted.input_tokens == first.usage.input_tokens > 0
        assert first.stop_reason == "tool_use"
        call = next(b for b in first.content if b.type == "tool_use")
        assert call.name == "get_weather" and call.input == {"city": "Paris"}
        history = [
            *HI,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
        ]
        second = client.messages.create(model="claude-sonnet-5", max_tokens=64, messages=history, tools=[tool])
        assert second.content[-1].text == "The weather in Paris is sunny." and second.stop_reason == "end_turn"
        thought = client.messages.create(
            model="test/think", max_tokens=64, messages=HI, thinking={"type": "enabled", "budget_tokens": 32}
        )
        assert [b.type for b in thought.content] == ["thinking", "text"]
        assert (
            thought.content[0].thinking.strip() == "Let me think about it."
            and thought.content[1].text == "The answer is 42."
        )
        forced = client.messages.create(
            model="test/forced",
            max_tokens=64,
            messages=HI,
            tools=[tool],
            tool_choice={"type": "tool", "name": "get_weather"},
        )
        assert [b.type for b in forced.content] == ["tool_use"] and forced.content[0].input == {"city": "Paris"}
        assert forced.stop_reason == "tool_use"
        stopped = client.messages.create(model="test/stop", max_tokens=64, messages=HI, stop_sequences=[" END"])
        assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == " END"
        assert stopped.content[0].text == "Once upon a time"
        with pytest.raises(anthropic.BadRequestError) as info:
            png = base64.b64encode(b"png").decode()
            image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
            client.messages.create(model="test/plain", max_tokens=8, messages=[{"role": "user", "content": [image]}])
        assert "text only" in info.value.body["error"]["message"]
    with oai(real_fleet) as client:
        out = client.responses.create(model="test/plain", input="Hi")
        assert out.output_text == "Hello there! How can I help?"
        counted = client.responses.input_tokens.count(model="test/plain", input="Hi")
        assert counted.input_tokens == out.usage.input_tokens
