"""Model id -> local directory: ``model_roots`` first, then the HF cache, then (when allowed) a
hub download into that cache. Ids are ``org/name`` or ``name``; they never name a path: ``..``,
absolute paths and anything that resolves outside the roots or the cache are refused
(:class:`BadModelId`); an id found nowhere is :class:`ModelNotFound`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from neuron.models import BadModelId, ModelNotFound

log = logging.getLogger(__name__)

MAX_ID_PART_CHARS = 96  # the hub's own limit for an org or a repo name; keeps every cache path short
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]


def check_model_id(model_id: str) -> str:
    if not isinstance(model_id, str) or not _ID_RE.match(model_id) or ".." in model_id:
        shown = model_id if len(model_id) <= 2 * MAX_ID_PART_CHARS else model_id[: 2 * MAX_ID_PART_CHARS] + "…"
        raise BadModelId(
            f"model id {shown!r} is not a valid id: expected 'org/name' or 'name' "
            "(letters, digits, '.', '_', '-'), never a filesystem path"
        )
    longest = max(len(part) for part in model_id.split("/"))
    if longest > MAX_ID_PART_CHARS:
        raise BadModelId(
            f"model id {model_id[: 2 * MAX_ID_PART_CHARS]!r}… is too long: an org or a name has at most "
            f"{MAX_ID_PART_CHARS} characters (this one has {longest})"
        )
    return model_id


def _within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _is_model_dir(path: Path) -> bool:
    """HF files (config.json), or GGUF files (in the folder or one level down, as GGUF repos keep
    split files per type)."""
    if (path / "config.json").is_file():
        return True
    return path.is_dir() and (any(path.glob("*.gguf")) or any(path.glob("*/*.gguf")))


def _from_roots(model_id: str, roots: list[str]) -> Path | None:
    for root in roots:
        candidate = Path(root) / model_id
        if _is_model_dir(candidate):
            if not _within(candidate, Path(root)):
                raise BadModelId(f"model {model_id!r} resolves outside its model root {root}")
            return candidate.resolve()
    return None


def _from_hf_cache(model_id: str, cache: Path) -> Path | None:
    repo = cache / ("models--" + model_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    revisions = [ref.read_text().strip()] if ref.is_file() else []
    revisions += sorted(
        (p.name for p in snapshots.iterdir()), key=lambda n: (snapshots / n).stat().st_mtime, reverse=True
    )
    for rev in revisions:
        snap = snapshots / rev
        if _is_model_dir(snap) and _within(snap, cache):
            return snap
    return None


def resolve_model_dir(model_id: str, *, roots: list[str], hf_cache: str, allow_download: bool) -> Path:
    """Where the files of ``model_id`` are; raises BadModelId or ModelNotFound."""
    check_model_id(model_id)
    found = _from_roots(model_id, roots) or _from_hf_cache(model_id, Path(hf_cache))
    if found is not None:
        return found
    if allow_download:
        log.info("downloading %s from the hub into %s", model_id, hf_cache)
        try:
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
        except ImportError:  # pragma: no cover - part of the neuron extra
            raise ModelNotFound(f"model {model_id!r} is not local and huggingface_hub is missing") from None
        try:
            path = Path(snapshot_download(model_id, cache_dir=hf_cache, allow_patterns=DOWNLOAD_PATTERNS))
        except RepositoryNotFoundError:
            raise ModelNotFound(f"model {model_id!r} was not found on the hub") from None
        except (HfHubHTTPError, OSError) as exc:
            raise ModelNotFound(f"model {model_id!r} could not be downloaded: {exc}") from None
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"model {model_id!r} on the hub has no config.json")
        return path
    where = ", ".join(roots) if roots else "(no model_roots)"
    raise ModelNotFound(
        f"model {model_id!r} was not found in model_roots {where} or the HF cache {hf_cache}, "
        "and downloads are disabled (allow_download = false)"
    )
