"""The gateway's Prometheus metrics (contracts §5) on a registry of its own, with buckets chosen
per quantity, fleet gauges read at scrape time, served on ``gateway.metrics_listen`` by a
listener on the gateway's own event loop (so a scrape reads fleet state between its changes).
Label values come from the fleet and the catalogue only, never from a client. Memory is in bytes
(``_bytes``); the contract's ``_mb`` gauges stay beside them."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cortex.fleet.state import Fleet

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1)
TPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)
LOAD_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)
MIB = 2**20


class _FleetGauges(Collector):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("cortex_node_up", "1 when the neuron answers its polls", labels=["node"])
        nd = ["node", "device"]
        used = GaugeMetricFamily("cortex_device_vram_used_bytes", "Device memory in use", labels=nd)
        free = GaugeMetricFamily("cortex_device_vram_free_bytes", "Device memory free", labels=nd)
        # the contract's names (contracts §5), kept beside the base-unit ones
        used_mb = GaugeMetricFamily("cortex_device_vram_used_mb", "Device memory in use (MiB; see _bytes)", labels=nd)
        free_mb = GaugeMetricFamily("cortex_device_vram_free_mb", "Device memory free (MiB; see _bytes)", labels=nd)
        host = GaugeMetricFamily(
            "cortex_host_memory_free_bytes", "Host memory free for CPU models on the neuron", labels=["node"]
        )
        loaded = GaugeMetricFamily("cortex_models_loaded", "Models resident on the neuron", labels=["node"])
        for node in self.fleet.nodes.values():  # on the event loop, as everything that changes them
            up.add_metric([node.name], 1.0 if node.up else 0.0)
            loaded.add_metric([node.name], sum(1 for m in node.models.values() if m.status == "loaded"))
            if node.health is None:
                continue
            host.add_metric([node.name], node.health.memory_free_mb * MIB)
            for d in node.health.devices:
                labels = [node.name, str(d.index)]
                used.add_metric(labels, d.vram_used_mb * MIB)
                free.add_metric(labels, d.vram_free_mb * MIB)
                used_mb.add_metric(labels, d.vram_used_mb)
                free_mb.add_metric(labels, d.vram_free_mb)
        yield from (up, used, free, used_mb, free_mb, host, loaded)


class GatewayMetrics:
    def __init__(self, fleet: Fleet, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        mn = ["model", "node"]
        self.requests = Counter("cortex_requests", "Requests answered", [*mn, "endpoint", "status"], registry=r)
        self.duration = Histogram(
            "cortex_request_duration_seconds",
            "Request duration",
            [*mn, "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "cortex_time_to_first_token_seconds", "First token latency", mn, buckets=TTFT_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "cortex_inter_token_latency_seconds", "Mean gap between tokens", mn, buckets=ITL_BUCKETS, registry=r
        )
        self.tps = Histogram(
            "cortex_tokens_per_second", "Decode speed per request", mn, buckets=TPS_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("cortex_prompt_tokens", "Prompt tokens", mn, registry=r)
        self.completion_tokens = Counter("cortex_completion_tokens", "Completion tokens", mn, registry=r)
        self.queue_wait = Histogram(
            "cortex_queue_wait_seconds",
            "Time before the upstream request",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cold_starts = Counter("cortex_cold_starts", "Requests that waited for a load", mn, registry=r)
        self.loads = Counter("cortex_model_loads", "Model loads asked of neurons", [*mn, "result"], registry=r)
        self.load_duration = Histogram(
            "cortex_model_load_duration_seconds", "Model load time", mn, buckets=LOAD_BUCKETS, registry=r
        )
        self.evictions = Counter("cortex_evictions", "Models evicted", [*mn, "reason"], registry=r)
        self.in_flight = Gauge("cortex_in_flight_requests", "Requests being relayed", mn, registry=r)
        self.restarts = Counter(
            "cortex_neuron_restarts", "Neurons restarted to defragment memory", ["node"], registry=r
        )
        r.register(_FleetGauges(fleet))

    def load_finished(self, model: str, node: str, result: str, secs: float) -> None:
        self.loads.labels(model, node, result).inc()
        if result == "ok":
            self.load_duration.labels(model, node).observe(secs)

    def evicted(self, model: str, node: str, reason: str) -> None:
        self.evictions.labels(model, node, reason).inc()

    def restarted(self, node: str) -> None:
        self.restarts.labels(node).inc()
