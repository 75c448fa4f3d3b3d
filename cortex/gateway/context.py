"""The gateway's state, reached by handlers through ``request.app.ctx`` (typed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sanic import Request

from cortex.config import Catalogue, CortexConfig
from cortex.fleet.neurons import NeuronClient
from cortex.fleet.scheduler import Scheduler
from cortex.fleet.state import Fleet
from cortex.metrics import GatewayMetrics


@dataclass
class GatewayContext:
    config: CortexConfig
    catalogue: Catalogue
    fleet: Fleet
    metrics: GatewayMetrics
    http: aiohttp.ClientSession | None = None
    client: NeuronClient | None = None
    scheduler: Scheduler | None = None
    metrics_server: Any = None  # the metrics listener (a Sanic AsyncioServer), on this loop
    tasks: list = field(default_factory=list)
    stats_task: Any = None  # the fleet page's periodic stats (cortex.gateway.ui), while pages listen


def context_of(request: Request) -> GatewayContext:
    return request.app.ctx
