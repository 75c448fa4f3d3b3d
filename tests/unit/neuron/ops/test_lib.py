"""neuron.ops._lib, the one door to the extension: the type stub beside the built module names exactly
what the module exports, with the same parameters, and the ISA lists it re-exports are consistent."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from neuron.ops import _lib


def installed_stub() -> ast.Module:
    """The parsed ``_C.pyi`` that sits beside the ``neuron._C`` in use (the installed package)."""
    spec = importlib.util.find_spec("neuron._C")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "_C.pyi"
    assert path.is_file(), f"no type stub beside {spec.origin}"
    return ast.parse(path.read_text(), filename=str(path))


def stub_defs() -> dict[str, ast.FunctionDef | ast.ClassDef]:
    return {node.name: node for node in installed_stub().body if isinstance(node, ast.FunctionDef | ast.ClassDef)}


def exported_names() -> set[str]:
    return {name for name in dir(_lib.native) if not (name.startswith("__") and name.endswith("__"))}


def is_cuda_only(name: str) -> bool:
    """The stub's convention: ``*_cuda`` functions exist only in a module built with CUDA."""
    return name.endswith("_cuda")


def test_the_stub_names_every_binding_and_nothing_else():
    stubbed = set(stub_defs())
    exported = exported_names()
    assert sorted(exported - stubbed) == [], "bindings missing from neuron/_C.pyi"
    missing = stubbed - exported
    if not _lib.CUDA_BUILT:
        missing = {name for name in missing if not is_cuda_only(name)}
    assert sorted(missing) == [], "names in neuron/_C.pyi that neuron._C does not export"


def native_parameters(name: str) -> list[str]:
    """Parameter names from pybind11's signature line: ``name(a: int, b: neuron._C.DType) -> None``."""
    doc = getattr(_lib.native, name).__doc__
    match = re.match(rf"{name}\((.*?)\) ->", doc)
    assert match, f"no signature in the docstring of {name}: {doc!r}"
    return [part.split(":")[0].strip() for part in match.group(1).split(",") if part.strip()]


@pytest.mark.parametrize("name", sorted(n for n, d in stub_defs().items() if isinstance(d, ast.FunctionDef)))
def test_each_stubbed_function_has_the_bindings_parameters(name):
    if is_cuda_only(name) and not _lib.CUDA_BUILT:
        pytest.skip(f"{name} is CUDA-only and this build of neuron._C has no CUDA kernels")
    stub = stub_defs()[name]
    assert isinstance(stub, ast.FunctionDef)
    assert [a.arg for a in stub.args.args] == native_parameters(name)


@pytest.mark.parametrize("name", sorted(n for n, d in stub_defs().items() if isinstance(d, ast.ClassDef)))
def test_each_stubbed_enum_has_the_bindings_values(name):
    stub = stub_defs()[name]
    values = [ast.unparse(node.targets[0]) for node in stub.body if isinstance(node, ast.Assign)]  # `q4_0 = ...`
    assert values == list(getattr(_lib.native, name).__members__)


def test_isa_lists_nest_known_then_built_then_usable():
    known, built, usable = _lib.KNOWN_CPU_ISAS, _lib.BUILT_CPU_ISAS, _lib.CPU_ISAS
    assert known == ("generic", "avx2", "avx512_vnni")
    assert built == known[: len(built)] and usable == built[: len(usable)]
    assert usable[0] == "generic"
