"""``neuron.toml`` (contracts §2): typed, checked once at start.

Environment overrides: ``NEURON_KEY`` / ``NEURON_SECTION__KEY`` (e.g. ``NEURON_PORT=14000``,
``NEURON_ADMISSION__MAX_IN_FLIGHT=2``). This is the only module of the neuron that reads the
environment (the HF cache fallbacks included), and so it also carries the models a restart hands
to the process it re-executes (``NEURON_RESTORE_MODELS``, which is not a config key).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from cortex.protocol.fleet import ModelSpec
from cortex.protocol.settings import ConfigError, load_config, resolve_path

__all__ = [
    "RESTORE_MODELS_ENV",
    "AdmissionSection",
    "ConfigError",
    "NeuronConfig",
    "load_neuron_config",
    "restart_environ",
    "restore_models",
]

DEVICES = ("auto", "cpu", "cuda")
CPU_DTYPES = ("auto", "float32", "bfloat16")
LEGACY_KEYS = {  # read under their new names, with a warning
    "admission.max_in_flight": "admission.max_num_seqs",
    "prefill_chunk_tokens": "max_batch_tokens",
}
RESTORE_MODELS_ENV = "NEURON_RESTORE_MODELS"  # a JSON list of load specs, set by a restart for its new process


class AdmissionSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    max_num_seqs: int | None = None  # sequences a model batches at once; default per device kind
    max_queue_depth: int = 8
    max_wait_secs: float = 30.0

    def __post_init__(self) -> None:
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs: expected an integer >= 1, got {self.max_num_seqs}")
        if self.max_queue_depth < 0:
            raise ValueError(f"max_queue_depth: expected an integer >= 0, got {self.max_queue_depth}")
        if self.max_wait_secs <= 0:
            raise ValueError(f"max_wait_secs: expected a number > 0, got {self.max_wait_secs}")


class NeuronConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    host: str = "0.0.0.0"
    port: int = 13131
    advertise_url: str | None = None
    model_roots: list[str] = []
    hf_cache: str | None = None
    allow_download: bool = True
    device: str = "auto"
    cpu_dtype: str = "auto"  # beyond the contract: float32 | bfloat16 | auto (bfloat16 where the CPU has it)
    max_batch_tokens: int | None = None  # tokens of one engine step (decodes + prefill chunks); per device kind
    kv_cache_mb: int | None = None  # the KV pool of each model; default: a share of what is free after the weights
    cpu_memory_mb: int | None = None  # beyond the contract: cap on host memory for CPU-resident models
    api_key: str | None = None  # the fleet key: required on every route but /health and /version when set
    ready_after_default_models: bool = False  # under systemd (Type=notify): READY once default_models loaded
    admission: AdmissionSection = AdmissionSection()
    default_models: list[ModelSpec] = []

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port: expected 1-65535, got {self.port}")
        if self.device not in DEVICES:
            raise ValueError(f"device: expected one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.cpu_dtype not in CPU_DTYPES:
            raise ValueError(f"cpu_dtype: expected one of {', '.join(CPU_DTYPES)}, got {self.cpu_dtype!r}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 16:
            raise ValueError(f"max_batch_tokens: expected an integer >= 16, got {self.max_batch_tokens}")
        if self.kv_cache_mb is not None and self.kv_cache_mb <= 0:
            raise ValueError(f"kv_cache_mb: expected an integer > 0, got {self.kv_cache_mb}")
        if self.cpu_memory_mb is not None and self.cpu_memory_mb <= 0:
            raise ValueError(f"cpu_memory_mb: expected an integer > 0, got {self.cpu_memory_mb}")
        if self.api_key is not None and (not self.api_key or self.api_key != self.api_key.strip()):
            raise ValueError("api_key: expected a non-empty key without surrounding spaces")
        if self.advertise_url is not None and not self.advertise_url.startswith(("http://", "https://")):
            raise ValueError(f"advertise_url: expected an http:// or https:// URL, got {self.advertise_url!r}")


def _default_hf_cache(env: dict[str, str]) -> str:
    if env.get("HF_HUB_CACHE"):
        return env["HF_HUB_CACHE"]
    if env.get("HF_HOME"):
        return str(Path(env["HF_HOME"]) / "hub")
    return str(Path("~/.cache/huggingface/hub").expanduser())


def load_neuron_config(path: Path | None, env: dict[str, str] | None = None) -> NeuronConfig:
    """Loads and checks the config; relative paths become absolute from the file's directory."""
    env = dict(os.environ) if env is None else env
    overrides = {k: v for k, v in env.items() if k != RESTORE_MODELS_ENV}
    cfg = load_config(path, NeuronConfig, env=overrides, env_prefix="NEURON_", renames=LEGACY_KEYS)
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    roots = [str(resolve_path(base, r)) for r in cfg.model_roots]
    hf_cache = str(resolve_path(base, cfg.hf_cache)) if cfg.hf_cache else _default_hf_cache(env)
    return msgspec.structs.replace(cfg, model_roots=roots, hf_cache=hf_cache)


def restore_models(env: dict[str, str] | None = None) -> list[ModelSpec]:
    """The models a restart asked this process to load again (``NEURON_RESTORE_MODELS``); none
    when the process was not started by a restart."""
    env = dict(os.environ) if env is None else env
    text = env.get(RESTORE_MODELS_ENV, "").strip()
    if not text:
        return []
    try:
        return msgspec.json.decode(text, type=list[ModelSpec])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{RESTORE_MODELS_ENV} (environment): expected a JSON list of load specs: {exc}") from None


def restart_environ(models: list[ModelSpec]) -> dict[str, str]:
    """This process's environment as the re-executed process gets it: the same, with
    ``NEURON_RESTORE_MODELS`` naming ``models`` (and absent when there are none)."""
    env = {k: v for k, v in os.environ.items() if k != RESTORE_MODELS_ENV}
    if models:
        keep = ("model_id", "harness", "quant", "tensor_parallel", "devices")
        specs = [{k: getattr(m, k) for k in keep if getattr(m, k) is not None} for m in models]
        env[RESTORE_MODELS_ENV] = msgspec.json.encode(specs).decode()
    return env
