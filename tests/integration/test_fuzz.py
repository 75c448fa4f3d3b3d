"""A bounded hypothesis run over every route of both programs, through real processes: a real
``neuron serve`` and a real ``cortex serve`` in front of it. Bodies are plausible requests with
any field replaced by any JSON value (or left out), JSON that is not an object, and bytes that
are not JSON. The rule: no answer is a 5xx, every 4xx carries the dialect's error envelope, no
stream carries a server error, and neither log holds a traceback.

``HELEXA_FUZZ_EXAMPLES`` (default 25) sets the examples per route; ``HELEXA_FUZZ_REPORT=FILE``
appends the run's counts (requests, by status class) to FILE.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from integration.conftest import DEFAULTS, WEATHER_TOOL, launch_gateway
from integration.services import ServiceProcess

EXAMPLES = int(os.environ.get("HELEXA_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never flakes on a new one
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
COUNTS: collections.Counter[str] = collections.Counter()
SERVER_ERRORS = (b'"server_error"', b'"api_error"', b"internal error")
MAX_NEW = 4  # generation stays short: a generated max_tokens above it is lowered to it

# --- values -----------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
any_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
MODELS = [
    "helexa/demo",
    "test/plain",
    "test/tools",
    "test/short",
    "claude-haiku",
    "nobody/none",
    "",
    "../etc",
    "m" * 300,
]
model_ids = st.sampled_from(MODELS) | st.text(max_size=20)
small_floats = st.sampled_from([0.0, 1e-300, 1e-30, 1e-5, 0.5, 1.0, 2.0, 10.0, -1.0, 1e300]) | st.floats(-3, 12)
counts = st.integers(min_value=-3, max_value=6) | st.sampled_from([2**31, 2**63, -(2**63)])
texts = st.text(max_size=60) | st.sampled_from(["<think>", "<tool_call>", "</tool_call>", "\x00", "\ud7ff" * 3])


def maybe_wrong(value: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a plausible value, sometimes any JSON at all."""
    return st.one_of(value, value, any_json)


def fields(required: dict, optional: dict) -> st.SearchStrategy:
    wrapped = {k: maybe_wrong(v) for k, v in required.items()}
    maybe = {k: maybe_wrong(v) for k, v in optional.items()}
    return st.fixed_dictionaries(wrapped, optional=maybe)


