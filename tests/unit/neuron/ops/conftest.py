"""The CPU kernel variants the kernel tests sweep: every ISA the build knows, each one run where this
machine can run it and otherwise skipped with the reason, so ``pytest -rs`` says what was covered."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from neuron import ops
from neuron.ops import _lib


def isa_skip_reason(name: str) -> str | None:
    """Why this build or this CPU cannot run the ``name`` kernels; None when it can."""
    if name in _lib.CPU_ISAS:
        return None
    if name not in _lib.BUILT_CPU_ISAS:
        return f"this build of neuron._C has no {name} kernels (built: {', '.join(_lib.BUILT_CPU_ISAS)})"
    return f"this CPU lacks {name} (or its OS does not enable it); it runs {', '.join(_lib.CPU_ISAS)}"


def _capped_at(name: str) -> Iterator[str]:
    reason = isa_skip_reason(name)
    if reason is not None:
        pytest.skip(reason)
    before = ops.cpu_isa()
    ops.set_cpu_isa(name)
    assert ops.cpu_isa() == name
    try:
        yield name
    finally:
        ops.set_cpu_isa(before)


@pytest.fixture(params=_lib.KNOWN_CPU_ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each CPU ISA the build knows, with the kernels capped at it for the test."""
    yield from _capped_at(request.param)


@pytest.fixture(params=[name for name in _lib.KNOWN_CPU_ISAS if name != "generic"])
def simd_isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each SIMD ISA the build knows (all but generic), for tests that hold it to the generic kernels;
    the cap is restored afterwards, whatever the test set it to."""
    yield from _capped_at(request.param)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """Puts the kernels' thread count back after a test that changes it."""
    before = ops.num_threads()
    yield
    ops.set_num_threads(before)
