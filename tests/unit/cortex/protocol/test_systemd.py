"""The sd_notify client against a real datagram socket, as systemd would hold it."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortex.protocol.systemd import Notifier


@pytest.fixture
def manager() -> Iterator[tuple[str, socket.socket]]:
    """A bound notification socket (a short path: sun_path holds 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sd") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        try:
            yield path, sock
        finally:
            sock.close()


def fields(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().split("\n"))


def test_assignments_arrive_as_one_datagram(manager):
    path, sock = manager
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("serving on 0.0.0.0:31313")
    assert fields(sock) == {"READY": "1", "STATUS": "serving on 0.0.0.0:31313"}
    assert notifier.stopping("bye")
    assert fields(sock) == {"STOPPING": "1", "STATUS": "bye"}


def test_reloading_carries_the_monotonic_clock(manager):
    path, sock = manager
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier({"NOTIFY_SOCKET": path}).reloading("reloading models.toml")
    got = fields(sock)
    assert got["RELOADING"] == "1" and got["STATUS"] == "reloading models.toml"
    assert before <= int(got["MONOTONIC_USEC"]) <= before + 5_000_000


def test_abstract_namespace_socket():
    name = f"helexa-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert fields(sock) == {"STATUS": "hello"}


def test_without_a_manager_nothing_is_sent():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog_secs is None


def test_a_vanished_socket_is_logged_once_and_never_raises(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, logger="cortex.protocol.systemd"):
        assert notifier.ready("x") is False
        assert notifier.status("y") is False
    assert len([r for r in caplog.records if "cannot notify" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("env", "secs"),
    [
        ({"WATCHDOG_USEC": "3000000"}, 3.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 3.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),  # another process's watchdog
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env, secs):
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent", **env}).watchdog_secs == secs


def test_keep_alive_feeds_the_watchdog_until_cancelled(manager):
    path, sock = manager
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "150000"})

    async def run() -> None:
        task = asyncio.create_task(notifier.keep_alive())
        await asyncio.sleep(0.2)  # a beat every 50 ms: at t = 0, 50, 100, 150 ms
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    sock.settimeout(0.1)
    beats = 0
    with pytest.raises(TimeoutError):
        while True:
            assert fields(sock) == {"WATCHDOG": "1"}
            beats += 1
    assert 3 <= beats <= 5
