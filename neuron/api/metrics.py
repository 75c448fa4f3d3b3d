"""The neuron's Prometheus metrics, on its own registry: request and token counters, load
times, and per-model gauges (prefill / decode tok/s, queue, memory) read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cortex.protocol.fleet import DeviceHealth
    from neuron.engine.generation import Outcome
    from neuron.engine.residency import Residency


class _ModelGauges(Collector):
    def __init__(self, residency: Residency) -> None:
        self.residency = residency

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "prefill": GaugeMetricFamily("neuron_prefill_tokens_per_second", "Recent prefill speed", labels=["model"]),
            "decode": GaugeMetricFamily("neuron_decode_tokens_per_second", "Recent decode speed", labels=["model"]),
            "in_flight": GaugeMetricFamily("neuron_requests_in_flight", "Requests generating", labels=["model"]),
            "queued": GaugeMetricFamily("neuron_requests_queued", "Requests waiting for a slot", labels=["model"]),
            "memory": GaugeMetricFamily(
                "neuron_model_memory_bytes", "Measured model memory (weights and KV pool)", labels=["model"]
            ),
            "kv_capacity": GaugeMetricFamily(
                "neuron_kv_cache_capacity_tokens", "Tokens the model's KV pool holds", labels=["model"]
            ),
            "kv_used": GaugeMetricFamily(
                "neuron_kv_cache_used_tokens", "Tokens' worth of KV blocks in use", labels=["model"]
            ),
            "prefix_queried": CounterMetricFamily(
                "neuron_prefix_cache_queried_tokens", "Prompt tokens looked up in the prefix cache", labels=["model"]
            ),
            "prefix_hits": CounterMetricFamily(
                "neuron_prefix_cache_hit_tokens", "Prompt tokens the prefix cache supplied", labels=["model"]
            ),
            "preemptions": CounterMetricFamily(
                "neuron_preemptions", "Sequences preempted for lack of KV blocks", labels=["model"]
            ),
        }
        for model_id, entry in list(self.residency.entries.items()):
            lm = entry.loaded
            if lm is None:
                continue
            tp = lm.throughput
            if tp.prefill_tps is not None:
                families["prefill"].add_metric([model_id], tp.prefill_tps)
            if tp.decode_tps is not None:
                families["decode"].add_metric([model_id], tp.decode_tps)
            capacity, used = lm.kv_usage()
            families["kv_capacity"].add_metric([model_id], capacity)
            families["kv_used"].add_metric([model_id], used)
            cache = lm.engine.allocator.stats
            families["prefix_queried"].add_metric([model_id], cache.queried_tokens)
            families["prefix_hits"].add_metric([model_id], cache.hit_tokens)
            families["preemptions"].add_metric([model_id], lm.engine.stats.preemptions)
            families["in_flight"].add_metric([model_id], lm.admission.in_flight)
            families["queued"].add_metric([model_id], lm.admission.queued)
            families["memory"].add_metric([model_id], lm.memory_bytes)
        yield from families.values()


class _HostGauges(Collector):
    """Memory in bytes (Prometheus base units): each GPU's, and the host's for CPU models."""

    def __init__(self, residency: Residency, device_health: Callable[[], list[DeviceHealth]]) -> None:
        self.residency = residency
        self.device_health = device_health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used = GaugeMetricFamily("neuron_device_memory_used_bytes", "GPU memory in use", labels=["device"])
        free = GaugeMetricFamily("neuron_device_memory_free_bytes", "GPU memory free", labels=["device"])
        for d in self.device_health():
            used.add_metric([str(d.index)], d.vram_used_mb * 2**20)
            free.add_metric([str(d.index)], d.vram_free_mb * 2**20)
        host = GaugeMetricFamily(
            "neuron_host_memory_free_bytes", "Host memory a CPU load may still take (cpu_memory_mb applied)"
        )
        host.add_metric([], self.residency.cpu_free_bytes())
        yield from (used, free, host)


class NeuronMetrics:
    def __init__(
        self,
        residency: Residency,
        device_health: Callable[[], list[DeviceHealth]] = list,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("neuron_requests_total", "Admitted requests", ["model", "endpoint"], registry=r)
        self.prompt_tokens = Counter("neuron_prompt_tokens_total", "Prompt tokens processed", ["model"], registry=r)
        self.completion_tokens = Counter("neuron_completion_tokens_total", "Tokens generated", ["model"], registry=r)
        self.finished = Counter(
            "neuron_requests_finished_total", "Finished requests", ["model", "endpoint", "finish_reason"], registry=r
        )
        self.load_seconds = Histogram(
            "neuron_model_load_seconds",
            "Model load time, every load that ended (result ok | failed)",
            ["model", "result"],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800),
            registry=r,
        )
        r.register(_ModelGauges(residency))
        r.register(_HostGauges(residency, device_health))
        residency.on_load_end = self.load_ended

    def load_ended(self, model: str, secs: float, result: str) -> None:
        self.load_seconds.labels(model, result).observe(secs)

    def requests_started(self, model: str, endpoint: str) -> None:
        self.requests.labels(model, endpoint).inc()

    def requests_finished(self, model: str, endpoint: str, outcome: Outcome) -> None:
        self.prompt_tokens.labels(model).inc(outcome.prompt_tokens)
        self.completion_tokens.labels(model).inc(outcome.completion_tokens)
        self.finished.labels(model, endpoint, outcome.finish_reason or "aborted").inc()
