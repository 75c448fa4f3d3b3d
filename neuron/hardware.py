"""What this host has: GPUs through NVML (nvidia-ml-py), CPU cores and memory from the OS.

A host without an NVIDIA driver (or without nvidia-ml-py) is a normal CPU-only host: no devices,
null driver and CUDA versions, never an error. NVML device indices are reported as-is.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
from dataclasses import dataclass, field

from cortex.protocol.fleet import CpuInfo, DeviceHealth, DeviceInfo, Discovery

log = logging.getLogger(__name__)

try:  # nvidia-ml-py is part of the neuron extra, but a host may lack it or the driver
    import pynvml
except ImportError:  # pragma: no cover - depends on the installation
    pynvml = None


@dataclass
class _Nvml:
    ok: bool = False
    failed: bool = False  # tried and found no driver: say so once, not at every reading
    lock: threading.Lock = field(default_factory=threading.Lock)


_nvml = _Nvml()


def _nvml_ready() -> bool:
    """Initialises NVML once; False on a host without the NVIDIA driver."""
    if pynvml is None:
        return False
    with _nvml.lock:
        if not _nvml.ok:
            if _nvml.failed:
                return False
            try:
                pynvml.nvmlInit()
                _nvml.ok = True
            except pynvml.NVMLError as exc:
                _nvml.failed = True
                log.info("no NVIDIA driver reachable through NVML (%s): CPU-only host", exc)
                return False
    return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _meminfo_mb(key: str) -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    if key == "MemTotal":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return 0


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def memory_total_mb() -> int:
    return _meminfo_mb("MemTotal")


def memory_free_mb() -> int:
    """Memory available to new allocations (MemAvailable), in MiB."""
    return _meminfo_mb("MemAvailable")


def gpu_devices() -> list[DeviceInfo]:
    if not _nvml_ready():
        return []
    devices = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            devices.append(
                DeviceInfo(
                    index=i,
                    name=_text(pynvml.nvmlDeviceGetName(h)),
                    vram_total_mb=pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20,
                    compute_capability=f"{major}.{minor}",
                )
            )
    except pynvml.NVMLError as exc:
        log.warning("NVML could not list devices: %s", exc)
    return devices


def _versions() -> tuple[str | None, str | None]:
    if not _nvml_ready():
        return None, None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return f"{cuda // 1000}.{cuda % 1000 // 10}", driver
    except pynvml.NVMLError:
        return None, None


def discover(version: str, harnesses: list[str], quant_types: list[str] | None = None) -> Discovery:
    cuda_version, driver_version = _versions()
    return Discovery(
        quant_types=quant_types or [],
        hostname=socket.gethostname() or platform.node() or "unknown",
        os=platform.system() or "unknown",
        kernel=platform.release() or "unknown",
        cuda_version=cuda_version,
        driver_version=driver_version,
        devices=gpu_devices(),
        cpu=CpuInfo(cores=cpu_cores(), memory_total_mb=memory_total_mb()),
        harnesses=harnesses,
        version=version,
    )


def read_device_health(devices: list[DeviceInfo]) -> list[DeviceHealth]:
    """Current memory, utilisation and temperature of each device (empty on a CPU-only host)."""
    if not devices or not _nvml_ready():
        return []
    out = []
    for d in devices:
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(d.index)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                util: int | None = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
            except pynvml.NVMLError:
                util = None
            try:
                temp: int | None = pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
            except pynvml.NVMLError:
                temp = None
            out.append(
                DeviceHealth(
                    index=d.index,
                    vram_used_mb=mem.used // 2**20,
                    vram_free_mb=mem.free // 2**20,
                    utilization_pct=util,
                    temp_c=temp,
                )
            )
        except pynvml.NVMLError as exc:
            log.warning("NVML could not read device %d: %s", d.index, exc)
    return out
