"""The models this neuron holds: loading (idempotent, joinable, in the background or waited
for), listing with measured memory, and unloading once in-flight requests have finished; and what
a model would take if loaded (its footprint), read from the checkpoint headers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import torch

from cortex.protocol.errors import ApiError, invalid
from cortex.protocol.fleet import ModelHealth, ModelInfo, ModelSpec, ModelStatus
from neuron import hardware
from neuron.api.errors import api_error_of
from neuron.chat.text import TextSide, load_text_side
from neuron.config import NeuronConfig
from neuron.engine.admission import Admission
from neuron.engine.loaded import KVSettings, LoadedModel, footprint_bytes, load_model, release_model
from neuron.engine.worker import DeviceWorker
from neuron.loading.resolve import check_model_id, resolve_model_dir
from neuron.models import ModelError, ModelNotFound

log = logging.getLogger(__name__)

HARNESSES = ("torch",)
# Per kind of device: sequences batched at once, tokens per engine step, and the share of the
# memory free after the weights that the KV pool takes when kv_cache_mb is not set (a GPU may
# hold several models; a CPU host also runs everything else).
ENGINE_DEFAULTS = {
    "cpu": {"max_num_seqs": 8, "max_batch_tokens": 512, "kv_share": 0.25},
    "cuda": {"max_num_seqs": 64, "max_batch_tokens": 2048, "kv_share": 0.5},
}
FAILED_KEPT = 16  # failed loads listed in /models (the newest), so pollers and operators see why
FAILED_KEPT_SECS = 600.0  # and for at most this long
TEXT_SIDES_KEPT = 8
HARNESS_ALIASES = ("torch", "candle")  # the earlier engine's name is accepted as the same engine
GPU_FOOTPRINT_DTYPE = torch.bfloat16
MAX_CPU_RANKS = 8  # tensor-parallel ranks on the CPU (processes over gloo)


@dataclass
class Entry:
    spec: ModelSpec
    devices: list[int]
    status: ModelStatus = ModelStatus.LOADING
    progress: float = 0.0
    error: str | None = None
    failure: ApiError | None = None
    loaded: LoadedModel | None = None
    task: asyncio.Task | None = None
    started: float = field(default_factory=time.monotonic)
    failed_at: float | None = None


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


class Residency:
    def __init__(self, config: NeuronConfig) -> None:
        self.config = config
        self.entries: dict[str, Entry] = {}
        self.workers: dict[str, DeviceWorker] = {}
        # told of every load's end: (model, seconds, result "ok" | "failed"); the metrics listen here
        self.on_load_end: Callable[[str, float, str], None] | None = None
        self._text: OrderedDict[str, TextSide] = OrderedDict()  # text sides of models not resident

    # --- placement ------------------------------------------------------------------------

    def _device_for(self, spec: ModelSpec) -> tuple[torch.device, list[int]]:
        has_cuda = torch.cuda.is_available()
        across_gpus = (
            "tensor parallelism across GPUs is not supported by this neuron yet: its GPU ranks are not wired to "
            "the NCCL communicator (tensor_parallel with devices = [] runs the ranks on the CPU)"
        )
        if spec.tensor_parallel is not None and spec.tensor_parallel < 1:
            raise invalid(f"tensor_parallel must be at least 1, got {spec.tensor_parallel}", param="tensor_parallel")
        if spec.devices is not None and len(spec.devices) > 1:
            raise invalid(across_gpus, param="devices")
        if (spec.tensor_parallel or 1) > MAX_CPU_RANKS:
            raise invalid(
                f"tensor_parallel = {spec.tensor_parallel} is more ranks than this neuron runs "
                f"(at most {MAX_CPU_RANKS})",
                param="tensor_parallel",
            )
        if (spec.tensor_parallel or 1) > 1:
            on_gpu = spec.devices is None and (
                self.config.device == "cuda" or (self.config.device == "auto" and has_cuda)
            )
            if spec.devices or on_gpu:
                raise invalid(across_gpus, param="tensor_parallel")
            return torch.device("cpu"), []
        if spec.devices is not None:
            if not spec.devices:
                return torch.device("cpu"), []
            index = spec.devices[0]
            if not has_cuda or not 0 <= index < torch.cuda.device_count():
                count = torch.cuda.device_count() if has_cuda else 0
                raise invalid(f"device {index} does not exist: this host has {count} CUDA devices", param="devices")
            return torch.device("cuda", index), [index]
        if self.config.device == "cuda" or (self.config.device == "auto" and has_cuda):
            if not has_cuda:
                raise invalid("device = 'cuda' is configured but this host has no CUDA device")
            return torch.device("cuda", 0), [0]
        return torch.device("cpu"), []

    def _dtype_for(self, device: torch.device) -> torch.dtype:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        choice = self.config.cpu_dtype
        if choice == "auto":
            return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
        return getattr(torch, choice)

    def kv_settings(self, device: torch.device) -> KVSettings:
        """The KV pool and engine settings of a load on ``device``: neuron.toml's, else the
        defaults of its kind of device (:data:`ENGINE_DEFAULTS`)."""
        kind = ENGINE_DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
        cfg = self.config
        return KVSettings(
            kv_cache_mb=cfg.kv_cache_mb,
            share=kind["kv_share"],
            max_num_seqs=cfg.admission.max_num_seqs or kind["max_num_seqs"],
            max_batch_tokens=cfg.max_batch_tokens or kind["max_batch_tokens"],
        )

    def _worker(self, device: torch.device) -> DeviceWorker:
        key = str(device)
        if key not in self.workers:
            self.workers[key] = DeviceWorker(device)
        return self.workers[key]

    def _free_bytes(self, device: torch.device):
        if device.type == "cuda":
            return lambda: torch.cuda.mem_get_info(device)[0]
        return self.cpu_free_bytes

    def cpu_free_bytes(self) -> int:
        """Host memory a CPU load may still take: what the host has available now and, with
        ``cpu_memory_mb``, at most that cap less what the CPU-resident models hold, never below 0.
        Runs on the CPU worker thread too (a load's fit check), so it only reads."""
        free = hardware.memory_free_mb() << 20
        cap = self.config.cpu_memory_mb
        if cap is None:
            return free
        held = sum(
            e.loaded.memory_bytes
            for e in list(self.entries.values())
            if e.loaded is not None and e.loaded.device.type == "cpu"
        )
        return max(0, min(free, (cap << 20) - held))

    def memory_free_mb(self) -> int:
        """``/health``'s ``memory_free_mb``: the same figure a CPU load's fit check uses."""
        return self.cpu_free_bytes() >> 20

    # --- lifecycle ------------------------------------------------------------------------

    async def load(self, spec: ModelSpec) -> Entry:
        """Starts (or joins) a load; returns its entry. Bad specs raise at once."""
        try:
            check_model_id(spec.model_id)
        except ModelError as exc:
            raise api_error_of(exc) from None
        if spec.harness is not None and spec.harness not in HARNESS_ALIASES:
            raise invalid(
                f"harness {spec.harness!r} is not available: this neuron runs {', '.join(HARNESSES)}", param="harness"
            )
        entry = self.entries.get(spec.model_id)
        if entry is not None and entry.status in (ModelStatus.LOADING, ModelStatus.LOADED):
            return entry
        if entry is not None and entry.status == ModelStatus.UNLOADING:
            raise ApiError("conflict", f"model {spec.model_id!r} is being unloaded; load it again once that is done")
        device, devices = self._device_for(spec)
        entry = Entry(spec=spec, devices=devices)
        self.entries[spec.model_id] = entry
        entry.task = asyncio.get_running_loop().create_task(self._load(entry, device), name=f"load {spec.model_id}")
        return entry

    async def _load(self, entry: Entry, device: torch.device) -> None:
        model_id = entry.spec.model_id
        started = time.monotonic()
        log.info("loading %s on %s", model_id, device)
        try:
            model_dir = await asyncio.to_thread(
                resolve_model_dir,
                model_id,
                roots=self.config.model_roots,
                hf_cache=self.config.hf_cache or "",
                allow_download=self.config.allow_download,
            )
            settings = self.kv_settings(device)
            adm = self.config.admission
            admission = Admission(model_id, settings.max_num_seqs, adm.max_queue_depth, adm.max_wait_secs)
            worker = self._worker(device)
            loop = asyncio.get_running_loop()

            def progress(fraction: float) -> None:
                entry.progress = fraction

            def rank_failed(reason: str) -> None:  # on the worker thread: the event loop takes it
                loop.call_soon_threadsafe(self._model_failed, entry, reason)

            def load_on_worker() -> LoadedModel:
                # The entry holds the model before the worker's next job starts, so a load queued
                # behind this one on the same device counts it (cpu_memory_mb).
                entry.loaded = load_model(
                    model_id,
                    model_dir,
                    worker,
                    self._dtype_for(device),
                    admission,
                    settings,
                    free_bytes=self._free_bytes(device),
                    progress=progress,
                    loop=loop,
                    quant=entry.spec.quant,
                    tensor_parallel=entry.spec.tensor_parallel or 1,
                    on_failure=rank_failed,
                )
                return entry.loaded

            await worker.run(load_on_worker)
            entry.status, entry.progress = ModelStatus.LOADED, 1.0
            capacity, _ = entry.loaded.kv_usage()
            log.info(
                "loaded %s on %s in %.1f s (%d MiB with a KV cache of %d tokens, %s, up to %d sequences at once)",
                model_id,
                device,
                time.monotonic() - started,
                entry.loaded.memory_bytes >> 20,
                capacity,
                str(entry.loaded.dtype).removeprefix("torch."),
                settings.max_num_seqs,
            )
        except (ApiError, ModelError) as exc:
            failure = api_error_of(exc, model_id) if isinstance(exc, ModelError) else exc
            entry.status, entry.error, entry.failure = ModelStatus.FAILED, failure.message, failure
            log.info("loading %s failed: %s", model_id, failure.message)
        except Exception as exc:  # a bug or a broken checkpoint: keep the neuron serving
            log.exception("loading %s failed", model_id)
            entry.status, entry.error = ModelStatus.FAILED, f"{type(exc).__name__}: {exc}"
            entry.failure = ApiError("internal", f"loading {model_id!r} failed: {type(exc).__name__}: {exc}")
        if self.on_load_end is not None:
            result = "ok" if entry.status == ModelStatus.LOADED else "failed"
            self.on_load_end(model_id, time.monotonic() - started, result)
        if entry.status == ModelStatus.FAILED:
            entry.failed_at = time.monotonic()
            self._forget_old_failures()

    def _model_failed(self, entry: Entry, reason: str) -> None:
        """A loaded model that cannot step any more (a tensor-parallel rank died or hung): listed
        as failed with the reason, its requests already failed by its engine; its memory and its
        ranks are freed in the background."""
        if entry.status != ModelStatus.LOADED or entry.loaded is None:
            return
        model_id = entry.spec.model_id
        log.error("model %s failed: %s", model_id, reason)
        loaded, entry.loaded = entry.loaded, None
        entry.status, entry.error = ModelStatus.FAILED, reason
        entry.failure = ApiError("internal", f"model {model_id!r} failed: {reason}")
        entry.failed_at = time.monotonic()
        entry.task = asyncio.get_running_loop().create_task(
            loaded.worker.run(release_model, loaded), name=f"release failed {model_id}"
        )
        self._forget_old_failures()

    def _forget_old_failures(self) -> None:
        """Keeps the newest :data:`FAILED_KEPT` failed loads, none older than
        :data:`FAILED_KEPT_SECS`: enough to say why a load failed, never a list that grows with
        every bad load anyone asks for."""
        now = time.monotonic()
        failed = sorted(
            ((e.failed_at or now, m) for m, e in self.entries.items() if e.status == ModelStatus.FAILED), reverse=True
        )
        for rank, (at, model_id) in enumerate(failed):
            if rank >= FAILED_KEPT or now - at > FAILED_KEPT_SECS:
                del self.entries[model_id]

    async def wait_loaded(self, entry: Entry) -> None:
        """Waits for a load; raises its failure (with its own status) when it failed."""
        if entry.task is not None:
            await asyncio.shield(entry.task)
        if entry.status == ModelStatus.FAILED:
            raise entry.failure or ApiError("internal", entry.error or "load failed")

    async def unload(self, model_id: str) -> None:
        entry = self.entries.get(model_id)
        if entry is None or entry.status == ModelStatus.UNLOADING:
            raise ApiError("not_found", f"model {model_id!r} is not loaded", param="model_id")
        if entry.status == ModelStatus.FAILED:  # nothing to unload; the failure is forgotten
            del self.entries[model_id]
            raise ApiError("not_found", f"model {model_id!r} is not loaded (its load failed)", param="model_id")
        if entry.status == ModelStatus.LOADING and entry.task is not None:
            await asyncio.shield(entry.task)
        entry.status = ModelStatus.UNLOADING
        loaded = entry.loaded
        if loaded is not None:
            await loaded.admission.drained()
            await loaded.worker.run(release_model, loaded)
        self.entries.pop(model_id, None)
        log.info("unloaded %s", model_id)

    async def unload_all(self) -> None:
        """Unloads every model (a loading one once its load ends), each after its requests."""
        for model_id in list(self.entries):
            with contextlib.suppress(ApiError):
                await self.unload(model_id)

    def get(self, model_id: str) -> LoadedModel:
        """The loaded model for a request; 404 when unknown, 503 while it loads or unloads."""
        entry = self.entries.get(model_id)
        if entry is None or entry.status == ModelStatus.FAILED:
            loaded = ", ".join(sorted(m for m, e in self.entries.items() if e.status == ModelStatus.LOADED)) or "none"
            raise ApiError(
                "not_found", f"model {model_id!r} is not loaded on this neuron (loaded: {loaded})", param="model"
            )
        if entry.status != ModelStatus.LOADED or entry.loaded is None:
            raise ApiError(
                "unavailable", f"model {model_id!r} is {entry.status}", code=f"model_{entry.status}", retry_after=2.0
            )
        return entry.loaded

    def text_side(self, model_id: str) -> LoadedModel | TextSide:
        """What tokenizing ``model_id`` needs: the resident model's own, or (for a model that is not
        resident) its tokenizer and template read from the local files, never downloaded. Blocking:
        call it off the event loop."""
        entry = self.entries.get(model_id)
        if entry is not None and entry.status == ModelStatus.LOADED and entry.loaded is not None:
            return entry.loaded
        side = self._text.get(model_id)
        if side is None:
            try:
                model_dir = resolve_model_dir(
                    model_id, roots=self.config.model_roots, hf_cache=self.config.hf_cache or "", allow_download=False
                )
            except ModelError as exc:
                raise api_error_of(exc) from None
            side = load_text_side(model_id, model_dir)
            self._text[model_id] = side
            while len(self._text) > TEXT_SIDES_KEPT:
                self._text.popitem(last=False)
        self._text.move_to_end(model_id)
        return side

    def footprint(self, model_id: str, quant: str | None = None) -> tuple[int, int]:
        """Bytes the weights of ``model_id`` would take on this neuron's CPU (in the dtype a CPU
        load would use) and on a GPU (bf16), quantized to ``quant`` when given, from the file
        headers alone: counted as a load counts them, from local files only (never a download),
        no tensor read. Blocking: call it off the event loop."""
        try:
            model_dir = resolve_model_dir(
                model_id, roots=self.config.model_roots, hf_cache=self.config.hf_cache or "", allow_download=False
            )
        except ModelNotFound:
            raise ApiError(
                "not_found",
                f"model {model_id!r} is not on this neuron (model_roots or the HF cache); a footprint never downloads",
                param="model_id",
            ) from None
        except ModelError as exc:
            raise api_error_of(exc) from None
        try:
            cpu = footprint_bytes(model_dir, self._dtype_for(torch.device("cpu")), quant)
            gpu = footprint_bytes(model_dir, GPU_FOOTPRINT_DTYPE, quant)
        except ModelError as exc:
            raise api_error_of(exc, model_id) from None
        return cpu, gpu

    # --- reporting ------------------------------------------------------------------------

    def resident_specs(self) -> list[ModelSpec]:
        """Load specs of the models resident now (loaded or loading), pinned to the devices they
        are on: what a restart loads again."""
        return [
            msgspec.structs.replace(e.spec, devices=list(e.devices))
            for e in self.entries.values()
            if e.status in (ModelStatus.LOADING, ModelStatus.LOADED)
        ]

    def infos(self) -> list[ModelInfo]:
        self._forget_old_failures()
        out = []
        for model_id, e in self.entries.items():
            lm = e.loaded
            out.append(
                ModelInfo(
                    id=model_id,
                    harness="torch",
                    status=ModelStatus.LOADING if e.status == ModelStatus.UNLOADING else e.status,
                    devices=e.devices,
                    vram_used_mb=(lm.memory_bytes >> 20) if lm is not None else None,
                    quant=lm.quant if lm is not None else e.spec.quant,
                    context_length=lm.context_length if lm is not None else None,
                    load_progress=round(e.progress, 3),
                    error=e.error,
                    error_status=e.failure.status if e.failure is not None else None,
                    **_kv_fields(lm),
                )
            )
        return out

    def health(self) -> dict[str, ModelHealth]:
        out = {}
        for model_id, e in self.entries.items():
            adm = e.loaded.admission if e.loaded is not None else None
            out[model_id] = ModelHealth(
                status=e.status,
                in_flight=adm.in_flight if adm else 0,
                queued=adm.queued if adm else 0,
                load_progress=round(e.progress, 3),
                **_kv_fields(e.loaded),
            )
        return out

    async def close(self) -> None:
        await self.unload_all()
        for worker in self.workers.values():
            worker.close()


def _kv_fields(lm: LoadedModel | None) -> dict[str, Any]:
    if lm is None:
        return {}
    capacity, used = lm.kv_usage()
    ranks = getattr(lm.executor, "rank_memory", None)  # a tensor-parallel model's, per rank
    return {"kv_capacity_tokens": capacity, "kv_used_tokens": used} | ({"ranks": ranks} if ranks else {})
