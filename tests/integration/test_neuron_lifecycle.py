"""What the gateway's placement and eviction ask of a real ``neuron serve``: a cap on the memory of
CPU-resident models, footprints read from checkpoint headers, and a clean in-place restart that
drains, unloads, re-executes (same PID) and loads the same models again."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from integration.services import NeuronProcess, free_port

from neuron.demo import demo_template, demo_text, qwen3_config, random_weights, train_tokenizer, write_model_dir
from neuron.loading.safetensors import Checkpoint

MIB = 2**20
USER = [{"role": "user", "content": "Hi there"}]


def neuron_toml(path: Path, port: int, roots: list[Path], defaults: list[str], **keys) -> Path:
    lines = [f"port = {port}", 'host = "127.0.0.1"', f"model_roots = {json.dumps([str(r) for r in roots])}"]
    lines += ["allow_download = false", 'cpu_dtype = "float32"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    for model_id in defaults:
        lines += ["[[default_models]]", f'model_id = "{model_id}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(predicate, secs: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:  # between two process images nobody listens
            value = None
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def model_table(http: httpx.Client) -> dict[str, dict]:
    return {m["id"]: m for m in http.get("/models").json()}


# --- a model big enough to measure in MiB, and a neuron with a CPU memory cap ---------------


@pytest.fixture(scope="module")
def wide_root(tmp_path_factory) -> Path:
    """test/wide: a Qwen3 of about 22 MiB in float32 (MiB rounding stays within a few percent),
    and test/wide2, a copy of it."""
    root = tmp_path_factory.mktemp("wide")
    cfg = qwen3_config(8192, hidden_size=256, intermediate_size=768, head_dim=64, tie_word_embeddings=False)
    write_model_dir(
        root / "test" / "wide", train_tokenizer(demo_text()), cfg, random_weights(cfg), template=demo_template()
    )
    shutil.copytree(root / "test" / "wide", root / "test" / "wide2")
    return root


@pytest.fixture(scope="module")
def wide_bytes(wide_root) -> int:
    return Checkpoint(wide_root / "test" / "wide").numel() * 4


@pytest.fixture(scope="module")
def capped(model_root, wide_root, wide_bytes, tmp_path_factory) -> Iterator[tuple[httpx.Client, int]]:
    """A CPU neuron whose cap holds one wide model but not two; no default models."""
    work = tmp_path_factory.mktemp("capped")
    cap_mb = wide_bytes * 3 // 2 // MIB
    port = free_port()
    cfg = neuron_toml(work / "neuron.toml", port, [model_root, wide_root], [], device="cpu", cpu_memory_mb=cap_mb)
    server = NeuronProcess(cfg, port, work / "neuron.log")
    try:
        server.wait_ready([])
        with httpx.Client(base_url=server.url, timeout=60) as http:
            yield http, cap_mb
    finally:
        server.stop()


def test_footprint_matches_the_memory_a_cpu_load_measures(capped, wide_bytes):
    http, _ = capped
    r = http.get("/models/test%2Fwide/footprint")
    assert r.status_code == 200, r.text
    fp = r.json()
    assert fp == {"model_id": "test/wide", "cpu_mb": -(-wide_bytes // MIB), "gpu_mb": -(-wide_bytes // 2 // MIB)}
    assert http.get("/models/test/wide/footprint").json() == fp  # the id's slash may come unescaped too
    assert "test/wide" not in http.get("/health").json()["models"]  # reading a footprint loads nothing
    assert http.post("/models/load", json={"model_id": "test/wide", "devices": []}).status_code == 200
    try:
        measured = model_table(http)["test/wide"]["vram_used_mb"]
        assert abs(fp["cpu_mb"] - measured) <= 0.1 * measured, (fp, measured)
    finally:
        assert http.post("/models/unload", json={"model_id": "test/wide"}).status_code == 200


def test_quantized_loads_take_what_their_footprint_says_and_two_fit_where_one_dense_does(capped, wide_bytes):
    """The cap holds one float32 copy of test/wide, not two; quantized in situ to q8_0 (8.5 bits of 32)
    both copies fit, each taking what its footprint said."""
    http, cap_mb = capped
    fp = http.get("/models/test%2Fwide/footprint", params={"quant": "q8_0"}).json()
    assert fp["cpu_mb"] < wide_bytes // MIB // 3
    loaded = []
    try:
        for model in ("test/wide", "test/wide2"):
            r = http.post("/models/load", json={"model_id": model, "devices": [], "quant": "q8_0"})
            assert r.status_code == 200, r.text
            loaded.append(model)
        table = model_table(http)
        for model in loaded:
            assert table[model]["quant"] == "q8_0"
            measured = table[model]["vram_used_mb"]  # the weights and the KV pool: 25 % of what was left
            assert fp["cpu_mb"] - 1 <= measured <= fp["cpu_mb"] + cap_mb // 4 + 1, (fp, measured)
        assert sum(table[m]["vram_used_mb"] for m in loaded) <= cap_mb
    finally:
        for model in loaded:
            assert http.post("/models/unload", json={"model_id": model}).status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "needle"),
    [
        ("/models/test%2Fnowhere/footprint", 404, "'test/nowhere'"),
        ("/models/nowhere/footprint", 404, "'nowhere'"),
        ("/models/..%2Fetc/footprint", 400, "not a valid id"),
        ("/models/a/b/c/footprint", 400, "not a valid id"),
        ("/models/test%2Fwide/size", 404, "no route"),
    ],
)
def test_footprint_of_a_missing_model_is_404_and_of_a_bad_id_400(capped, path, status, needle):
    http, _ = capped
    r = http.get(path)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_cpu_memory_mb_caps_what_health_reports_and_what_a_cpu_load_may_take(capped):
    http, cap_mb = capped
    assert http.get("/health").json()["memory_free_mb"] == cap_mb  # the host has more than the cap
    assert http.post("/models/load", json={"model_id": "test/wide", "devices": []}).status_code == 200
    used = model_table(http)["test/wide"]["vram_used_mb"]
    free = http.get("/health").json()["memory_free_mb"]
    assert free in (cap_mb - used - 1, cap_mb - used)  # a started MiB counts as taken
    refused = http.post("/models/load", json={"model_id": "test/wide2", "devices": []})
    assert refused.status_code == 507, refused.text
    assert refused.json()["error"]["code"] == "does_not_fit" and f"{free} MiB are free" in refused.text
    assert http.post("/models/unload", json={"model_id": "test/wide"}).status_code == 200
    assert http.get("/health").json()["memory_free_mb"] == cap_mb
    assert http.post("/models/load", json={"model_id": "test/wide2", "devices": []}).status_code == 200
    assert http.post("/models/unload", json={"model_id": "test/wide2"}).status_code == 200


# --- restart ----------------------------------------------------------------------------------

DEFAULTS = ["helexa/demo", "test/plain"]


@pytest.fixture(scope="module")
def restarting(model_root, tmp_path_factory) -> Iterator[NeuronProcess]:
    work = tmp_path_factory.mktemp("restarting")
    port = free_port()
    server = NeuronProcess(neuron_toml(work / "neuron.toml", port, [model_root], DEFAULTS), port, work / "neuron.log")
    try:
        server.wait_ready(DEFAULTS)
        yield server
    finally:
        server.stop()


def wait_restarted(server: NeuronProcess, http: httpx.Client, asked_at: float, models: list[str]) -> None:
    """Until a new process image answers (its uptime began after the restart was asked for) with
    ``models`` loaded, the process keeping its PID throughout."""

    def back() -> bool:
        assert server.proc.poll() is None, f"the neuron exited:\n{server.log_tail()}"
        h = http.get("/health").json()
        if h["uptime_secs"] >= time.monotonic() - asked_at:
            return False  # still the old image
        states = {m: h["models"].get(m, {}).get("status") for m in models}
        assert "failed" not in states.values(), f"{states}\n{server.log_tail()}"
        return all(s == "loaded" for s in states.values())

    wait_for(back, what=f"the neuron back with {models}")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"drain_timeout_secs": -1}, "drain_timeout_secs"),
        ({"drain_timeout_secs": "soon"}, "drain_timeout_secs"),
        ({"drain_secs": 5}, "drain_secs"),
    ],
)
def test_a_bad_restart_body_is_refused_and_nothing_restarts(restarting, body, needle):
    with httpx.Client(base_url=restarting.url, timeout=60) as http:
        r = http.post("/admin/restart", json=body)
        assert r.status_code == 400 and needle in r.json()["error"]["message"]
        ok = http.post("/v1/chat/completions", json={"model": "test/plain", "messages": USER})
        assert ok.status_code == 200


def test_restart_drains_the_stream_then_comes_back_in_the_same_process_with_its_models(restarting):
    with httpx.Client(base_url=restarting.url, timeout=60) as http:
        assert http.post("/models/load", json={"model_id": "test/extra", "devices": []}).status_code == 200
        before = {m: info["devices"] for m, info in model_table(http).items()}
        assert set(before) == {*DEFAULTS, "test/extra"}
        body = {"model": "helexa/demo", "messages": USER, "max_tokens": 500, "ignore_eos": True, "stream": True}
        with (
            httpx.Client(base_url=restarting.url, timeout=60) as streamer,
            streamer.stream("POST", "/v1/chat/completions", json=body) as stream,
        ):
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")  # generating
            asked_at = time.monotonic()
            r = http.post("/admin/restart")
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "restarting" and sorted(r.json()["models"]) == sorted(before)
            again = http.post("/admin/restart", json={"drain_timeout_secs": 5})
            assert again.status_code == 409 and again.json()["error"]["code"] == "neuron_restarting"
            turned_away = http.post("/v1/chat/completions", json={"model": "test/plain", "messages": USER})
            assert turned_away.status_code == 503 and int(turned_away.headers["retry-after"]) >= 1
            assert turned_away.json()["error"]["code"] == "neuron_restarting"
            legacy = http.post("/v1/completions", json={"model": "helexa/demo", "prompt": "x", "max_tokens": 2})
            assert legacy.status_code == 503 and legacy.json()["error"]["code"] == "neuron_restarting"
            load = http.post("/models/load", json={"model_id": "test/think"})
            assert load.status_code == 503 and load.json()["error"]["code"] == "neuron_restarting"
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"  # the stream in flight finished normally
        chunks = [json.loads(line.removeprefix("data: ")) for line in rest[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"]["completion_tokens"] == 500
        wait_restarted(restarting, http, asked_at, list(before))
        after = {m: info["devices"] for m, info in model_table(http).items()}
        assert after == before  # the same models, on the same devices, and no others
        ok = http.post("/v1/chat/completions", json={"model": "test/extra", "messages": USER})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "Hello there! How can I help?"
        assert http.post("/models/unload", json={"model_id": "test/extra"}).status_code == 200


def test_restart_ends_a_stream_still_running_past_its_drain_timeout_with_an_error_event(restarting):
    with httpx.Client(base_url=restarting.url, timeout=60) as http:
        body = {"model": "helexa/demo", "messages": USER, "max_tokens": 4000, "ignore_eos": True, "stream": True}
        whole = {"model": "test/plain", "prompt": "x", "max_tokens": 4000, "ignore_eos": True}
        answers: list[httpx.Response] = []
        with (
            httpx.Client(base_url=restarting.url, timeout=60) as streamer,
            streamer.stream("POST", "/v1/chat/completions", json=body) as stream,
        ):
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
            waiting = threading.Thread(
                target=lambda: answers.append(httpx.post(restarting.url + "/v1/completions", json=whole, timeout=60))
            )
            waiting.start()
            wait_for(lambda: http.get("/health").json()["models"]["test/plain"]["in_flight"] == 1, what="its start")
            asked_at = time.monotonic()
            r = http.post("/admin/restart", json={"drain_timeout_secs": 0.2})
            assert r.status_code == 202 and sorted(r.json()["models"]) == sorted(DEFAULTS)
            received = [line for line in lines if line]
        waiting.join(30)
        assert received[-1] == "data: [DONE]"  # the stream ends as a stream, saying why
        error = json.loads(received[-2].removeprefix("data: "))["error"]
        assert error["code"] == "neuron_restarting" and "send the request again" in error["message"]
        assert answers and answers[0].status_code == 503, answers  # the whole answer: a 503 to retry
        assert answers[0].json()["error"]["code"] == "neuron_restarting" and int(answers[0].headers["retry-after"]) >= 1
        wait_restarted(restarting, http, asked_at, DEFAULTS)
        assert set(model_table(http)) == set(DEFAULTS)
