"""Both daemons under a service manager's eye: a real ``cortex serve`` and ``neuron serve`` with
``$NOTIFY_SOCKET`` pointing at a socket this test holds, as systemd does for a ``Type=notify``
unit. READY must mean "serving", a reload must re-read the catalogue (or keep it when the new file
is wrong), a stop must say so."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from integration.conftest import launch_gateway
from integration.services import NeuronProcess, catalogue_toml, free_port, write_config


class ServiceManager:
    """The systemd side of sd_notify: a datagram socket and the messages read from it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.seen: list[dict[str, str]] = []

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path, **extra}

    def next(self, key: str, deadline_secs: float = 60.0) -> dict[str, str]:
        """The next message that assigns ``key`` (the ones before it are kept in ``seen``)."""
        deadline = time.monotonic() + deadline_secs
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            message = dict(line.split("=", 1) for line in data.decode().split("\n"))
            self.seen.append(message)
            if key in message:
                return message
        pytest.fail(f"no {key}= within {deadline_secs} s; messages so far: {self.seen}")


@pytest.fixture
def manager() -> Iterator[ServiceManager]:
    with tempfile.TemporaryDirectory(prefix="sd") as tmp:  # sun_path holds 108 bytes: keep it short
        m = ServiceManager(str(Path(tmp) / "notify"))
        try:
            yield m
        finally:
            m.sock.close()


def test_gateway_ready_reload_and_stop(manager, running_neuron, tmp_path):
    fleet = launch_gateway(
        tmp_path,
        {"real": running_neuron.url},
        models=[{"id": "helexa/demo", "min_devices": 0}],
        env=manager.env(WATCHDOG_USEC="300000"),
    )
    gateway = fleet.gateway
    try:
        ready = manager.next("READY")
        assert ready["READY"] == "1" and ready["STATUS"].startswith("serving on 127.0.0.1:")
        # READY came once both listeners accept connections
        assert httpx.get(fleet.url + "/health", timeout=5).status_code == 200
        assert httpx.get(fleet.metrics_url, timeout=5).status_code == 200
        # WatchdogSec=0.3 s: keep-alives every 0.1 s
        beats = [manager.next("WATCHDOG", 2) for _ in range(3)]
        assert all(b == {"WATCHDOG": "1"} for b in beats)

        def catalogue_ids() -> set[str]:
            listed = httpx.get(fleet.url + "/v1/models", timeout=5).json()["data"]
            return {m["id"] for m in listed}

        assert "test/added" not in catalogue_ids()
        models = [{"id": "helexa/demo", "min_devices": 0}, {"id": "test/added", "min_devices": 0}]
        (tmp_path / "models.toml").write_text(catalogue_toml(models, {"gpt-test": "test/added"}))
        os.kill(gateway.proc.pid, signal.SIGHUP)  # systemctl reload cortex
        reloading = manager.next("RELOADING")
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        assert manager.next("READY")["READY"] == "1"
        assert {"test/added", "gpt-test"} <= catalogue_ids()
        assert "2 models, 1 aliases (+test/added)" in gateway.wait_log("reloaded")

        (tmp_path / "models.toml").write_text('[[models]]\nid = "test/x"\nvram = 1\n')  # an unknown key
        os.kill(gateway.proc.pid, signal.SIGHUP)
        manager.next("RELOADING")
        manager.next("READY")
        log = gateway.wait_log("reload refused")
        assert "models.toml" in log and "vram" in log
        assert {"test/added", "gpt-test"} <= catalogue_ids()  # the catalogue in use is kept
        assert gateway.proc.poll() is None

        os.killpg(gateway.proc.pid, signal.SIGTERM)
        assert manager.next("STOPPING")["STOPPING"] == "1"
        assert gateway.proc.wait(timeout=15) == 0
    finally:
        gateway.stop()


@pytest.mark.parametrize("after_models", [True, False])
def test_neuron_ready_when_listening_or_after_its_default_models(manager, model_root, tmp_path, after_models):
    port = free_port()
    cfg = write_config(
        tmp_path / "neuron.toml", port, model_root, ["helexa/demo"], top={"ready_after_default_models": after_models}
    )
    neuron = NeuronProcess(cfg, port, tmp_path / "neuron.log", env=manager.env())
    try:
        ready = manager.next("READY", 90)
        health = httpx.get(neuron.url + "/health", timeout=5).json()  # it listens when READY comes
        if after_models:
            assert health["models"]["helexa/demo"]["status"] == "loaded"
            assert ready["STATUS"] == f"serving on 127.0.0.1:{port}; loaded: helexa/demo"
            loading = [m["STATUS"] for m in manager.seen if "STATUS" in m and "READY" not in m]
            assert loading == [f"serving on 127.0.0.1:{port}; loading helexa/demo (1 of 1)"]
        else:
            assert ready["STATUS"] == f"serving on 127.0.0.1:{port}"
            while not (done := manager.next("STATUS", 90))["STATUS"].endswith("; loaded: helexa/demo"):
                pass
            assert "READY" not in done  # once is enough
            statuses = [m["STATUS"] for m in manager.seen]
            assert statuses.index(f"serving on 127.0.0.1:{port}; loading helexa/demo (1 of 1)") < len(statuses) - 1
        os.killpg(neuron.proc.pid, signal.SIGTERM)
        assert manager.next("STOPPING")["STATUS"] == "stopping: unloading the models"
        assert neuron.proc.wait(timeout=30) == 0
    finally:
        neuron.stop()
