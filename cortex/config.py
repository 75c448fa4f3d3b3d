"""``cortex.toml`` and ``models.toml`` (contracts §2): typed, frozen, checked once at start.

Unknown keys are errors naming the key; ``CORTEX_SECTION__KEY`` environment variables override
the file; the legacy table name ``[[nodes]]`` is read as ``[[neurons]]`` with a warning. Relative
paths are taken from the directory of the file that holds them. This is the only module of the
gateway that reads the environment.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

import msgspec

from cortex.protocol.settings import ConfigError, load_config, resolve_path

__all__ = ["Catalogue", "ConfigError", "CortexConfig", "ModelProfile", "load_catalogue", "load_cortex_config"]

_LISTEN_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def split_listen(listen: str) -> tuple[str, int]:
    """A checked ``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _check_listen(key: str, value: str) -> None:
    m = _LISTEN_RE.match(value)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"{key}: expected HOST:PORT (e.g. 0.0.0.0:31313), got {value!r}")


class GatewaySection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    listen: str = "0.0.0.0:31313"
    metrics_listen: str = "0.0.0.0:31314"
    poll_interval_secs: float = 5.0
    load_timeout_secs: float = 1800.0
    stall_timeout_secs: float = 300.0
    keepalive_secs: float = 5.0
    max_body_mb: float = 32.0
    events_buffer: int = 256  # events a fleet page (/admin/events) may fall behind by before it is dropped

    def __post_init__(self) -> None:
        _check_listen("listen", self.listen)
        _check_listen("metrics_listen", self.metrics_listen)
        keys = ("poll_interval_secs", "load_timeout_secs", "stall_timeout_secs", "keepalive_secs", "max_body_mb")
        for key in keys:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: expected a number > 0, got {getattr(self, key)}")
        if self.events_buffer < 1:
            raise ValueError(f"events_buffer: expected an integer >= 1, got {self.events_buffer}")


class EvictionSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    strategy: str = "lru"
    defrag_after_cycles: int = 50
    min_residency_secs: float = 30.0
    swap_after_secs: float = 5.0  # a resident used this recently (or busy) keeps a waiting model out this long
    max_wait_secs: float = 120.0  # a request waiting for room gets 503 + Retry-After after this

    def __post_init__(self) -> None:
        if self.strategy not in ("lru", "priority"):
            raise ValueError(f"strategy: expected 'lru' or 'priority', got {self.strategy!r}")
        if self.defrag_after_cycles < 0:
            raise ValueError(f"defrag_after_cycles: expected an integer >= 0, got {self.defrag_after_cycles}")
        for key in ("min_residency_secs", "swap_after_secs"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: expected a number >= 0, got {getattr(self, key)}")
        if self.max_wait_secs <= 0:
            raise ValueError(f"max_wait_secs: expected a number > 0, got {self.max_wait_secs}")


class AuthSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    api_keys: list[str] = []
    admin_keys: list[str] = []

    def __post_init__(self) -> None:
        if any(not k for k in self.api_keys + self.admin_keys):
            raise ValueError("api_keys: keys must be non-empty strings")


class NeuronEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: str
    endpoint: str
    api_key: str | None = None  # the neuron's fleet key (its neuron.toml api_key), sent on every call

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", self.name):
            raise ValueError(f"name: expected letters, digits, '.', '_', '-', got {self.name!r}")
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint: expected an http:// or https:// URL, got {self.endpoint!r}")
        if self.api_key is not None and (not self.api_key or self.api_key != self.api_key.strip()):
            raise ValueError("api_key: expected a non-empty key without surrounding spaces")


class CortexConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    models_config: str = "models.toml"
    gateway: GatewaySection = GatewaySection()
    eviction: EvictionSection = EvictionSection()
    auth: AuthSection | None = None
    neurons: list[NeuronEntry] = []

    def __post_init__(self) -> None:
        names = [n.name for n in self.neurons]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"neurons: names must be unique, {', '.join(dup)} appears more than once")


class ModelProfile(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    id: str
    harness: str | None = None
    quant: str | None = None
    vram_mb: int | None = None
    min_devices: int = 1
    min_device_vram_mb: int | None = None
    pinned_on: list[str] = []
    residency_priority: int | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id: expected a non-empty model id")
        if self.min_devices < 0:
            raise ValueError(f"min_devices: expected an integer >= 0, got {self.min_devices}")
        for key in ("vram_mb", "min_device_vram_mb"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ValueError(f"{key}: expected an integer >= 0, got {getattr(self, key)}")


def is_pattern(alias: str) -> bool:
    """Whether an alias is a shell-style pattern rather than one name."""
    return any(c in alias for c in "*?[")


class Catalogue(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    models: list[ModelProfile] = []
    aliases: dict[str, str] = {}

    def __post_init__(self) -> None:
        ids = [m.id for m in self.models]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"models: ids must be unique, {', '.join(dup)} appears more than once")
        for alias, target in self.aliases.items():
            if target in self.aliases:
                raise ValueError(
                    f"aliases: {alias!r} points at the alias {target!r}; aliases are one hop, never chained"
                )
            if alias in ids:
                raise ValueError(f"aliases: {alias!r} is also a model id in [[models]]")

    def resolve(self, model: str) -> str:
        """The model a client's name means: an exact alias, a model id as itself, then the first
        pattern alias (``"claude-*"``, shell-style) that matches, else the name unchanged."""
        target = self.aliases.get(model)
        if target is not None:
            return target
        if any(m.id == model for m in self.models):
            return model
        for alias, target in self.aliases.items():
            if is_pattern(alias) and fnmatch.fnmatchcase(model, alias):
                return target
        return model

    def profile(self, model_id: str) -> ModelProfile | None:
        for m in self.models:
            if m.id == model_id:
                return m
        return None


def load_cortex_config(path: Path | None, env: dict[str, str] | None = None) -> CortexConfig:
    env = dict(os.environ) if env is None else env
    cfg = load_config(path, CortexConfig, env=env, env_prefix="CORTEX_", renames={"nodes": "neurons"})
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    return msgspec.structs.replace(cfg, models_config=str(resolve_path(base, cfg.models_config)))


def load_catalogue(path: Path, *, required: bool = False) -> Catalogue:
    """The model catalogue; a missing file is an empty catalogue unless ``required``."""
    if not Path(path).is_file():
        if required:
            raise ConfigError(f"{path}: (file): not found")
        return Catalogue()
    return load_config(path, Catalogue, env={}, env_prefix="\0")


def client_api_key(env: dict[str, str] | None = None) -> str | None:
    """The key the ``cortex`` client commands present (CORTEX_API_KEY), if any."""
    env = dict(os.environ) if env is None else env
    return env.get("CORTEX_API_KEY") or None


def demo_models_dir(env: dict[str, str] | None = None) -> Path:
    """Where ``cortex up`` keeps the demo model: $XDG_CACHE_HOME/helexa, else ~/.cache/helexa."""
    env = dict(os.environ) if env is None else env
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path("~/.cache").expanduser()
    return base / "helexa" / "models"
