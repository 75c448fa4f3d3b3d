"""The kernel thread pool and the run-time ISA choice: sizes, environment knobs, determinism,
concurrent callers and fork; per-ISA tests run for every ISA the build knows (those this machine
cannot run are skipped, saying why: conftest.py)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading

import pytest
import torch

from neuron import ops
from neuron.ops.quant import random_quant_tensor


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter, outside the source tree so the installed package is used."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HELEXA_")}
    full_env.update(env)
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120
        )


def test_results_do_not_depend_on_the_thread_count(isa, restore_threads):
    gen = torch.Generator().manual_seed(0)
    w = random_quant_tensor("q4_k", (301, 1024), generator=gen)
    x = torch.randn(5, 1024, generator=gen)
    results = []
    for n in (1, 2, 3, 8):
        ops.set_num_threads(n)
        assert ops.num_threads() == n
        results.append(ops.qmatmul(x, w))
    for y in results[1:]:
        assert torch.equal(y, results[0])  # each output row is computed whole by one thread


def test_set_num_threads_rejects_zero(restore_threads):
    with pytest.raises(ValueError, match=">= 1"):
        ops.set_num_threads(0)


def test_pool_size_follows_helexa_num_threads():
    out = run_python("from neuron import ops; print(ops.num_threads())", HELEXA_NUM_THREADS="3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"


def test_pool_size_defaults_to_torchs_thread_count():
    code = "import torch; torch.set_num_threads(1); from neuron import ops; print(ops.num_threads())"
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize(("var", "value"), [("HELEXA_NUM_THREADS", "zero"), ("HELEXA_CPU_ISA", "sse9")])
def test_a_bad_environment_knob_is_a_clear_error(var, value):
    out = run_python("from neuron import ops", **{var: value})
    assert out.returncode != 0
    assert f"{var}={value!r}" in out.stderr
    assert "expected" in out.stderr


def test_helexa_cpu_isa_caps_the_kernel_variant(isa):
    out = run_python("from neuron import ops; print(ops.cpu_isa())", HELEXA_CPU_ISA=isa)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == isa


def test_set_cpu_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown CPU ISA 'neon9'"):
        ops.set_cpu_isa("neon9")


def test_concurrent_callers_all_get_correct_results():
    gen = torch.Generator().manual_seed(1)
    w = random_quant_tensor("q6_k", (513, 512), generator=gen)
    xs = [torch.randn(3, 512, generator=gen) for _ in range(6)]
    expected = [ops.qmatmul(x, w) for x in xs]
    got: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        for _ in range(20):
            got[i] = ops.qmatmul(xs[i], w)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(torch.equal(got[i], expected[i]) for i in range(len(xs)))


def _child(conn) -> None:
    w = random_quant_tensor("q8_0", (256, 256), generator=torch.Generator().manual_seed(2))
    y = ops.qmatmul(torch.ones(1, 256), w)
    conn.send(float(y.sum()))


def test_a_forked_child_gets_a_working_pool():
    w = random_quant_tensor("q8_0", (256, 256), generator=torch.Generator().manual_seed(2))
    expected = float(ops.qmatmul(torch.ones(1, 256), w).sum())  # the parent's pool is running
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child,))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert parent.recv() == expected
