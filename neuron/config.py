"""``neuron.toml`` (contracts §2): typed, checked once at start.

Environment overrides: ``NEURON_KEY`` / ``NEURON_SECTION__KEY`` (e.g. ``NEURON_PORT=14000``,
``NEURON_ADMISSION__MAX_IN_FLIGHT=2``). This is the only module of the neuron that reads the
environment (the HF cache fallbacks included).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from cortex.protocol.fleet import ModelSpec
from cortex.protocol.settings import ConfigError, load_config, resolve_path

__all__ = ["AdmissionSection", "ConfigError", "NeuronConfig", "load_neuron_config"]

DEVICES = ("auto", "cpu", "cuda")
CPU_DTYPES = ("auto", "float32", "bfloat16")


class AdmissionSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    max_in_flight: int = 1
    max_queue_depth: int = 8
    max_wait_secs: float = 30.0

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight: expected an integer >= 1, got {self.max_in_flight}")
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
    prefill_chunk_tokens: int = 512
    admission: AdmissionSection = AdmissionSection()
    default_models: list[ModelSpec] = []

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port: expected 1-65535, got {self.port}")
        if self.device not in DEVICES:
            raise ValueError(f"device: expected one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.cpu_dtype not in CPU_DTYPES:
            raise ValueError(f"cpu_dtype: expected one of {', '.join(CPU_DTYPES)}, got {self.cpu_dtype!r}")
        if self.prefill_chunk_tokens < 16:
            raise ValueError(f"prefill_chunk_tokens: expected an integer >= 16, got {self.prefill_chunk_tokens}")
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
    cfg = load_config(path, NeuronConfig, env=env, env_prefix="NEURON_")
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    roots = [str(resolve_path(base, r)) for r in cfg.model_roots]
    hf_cache = str(resolve_path(base, cfg.hf_cache)) if cfg.hf_cache else _default_hf_cache(env)
    return msgspec.structs.replace(cfg, model_roots=roots, hf_cache=hf_cache)
