"""Loading TOML config files into typed, frozen msgspec structs, the way both programs do it
(contracts §2): unknown keys are errors, ``PREFIX_SECTION__KEY`` environment variables override
file values, legacy table names are renamed with a warning, and every problem becomes one
line, ``FILE: KEY: what was expected``.

No I/O beyond reading the one file; the caller passes the environment in.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

log = logging.getLogger(__name__)
T = TypeVar("T")

_AT_RE = re.compile(r"^(.*) - at `\$([^`]*)`$", re.S)
_PATH_PART_RE = re.compile(r"\.([A-Za-z0-9_]+)|\[(\d+)\]")


class ConfigError(Exception):
    """A config problem, as the one line ``FILE: KEY: what was expected``."""


def _env_value(text: str) -> Any:
    """An environment value as a TOML literal when it is one (8, true, ["a"]), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _path_parts(path: str) -> list[str | int]:
    return [m.group(1) if m.group(1) is not None else int(m.group(2)) for m in _PATH_PART_RE.finditer(path)]


def _key_text(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _struct_fields(kind: Any, parts: list[str | int]) -> list[str] | None:
    """Field names of the struct at ``parts`` inside ``kind`` (for 'expected one of' hints)."""
    info: Any = msgspec.inspect.type_info(kind)
    for part in [*parts, None]:
        while True:
            if isinstance(info, msgspec.inspect.UnionType):
                structs = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
                if len(structs) != 1:
                    return None
                info = structs[0]
            elif isinstance(info, msgspec.inspect.ListType) and isinstance(part, int):
                info = info.item_type
                break
            else:
                break
        if part is None or isinstance(part, int):
            continue
        if not isinstance(info, msgspec.inspect.StructType):
            return None
        field = next((f for f in info.fields if f.encode_name == part), None)
        if field is None:
            return None
        info = field.type
    if isinstance(info, msgspec.inspect.StructType):
        return [f.encode_name for f in info.fields]
    return None


def _explain(exc: msgspec.ValidationError, kind: Any) -> tuple[str, str]:
    """(key, what was expected) from a msgspec validation message."""
    text = str(exc)
    match = _AT_RE.match(text)
    message, path = (match.group(1), match.group(2)) if match else (text, "")
    parts = _path_parts(path)
    unknown = re.match(r"Object contains unknown field `([^`]+)`", message)
    if unknown:
        fields = _struct_fields(kind, parts)
        hint = f" (expected one of: {', '.join(fields)})" if fields else ""
        return _key_text([*parts, unknown.group(1)]), f"unknown key{hint}"
    missing = re.match(r"Object missing required field `([^`]+)`", message)
    if missing:
        return _key_text([*parts, missing.group(1)]), "required key is missing"
    typed = re.match(r"Expected `([^`]+)`, got `([^`]+)`", message)
    if typed:
        return _key_text(parts), f"expected {typed.group(1)}, got {typed.group(2)}"
    # __post_init__ checks raise "FIELD: expected ..." for a field of the struct at the path.
    own = re.match(r"([A-Za-z0-9_]+): (.*)$", message, re.S)
    if own:
        return _key_text([*parts, own.group(1)]), own.group(2)
    return _key_text(parts) or "(top level)", message


def load_config(
    path: Path | None,
    kind: type[T],
    *,
    env: Mapping[str, str],
    env_prefix: str,
    renames: Mapping[str, str] | None = None,
) -> T:
    """Reads ``path`` (or nothing: all defaults), applies renames and env overrides, validates."""
    raw: dict[str, Any] = {}
    source = str(path) if path is not None else "(defaults)"
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{source}: (file): not found") from None
        except OSError as exc:
            raise ConfigError(f"{source}: (file): cannot be read ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: (syntax): {exc}") from None
    from_env: dict[str, str] = {}
    for var, value in sorted(env.items()):
        if not var.startswith(env_prefix) or len(var) == len(env_prefix):
            continue
        keys = var[len(env_prefix) :].lower().split("__")
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{var} (environment): {'.'.join(keys)}: {key} is not a table")
            node = child
        node[keys[-1]] = _env_value(value)
        from_env[".".join(keys)] = var
    for old, new in (renames or {}).items():
        _rename(raw, old, new, source)
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        key, what = _explain(exc, kind)
        where = f"{from_env[key]} (environment)" if key in from_env else source
        raise ConfigError(f"{where}: {key}: {what}") from None


def _rename(raw: dict[str, Any], old: str, new: str, source: str) -> None:
    """Reads a legacy key (or table) ``old`` as ``new``; both are dotted paths in one table."""
    *where, old_key = old.split(".")
    new_key = new.split(".")[-1]
    node: Any = raw
    for key in where:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict) or old_key not in node:
        return
    log.warning("%s: %s is the legacy name of %s; reading it as %s", source, old, new, new)
    if new_key in node:
        raise ConfigError(f"{source}: {old}: both {old} and its new name {new} are present")
    node[new_key] = node.pop(old_key)


def resolve_path(base: Path, value: str) -> Path:
    """A path from a config file: ``~`` expanded, relative paths taken from the file's directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)
