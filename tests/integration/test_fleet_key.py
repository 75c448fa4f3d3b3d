"""The fleet key: a neuron with ``api_key`` set answers every route but ``/health`` and
``/version`` only to a caller presenting it; a gateway with ``[[neurons]] api_key`` presents it on
every call (polls, loads, inference), and one without it sees the neuron refuse and says why."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from integration.services import NeuronProcess, free_port, write_config

KEY = "fleet-secret-1"
ROUTES = [  # (method, path, body): every route of the neuron API that needs the key
    ("GET", "/discovery", None),
    ("GET", "/models", None),
    ("GET", "/metrics", None),
    ("GET", "/models/helexa/demo/endpoint", None),
    ("GET", "/models/helexa/demo/footprint", None),
    ("POST", "/models/load", {"model_id": "helexa/demo"}),
    ("POST", "/models/unload", {"model_id": "nobody/none"}),
    ("POST", "/tokenize", {"model": "helexa/demo", "prompt": "hi"}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "helexa/demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    ),
    ("POST", "/v1/completions", {"model": "helexa/demo", "prompt": "hi", "max_tokens": 2}),
    ("POST", "/admin/restart", {"drain_timeout_secs": -1}),  # refused as a bad value once past the key
]


@pytest.fixture(scope="module")
def keyed_neuron(model_root, tmp_path_factory) -> Iterator[NeuronProcess]:
    work = tmp_path_factory.mktemp("keyed-neuron")
    port = free_port()
    cfg = write_config(work / "neuron.toml", port, model_root, ["helexa/demo"], top={"api_key": KEY})
    server = NeuronProcess(cfg, port, work / "neuron.log")
    try:
        server.wait_ready(["helexa/demo"])  # /health answers without the key
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_but_health_and_version_needs_the_key(keyed_neuron, method, path, body):
    url = keyed_neuron.url + path
    missing = httpx.request(method, url, json=body, timeout=30)
    assert missing.status_code == 401, missing.text
    assert "fleet key" in missing.json()["error"]["message"]
    wrong = httpx.request(method, url, json=body, headers={"authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 403, wrong.text
    right = httpx.request(method, url, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=30)
    assert right.status_code not in (401, 403), right.text
    assert right.status_code < 500, right.text
    if path == "/admin/restart":
        assert right.status_code == 400 and right.json()["error"]["param"] == "drain_timeout_secs"
    also = httpx.request(method, url, json=body, headers={"x-api-key": KEY}, timeout=30)
    assert also.status_code == right.status_code


def test_health_and_version_answer_without_the_key(keyed_neuron):
    for path in ("/health", "/version"):
        r = httpx.get(keyed_neuron.url + path, timeout=10)
        assert r.status_code == 200, r.text
    assert httpx.get(keyed_neuron.url + "/health", timeout=10).json()["models"]["helexa/demo"]["status"] == "loaded"


def test_a_gateway_with_the_key_serves_through_the_keyed_neuron(keyed_neuron, start_fleet):
    fleet = start_fleet({}, endpoints={"keyed": keyed_neuron.url}, neuron_keys={"keyed": KEY})
    with fleet.client() as client:
        _chat_through(client)


def _chat_through(client: openai.OpenAI) -> None:
    assert "helexa/demo" in {m.id for m in client.models.list().data}
    out = client.chat.completions.create(
        model="helexa/demo", messages=[{"role": "user", "content": "Hello"}], max_tokens=3
    )
    assert out.usage.completion_tokens >= 1
    stream = client.chat.completions.create(
        model="helexa/demo", messages=[{"role": "user", "content": "Hello"}], max_tokens=3, stream=True
    )
    assert sum(1 for c in stream if c.choices and c.choices[0].delta.content is not None) >= 1


def test_a_gateway_without_the_key_sees_the_neuron_refuse_and_says_why(keyed_neuron, start_fleet):
    fleet = start_fleet({}, endpoints={"keyed": keyed_neuron.url}, want_healthy=0)
    with fleet.client() as client, pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="helexa/demo", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code in (404, 503)  # never the neuron's 401 passed on as the client's
    health = httpx.get(fleet.url + "/health", timeout=5)
    assert health.json()["nodes"] == {"total": 1, "healthy": 0}
    fleet.gateway.wait_log("refused the gateway's key")
