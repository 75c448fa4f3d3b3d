"""The fleet contract between cortex and neuron (contracts §3): model specs, discovery, health
and model listings, as msgspec structs both programs encode and decode."""

from __future__ import annotations

from enum import StrEnum

import msgspec


class ModelStatus(StrEnum):
    """Where a model stands on a neuron. ``/models`` says loading, loaded or failed; ``/health``
    also says unloading (an unload waits for the requests in flight)."""

    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"
    UNLOADING = "unloading"


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
    # what a load's quant may name: the block types (GGUF tensors, in-situ targets) and the mixes
    quant_types: list[str] = []


class DeviceHealth(msgspec.Struct, kw_only=True):
    index: int
    vram_used_mb: int
    vram_free_mb: int
    utilization_pct: int | None
    temp_c: int | None


class RankMemory(msgspec.Struct, kw_only=True):
    """One rank of a tensor-parallel model: where it runs and the memory its shard and its KV pool
    hold (MiB; measured by the rank itself)."""

    rank: int
    device: int | None  # the GPU's index; None on the CPU
    pid: int  # the process holding it (rank 0: the neuron itself)
    memory_mb: int


class ModelHealth(msgspec.Struct, kw_only=True):
    status: ModelStatus
    in_flight: int
    queued: int
    load_progress: float | None = None
    kv_capacity_tokens: int | None = None  # the model's KV pool, in tokens (once loaded)
    kv_used_tokens: int | None = None  # tokens' worth of its blocks in use now
    ranks: list[RankMemory] | None = None  # a tensor-parallel model's ranks (once loaded)


class Health(msgspec.Struct, kw_only=True):
    uptime_secs: float
    devices: list[DeviceHealth]
    memory_free_mb: int
    models: dict[str, ModelHealth]


class ModelInfo(msgspec.Struct, kw_only=True):
    id: str
    harness: str
    status: ModelStatus  # loading | loaded | failed
    devices: list[int]
    vram_used_mb: int | None
    quant: str | None
    context_length: int | None
    load_progress: float | None
    error: str | None
    error_status: int | None = None  # the HTTP status the failed load answered (404: the model is not here)
    kv_capacity_tokens: int | None = None  # the model's KV pool, in tokens (part of vram_used_mb)
    kv_used_tokens: int | None = None
    ranks: list[RankMemory] | None = None  # a tensor-parallel model's ranks: memory per rank (sums to vram_used_mb)


class Endpoint(msgspec.Struct, kw_only=True):
    """``GET /models/{id}/endpoint``: where the gateway sends the model's inference requests."""

    url: str


class Footprint(msgspec.Struct, kw_only=True):
    """``GET /models/{id}/footprint``: the memory the weights would take here, from their headers."""

    model_id: str
    cpu_mb: int
    gpu_mb: int


class TokenCount(msgspec.Struct, kw_only=True):
    """``POST /tokenize``: the prompt's tokens with the chat template applied, and the context."""

    count: int
    max_context: int
