"""Inputs that fuzzing found answered with a 500, each now a 400 in the client's dialect, through
real processes: JSON nested thousands deep on every route that reads a body (gateway and neuron),
model ids longer than a file name may be, prompts too long for the context by their size alone
(refused before tokenizing), and sampling values at their bounds."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from integration.services import FleetUnderTest

# deep inside a field no route reads, so every decoder meets the nesting before any field check
DEEP = b'{"model": "helexa/demo", "x": ' + b"[" * 20000 + b"]" * 20000 + b', "messages": [], "prompt": "a"}'
GATEWAY_POSTS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/v1/responses/input_tokens",
    "/admin/models/load",
    "/admin/models/unload",
]
NEURON_POSTS = ["/v1/chat/completions", "/v1/completions", "/tokenize", "/models/load", "/models/unload"]
LONG_ID = "org/" + "m" * 300


def _names_the_nesting(path: str, message: str) -> bool:
    if "/models/" in path:  # strict bodies: the unknown field is refused before its value is read
        return "unknown field" in message
    return "nested too deeply" in message


@pytest.fixture(scope="module")
def http(running_neuron) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running_neuron.url, timeout=60) as c:
        yield c


@pytest.fixture
def real_fleet(running_neuron, start_fleet) -> FleetUnderTest:
    return start_fleet({}, endpoints={"real": running_neuron.url}, models=[{"id": "test/short", "min_devices": 0}])


@pytest.mark.parametrize("path", GATEWAY_POSTS)
def test_json_nested_thousands_deep_is_a_400_in_the_gateways_dialect(start_fleet, path):
    fleet = start_fleet({"a": {"loaded": ["helexa/demo"]}})
    r = httpx.post(fleet.url + path, content=DEEP, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    body = r.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    else:
        assert body["error"]["type"] == "invalid_request_error"
    assert _names_the_nesting(path, body["error"]["message"])
    assert httpx.get(fleet.url + "/health", timeout=5).status_code == 200  # still serving


@pytest.mark.parametrize("path", NEURON_POSTS)
def test_json_nested_thousands_deep_is_a_400_on_the_neuron(http, path):
    r = http.post(path, content=DEEP, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert _names_the_nesting(path, r.json()["error"]["message"])


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/models/load", {"model_id": LONG_ID}),
        ("POST", "/tokenize", {"model": LONG_ID, "prompt": "hi"}),
        ("GET", f"/models/{LONG_ID}/footprint", None),
    ],
)
def test_a_model_id_longer_than_a_file_name_may_be_is_a_400_naming_the_limit(http, method, path, body):
    r = http.request(method, path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "model_id" and "at most 96 characters" in err["message"] and "has 300" in err["message"]


def test_a_model_id_at_the_limit_is_looked_up_and_simply_not_found(http):
    r = http.post("/models/load", json={"model_id": "org/" + "m" * 96})
    assert r.status_code == 404, r.text


def _too_long_for(http: httpx.Client, model: str) -> str:
    context = http.post("/tokenize", json={"model": model, "prompt": "x"}).json()["max_context"]
    return "a " * (context * 200)  # far more characters than `context` tokens can stand for


def test_a_prompt_too_long_by_its_size_is_refused_before_tokenizing(http):
    prompt = _too_long_for(http, "test/short")
    started = time.monotonic()
    for path, body in (
        ("/v1/completions", {"model": "test/short", "prompt": prompt, "max_tokens": 1}),
        ("/v1/chat/completions", {"model": "test/short", "messages": [{"role": "user", "content": prompt}]}),
        ("/tokenize", {"model": "test/short", "prompt": prompt}),
    ):
        r = http.post(path, json=body)
        assert r.status_code == 400, (path, r.text)
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and "characters" in err["message"], err
    assert time.monotonic() - started < 10  # three refusals, no tokenizing of 12 800 words each


def test_count_tokens_of_a_huge_prompt_is_a_400_in_the_anthropic_envelope(http, real_fleet):
    prompt = _too_long_for(http, "test/short")
    r = httpx.post(
        real_fleet.url + "/v1/messages/count_tokens",
        json={"model": "test/short", "messages": [{"role": "user", "content": prompt}]},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["type"] == "error" and "context" in body["error"]["message"]


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 1e-30},
        {"temperature": 2.0, "top_p": 1e-30},
        {"temperature": 0.5, "min_p": 1.0},
        {"temperature": 1.0, "repetition_penalty": 1e-300},
        {"temperature": 1.0, "repetition_penalty": 10.0, "presence_penalty": 2.0, "frequency_penalty": -2.0},
        {"temperature": 2.0, "top_k": 1, "top_p": 1e-9, "min_p": 1.0},
    ],
)
def test_sampling_values_at_their_bounds_still_generate(http, sampling):
    body = {"model": "helexa/demo", "prompt": "Hello", "max_tokens": 4, "seed": 7, **sampling}
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("field", ["temperature", "top_p", "min_p", "presence_penalty", "repetition_penalty"])
def test_a_sampling_value_of_infinity_is_a_400_naming_it(http, field):
    body = b'{"model": "helexa/demo", "prompt": "Hi", "max_tokens": 1, "%s": 1e999}' % field.encode()
    r = http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
