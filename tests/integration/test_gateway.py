"""The gateway through real processes on loopback: ``cortex serve`` in front of neuron test
doubles (fake_neuron.py beside this file) for fleet scenarios, the openai SDK as the client, and
once in front of a real ``neuron serve`` with the demo model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import anthropic
import httpx
import openai
import pytest
from integration.services import NeuronProcess, free_port, write_config

USER = [{"role": "user", "content": "Hi"}]


def stream_lines(
    url: str, body: dict, out: list[str], headers: dict | None = None, started: threading.Event | None = None
):
    with httpx.Client(timeout=60) as c, c.stream("POST", url + "/v1/chat/completions", json=body) as r:
        out.append(f"status {r.status_code} node {r.headers.get('x-cortex-node')}")
        for line in r.iter_lines():
            if line:
                out.append(line)
                if started is not None:
                    started.set()


# --- catalogue ------------------------------------------------------------------------------


def test_models_merge_what_is_loaded_with_what_the_fleet_could_load(start_fleet):
    fleet = start_fleet(
        {"beast": {"devices": [24000, 24000], "loaded": ["m-loaded"]}, "benjy": {"devices": [12000]}},
        models=[
            {"id": "m-cat"},
            {"id": "m-big", "min_device_vram_mb": 20000},
            {"id": "m-two", "min_devices": 2},
            {"id": "m-three", "min_devices": 3},
            {"id": "m-cpu", "min_devices": 0},
            {"id": "m-pinned", "pinned_on": ["elsewhere"]},
        ],
        aliases={"gpt-x": "m-cat", "gpt-gone": "m-three"},
    )
    with fleet.client() as client:
        listed = {m.id: m.model_dump() for m in client.models.list()}
    assert set(listed) == {"m-loaded", "m-cat", "m-big", "m-two", "m-cpu", "gpt-x"}
    assert listed["m-loaded"]["status"] == "loaded" and listed["m-loaded"]["owned_by"] == "helexa"
    assert listed["m-loaded"]["locations"] == [{"node": "beast", "status": "loaded"}]
    assert listed["m-loaded"]["context_length"] == 4096
    assert listed["m-cat"]["status"] == "available" and listed["m-cat"]["locations"] == []
    assert listed["gpt-x"]["alias_of"] == "m-cat" and listed["gpt-x"]["status"] == "available"
    health = httpx.get(fleet.url + "/health").json()
    assert health == {"status": "ok", "nodes": {"total": 2, "healthy": 2}, "models": {"loaded": 1, "available": 5}}


# --- routing --------------------------------------------------------------------------------


def test_requests_go_to_the_least_busy_replica(start_fleet):
    fleet = start_fleet(
        {
            "a": {"loaded": ["m"], "tokens": 40, "token_delay": 0.05},
            "b": {"loaded": ["m"], "tokens": 40, "token_delay": 0.05},
        }
    )
    first, second = [], []
    ready = [threading.Event(), threading.Event()]
    body = {"model": "m", "messages": USER, "stream": True}
    t1 = threading.Thread(target=stream_lines, args=(fleet.url, body, first, None, ready[0]))
    t1.start()
    assert ready[0].wait(10)
    t2 = threading.Thread(target=stream_lines, args=(fleet.url, body, second, None, ready[1]))
    t2.start()
    assert ready[1].wait(10)
    assert {first[0], second[0]} == {"status 200 node a", "status 200 node b"}  # tie -> a, then the idle b
    t1.join(20)
    t2.join(20)
    assert first[-1] == second[-1] == "data: [DONE]"
    with fleet.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert raw.headers["x-cortex-node"] == "a"  # both idle again: ties go by name
    assert raw.parse().choices[0].message.content == "reply from a"


def test_a_cold_model_loads_once_for_every_concurrent_request(start_fleet):
    fleet = start_fleet({"a": {"load_secs": 1.0}}, models=[{"id": "m-cold", "vram_mb": 1000}])
    results: list = []

    def ask() -> None:
        with fleet.client() as client:
            raw = client.chat.completions.with_raw_response.create(model="m-cold", messages=USER)
            results.append((raw.headers.get("x-cortex-load-ms"), raw.parse().choices[0].message.content))

    threads = [threading.Thread(target=ask) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 5 and all(text == "reply from a" for _, text in results)
    assert all(load_ms is not None and float(load_ms) >= 900 for load_ms, _ in results)
    loads = fleet.stats("a")["loads"]
    assert len(loads) == 1 and loads[0]["model_id"] == "m-cold" and loads[0]["devices"] == [0]
    with fleet.client() as client:  # now warm: no load header
        raw = client.chat.completions.with_raw_response.create(model="m-cold", messages=USER)
    assert "x-cortex-load-ms" not in raw.headers
    fams = fleet.metrics()
    cold = [s for s in fams["cortex_cold_starts"].samples if s.name.endswith("_total")]
    assert sum(s.value for s in cold) == 5
    loads_ok = [s for s in fams["cortex_model_loads"].samples if s.name.endswith("_total")]
    assert [(s.labels["model"], s.labels["result"], s.value) for s in loads_ok] == [("m-cold", "ok", 1.0)]


def test_a_stream_waiting_for_a_cold_load_gets_headers_and_keepalives_at_once(start_fleet):
    fleet = start_fleet({"a": {"load_secs": 1.5}}, models=[{"id": "m-slow"}])
    started = time.monotonic()
    with httpx.Client(timeout=30) as c:
        body = {"model": "m-slow", "messages": USER, "stream": True}
        with c.stream("POST", fleet.url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            assert next(lines) == ": keep-alive"
            assert time.monotonic() - started < 0.5  # long before the load finished
            rest = [line for line in lines if line]
    assert time.monotonic() - started >= 1.4
    assert rest[-1] == "data: [DONE]" and any("a-0" in line for line in rest)


def test_an_alias_reaches_its_model_under_the_models_own_name(start_fleet):
    fleet = start_fleet({"a": {"loaded": ["Qwen/Qwen3-8B"]}}, aliases={"claude-sonnet-4-5": "Qwen/Qwen3-8B"})
    with fleet.client() as client:
        out = client.chat.completions.create(model="claude-sonnet-4-5", messages=USER)
    assert out.choices[0].message.content == "reply from a"
    assert out.model == "Qwen/Qwen3-8B"  # the neuron saw the rewritten body


# --- failures -------------------------------------------------------------------------------


def test_a_neuron_dying_mid_stream_ends_that_stream_cleanly_and_no_other(start_fleet):
    fleet = start_fleet(
        {
            "dies": {"loaded": ["m1"], "tokens": 10, "token_delay": 0.05, "die_after": 3},
            "lives": {"loaded": ["m2"], "tokens": 20, "token_delay": 0.05},
        }
    )
    healthy, broken = [], []
    t = threading.Thread(
        target=stream_lines, args=(fleet.url, {"model": "m2", "messages": USER, "stream": True}, healthy)
    )
    t.start()
    stream_lines(fleet.url, {"model": "m1", "messages": USER, "stream": True}, broken)
    t.join(30)
    assert broken[-1] == "data: [DONE]"
    error = json.loads(broken[-2].removeprefix("data: "))["error"]
    assert "dies" in error["message"] and error["type"] == "upstream_error"
    assert sum("dies-" in line for line in broken) == 3
    assert sum("lives-" in line for line in healthy) == 20 and healthy[-1] == "data: [DONE]"


def test_a_stalled_stream_ends_with_an_error_but_a_slow_live_one_is_never_cut(start_fleet):
    fleet = start_fleet(
        {
            "stalls": {"loaded": ["m1"], "tokens": 4, "token_delay": 0.01, "stall_secs": 4},
            "slow": {"loaded": ["m2"], "tokens": 12, "token_delay": 0.25},  # 3 s in all, never 1 s silent
        },
        gateway={"stall_timeout_secs": 1},
    )
    live, stalled = [], []
    t = threading.Thread(target=stream_lines, args=(fleet.url, {"model": "m2", "messages": USER, "stream": True}, live))
    t.start()
    started = time.monotonic()
    stream_lines(fleet.url, {"model": "m1", "messages": USER, "stream": True}, stalled)
    assert time.monotonic() - started < 3.5  # cut after about a second of silence, not after the 4 s stall
    error = json.loads(stalled[-2].removeprefix("data: "))["error"]
    assert "sent nothing for 1 s" in error["message"] and stalled[-1] == "data: [DONE]"
    t.join(30)
    assert sum("slow-" in line for line in live) == 12 and live[-1] == "data: [DONE]"


def test_a_whole_answer_may_take_longer_than_the_stall_timeout(start_fleet):
    fleet = start_fleet({"a": {"loaded": ["m1"], "tokens": 5, "token_delay": 0.5}}, gateway={"stall_timeout_secs": 1})
    started = time.monotonic()
    r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": "m1", "messages": USER}, timeout=30)
    assert r.status_code == 200, r.text  # 2.5 s of silence while it generates: not a stall
    assert r.json()["choices"][0]["message"]["content"] == "reply from a"
    assert time.monotonic() - started >= 2.5


def test_a_whole_answer_from_a_neuron_that_stops_answering_its_polls_ends_with_502(start_fleet):
    fleet = start_fleet({"a": {"loaded": ["m1"], "tokens": 40, "token_delay": 0.5}})  # 20 s to answer
    answer: list[httpx.Response] = []
    t = threading.Thread(
        target=lambda: answer.append(
            httpx.post(fleet.url + "/v1/chat/completions", json={"model": "m1", "messages": USER}, timeout=60)
        )
    )
    started = time.monotonic()
    t.start()
    deadline = time.monotonic() + 10
    while fleet.stats("a")["requests"] == 0 and time.monotonic() < deadline:  # until it is generating
        time.sleep(0.02)
    fleet.control("a", polls_fail=True)
    t.join(30)
    assert answer and answer[0].status_code == 502, answer
    assert "stopped answering its polls" in answer[0].json()["error"]["message"]
    assert time.monotonic() - started < 10  # three failed polls, not the 20 s generation


def test_a_replica_that_is_gone_before_the_first_byte_is_skipped(start_fleet):
    fleet = start_fleet({"a": {"loaded": ["m"]}, "b": {"loaded": ["m"]}}, poll_secs=30)
    fleet.neurons["a"].stop()  # the gateway still believes in it until its next polls
    with fleet.client() as client:
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(model="m", messages=USER)
            assert raw.headers["x-cortex-node"] == "b" and raw.parse().choices[0].message.content == "reply from b"


def test_garbage_from_a_neuron_is_502_and_a_down_fleet_is_503(start_fleet):
    fleet = start_fleet({"a": {"loaded": ["m"], "garbage": True}})
    r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": "m", "messages": USER})
    assert r.status_code == 502 and "text/html" in r.json()["error"]["message"]
    fleet.neurons["a"].stop()
    fleet.gateway.wait_http("/health", lambda h: h["status"] == "down", 10, what="down")
    r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": "m", "messages": USER})
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert "none of the 1 neurons is reachable" in r.json()["error"]["message"]


def test_a_model_that_fits_nowhere_is_503_with_the_reason(start_fleet):
    fleet = start_fleet(
        {"a": {"load_fail": {"m-huge": 507}}}, models=[{"id": "m-huge"}, {"id": "m-four", "min_devices": 4}]
    )
    for model, needle in (("m-huge", "a: fake failure 507"), ("m-four", "needs 4 GPU(s)")):
        r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": model, "messages": USER})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert needle in r.json()["error"]["message"]
    # refused before any node was chosen, each still counts against its (catalogue) model
    refused = {
        s.labels["model"]: s.value
        for s in fleet.metrics()["cortex_requests"].samples
        if s.name == "cortex_requests_total" and s.labels["status"] == "503"
    }
    assert refused == {"m-huge": 1, "m-four": 1}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b'{"model": "m", "messages": [', 400, None),
        (b'{"messages": []}', 400, "model"),
        (b'{"model": 3, "messages": []}', 400, "model"),
        (b'{"model": "m", "messages": "hi"}', 400, "messages"),
        (b'{"model": "m"}', 400, "messages"),
        (b'{"model": "nope", "messages": []}', 404, "model"),
    ],
)
def test_bad_requests_get_the_openai_envelope(start_fleet, body, status, param):
    fleet = start_fleet({"a": {"loaded": ["m"]}}, poll_secs=5)
    r = httpx.post(fleet.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["message"] and err["type"].endswith("_error") and err["param"] == param


def test_bodies_past_max_body_mb_are_413(start_fleet):
    fleet = start_fleet({"a": {"loaded": ["m"]}}, gateway={"max_body_mb": 0.01})
    small = {"model": "m", "messages": USER}
    assert httpx.post(fleet.url + "/v1/chat/completions", json=small).status_code == 200
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 20000}]}
    r = httpx.post(fleet.url + "/v1/chat/completions", json=big)
    assert r.status_code == 413 and "max_body_mb = 0.01 MB" in r.json()["error"]["message"]


def test_api_and_admin_keys(start_fleet):
    fleet = start_fleet({"a": {"loaded": ["m"]}}, extra='[auth]\napi_keys = ["sk-good"]\nadmin_keys = ["adm"]')
    with fleet.client() as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="m", messages=USER)
    with fleet.client("sk-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="m", messages=USER)
    with fleet.client("sk-good") as client:
        assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == "reply from a"
    assert httpx.get(fleet.url + "/v1/models", headers={"x-api-key": "sk-good"}).status_code == 200
    assert httpx.get(fleet.url + "/admin/fleet").status_code == 401
    assert httpx.get(fleet.url + "/admin/fleet", headers={"authorization": "Bearer sk-good"}).status_code == 403
    assert httpx.get(fleet.url + "/admin/fleet", headers={"authorization": "Bearer adm"}).status_code == 200
    assert httpx.get(fleet.url + "/health").status_code == 200  # health stays open for probes


def test_api_keys_without_admin_keys_also_guard_the_admin_routes(start_fleet):
    fleet = start_fleet({"a": {"loaded": ["m"]}}, extra='[auth]\napi_keys = ["sk-good"]')
    for method, path, body in (("GET", "/admin/fleet", None), ("POST", "/admin/models/load", {"model": "m"})):
        assert httpx.request(method, fleet.url + path, json=body).status_code == 401
        wrong = httpx.request(method, fleet.url + path, json=body, headers={"x-api-key": "sk-bad"})
        assert wrong.status_code == 403
        good = httpx.request(method, fleet.url + path, json=body, headers={"x-api-key": "sk-good"}, timeout=30)
        assert good.status_code == 200, good.text


def test_an_admin_load_of_an_empty_model_id_is_refused_and_loads_go_on(start_fleet):
    fleet = start_fleet({"a": {"loaded": ["m"], "load_secs": 0.1}}, models=[{"id": "m2", "min_devices": 0}])
    for bad in ("", None):
        r = httpx.post(fleet.url + "/admin/models/load", json={"model": bad}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
    r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": "m2", "messages": USER}, timeout=30)
    assert r.status_code == 200 and r.headers["x-cortex-load-ms"]  # the scheduler still loads


# --- metrics and CLI ------------------------------------------------------------------------


def test_metrics_carry_the_contract_series_with_sane_values(start_fleet):
    fleet = start_fleet({"a": {"devices": [24000], "loaded": ["m"], "tokens": 5, "token_delay": 0.02}})
    with fleet.client() as client:
        client.chat.completions.create(model="m", messages=USER)
        list(client.chat.completions.create(model="m", messages=USER, stream=True))
    fams = fleet.metrics()
    for name in (
        "cortex_requests",
        "cortex_request_duration_seconds",
        "cortex_time_to_first_token_seconds",
        "cortex_inter_token_latency_seconds",
        "cortex_tokens_per_second",
        "cortex_prompt_tokens",
        "cortex_completion_tokens",
        "cortex_queue_wait_seconds",
        "cortex_in_flight_requests",
        "cortex_node_up",
        "cortex_device_vram_used_mb",
        "cortex_device_vram_free_mb",
        "cortex_models_loaded",
    ):
        assert name in fams, name

    def value(family: str, suffix: str = "", **labels) -> float:
        return sum(
            s.value
            for s in fams[family].samples
            if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert value("cortex_requests", "_total", model="m", node="a", endpoint="chat", status="200") == 2
    assert value("cortex_completion_tokens", "_total", model="m", node="a") == 10  # 5 + 5 from usage
    assert value("cortex_prompt_tokens", "_total", model="m", node="a") == 14
    assert value("cortex_time_to_first_token_seconds", "_count", model="m") == 1
    ttft = value("cortex_time_to_first_token_seconds", "_sum", model="m")
    assert 0.01 < ttft < 2
    # decode speed and gaps from the neuron's timings (4 decode steps of 20 ms each answer), whole or streamed
    assert value("cortex_tokens_per_second", "_count", model="m") == 2
    assert value("cortex_tokens_per_second", "_sum", model="m") == pytest.approx(100.0)
    assert value("cortex_inter_token_latency_seconds", "_sum", model="m") == pytest.approx(0.04)
    assert value("cortex_node_up", node="a") == 1 and value("cortex_models_loaded", node="a") == 1
    assert value("cortex_device_vram_free_mb", node="a", device="0") == 20000
    assert value("cortex_device_vram_free_bytes", node="a", device="0") == 20000 * 2**20  # base units
    assert value("cortex_host_memory_free_bytes", node="a") == 64000 * 2**20
    # a model no one serves is counted, with no label a client chose
    r = httpx.post(fleet.url + "/v1/messages/count_tokens", json={"model": "client-made-up", "messages": USER})
    assert r.status_code == 404
    labels = {s.labels["model"] for s in fleet.metrics()["cortex_requests"].samples}
    assert "client-made-up" not in labels and "" in labels
    assert value("cortex_in_flight_requests", model="m", node="a") == 0


def test_one_model_is_retrieved_by_id_with_either_sdk(start_fleet):
    fleet = start_fleet({"a": {"loaded": ["org/m"]}}, models=[{"id": "org/m", "min_devices": 0}])
    with fleet.client() as client:
        got = client.models.retrieve("org/m")  # an id with a slash, as HF ids are
        assert got.id == "org/m" and got.model_extra["status"] == "loaded"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("nobody/none")
    with anthropic.Anthropic(base_url=fleet.url, api_key="unused", max_retries=0) as claude:
        info = claude.models.retrieve("org/m")
        assert info.id == "org/m" and info.display_name == "org/m" and info.type == "model"
        with pytest.raises(anthropic.NotFoundError):
            claude.models.retrieve("nobody/none")


def test_the_queue_time_a_client_sees_includes_the_neurons_own_queue(start_fleet):
    fleet = start_fleet({"a": {"loaded": ["m"], "queue_ms": 250}})
    for stream in (False, True):
        r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": "m", "messages": USER, "stream": stream})
        assert r.status_code == 200
        assert 250 <= float(r.headers["x-cortex-queue-ms"]) < 2000, r.headers
    waits = [s for s in fleet.metrics()["cortex_queue_wait_seconds"].samples if s.name.endswith("_sum")]
    assert sum(s.value for s in waits) >= 0.5


def test_cli_status_ps_load_unload(start_fleet, tmp_path):
    fleet = start_fleet({"a": {"loaded": ["m"], "load_secs": 0.5}}, models=[{"id": "m2"}])

    def cortex(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cortex.cli", *args, "--endpoint", fleet.url],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    status = cortex("status")
    assert status.returncode == 0 and "fleet ok: 1/1 neurons up" in status.stdout
    assert "m: loaded  [a (loaded)]" in status.stdout and "m2: available" in status.stdout
    loaded = cortex("load", "m2")
    assert loaded.returncode == 0, loaded.stderr
    assert "m2 loaded on a in" in loaded.stdout
    ps = cortex("ps")
    assert ps.returncode == 0 and ps.stdout.splitlines()[0].split() == [
        "MODEL",
        "NODE",
        "STATUS",
        "MEMORY",
        "QUANT",
        "PRIORITY",
        "IN-FLIGHT",
        "QUEUED",
        "IDLE",
    ]
    assert any(line.split()[:3] == ["m2", "a", "loaded"] for line in ps.stdout.splitlines())
    unloaded = cortex("unload", "m2")
    assert unloaded.returncode == 0 and "m2 unloaded from a" in unloaded.stdout
    assert fleet.stats("a")["unloads"] == ["m2"]
    missing = cortex("unload", "m2")
    assert missing.returncode == 1 and "404" in missing.stderr
    version = cortex("--version")
    assert version.returncode == 0 and version.stdout.startswith("cortex (helexa) ")


def test_cli_load_of_a_model_that_cannot_load_ends_at_once_with_the_reason(start_fleet, tmp_path):
    fleet = start_fleet({"a": {"loaded": ["m"], "load_fail": {"bad": 404}}}, models=[{"id": "bad"}])
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "cortex.cli", "load", "bad", "--endpoint", fleet.url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 1, out
    assert "error: loading bad failed: 404:" in out.stderr and "neuron a" in out.stderr, out.stderr
    assert time.monotonic() - started < 15  # not spinning at 0 % until some timeout
    log = fleet.gateway.log_path.read_text()
    assert "loading bad on a failed (404)" in log and "fits nowhere" not in log


def test_health_is_503_and_cortex_status_exits_1_when_the_fleet_is_down(start_fleet, tmp_path):
    fleet = start_fleet({}, endpoints={"gone": f"http://127.0.0.1:{free_port()}"}, want_healthy=0)
    r = httpx.get(fleet.url + "/health", timeout=5)
    assert r.status_code == 503 and r.json()["status"] == "down" and r.json()["nodes"] == {"total": 1, "healthy": 0}
    out = subprocess.run(
        [sys.executable, "-m", "cortex.cli", "status", "--endpoint", fleet.url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 1 and "fleet down: 0/1 neurons up" in out.stdout, out
    fleet.gateway.wait_log("neuron gone does not answer")


def test_cortex_serve_reports_config_errors_in_one_line(tmp_path):
    cfg = tmp_path / "cortex.toml"
    cfg.write_text('[gateway]\nlisten = "nonsense"\n')
    out = subprocess.run(
        [sys.executable, "-m", "cortex.cli", "serve", "--config", str(cfg)], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip() == f"error: {cfg}: gateway.listen: expected HOST:PORT (e.g. 0.0.0.0:31313), got 'nonsense'"
    )
    cfg.write_text('[[nodes]]\nname = "x"\nendpoint = "ftp://x"\n')
    out = subprocess.run(
        [sys.executable, "-m", "cortex.cli", "serve", "--config", str(cfg)], capture_output=True, text=True
    )
    assert out.returncode == 2 and "neurons[0].endpoint: expected an http:// or https:// URL" in out.stderr


# --- end to end -----------------------------------------------------------------------------


def test_end_to_end_through_a_real_neuron(model_root, start_fleet, tmp_path):
    port = free_port()
    cfg = write_config(tmp_path / "neuron.toml", port, model_root, ["helexa/demo"])
    neuron = NeuronProcess(cfg, port, tmp_path / "real-neuron.log")
    try:
        neuron.wait_ready(["helexa/demo"])
        fleet = start_fleet({}, models=[{"id": "test/plain", "min_devices": 0}], endpoints={"real": neuron.url})
        with fleet.client() as client:
            listed = {m.id: m.model_dump()["status"] for m in client.models.list()}
            assert listed == {"helexa/demo": "loaded", "test/plain": "available"}
            out = client.chat.completions.create(model="helexa/demo", messages=USER, max_tokens=5, seed=1)
            assert out.choices[0].finish_reason in ("length", "stop") and out.usage.completion_tokens <= 5
            streamed = list(
                client.chat.completions.create(model="helexa/demo", messages=USER, max_tokens=5, stream=True)
            )
            assert streamed[-1].choices[0].finish_reason in ("length", "stop")
            cold = client.chat.completions.with_raw_response.create(model="test/plain", messages=USER)
            assert cold.headers["x-cortex-node"] == "real" and float(cold.headers["x-cortex-load-ms"]) > 0
            assert cold.parse().choices[0].message.content == "Hello there! How can I help?"
    finally:
        neuron.stop()