def bodies(obj: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    """The route's bodies as bytes: mostly objects, sometimes other JSON, sometimes not JSON."""
    as_json = st.one_of(obj, obj, obj, any_json).map(lambda v: json.dumps(v).encode())
    return st.one_of(as_json, as_json, as_json, st.binary(max_size=40))


def _bounded(body: dict) -> dict:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_NEW:
            body[key] = MAX_NEW
    if not any(k in body for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")):
        body["max_tokens"] = MAX_NEW
    return body


SAMPLING = {
    "temperature": small_floats,
    "top_p": small_floats,
    "top_k": counts,
    "min_p": small_floats,
    "repetition_penalty": small_floats,
    "presence_penalty": small_floats,
    "frequency_penalty": small_floats,
    "seed": st.integers(min_value=-(2**65), max_value=2**65),
    "stop": texts | st.lists(texts, max_size=3),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "n": counts,
    "ignore_eos": st.booleans(),
    "logprobs": st.booleans(),
    "top_logprobs": counts,
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}, None]),
    "max_tokens": counts,
    "user": texts,
}
tool_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": texts,
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": texts}, optional={"arguments": texts | any_json}),
        },
    ),
    max_size=2,
)
openai_messages = st.lists(
    fields(
        {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "bogus"])},
        {
            "content": texts | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=2),
            "tool_calls": tool_calls,
            "tool_call_id": texts,
            "name": texts,
            "reasoning_content": texts,
        },
    ),
    max_size=3,
)
tools = st.lists(st.just(WEATHER_TOOL) | any_json, max_size=2)
tool_choice = st.sampled_from(["none", "auto", "required", "bogus", {"type": "function", "function": {"name": "x"}}])
CHAT = fields(
    {"model": model_ids, "messages": openai_messages},
    {
        **SAMPLING,
        "max_completion_tokens": counts,
        "tools": tools,
        "tool_choice": tool_choice | st.just({"type": "function", "function": {"name": "get_weather"}}),
        "chat_template_kwargs": st.fixed_dictionaries({}, optional={"enable_thinking": st.booleans()}),
        "reasoning_effort": st.sampled_from(["low", "high", "none", "bogus"]),
    },
).map(_bounded)
COMPLETION = fields(
    {"model": model_ids, "prompt": texts | st.lists(texts, max_size=2) | st.lists(counts, max_size=4)},
    {**SAMPLING, "echo": st.booleans(), "suffix": texts},
).map(_bounded)
anthropic_blocks = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "bogus"])},
        optional={"text": texts, "id": texts, "name": texts, "input": any_json, "tool_use_id": texts, "content": texts},
    ),
    max_size=2,
)
anthropic_messages = st.lists(
    fields({"role": st.sampled_from(["user", "assistant", "system"]), "content": texts | anthropic_blocks}, {}),
    max_size=3,
)
MESSAGES = fields(
    {"model": model_ids, "messages": anthropic_messages, "max_tokens": counts},
    {
        "system": texts | anthropic_blocks,
        "stream": st.booleans(),
        "temperature": small_floats,
        "top_p": small_floats,
        "top_k": counts,
        "stop_sequences": st.lists(texts, max_size=2),
        "tools": st.lists(
            st.fixed_dictionaries({"name": texts, "input_schema": st.just({"type": "object"}) | any_json}), max_size=2
        ),
        "tool_choice": st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool", "none", "bogus"])}),
        "thinking": st.fixed_dictionaries(
            {"type": st.sampled_from(["enabled", "disabled", "bogus"])}, optional={"budget_tokens": counts}
        ),
        "metadata": st.fixed_dictionaries({}, optional={"user_id": texts}),
    },
).map(_bounded)
COUNT_TOKENS = fields({"model": model_ids, "messages": anthropic_messages}, {"system": texts, "tools": tools})
response_input = texts | st.lists(
    fields(
        {"role": st.sampled_from(["user", "assistant", "system", "developer"])},
        {"type": st.sampled_from(["message", "function_call", "function_call_output", "bogus"]), "content": texts},
    ),
    max_size=3,
)
RESPONSES = fields(
    {"model": model_ids, "input": response_input},
    {
        "instructions": texts,
        "stream": st.booleans(),
        "max_output_tokens": counts,
        "temperature": small_floats,
        "top_p": small_floats,
        "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "name": texts}), max_size=2),
        "tool_choice": tool_choice,
        "reasoning": st.fixed_dictionaries({}, optional={"effort": st.sampled_from(["low", "none", "bogus"])}),
        "previous_response_id": texts,
        "text": st.fixed_dictionaries({}, optional={"format": st.fixed_dictionaries({"type": texts})}),
    },
).map(_bounded)
ADMIN = fields({"model": model_ids}, {"node": texts, "wait": st.booleans(), "force": st.booleans()})
LOAD = fields(
    {"model_id": model_ids},
    {"harness": texts, "quant": texts, "tensor_parallel": counts, "devices": st.lists(counts, max_size=2)},
)
UNLOAD = fields({"model_id": model_ids}, {})
TOKENIZE = fields({"model": model_ids}, {"messages": openai_messages, "prompt": texts, "tools": tools})


def _would_restart(body: bytes) -> bool:
    """Whether the neuron would accept this ``/admin/restart`` body (empty, or an object whose
    only key is a number >= 0): the run sends only bodies it must refuse."""
    if not body.strip():
        return True
    try:
        value = json.loads(body)
    except ValueError:
        return False
    if not isinstance(value, dict) or set(value) - {"drain_timeout_secs"}:
        return False
    t = value.get("drain_timeout_secs", 0)
    return isinstance(t, int | float) and not isinstance(t, bool) and t >= 0


RESTART = st.fixed_dictionaries({"drain_timeout_secs": small_floats | any_json})
path_ids = (st.sampled_from(MODELS) | st.text(max_size=30)).map(lambda s: quote(s, safe="/"))

# --- the fleet under test ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(model_root, running_neuron, tmp_path_factory) -> Iterator[dict[str, ServiceProcess]]:
    models = [{"id": m, "min_devices": 0} for m in ("helexa/demo", "test/plain", "test/tools", "test/short")]
    gateway = launch_gateway(
        tmp_path_factory.mktemp("fuzz-gateway"),
        {"real": running_neuron.url},
        models=models,
        aliases={"claude-*": "helexa/demo"},
        extra="[eviction]\nmin_residency_secs = 0\nswap_after_secs = 0.2\nmax_wait_secs = 10\n",
        poll_secs=0.5,
    ).gateway
    try:
        yield {"gateway": gateway, "neuron": running_neuron}
    finally:
        gateway.stop()
        report = os.environ.get("HELEXA_FUZZ_REPORT")
        if report:
            with open(report, "a") as f:
                f.write(json.dumps({"examples_per_route": EXAMPLES, **COUNTS}) + "\n")


