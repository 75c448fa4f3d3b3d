"""``cortex up`` as a newcomer runs it: from the repository root (whose ``neuron/`` folder is the
unbuilt source), the installed ``cortex`` program, the curl line it prints run as printed; a
neuron that dies, before or after the model is ready, and a model that cannot load each stop it
with the reason and exit code 1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import msgspec
import pytest
from integration.services import free_port

REPO = Path(__file__).resolve().parents[2]
CORTEX = Path(sys.executable).with_name("cortex")
READY_SECS = 120.0


class CortexUp:
    """A running ``cortex up``: its stdout and stderr collected line by line as they come."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.gateway, self.metrics, self.neuron = free_port(), free_port(), free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("NEURON_", "CORTEX_"))}
        cmd = [
            str(CORTEX),
            "up",
            "--listen",
            f"127.0.0.1:{self.gateway}",
            "--metrics-listen",
            f"127.0.0.1:{self.metrics}",
            "--neuron-port",
            str(self.neuron),
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,  # what `make run` does: the source checkout is the working directory
            env={**base, "XDG_CACHE_HOME": str(tmp_path / "cache"), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_for_line(self, prefix: str, secs: float = READY_SECS) -> str:
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            found = next((line for line in self.out if line.startswith(prefix)), None)
            if found is not None:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"no line starting {prefix!r}; stdout:\n{self.text()}\nstderr:\n{self.errors()}")

    def wait_exit(self, secs: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout=secs)
        except subprocess.TimeoutExpired:
            pytest.fail(f"cortex up still running after {secs} s; stderr:\n{self.errors()}")
        for t in self._readers:
            t.join(timeout=5)
        return code

    def text(self) -> str:
        return "\n".join(self.out)

    def errors(self) -> str:
        return "\n".join(self.err)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        for t in self._readers:
            t.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def start_up(tmp_path):
    started: list[CortexUp] = []

    def start(*args: str, env: dict[str, str] | None = None) -> CortexUp:
        up = CortexUp(tmp_path, *args, env=env)
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
        return True
    except httpx.TransportError:
        return False


def _run_curl_line(line: str) -> dict:
    """The printed line, run by a shell exactly as printed (or, without curl, the same request)."""
    command = line.strip()
    assert command.startswith("curl -s http://127.0.0.1:")
    if shutil.which("curl") is not None:
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return msgspec.json.decode(out.stdout)
    url = command.split()[2]
    body = command.split(" -d '", 1)[1].rstrip("'")
    return httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60).json()


def test_cortex_up_from_the_source_checkout_serves_the_demo_model_and_stops_cleanly(start_up):
    up = start_up()
    line = up.wait_for_line("  curl ")
    assert any("is ready" in out for out in up.out), up.text()
    answer = _run_curl_line(line)
    assert answer["object"] == "chat.completion" and answer["model"] == "helexa/demo", answer
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    page = up.wait_for_line("fleet page: ").split("fleet page: ", 1)[1].strip()
    assert page == f"http://127.0.0.1:{up.gateway}/ui"
    ui = httpx.get(page, timeout=5)
    assert ui.status_code == 200 and ui.headers["content-type"].startswith("text/html")
    os.killpg(up.proc.pid, signal.SIGINT)  # Ctrl-C
    assert up.wait_exit() == 0, up.errors()
    assert "Traceback" not in up.errors()
    for port in (up.gateway, up.metrics, up.neuron):
        assert not _listening(port), f"port {port} still listens after cortex up stopped"


def test_a_neuron_that_cannot_start_stops_cortex_up_with_its_last_lines(start_up):
    up = start_up(env={"NEURON_CPU_DTYPE": "bogus"})  # the neuron's config check refuses it and exits 2
    assert up.wait_exit() == 1
    errors = up.errors()
    assert "error: the local neuron exited with code 2; its last lines:" in errors
    assert "cpu_dtype: expected one of auto, float32, bfloat16, got 'bogus'" in errors
    assert not any(line.startswith("  curl ") for line in up.out), "a curl line for a fleet that cannot answer"


def test_a_neuron_that_dies_after_the_model_is_ready_stops_cortex_up(start_up):
    up = start_up()
    ready = up.wait_for_line("cortex up: helexa/demo is ready")
    pid = int(ready.rsplit("(pid ", 1)[1].split(")")[0])
    os.kill(pid, signal.SIGKILL)
    assert up.wait_exit() == 1
    assert "error: the local neuron exited with code -9" in up.errors()
    assert not _listening(up.gateway)


def test_a_model_that_cannot_load_stops_cortex_up_with_the_neurons_reason(start_up):
    up = start_up("--model", "nobody/missing-model")
    assert up.wait_exit() == 1
    errors = up.errors()
    assert "error: the local neuron could not load nobody/missing-model: " in errors
    assert "was not found in model_roots" in errors
    assert not any(line.startswith("  curl ") for line in up.out)
