"""Reading a safetensors checkpoint (one file or an index of shards) lazily, tensor by tensor,
so loading never holds more than one source tensor beside the model being filled."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from neuron.models import BadCheckpoint

MAX_HEADER_BYTES = 100 * 2**20  # the format's own bound


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of one safetensors file (tensor name -> dtype, shape, data offsets), read
    without touching the tensor data that follows it."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= MAX_HEADER_BYTES:
                raise ValueError(f"header size {size} is out of range")
            header = json.loads(f.read(size))
    except FileNotFoundError:
        raise BadCheckpoint(f"checkpoint file {path.name} is missing") from None
    except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadCheckpoint(f"checkpoint file {path.name} is not a readable safetensors file: {exc}") from None
    if not isinstance(header, dict):
        raise BadCheckpoint(f"checkpoint file {path.name} has no tensor table")
    header.pop("__metadata__", None)
    return header


class Checkpoint:
    """The tensors of a model directory: ``names()``, ``shape(name)``, ``read(name)``."""

    def __init__(self, model_dir: Path) -> None:
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                self._file_of = {str(name): model_dir / str(f) for name, f in weight_map.items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise BadCheckpoint(
                    f"{index.name} is not a shard index (a 'weight_map' of tensor names to files): {exc}"
                ) from None
            outside = sorted({f.name for f in self._file_of.values() if f.parent != model_dir})
            if outside:
                raise BadCheckpoint(f"{index.name} names shards outside the model directory: {', '.join(outside)}")
        else:
            files = sorted(model_dir.glob("*.safetensors"))
            if not files:
                raise BadCheckpoint(f"{model_dir.name}: no safetensors weights in the model directory")
            self._file_of = {}
            for f in files:
                for name in read_header(f):
                    self._file_of[name] = f
        self._handles: dict[Path, object] = {}

    def _handle(self, name: str):
        f = self._file_of[name]
        if f not in self._handles:
            if not f.is_file():
                raise BadCheckpoint(f"checkpoint shard {f.name} (holding {name}) is missing")
            try:
                self._handles[f] = safe_open(f, framework="pt")
            except (OSError, SafetensorError) as exc:
                raise BadCheckpoint(f"checkpoint file {f.name} is not a readable safetensors file: {exc}") from None
        return self._handles[f]

    def names(self) -> list[str]:
        return list(self._file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def read(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name)

    def numel(self) -> int:
        """Elements in all the checkpoint's tensors, from the file headers alone: what sizes a
        load before it starts, and a footprint without loading."""
        total = 0
        for f in sorted(set(self._file_of.values())):
            for name, info in read_header(f).items():
                if self._file_of.get(name) != f:
                    continue
                try:
                    total += math.prod(int(d) for d in info["shape"])
                except (KeyError, TypeError, ValueError):
                    raise BadCheckpoint(f"checkpoint file {f.name}: tensor {name} has no valid shape") from None
        return total

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in set(self._file_of.values()) if f.is_file())

    def close(self) -> None:
        self._handles.clear()

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)
