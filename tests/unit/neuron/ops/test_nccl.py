"""The NCCL communicator's CPU half: the library is looked for where the docs say, a missing one
is a clear error naming every place tried (never a crash at import, never a link-time need),
a library that is not NCCL is passed over saying so, and the collectives refuse tensors they
cannot take. With a GPU and NCCL present, a one-rank communicator's all-reduce, broadcast and
all-gather are checked against the input (they skip here, saying why)."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest
import torch

from neuron import ops
from neuron.ops import nccl


def run(code: str, **env: str) -> subprocess.CompletedProcess:
    """In a fresh process: the library is opened once per process."""
    import os

    return subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=60
    )


def test_the_extension_builds_the_nccl_family_without_linking_nccl():
    assert "nccl" in ops.build_info()["native_kernels"]
    from neuron.ops import _lib

    out = subprocess.run(["ldd", _lib.native.__file__], capture_output=True, text=True).stdout
    assert "nccl" not in out


def test_a_missing_library_names_every_place_tried(tmp_path):
    missing = tmp_path / "no-such-libnccl.so.2"
    code = "from neuron.ops import nccl\ntry:\n    nccl.load()\nexcept nccl.NcclUnavailable as e:\n    print(e)\n"
    out = run(code, HELEXA_NCCL_LIBRARY=str(missing))
    assert out.returncode == 0, out.stderr
    assert "NCCL (libnccl.so.2) was not found" in out.stdout and str(missing) in out.stdout
    assert "HELEXA_NCCL_LIBRARY" in out.stdout  # how to fix it


def test_a_library_that_is_not_nccl_is_passed_over_saying_so():
    libc = ctypes.util.find_library("c")
    assert libc
    code = "from neuron.ops import nccl\ntry:\n    nccl.load()\nexcept nccl.NcclUnavailable as e:\n    print(e)\n"
    out = run(code, HELEXA_NCCL_LIBRARY=libc)
    assert f"{libc}: loads, but is not NCCL" in out.stdout, out.stdout + out.stderr


def test_the_places_looked_in_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(nccl.ENV, "/opt/x/libnccl.so.2")
    assert nccl.candidates() == ["/opt/x/libnccl.so.2"]
    monkeypatch.delenv(nccl.ENV)
    wheel = tmp_path / "nvidia" / "nccl" / "lib"
    wheel.mkdir(parents=True)
    (wheel / "libnccl.so.2").write_bytes(b"")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    found = nccl.candidates()
    assert found[0] == str(wheel / "libnccl.so.2") and found[-1] == "libnccl.so.2"


def test_collectives_refuse_what_they_cannot_take():
    comm = nccl.NcclCommunicator.__new__(nccl.NcclCommunicator)  # no library needed to check arguments
    comm.rank, comm.world, comm.comm = 0, 1, 0
    with pytest.raises(TypeError, match="must be a CUDA tensor, got one on cpu"):
        comm.all_reduce(torch.ones(4))


def _nccl_skip() -> str | None:
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    try:
        nccl.load()
    except nccl.NcclUnavailable as exc:
        return str(exc).splitlines()[0]
    return None


@pytest.mark.skipif(_nccl_skip() is not None, reason=str(_nccl_skip()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_rank_collectives_on_the_gpu(dtype):
    torch.cuda.set_device(0)
    comm = nccl.NcclCommunicator(0, 1, nccl.unique_id())
    try:
        x = torch.randn(1 << 16, device="cuda").to(dtype)
        want = x.clone()
        assert torch.equal(comm.all_reduce(x), want)
        assert torch.equal(comm.broadcast(x), want)
        assert torch.equal(comm.all_gather(x)[0], want)
        torch.cuda.synchronize()
    finally:
        comm.close()
    assert nccl.version()[0] >= 2
