"""Test-wide set-up: the suite runs against the installed package (with its built extension)."""

from __future__ import annotations

import importlib.util

import pytest


def pytest_configure(config: pytest.Config) -> None:
    spec = importlib.util.find_spec("neuron._C")
    if spec is None:
        raise pytest.UsageError(
            "neuron._C is not importable: the `neuron` package in use has no built extension. "
            "Run `make test`, or `pip install '.[test]'` and then `pytest` (not `python -m pytest`, "
            "which puts the source tree first on sys.path)."
        )
