"""Model architectures as torch modules, keyed by config.json ``architectures`` and ``model_type``."""

from __future__ import annotations

from neuron.models import qwen3

ARCHITECTURES = {**qwen3.ARCHITECTURES}
MODEL_TYPES = {cls.model_type: cls for cls in ARCHITECTURES.values()}
