"""The state every handler reaches through ``request.app.ctx``: typed, built by the app factory."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from sanic import Request

from cortex.protocol.fleet import DeviceHealth, Discovery, ModelSpec
from cortex.protocol.systemd import Notifier
from neuron.api.metrics import NeuronMetrics
from neuron.config import NeuronConfig
from neuron.engine.admission import Intake
from neuron.engine.residency import Residency


@dataclass
class NeuronContext:
    config: NeuronConfig
    residency: Residency
    discovery: Discovery
    metrics: NeuronMetrics
    device_health: list[DeviceHealth] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    intake: Intake = field(default_factory=Intake)
    restore_models: list[ModelSpec] = field(default_factory=list)  # handed over by the restart that started us
    restart: asyncio.Task | None = None  # the restart under way
    restart_models: list[ModelSpec] | None = None  # set when a restart stops the server: re-exec with these
    notifier: Notifier = field(default_factory=lambda: Notifier(env={}))  # systemd's; silent unless serving under it


def context_of(request: Request) -> NeuronContext:
    return request.app.ctx
