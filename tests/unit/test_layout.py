"""House rules that keep the two programs apart (../shared/ARCHITECTURE.md): only neuron/ops/_lib.py
imports the extension, and the gateway imports no torch, numpy or neuron."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import neuron
from neuron import ops

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def python_files(*dirs: str) -> list[Path]:
    files = [p for d in dirs for p in (ROOT / d).rglob("*.py")]
    assert files, f"no Python files found under {dirs}"
    return files


def test_only_ops_lib_imports_the_extension():
    offenders = [
        str(p.relative_to(ROOT))
        for p in python_files("neuron", "cortex", "tests", "bench")
        if any(name.endswith("_C") for name in imported_modules(p)) and p != ROOT / "neuron/ops/_lib.py"
    ]
    assert offenders == []


def test_the_gateway_imports_no_torch_numpy_or_neuron():
    banned = ("torch", "numpy", "neuron")
    offenders = [
        f"{p.relative_to(ROOT)}: {name}"
        for p in python_files("cortex")
        for name in imported_modules(p)
        if name.split(".")[0] in banned
    ]
    assert offenders == []
    code = "import sys, cortex; print(sorted(m for m in ('torch', 'numpy', 'neuron') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_build_info_describes_this_build():
    info = ops.build_info()
    assert info["version"] == neuron.__version__
    assert info["cuda"] is ops.HAS_CUDA  # usable here: built with CUDA and a device present
    assert info["cuda_built"] is ops.CUDA_BUILT
    assert ops.HAS_CUDA <= ops.CUDA_BUILT  # no usable CUDA without CUDA kernels
    assert bool(info["cuda_archs"]) == ops.CUDA_BUILT and all(isinstance(a, str) and a for a in info["cuda_archs"])
    assert tuple(info["cpu_isas"]) == ops.CPU_ISAS
    assert ops.CPU_ISAS[0] == "generic"
    assert "quant" in info["native_kernels"]
