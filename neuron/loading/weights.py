"""Filling a model's parameters from a checkpoint by name. Fused weights (declared per
architecture, see ``models/*.FUSED``) are filled block by block from their source tensors.
Every checkpoint tensor must land somewhere and every parameter must be filled: otherwise the
load fails naming each unused and each missing tensor."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neuron.loading.safetensors import Checkpoint
from neuron.models import BadCheckpoint
from neuron.models.layers import Linear


def _targets(model: nn.Module) -> dict[str, tuple[str, int | None, int | None]]:
    """checkpoint name -> (parameter name, first row, rows) for fused blocks, or (name, None, None)."""
    params = dict(model.named_parameters())
    targets: dict[str, tuple[str, int | None, int | None]] = {name: (name, None, None) for name in params}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, Linear) and mod.shards:
            parent = mod_name.rsplit(".", 1)[0]
            del targets[f"{mod_name}.weight"]
            first = 0
            for shard, rows in mod.shards.items():
                targets[f"{parent}.{shard}.weight"] = (f"{mod_name}.weight", first, rows)
                first += rows
    return targets


def load_weights(
    model: nn.Module,
    ckpt: Checkpoint,
    *,
    redundant: set[str] | frozenset[str] = frozenset(),
    progress: Callable[[float], None] | None = None,
    arch: str = "model",
) -> list[str]:
    """Copies every checkpoint tensor into ``model``; returns the checkpoint names used."""
    params = dict(model.named_parameters())
    targets = _targets(model)
    filled: dict[str, int] = {name: 0 for name in params}
    used, unused, mismatched = [], [], []
    names = ckpt.names()
    for i, name in enumerate(names):
        if name in redundant:
            continue
        if name not in targets:
            unused.append(name)
            continue
        param_name, first, rows = targets[name]
        param = params[param_name]
        dest = param.data if first is None else param.data[first : first + rows]
        shape = ckpt.shape(name)
        if tuple(dest.shape) != shape:
            mismatched.append(f"{name} {list(shape)} (expected {list(dest.shape)})")
            continue
        with torch.no_grad():
            dest.copy_(ckpt.read(name))
        filled[param_name] += dest.shape[0] if first is not None else param.shape[0]
        used.append(name)
        if progress is not None:
            progress((i + 1) / len(names))
    missing = [name for name, rows in filled.items() if rows != params[name].shape[0]]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + ", ".join(mismatched))
    if missing:
        problems.append("missing: " + ", ".join(sorted(missing)))
    if unused:
        problems.append("unused: " + ", ".join(sorted(unused)))
    if problems:
        raise BadCheckpoint(f"the checkpoint does not fit the {arch} architecture: " + "; ".join(problems))
    return used
