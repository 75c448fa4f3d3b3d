"""Reading a safetensors checkpoint (one file or an index of shards) lazily, tensor by tensor,
so loading never holds more than one source tensor beside the model being filled."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from cortex.protocol.errors import ApiError


class Checkpoint:
    """The tensors of a model directory: ``names()``, ``shape(name)``, ``read(name)``."""

    def __init__(self, model_dir: Path) -> None:
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._file_of = {name: model_dir / f for name, f in weight_map.items()}
        else:
            files = sorted(model_dir.glob("*.safetensors"))
            if not files:
                raise ApiError("not_found", f"{model_dir.name}: no safetensors weights in the model directory")
            self._file_of = {}
            for f in files:
                with safe_open(f, framework="pt") as handle:
                    for name in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                        self._file_of[name] = f
        self._handles: dict[Path, object] = {}

    def _handle(self, name: str):
        f = self._file_of[name]
        if f not in self._handles:
            if not f.is_file():
                raise ApiError("not_found", f"checkpoint shard {f.name} (holding {name}) is missing")
            self._handles[f] = safe_open(f, framework="pt")
        return self._handles[f]

    def names(self) -> list[str]:
        return list(self._file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def read(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name)

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in set(self._file_of.values()) if f.is_file())

    def close(self) -> None:
        self._handles.clear()

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)