def _check(r: httpx.Response, anthropic: bool) -> None:
    COUNTS["requests"] += 1
    COUNTS[f"{r.status_code // 100}xx"] += 1
    assert r.status_code < 500, f"{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text[:500]}"
    if r.status_code >= 400:
        body = r.json()
        if anthropic:
            assert body["type"] == "error" and body["error"]["type"] and body["error"]["message"], body
        else:
            assert body["error"]["type"] and body["error"]["message"], body
    else:
        assert not any(marker in r.content for marker in SERVER_ERRORS), r.text[:500]


def _post(service: ServiceProcess, path: str, body: bytes, *, anthropic: bool = False) -> None:
    headers = {"content-type": "application/json"}
    if anthropic:
        headers["anthropic-version"] = "2023-06-01"
    r = httpx.post(service.url + path, content=body, headers=headers, timeout=60)
    _check(r, anthropic)


def _no_traceback(service: ServiceProcess) -> None:
    log = Path(service.log_path).read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 : log.index("Traceback") + 3000]


GATEWAY_POSTS = [
    ("/v1/chat/completions", CHAT, False),
    ("/v1/completions", COMPLETION, False),
    ("/v1/messages", MESSAGES, True),
    ("/v1/messages/count_tokens", COUNT_TOKENS, True),
    ("/v1/responses", RESPONSES, False),
    ("/v1/responses/input_tokens", RESPONSES, False),
    ("/admin/models/load", ADMIN, False),
    ("/admin/models/unload", ADMIN, False),
]
NEURON_POSTS = [
    ("/v1/chat/completions", CHAT),
    ("/v1/completions", COMPLETION),
    ("/tokenize", TOKENIZE),
    ("/models/load", LOAD),
    ("/models/unload", UNLOAD),
]


@pytest.mark.parametrize(("path", "obj", "anthropic"), GATEWAY_POSTS, ids=[p for p, _, _ in GATEWAY_POSTS])
def test_gateway_posts_never_answer_5xx(fleet, path, obj, anthropic):
    @FUZZ
    @given(body=bodies(obj))
    def run(body: bytes) -> None:
        _post(fleet["gateway"], path, body, anthropic=anthropic)

    run()
    _no_traceback(fleet["gateway"])


@pytest.mark.parametrize(("path", "obj"), NEURON_POSTS, ids=[p for p, _ in NEURON_POSTS])
def test_neuron_posts_never_answer_5xx(fleet, path, obj):
    @FUZZ
    @given(body=bodies(obj))
    def run(body: bytes) -> None:
        _post(fleet["neuron"], path, body)

    run()
    _no_traceback(fleet["neuron"])


def test_neuron_restart_refuses_bad_bodies_without_restarting(fleet):
    @FUZZ
    @given(body=bodies(RESTART).filter(lambda b: not _would_restart(b)))
    def run(body: bytes) -> None:
        _post(fleet["neuron"], "/admin/restart", body)

    run()
    _no_traceback(fleet["neuron"])
    assert httpx.get(fleet["neuron"].url + "/health", timeout=5).status_code == 200


GATEWAY_GETS = ["/v1/models", "/v1/models/{id}", "/health", "/", "/admin/fleet", "/{id}"]
NEURON_GETS = [
    "/discovery",
    "/health",
    "/models",
    "/models/{id}/endpoint",
    "/models/{id}/footprint",
    "/metrics",
    "/version",
    "/{id}",
]


@pytest.mark.parametrize(
    ("service", "template"), [("gateway", t) for t in GATEWAY_GETS] + [("neuron", t) for t in NEURON_GETS]
)
def test_gets_never_answer_5xx(fleet, service, template):
    @FUZZ
    @given(model=path_ids, anthropic=st.booleans(), query=st.dictionaries(st.text(max_size=8), st.text(max_size=8)))
    def run(model: str, anthropic: bool, query: dict[str, str]) -> None:
        headers = {"anthropic-version": "2023-06-01"} if anthropic else {}
        url = fleet[service].url + template.replace("{id}", model)
        r = httpx.get(url, params=query, headers=headers, timeout=30)
        _check(r, anthropic and service == "gateway" and r.request.url.path.startswith("/v1/models"))

    run()
    _no_traceback(fleet[service])


def test_the_run_sent_requests_and_the_fleet_still_serves(fleet):
    assert COUNTS["requests"] >= EXAMPLES and COUNTS["5xx"] == 0
    for model in DEFAULTS[:2]:
        r = httpx.post(
            fleet["gateway"].url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            timeout=60,
        )
        assert r.status_code == 200, r.text
