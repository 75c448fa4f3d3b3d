"""The neuron HTTP API through a real ``neuron serve`` on loopback, with the official openai SDK
as the client for the OpenAI routes and plain HTTP for the control routes."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
USER = [{"role": "user", "content": "Hi there"}]
ONE = b'{"model": "test/plain", "messages": [{"role": "user", "content": "x"}]'  # + extra fields + b"}"


@pytest.fixture(scope="module")
def client(running_neuron) -> openai.OpenAI:
    with openai.OpenAI(base_url=running_neuron.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def http(running_neuron) -> httpx.Client:
    with httpx.Client(base_url=running_neuron.url, timeout=60) as c:
        yield c


def health(http: httpx.Client) -> dict:
    return http.get("/health").json()


def wait_for(predicate, secs: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


# --- discovery, health, version -------------------------------------------------------------


def test_discovery_health_and_version_describe_this_host(http):
    disc = http.get("/discovery").json()
    assert disc["harnesses"] == ["torch"] and disc["cpu"]["cores"] >= 1 and disc["cpu"]["memory_total_mb"] > 0
    assert isinstance(disc["devices"], list) and disc["hostname"] and disc["version"]
    assert {"q8_0", "q4_k", "q6_k", "iq4_xs", "q4_k_m"} <= set(disc["quant_types"])
    h = health(http)
    assert h["uptime_secs"] > 0 and h["memory_free_mb"] > 0
    assert h["models"]["test/plain"] == {
        "status": "loaded",
        "in_flight": 0,
        "queued": 0,
        "load_progress": 1.0,
        "kv_capacity_tokens": 4096,  # max_num_seqs (1 here) full contexts of 4096 tokens
        "kv_used_tokens": 0,
        "ranks": None,  # one rank (a tensor-parallel model lists each)
    }
    v = http.get("/version").json()
    assert v["version"] == disc["version"] and set(v["build"]) >= {"cuda", "archs", "native_kernels"}


# --- chat -----------------------------------------------------------------------------------


def test_chat_returns_the_models_text_with_usage(client, http):
    out = client.chat.completions.create(model="test/plain", messages=USER)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-") and out.model == "test/plain"
    choice = out.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello there! How can I help?"
    assert choice.finish_reason == "stop"
    count = http.post("/tokenize", json={"model": "test/plain", "messages": USER}).json()
    assert out.usage.prompt_tokens == count["count"] and count["max_context"] == 4096
    assert out.usage.completion_tokens == 4  # three script tokens and the end-of-turn token
    assert out.usage.total_tokens == out.usage.prompt_tokens + 4


def test_streamed_chat_has_role_first_then_deltas_then_finish_with_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="test/plain", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there! How can I help?"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert finish[0].usage.completion_tokens == 4
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == finish[0].usage.total_tokens
    assert len({c.id for c in chunks}) == 1


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client):
    out = client.chat.completions.create(model="test/plain", messages=USER, max_tokens=2)
    assert out.choices[0].message.content == "Hello there!"
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 2


def test_reasoning_goes_to_reasoning_content(client):
    out = client.chat.completions.create(model="test/think", messages=USER)
    msg = out.choices[0].message
    assert msg.reasoning_content == "Let me think about it."
    assert msg.content == "The answer is 42."
    chunks = list(client.chat.completions.create(model="test/think", messages=USER, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Let me think about it."
    assert "".join(d.content or "" for d in deltas) == "The answer is 42."
    assert not any("<think>" in (d.content or "") for d in deltas)


def test_tool_call_round_trip(client):
    first = client.chat.completions.create(
        model="test/tools", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    second = client.chat.completions.create(
        model="test/tools",
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
        ],
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "The weather in Paris is sunny."


def test_streamed_tool_call_arrives_whole_with_index_and_id(client):
    chunks = list(
        client.chat.completions.create(
            model="test/tools", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS, stream=True
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


BOUNDED = {  # a city of at most 12 characters and nothing else: a call that ends, whatever the model
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}},
    "required": ["city"],
    "additionalProperties": False,
}
FORCED_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": BOUNDED}},
    {"type": "function", "function": {"name": "get_time", "description": "Time", "parameters": {"type": "object"}}},
]


@pytest.mark.parametrize("choice", [{"type": "function", "function": {"name": "get_weather"}}, "required"])
@pytest.mark.parametrize("thinking", [None, False])
def test_a_tool_choice_that_demands_a_call_gets_one(client, http, choice, thinking):
    """The prompt opens the call (and counts it) and the call is held to the tools' schemas, so the
    scripted model, which would answer in words, answers with a valid call."""
    extra = {"chat_template_kwargs": {"enable_thinking": thinking}} if thinking is not None else {}
    body = {"model": "test/forced", "messages": USER, "tools": FORCED_TOOLS, "tool_choice": choice, "seed": 3}
    out = client.chat.completions.create(**body, max_tokens=300, extra_body=extra)
    assert out.choices[0].finish_reason == "tool_calls", out
    (call,) = out.choices[0].message.tool_calls
    if isinstance(choice, dict):
        assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(args) == {"city"} and isinstance(args["city"], str) and len(args["city"]) <= 12
    else:
        assert isinstance(args, dict)
    count = http.post("/tokenize", json={**body, **extra}).json()["count"]
    assert out.usage.prompt_tokens == count  # the opened call is part of the prompt, and counted
    streamed = list(client.chat.completions.create(**body, max_tokens=300, extra_body=extra, stream=True))
    calls = [tc for c in streamed if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [(call.function.name, args)]
    assert not any(c.choices[0].delta.content for c in streamed if c.choices)


def test_tool_choice_auto_leaves_the_choice_to_the_model_and_bad_choices_are_named(client, http):
    out = client.chat.completions.create(model="test/forced", messages=USER, tools=TOOLS, tool_choice="auto")
    assert out.choices[0].message.content == "I will not call anything." and out.choices[0].finish_reason == "stop"
    for choice, needle in (
        ({"type": "function", "function": {"name": "nope"}}, "'nope', which is not one of the tools"),
        ("sometimes", "tool_choice must be none, auto, required"),
    ):
        r = http.post(
            "/v1/chat/completions",
            json={"model": "test/forced", "messages": USER, "tools": TOOLS, "tool_choice": choice},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
        assert needle in r.json()["error"]["message"]
    r = http.post("/v1/chat/completions", json={"model": "test/forced", "messages": USER, "tool_choice": "required"})
    assert r.status_code == 400 and "no tools were given" in r.json()["error"]["message"]


def test_without_tools_the_markup_is_plain_text(client):
    out = client.chat.completions.create(model="test/tools", messages=USER)
    assert out.choices[0].finish_reason == "stop" and out.choices[0].message.tool_calls is None
    assert "<tool_call>" in out.choices[0].message.content


def test_stop_strings_end_the_answer_and_are_never_emitted(client):
    out = client.chat.completions.create(model="test/stop", messages=USER, stop=["END"])
    assert out.choices[0].message.content == "Once upon a time "
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].model_dump()["stop_reason"] == "END"  # which stop string ended it (vLLM's field)
    chunks = list(client.chat.completions.create(model="test/stop", messages=USER, stop=["xyz", "END"], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Once upon a time " and "END" not in text
    assert chunks[-1].choices[0].model_dump()["stop_reason"] == "END"
    plain = client.chat.completions.create(model="test/plain", messages=USER, stop=["xyz"])
    assert plain.choices[0].finish_reason == "stop" and plain.choices[0].model_dump()["stop_reason"] is None


def test_continuous_usage_puts_the_usage_so_far_on_every_chunk(client, http):
    chunks = list(
        client.chat.completions.create(
            model="test/plain", messages=USER, stream=True, stream_options={"continuous_usage_stats": True}
        )
    )
    prompt = http.post("/tokenize", json={"model": "test/plain", "messages": USER}).json()["count"]
    assert all(c.usage is not None and c.usage.prompt_tokens == prompt for c in chunks)
    assert chunks[0].usage.completion_tokens == 0 and chunks[-1].usage.completion_tokens == 4
    done = [c.usage.completion_tokens for c in chunks]
    assert done == sorted(done)


def test_tokenize_counts_for_a_model_that_is_not_resident(http):
    assert "test/extra" not in health(http)["models"]
    body = {"model": "test/extra", "messages": USER, "chat_template_kwargs": {"enable_thinking": False}}
    cold = http.post("/tokenize", json=body)
    assert cold.status_code == 200 and cold.json()["max_context"] == 4096
    assert "test/extra" not in health(http)["models"]  # counting never loads weights
    warm = http.post("/tokenize", json={**body, "model": "test/plain"}).json()
    assert cold.json()["count"] == warm["count"]  # same tokenizer and template as test/plain
    missing = http.post("/tokenize", json={"model": "test/nowhere", "messages": USER})
    assert missing.status_code == 404 and "test/nowhere" in missing.json()["error"]["message"]


def test_same_seed_same_output_and_a_new_seed_differs(client):
    def ask(seed: int) -> str:
        out = client.chat.completions.create(
            model="helexa/demo", messages=USER, seed=seed, temperature=1.0, top_p=1.0, max_tokens=24
        )
        return out.choices[0].message.content

    first = ask(123)
    assert first and ask(123) == first
    assert ask(124) != first


def test_legacy_completions_plain_streamed_and_echoed(client):
    out = client.completions.create(model="helexa/demo", prompt="The weather today", max_tokens=8, temperature=0)
    assert out.object == "text_completion" and out.choices[0].finish_reason in ("length", "stop")
    assert out.usage.completion_tokens <= 8 and out.usage.prompt_tokens > 0
    again = client.completions.create(model="helexa/demo", prompt="The weather today", max_tokens=8, temperature=0)
    assert again.choices[0].text == out.choices[0].text  # greedy is deterministic
    streamed = list(
        client.completions.create(
            model="helexa/demo", prompt="The weather today", max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == out.choices[0].text
    echoed = client.completions.create(
        model="helexa/demo", prompt="The weather today", max_tokens=8, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "The weather today" + out.choices[0].text


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b'{"model": "test/plain", "messages": [', 400, None),
        (b'{"model": 5, "messages": []}', 400, "model"),
        (b'{"model": "test/plain", "messages": "hi"}', 400, "messages"),
        (b'{"model": "test/plain", "messages": []}', 400, "messages"),
        (b'{"model": "test/plain", "messages": [{"content": "x"}]}', 400, "messages[0].role"),
        (
            b'{"model": "test/plain", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
            400,
            "max_tokens",
        ),
        (
            b'{"model": "test/plain", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}',
            400,
            "max_tokens",
        ),
        (
            b'{"model": "test/plain", "messages": [{"role": "user", "content": "x"}], "temperature": 3}',
            400,
            "temperature",
        ),
        (ONE + b', "top_p": 0}', 400, "top_p"),
        (ONE + b', "top_k": -5}', 400, "top_k"),
        (b'{"model": "test/plain", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role"),
        (ONE + b', "n": 2}', 400, "n"),
        (b'{"model": "no/such-model", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
    ],
)
def test_bad_chat_requests_get_an_openai_error_naming_the_field(http, body, status, param):
    r = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["message"] and err["type"].endswith("_error")
    if param is not None:
        assert err["param"] == param


def test_a_prompt_longer_than_the_context_is_refused(client, http):
    long = [{"role": "user", "content": "the weather today is mild " * 40}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="test/short", messages=long)
    assert err.value.code == "context_length_exceeded" and "64 tokens" in err.value.message
    ok = client.chat.completions.create(model="test/short", messages=USER)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_generation_stops_at_the_context_length(http, client):
    assert http.post("/models/load", json={"model_id": "test/ctx48"}).status_code == 200
    try:
        prompt_tokens = http.post("/tokenize", json={"model": "test/ctx48", "messages": USER}).json()["count"]
        out = client.chat.completions.create(
            model="test/ctx48", messages=USER, max_tokens=1000, temperature=0, extra_body={"ignore_eos": True}
        )
        assert out.choices[0].finish_reason == "length"
        assert out.usage.completion_tokens == 48 - prompt_tokens
    finally:
        http.post("/models/unload", json={"model_id": "test/ctx48"})


def test_sdk_raises_typed_errors_and_the_server_keeps_serving(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no/such", messages=USER)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="test/plain", messages=USER, temperature=-1)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="test/plain", messages=USER, stream=True, presence_penalty=9)
    assert client.chat.completions.create(model="test/plain", messages=USER).choices[0].finish_reason == "stop"


def test_unknown_routes_and_methods_answer_in_the_envelope(http):
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and "no route GET /v1/nothing" in r.json()["error"]["message"]
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]


# --- lifecycle ------------------------------------------------------------------------------


def test_load_list_endpoint_unload_lifecycle(http, client, running_neuron):
    r = http.post("/models/load", json={"model_id": "test/extra"})
    assert r.status_code == 200 and r.json() == {"status": "loaded"}
    listed = {m["id"]: m for m in http.get("/models").json()}
    extra = listed["test/extra"]
    on_gpu = bool(http.get("/discovery").json()["devices"])  # device = "auto": the first GPU when there is one
    assert extra["status"] == "loaded" and extra["devices"] == ([0] if on_gpu else []) and extra["harness"] == "torch"
    assert isinstance(extra["vram_used_mb"], int) and extra["context_length"] == 4096 and extra["error"] is None
    assert http.post("/models/load", json={"model_id": "test/extra"}).json() == {"status": "loaded"}
    assert http.get("/models/test%2Fextra/endpoint").json() == {"url": running_neuron.url}
    assert client.chat.completions.create(model="test/extra", messages=USER).choices[0].finish_reason == "stop"
    assert http.post("/models/unload", json={"model_id": "test/extra"}).json() == {"status": "unloaded"}
    assert "test/extra" not in {m["id"] for m in http.get("/models").json()}
    assert http.post("/models/unload", json={"model_id": "test/extra"}).status_code == 404
    assert http.get("/models/test%2Fextra/endpoint").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="test/extra", messages=USER)


def test_unload_waits_for_the_request_in_flight(running_neuron, http):
    assert http.post("/models/load", json={"model_id": "test/demo2"}).status_code == 200
    body = {"model": "test/demo2", "messages": USER, "max_tokens": 4000, "ignore_eos": True, "stream": True}
    result: dict = {}
    with httpx.Client(base_url=running_neuron.url, timeout=60) as streamer:
        with streamer.stream("POST", "/v1/chat/completions", json=body) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")

            def unload() -> None:
                r = httpx.post(running_neuron.url + "/models/unload", json={"model_id": "test/demo2"}, timeout=60)
                result["status"], result["at"] = r.status_code, time.monotonic()

            t = threading.Thread(target=unload)
            t.start()
            wait_for(
                lambda: health(http)["models"].get("test/demo2", {}).get("status") == "unloading", what="unloading"
            )
            assert "status" not in result  # still waiting for the stream
            turned_away = http.post("/v1/chat/completions", json={"model": "test/demo2", "messages": USER})
            assert turned_away.status_code == 503 and turned_away.headers["retry-after"]
            assert turned_away.json()["error"]["code"] == "model_unloading"
            rest = [next(lines) for _ in range(3)]
            closed = time.monotonic()
        t.join(timeout=30)
    assert all(line.startswith("data: {") or not line for line in rest), rest  # still streaming tokens
    assert result["status"] == 200 and result["at"] >= closed
    assert "test/demo2" not in {m["id"] for m in http.get("/models").json()}


def test_a_load_with_quant_quantizes_in_situ_and_says_so(http, client):
    dense = http.get("/models/test%2Fisq/footprint").json()
    planned = http.get("/models/test%2Fisq/footprint", params={"quant": "q8_0"}).json()
    assert 0 < planned["cpu_mb"] < dense["cpu_mb"] and planned["gpu_mb"] < dense["gpu_mb"]
    r = http.post("/models/load", json={"model_id": "test/isq", "quant": "Q8_0"})
    assert r.status_code == 200, r.text
    listed = {m["id"]: m for m in http.get("/models").json()}["test/isq"]
    assert listed["quant"] == "q8_0" and listed["status"] == "loaded"
    answer = client.chat.completions.create(model="test/isq", messages=USER, max_tokens=8, temperature=0)
    assert answer.usage.completion_tokens == 8 and answer.choices[0].message.content
    assert http.post("/models/unload", json={"model_id": "test/isq"}).status_code == 200
    bad = http.get("/models/test%2Fisq/footprint", params={"quant": "q9"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "quant"


def test_a_gguf_model_is_picked_by_quant_loaded_and_counted(http, client):
    counted = http.post("/tokenize", json={"model": "test/gguf", "messages": USER})
    assert counted.status_code == 200 and counted.json()["max_context"] == 4096  # from the GGUF metadata
    small = http.get("/models/test%2Fgguf/footprint", params={"quant": "q4_k_m"}).json()
    big = http.get("/models/test%2Fgguf/footprint", params={"quant": "Q8_0"}).json()
    assert 0 < small["cpu_mb"] < big["cpu_mb"]
    several = http.post("/models/load", json={"model_id": "test/gguf"})
    assert several.status_code == 400 and several.json()["error"]["param"] == "quant"
    assert "isq-Q4_K_M.gguf" in several.json()["error"]["message"]
    r = http.post("/models/load", json={"model_id": "test/gguf", "quant": "q4_k_m"})
    assert r.status_code == 200, r.text
    listed = {m["id"]: m for m in http.get("/models").json()}["test/gguf"]
    assert listed["quant"] == "q4_k_m" and listed["status"] == "loaded"
    answer = client.chat.completions.create(model="test/gguf", messages=USER, max_tokens=6, temperature=0)
    assert answer.usage.completion_tokens == 6 and answer.usage.prompt_tokens == counted.json()["count"]
    assert http.post("/models/unload", json={"model_id": "test/gguf"}).status_code == 200


def test_load_without_waiting_answers_202_then_loads(http):
    r = http.post("/models/load", json={"model_id": "test/extra", "wait": False})
    assert r.status_code in (200, 202) and r.json()["status"] in ("loading", "loaded")
    wait_for(lambda: health(http)["models"].get("test/extra", {}).get("status") == "loaded", what="background load")
    assert http.post("/models/unload", json={"model_id": "test/extra"}).status_code == 200


@pytest.mark.parametrize(
    ("spec", "status", "needle"),
    [
        ({"model_id": "../etc"}, 400, "not a valid id"),
        ({"model_id": "test/nothing-here"}, 404, "allow_download = false"),
        ({"model_id": "test/mamba"}, 409, "'mamba'"),
        ({"model_id": "test/broken-index"}, 400, "model.safetensors.index.json is not a shard index"),
        ({"model_id": "test/no-hidden-size"}, 400, "config.json lacks 'hidden_size'"),
        ({"model_id": "test/extra", "quant": "q9_z"}, 400, "'q9_z' is not a type this neuron quantizes to"),
        ({"model_id": "test/extra", "tensor_parallel": 2, "devices": [0, 1]}, 400, "tensor parallelism across GPUs"),
        ({"model_id": "test/extra", "tensor_parallel": 0}, 400, "tensor_parallel must be at least 1"),
        ({"model_id": "test/extra", "tensor_parallel": 64}, 400, "more ranks than this neuron runs"),
        ({"model_id": "test/extra", "harness": "vllm"}, 400, "harness"),
        ({"model": "test/extra"}, 400, "model"),
    ],
)
def test_bad_loads_are_refused_with_the_contract_status(http, spec, status, needle):
    r = http.post("/models/load", json=spec)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    listed = {m["id"]: m["status"] for m in http.get("/models").json()}
    assert listed.get(spec.get("model_id", "")) in (None, "failed")


def test_a_broken_checkpoint_is_the_callers_400_not_a_conflict(http):
    for model_id in ("test/broken-index", "test/no-hidden-size"):
        error = http.post("/models/load", json={"model_id": model_id}).json()["error"]
        assert error["code"] == "bad_checkpoint" and model_id in error["message"], error
        listed = {m["id"]: m for m in http.get("/models").json()}
        assert listed[model_id]["status"] == "failed" and listed[model_id]["error_status"] == 400


def test_the_unsupported_architecture_is_named_with_the_supported_list(http):
    message = http.post("/models/load", json={"model_id": "test/mamba"}).json()["error"]["message"]
    assert "mamba" in message and all(name in message for name in ("llama", "qwen2", "qwen3"))


# --- admission and disconnects --------------------------------------------------------------


def test_queue_bound_gives_429_and_a_disconnect_frees_the_slot(running_neuron, http):
    body = {"model": "helexa/demo", "messages": USER, "max_tokens": 4000, "ignore_eos": True, "stream": True}
    before = _completion_tokens(http, "helexa/demo")
    with httpx.Client(base_url=running_neuron.url, timeout=60) as long_client:
        with long_client.stream("POST", "/v1/chat/completions", json=body) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk: it runs
            wait_for(lambda: health(http)["models"]["helexa/demo"]["in_flight"] == 1, what="in flight")
            queued_result: dict = {}

            def queued() -> None:
                short = {"model": "helexa/demo", "messages": USER, "max_tokens": 3}
                queued_result["status"] = httpx.post(
                    running_neuron.url + "/v1/chat/completions", json=short, timeout=60
                ).status_code

            waiter = threading.Thread(target=queued)
            waiter.start()
            wait_for(lambda: health(http)["models"]["helexa/demo"]["queued"] == 1, what="queued")
            third = http.post("/v1/chat/completions", json={"model": "helexa/demo", "messages": USER, "max_tokens": 3})
            assert third.status_code == 429
            assert int(third.headers["retry-after"]) >= 1
            assert third.json()["error"]["type"] == "rate_limit_error"
        # leaving the block closes the connection mid-stream
        waiter.join(timeout=30)
    assert queued_result["status"] == 200
    wait_for(lambda: health(http)["models"]["helexa/demo"]["in_flight"] == 0, what="slot freed")
    generated = _completion_tokens(http, "helexa/demo") - before
    assert generated < 2000  # the long request stopped when its client left


def _completion_tokens(http: httpx.Client, model: str) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        if family.name == "neuron_completion_tokens":
            for sample in family.samples:
                if sample.labels.get("model") == model and sample.name.endswith("_total"):
                    return sample.value
    return 0.0


def test_metrics_scrape_parses_and_reports_the_models(http, client):
    client.chat.completions.create(model="test/plain", messages=USER)
    families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    assert {"neuron_requests", "neuron_prompt_tokens", "neuron_decode_tokens_per_second"} <= set(families)
    requests = {s.labels["model"]: s.value for s in families["neuron_requests"].samples if s.name.endswith("_total")}
    assert requests.get("test/plain", 0) >= 1
    decode = {s.labels["model"]: s.value for s in families["neuron_decode_tokens_per_second"].samples}
    assert decode["test/plain"] > 0
    # every load counts, the default models loaded at start included (not only loads someone waited for)
    loads = {
        s.labels["model"]: s.value
        for s in families["neuron_model_load_seconds"].samples
        if s.name.endswith("_count") and s.labels["result"] == "ok"
    }
    assert loads.get("test/plain") == 1 and loads.get("helexa/demo") == 1
    host_mb = families["neuron_host_memory_free_bytes"].samples[0].value / 2**20  # bytes, as /health's MB
    assert host_mb > 0 and abs(host_mb - health(http)["memory_free_mb"]) < 256  # (the host's memory moves)
    memory = {s.labels["model"]: s.value for s in families["neuron_model_memory_bytes"].samples}
    assert memory["test/plain"] > 0


# --- log probabilities ------------------------------------------------------------------------


def test_chat_logprobs_cover_every_token_whole_and_streamed(client):
    out = client.chat.completions.create(model="test/plain", messages=USER, logprobs=True, top_logprobs=3, seed=1)
    choice = out.choices[0]
    assert choice.message.content == "Hello there! How can I help?"
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content  # one entry a token, end token excluded
    assert len(entries) == out.usage.completion_tokens - 1
    for e in entries:
        assert e.logprob <= 0 and e.logprob > -1e-3  # the scripted model is sure of each token
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.top_logprobs[1].logprob < -100 and e.bytes == list(e.token.encode())
    stream = client.chat.completions.create(
        model="test/plain", messages=USER, logprobs=True, top_logprobs=1, stream=True, seed=1
    )
    tokens = [e.token for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert tokens == [e.token for e in entries]
    plain = client.chat.completions.create(model="test/plain", messages=USER)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_are_parallel_lists_with_text_offsets(client):
    out = client.completions.create(
        model="helexa/demo",
        prompt="The weather",
        max_tokens=6,
        logprobs=2,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    lp = out.choices[0].logprobs
    n = len(lp.tokens)
    assert n == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(n)]
    for top, value in zip(lp.top_logprobs, lp.token_logprobs, strict=True):  # greedy: the chosen is the best
        assert len(top) <= 2 and max(top.values()) == pytest.approx(value)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
    ],
)
def test_bad_logprobs_and_formats_are_refused_naming_the_field(client, fields, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="test/plain", messages=USER, **fields)
    assert err.value.status_code == 400 and err.value.param == param
