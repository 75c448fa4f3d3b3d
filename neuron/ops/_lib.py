"""The one door to the native extension: the only module in the tree that imports ``neuron._C``.

It re-exports what the build contains and sizes the kernel thread pool: ``HELEXA_NUM_THREADS``
when set, else the number of threads torch uses, so our kernels and torch's never compete for
more cores than the process was given.
"""

from __future__ import annotations

import functools
import os

try:
    from neuron import _C
except ImportError as exc:  # pragma: no cover - depends on how the package was installed
    raise ImportError(
        "neuron's native extension neuron._C is missing: this helexa was installed without it "
        "(HELEXA_NATIVE=OFF, a gateway-only install) or from an unbuilt source tree. "
        "Reinstall with a C++ compiler available to run a neuron."
    ) from exc

import torch  # after _C: a missing extension is the clearer error

CUDA_BUILT: bool = _C.cuda_built()  # CUDA kernels compiled in (whether or not this host can run them)
KNOWN_CPU_ISAS: tuple[str, ...] = tuple(_C.known_cpu_isas())  # every variant the sources define
BUILT_CPU_ISAS: tuple[str, ...] = tuple(_C.built_cpu_isas())  # those compiled into this module
CPU_ISAS: tuple[str, ...] = tuple(_C.cpu_isas())  # those this machine can run
QuantType = _C.QuantType
DType = _C.DType

_env_isa = os.environ.get("HELEXA_CPU_ISA", "")
if _env_isa and _env_isa not in KNOWN_CPU_ISAS:
    raise ValueError(f"HELEXA_CPU_ISA={_env_isa!r}: expected one of {', '.join(KNOWN_CPU_ISAS)}")

_env_threads = os.environ.get("HELEXA_NUM_THREADS", "")
if _env_threads:
    if not _env_threads.isdigit() or int(_env_threads) < 1:
        raise ValueError(f"HELEXA_NUM_THREADS={_env_threads!r}: expected a whole number >= 1")
    _C.set_num_threads(int(_env_threads))
else:
    _C.set_num_threads(max(1, torch.get_num_threads()))


@functools.cache
def has_cuda() -> bool:
    """Whether the CUDA kernels can run here: built with them and a CUDA device is present. Asked of
    the CUDA runtime at the first call, never at import (a CUDA build imports on hosts with no
    driver); ``HAS_CUDA`` is the same answer."""
    return _C.has_cuda()


def __getattr__(name: str) -> object:
    if name == "HAS_CUDA":  # computed at first use (PEP 562), so importing neuron.ops touches no driver
        return has_cuda()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_info() -> dict:
    """What the extension was built with: version, CUDA (``cuda``: usable here; ``cuda_built``;
    ``cuda_archs``), CPU variants."""
    return dict(_C.build_info())


def cpu_isa() -> str:
    """The CPU kernel variant in use (the best of ``CPU_ISAS`` unless capped)."""
    return _C.cpu_isa()


def set_cpu_isa(name: str) -> None:
    """Caps the CPU kernel variant; ``name`` is one of ``KNOWN_CPU_ISAS`` (a cap above what this CPU
    runs leaves the best of ``CPU_ISAS`` in use)."""
    _C.set_cpu_isa(name)


def num_threads() -> int:
    return _C.num_threads()


def set_num_threads(n: int) -> None:
    """Sets the size of the kernel thread pool (n >= 1)."""
    _C.set_num_threads(n)


def pool_spin_us() -> int:
    return _C.pool_spin_us()


def set_pool_spin_us(us: int) -> None:
    """How long idle pool threads spin before sleeping: long while a decode step issues kernel
    after kernel, short when other thread pools (torch's) need the cores."""
    _C.set_pool_spin_us(us)


native = _C
