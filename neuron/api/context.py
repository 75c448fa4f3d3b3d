"""The state every handler reaches through ``request.app.ctx``: typed, built by the app factory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sanic import Request

from cortex.protocol.fleet import DeviceHealth, Discovery
from neuron.api.metrics import NeuronMetrics
from neuron.config import NeuronConfig
from neuron.engine.residency import Residency


@dataclass
class NeuronContext:
    config: NeuronConfig
    residency: Residency
    discovery: Discovery
    metrics: NeuronMetrics
    device_health: list[DeviceHealth] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


def context_of(request: Request) -> NeuronContext:
    return request.app.ctx
