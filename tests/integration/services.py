"""Real server processes for the integration tests: started in their own process group on free
loopback ports, polled until ready (failing at once with the log tail if they exit), stopped with
SIGTERM and then SIGKILL; and a gateway with its fleet of neuron test doubles."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this test run handed out before (the OS may
    offer a just-closed port twice in a row)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class ServiceProcess:
    """A real server process in its own process group, its output in a log file."""

    def __init__(self, cmd: list[str], url: str, log_path: Path, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.url = url
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        own = ("NEURON_", "CORTEX_", "NOTIFY_", "WATCHDOG_")  # what configures the servers: the test's only
        env = {k: v for k, v in os.environ.items() if not k.startswith(own)} | (env or {})
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )

    def wait_log(self, needle: str, deadline_secs: float = 10.0) -> str:
        """The log once it holds ``needle`` (fails with the tail at the deadline)."""
        deadline = time.monotonic() + deadline_secs
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if needle in text:
                return text
            time.sleep(0.05)
        pytest.fail(f"{needle!r} never appeared in the log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_http(self, path: str, ready, deadline_secs: float = 90.0, what: str = "ready") -> None:
        deadline = time.monotonic() + deadline_secs
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.proc.args[2:4]} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if ready(httpx.get(self.url + path, timeout=2).json()):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        pytest.fail(f"not {what} after {deadline_secs} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


class NeuronProcess(ServiceProcess):
    def __init__(self, config_path: Path, port: int, log_path: Path, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "neuron.cli", "serve", "--config", str(config_path)]
        super().__init__(cmd, f"http://127.0.0.1:{port}", log_path, config_path.parent, env)

    def wait_ready(self, models: list[str], deadline_secs: float = 90.0) -> None:
        def loaded(health: dict) -> bool:
            states = {m: health["models"].get(m, {}).get("status") for m in models}
            if any(s == "failed" for s in states.values()):
                pytest.fail(f"a default model failed to load: {states}\n{self.log_tail()}")
            return all(s == "loaded" for s in states.values())

        self.wait_http("/health", loaded, deadline_secs, what="loaded")


def write_config(
    path: Path, port: int, root: Path, defaults: list[str], *, top: dict | None = None, **admission: int | float
) -> Path:
    """A neuron.toml: these ports, roots and default models, float32 on the CPU, ``top`` keys
    (e.g. ``api_key``) and the ``[admission]`` keys given."""
    lines = [f"port = {port}", 'host = "127.0.0.1"', f'model_roots = ["{root}"]', "allow_download = false"]
    lines.append('cpu_dtype = "float32"')
    lines += [f"{k} = {json.dumps(v)}" for k, v in (top or {}).items()]
    if admission:
        lines.append("[admission]")
        lines += [f"{k} = {v}" for k, v in admission.items()]
    for model_id in defaults:
        lines += ["[[default_models]]", f'model_id = "{model_id}"']
    path.write_text("\n".join(lines) + "\n")
    return path


FAKE_NEURON = Path(__file__).with_name("fake_neuron.py")


@dataclass
class FleetUnderTest:
    gateway: ServiceProcess
    metrics_url: str
    neurons: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.gateway.url

    def client(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=30)

    def control(self, neuron: str, **changes) -> None:
        httpx.post(self.neurons[neuron].url + "/_control", json=changes, timeout=5).raise_for_status()

    def stats(self, neuron: str) -> dict:
        return httpx.get(self.neurons[neuron].url + "/_stats", timeout=5).json()

    def metrics(self) -> dict:
        return {f.name: f for f in text_string_to_metric_families(httpx.get(self.metrics_url, timeout=5).text)}


def catalogue_toml(models: list[dict], aliases: dict[str, str] | None = None) -> str:
    lines = []
    for m in models:
        lines.append("[[models]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in m.items()]
    if aliases:
        lines.append("[aliases]")
        lines += [f"{json.dumps(a)} = {json.dumps(t)}" for a, t in aliases.items()]
    return "\n".join(lines) + "\n"
