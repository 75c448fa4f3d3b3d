"""Filling a model's weights from a :class:`WeightSource` by checkpoint name. Linear and
Embedding modules take their tensors through their weight methods (a fused weight block by
block, see ``models/*.FUSED``; a float tensor quantized as it arrives when the plan says so);
every other parameter is copied. Every source tensor must land somewhere and every weight must
be filled: otherwise the load fails naming each unused, missing and mismatched tensor."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from neuron.models import BadCheckpoint
from neuron.models.layers import Embedding, Linear
from neuron.models.methods import Weight, WeightPlan
from neuron.ops.quant import QuantTensor, dequantize


class WeightSource(Protocol):
    """Named tensors in HF naming (safetensors as they are; a GGUF file through its name map)."""

    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def read(self, name: str) -> Weight: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class _Target:
    key: str  # what must be filled: a parameter name, or a module's block
    shape: tuple[int, ...]
    fill: Callable[[Weight], None]


def _targets(model: nn.Module) -> dict[str, _Target]:
    """checkpoint name -> where it goes."""
    targets: dict[str, _Target] = {}
    covered: set[int] = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, Linear):
            covered.update(id(p) for p in mod.parameters(recurse=False))
            if mod.tied:
                continue
            parent = mod_name.rsplit(".", 1)[0]
            for shard, first, rows in mod.shard_rows():
                stem = f"{parent}.{shard}" if shard else mod_name
                name = f"{stem}.weight"
                targets[name] = _Target(
                    name, (rows, mod.in_features), lambda src, m=mod, f=first, r=rows: m.fill(f, r, src)
                )
                if mod.bias is not None:
                    targets[f"{stem}.bias"] = _Target(
                        f"{stem}.bias", (rows,), lambda src, b=mod.bias, f=first, r=rows: _copy(b[f : f + r], src)
                    )
        elif isinstance(mod, Embedding):
            name = f"{mod_name}.weight"
            targets[name] = _Target(name, (mod.num_embeddings, mod.dim), mod.fill)
            covered.update(id(p) for p in mod.parameters(recurse=False))
    for name, param in model.named_parameters():
        if id(param) in covered or name in targets:
            continue
        targets[name] = _Target(name, tuple(param.shape), lambda src, p=param: _copy(p, src))
    return targets


def _copy(dest: torch.Tensor, src: Weight) -> None:
    with torch.no_grad():
        dest.copy_(dequantize(src).reshape(dest.shape) if isinstance(src, QuantTensor) else src)


def load_weights(
    model: nn.Module,
    source: WeightSource,
    *,
    redundant: set[str] | frozenset[str] = frozenset(),
    progress: Callable[[float], None] | None = None,
    arch: str = "model",
    skip_prefixes: tuple[str, ...] = (),
) -> list[str]:
    """Fills ``model`` from every tensor of ``source``; returns the names used. ``redundant``
    names (a tied head some checkpoints carry) and names under ``skip_prefixes`` (parts of a
    checkpoint the model does not serve: a vision tower) are skipped."""
    targets = {name: t for name, t in _targets(model).items() if name not in redundant}
    filled: set[str] = set()
    used, unused, mismatched = [], [], []
    names = source.names()
    for i, name in enumerate(names):
        if name in redundant or name.startswith(skip_prefixes):
            continue
        target = targets.get(name)
        if target is None:
            unused.append(name)
            continue
        shape = tuple(source.shape(name))
        if shape != target.shape:
            mismatched.append(f"{name} {list(shape)} (expected {list(target.shape)})")
            continue
        target.fill(source.read(name))
        filled.add(name)
        used.append(name)
        if progress is not None:
            progress((i + 1) / len(names))
    missing = sorted(set(targets) - filled - {m.split(" ", 1)[0] for m in mismatched})
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + ", ".join(mismatched))
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if unused:
        problems.append("unused: " + ", ".join(sorted(unused)))
    if problems:
        raise BadCheckpoint(f"the checkpoint does not fit the {arch} architecture: " + "; ".join(problems))
    return used


def planned_bytes(
    source: WeightSource,
    plan: WeightPlan,
    dtype: torch.dtype,
    *,
    redundant: set[str] | frozenset[str] = frozenset(),
    skip_prefixes: tuple[str, ...] = (),
) -> int:
    """What the weights will take once loaded under ``plan``, from the source's headers alone:
    each matrix by its method's exact bytes, every other tensor in ``dtype``."""
    total = 0
    for name in source.names():
        if name in redundant or name.startswith(skip_prefixes):
            continue
        shape = tuple(source.shape(name))
        if len(shape) == 2:
            total += plan.method(name, (shape[0], shape[1])).nbytes(shape[0], shape[1])
        else:
            total += math.prod(shape) * dtype.itemsize
    return total


def resident_bytes(model: nn.Module) -> int:
    """The exact bytes of ``model``'s weights: each Linear and Embedding by its methods, every
    other parameter and buffer by its storage (a tied table counted once)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total
