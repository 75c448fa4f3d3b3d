"""What Prometheus would scrape, from real processes: a ``neuron serve`` with a fleet key and a
``cortex serve`` in front of it, after real completions through the openai SDK (a streamed one,
a whole one and one that waits for a cold load). Both scrapes pass ``promtool check metrics``,
the neuron's only with the key, and carry samples of the series the dashboard reads."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from integration.conftest import launch_gateway
from integration.services import FleetUnderTest, NeuronProcess, free_port, write_config
from prometheus_client.parser import text_string_to_metric_families

KEY = "monitoring-fleet-key"
USER = [{"role": "user", "content": "Hi"}]
# promtool's lint of the contract's own names (contracts §5 keeps the _mb gauges beside the
# _bytes ones): the only findings the gateway's scrape may have, once a neuron reports a GPU
CONTRACT_LINT = {
    "cortex_device_vram_free_mb metric names should not contain abbreviated units",
    "cortex_device_vram_used_mb metric names should not contain abbreviated units",
}


@pytest.fixture(scope="module")
def fleet(model_root, tmp_path_factory) -> Iterator[FleetUnderTest]:
    """A gateway (neuron "beast", the fleet key) with the demo model loaded and test/plain in its
    catalogue only, after three completions."""
    work = tmp_path_factory.mktemp("monitoring")
    port = free_port()
    cfg = write_config(work / "neuron.toml", port, model_root, ["helexa/demo"], top={"api_key": KEY})
    neuron = NeuronProcess(cfg, port, work / "neuron.log")
    try:
        neuron.wait_ready(["helexa/demo"])
        under_test = launch_gateway(
            work,
            {"beast": neuron.url},
            models=[{"id": "helexa/demo", "min_devices": 0}, {"id": "test/plain", "min_devices": 0}],
            neuron_keys={"beast": KEY},
        )
        under_test.neurons = {"beast": neuron}
        try:
            with under_test.client() as client:
                stream = client.chat.completions.create(
                    model="helexa/demo",
                    messages=USER,
                    max_tokens=5,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = list(stream)
                assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
                whole = client.chat.completions.create(model="helexa/demo", messages=USER, max_tokens=5)
                assert whole.usage.completion_tokens >= 1
                cold = client.chat.completions.with_raw_response.create(model="test/plain", messages=USER)
                assert cold.headers["x-cortex-node"] == "beast" and "x-cortex-load-ms" in cold.headers
                assert cold.parse().choices[0].message.content == "Hello there! How can I help?"
            yield under_test
        finally:
            under_test.gateway.stop()
    finally:
        neuron.stop()


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian/Ubuntu: apt install prometheus)")
    return path


def _lint(text: str) -> tuple[int, set[str]]:
    out = subprocess.run(
        [_promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    return out.returncode, {line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()}


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (fails when there is none)."""
    matching = [v for lab, v in samples.get(name, []) if labels.items() <= lab.items()]
    assert matching, f"no sample {name}{labels}; have {sorted(samples)}"
    return sum(matching)


def test_the_gateway_scrape_passes_promtool_but_for_the_contract_mb_names(fleet):
    text = httpx.get(fleet.metrics_url, timeout=5).text
    rc, findings = _lint(text)
    # the _mb gauges have samples only for a neuron with GPUs (none here: the lint is clean)
    expected = CONTRACT_LINT if "cortex_device_vram_used_mb" in _samples(text) else set()
    assert findings == expected
    assert (rc == 0) == (not expected), rc


def test_the_neuron_scrape_needs_the_fleet_key_and_passes_promtool(fleet):
    url = fleet.neurons["beast"].url + "/metrics"
    assert httpx.get(url, timeout=5).status_code == 401  # as prometheus.yml's comment says
    scrape = httpx.get(url, headers={"authorization": f"Bearer {KEY}"}, timeout=5)
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    rc, findings = _lint(scrape.text)
    assert (rc, findings) == (0, set())


def test_the_gateway_scrape_carries_the_series_the_dashboard_reads(fleet):
    s = _samples(httpx.get(fleet.metrics_url, timeout=5).text)
    demo = {"model": "helexa/demo", "node": "beast"}
    assert _value(s, "cortex_requests_total", **demo, endpoint="chat", status="200") == 2
    assert _value(s, "cortex_requests_total", model="test/plain", node="beast", status="200") == 1
    assert _value(s, "cortex_request_duration_seconds_count", **demo, endpoint="chat") == 2
    assert _value(s, "cortex_time_to_first_token_seconds_count", **demo) == 1  # the streamed one
    assert _value(s, "cortex_time_to_first_token_seconds_bucket", **demo, le="+Inf") == 1
    assert _value(s, "cortex_prompt_tokens_total", **demo) > 0
    assert 2 <= _value(s, "cortex_completion_tokens_total", **demo) <= 10
    assert _value(s, "cortex_tokens_per_second_count", **demo) == 2
    assert _value(s, "cortex_tokens_per_second_sum", **demo) > 0
    assert _value(s, "cortex_inter_token_latency_seconds_count", **demo) == 2
    assert _value(s, "cortex_queue_wait_seconds_count", model="helexa/demo") == 2
    assert _value(s, "cortex_cold_starts_total", model="test/plain", node="beast") == 1
    assert _value(s, "cortex_model_loads_total", model="test/plain", node="beast", result="ok") == 1
    assert _value(s, "cortex_model_load_duration_seconds_count", model="test/plain", node="beast") == 1
    assert _value(s, "cortex_in_flight_requests", **demo) == 0
    assert _value(s, "cortex_node_up", node="beast") == 1
    assert _value(s, "cortex_models_loaded", node="beast") == 2
    assert _value(s, "cortex_host_memory_free_bytes", node="beast") > 0


def test_the_neuron_scrape_carries_the_series_the_dashboard_reads(fleet):
    text = httpx.get(fleet.neurons["beast"].url + "/metrics", headers={"authorization": f"Bearer {KEY}"}).text
    s = _samples(text)
    demo = {"model": "helexa/demo"}
    assert _value(s, "neuron_requests_total", **demo, endpoint="chat") == 2
    assert _value(s, "neuron_requests_finished_total", **demo) == 2
    assert _value(s, "neuron_prompt_tokens_total", **demo) > 0
    assert _value(s, "neuron_completion_tokens_total", **demo) >= 2
    assert _value(s, "neuron_model_load_seconds_count", model="test/plain", result="ok") == 1
    assert _value(s, "neuron_decode_tokens_per_second", **demo) > 0
    assert _value(s, "neuron_requests_in_flight", **demo) == 0
    assert _value(s, "neuron_requests_queued", **demo) == 0
    assert _value(s, "neuron_model_memory_bytes", **demo) > 0
    assert _value(s, "neuron_kv_cache_capacity_tokens", **demo) > 0
    assert _value(s, "neuron_prefix_cache_queried_tokens_total", **demo) > 0
    assert _value(s, "neuron_host_memory_free_bytes") > 0
