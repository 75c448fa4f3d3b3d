"""The fleet contract between cortex and neuron (contracts §3): model specs, discovery, health
and model listings, as msgspec structs both programs encode and decode."""

from __future__ import annotations

import msgspec


class ModelSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /models/load``. ``devices == []`` means the host CPU."""

    model_id: str
    harness: str | None = None
    quant: str | None = None
    tensor_parallel: int | None = None
    devices: list[int] | None = None
    wait: bool = True


class UnloadRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model_id: str


class DeviceInfo(msgspec.Struct, kw_only=True):
    index: int
    name: str
    vram_total_mb: int
    compute_capability: str


class CpuInfo(msgspec.Struct, kw_only=True):
    cores: int
    memory_total_mb: int


class Discovery(msgspec.Struct, kw_only=True):
    hostname: str
    os: str
    kernel: str
    cuda_version: str | None
    driver_version: str | None
    devices: list[DeviceInfo]
    cpu: CpuInfo
    harnesses: list[str]
    version: str


class DeviceHealth(msgspec.Struct, kw_only=True):
    index: int
    vram_used_mb: int
    vram_free_mb: int
    utilization_pct: int | None
    temp_c: int | None


class ModelHealth(msgspec.Struct, kw_only=True):
    status: str
    in_flight: int
    queued: int
    load_progress: float | None = None


class Health(msgspec.Struct, kw_only=True):
    uptime_secs: float
    devices: list[DeviceHealth]
    memory_free_mb: int
    models: dict[str, ModelHealth]


class ModelInfo(msgspec.Struct, kw_only=True):
    id: str
    harness: str
    status: str  # loading | loaded | failed
    devices: list[int]
    vram_used_mb: int | None
    quant: str | None
    context_length: int | None
    load_progress: float | None
    error: str | None
    error_status: int | None = None  # the HTTP status the failed load answered (404: the model is not here)
