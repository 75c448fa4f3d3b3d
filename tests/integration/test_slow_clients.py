"""Slow clients cannot hold connections: on the gateway's API and metrics listeners and on the
neuron, a connection that never sends a request, one that trickles its headers a byte at a time
("slowloris") and one that trickles its body are each closed by their deadline, while the same
listener keeps answering everyone else."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from cortex.protocol.http import BODY_SECS, HEAD_SECS

TICK_SECS = HEAD_SECS / 2  # Sanic checks its timeouts this often
CLIENTS = 8


def _open(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port.rstrip("/"))), timeout=5)
    sock.settimeout(1.0)
    return sock


def _closed_after(sock: socket.socket, trickle: bytes, every_secs: float, limit_secs: float) -> float | None:
    """Sends ``trickle`` one byte every ``every_secs`` until the server closes the connection (or
    answers, 408); returns the seconds that took, None if still open after ``limit_secs``."""
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < limit_secs:
        if trickle:
            try:
                sock.sendall(trickle[i % len(trickle) : i % len(trickle) + 1])
            except OSError:
                return time.monotonic() - started
            i += 1
        try:
            data = sock.recv(4096)
            if not data or data.startswith(b"HTTP/1.1 408"):
                return time.monotonic() - started
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - started
        time.sleep(max(0.0, every_secs - 1.0))
    return None


def _siege(url: str, prefix: bytes, trickle: bytes, every_secs: float, limit_secs: float) -> list[float | None]:
    results: list[float | None] = [None] * CLIENTS

    def one(i: int) -> None:
        sock = _open(url)
        try:
            if prefix:
                sock.sendall(prefix)
            results[i] = _closed_after(sock, trickle, every_secs, limit_secs)
        finally:
            sock.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    # everyone else is still served while the slow clients wait
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert httpx.get(url + "/", timeout=2).status_code < 500
        time.sleep(0.2)
    for t in threads:
        t.join(timeout=limit_secs + 10)
    return results


@pytest.fixture(scope="module")
def listeners(running_neuron, real_fleet_module) -> dict[str, str]:
    fleet = real_fleet_module
    return {"gateway": fleet.url, "metrics": fleet.metrics_url.removesuffix("/metrics"), "neuron": running_neuron.url}


HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
BODY_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"


def test_slow_clients_are_cut_off_on_every_listener_by_their_deadlines(listeners):
    """All at once (the deadlines run in parallel): on each listener, clients that never send a
    request and clients that trickle their headers; on the gateway, clients that trickle a body."""
    head_limit, body_limit = HEAD_SECS + 3 * TICK_SECS, BODY_SECS + 3 * TICK_SECS
    sieges = {}
    for name, url in listeners.items():
        sieges[f"{name}: no request"] = (url, b"", b"", 1.0, head_limit)
        sieges[f"{name}: trickled headers"] = (url, HEAD, b"abcdefgh", 2.0, head_limit)
    sieges["gateway: trickled body"] = (listeners["gateway"], BODY_HEAD, b'{"model": ', 2.0, body_limit)
    results: dict[str, list[float | None]] = {}
    threads = [
        threading.Thread(target=lambda k=k, a=a: results.__setitem__(k, _siege(*a)), name=k) for k, a in sieges.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=body_limit + 30)
    assert set(results) == set(sieges), f"sieges that did not finish: {set(sieges) - set(results)}"
    for what, times in results.items():
        limit = BODY_SECS if "body" in what else HEAD_SECS
        assert all(r is not None and r <= limit + 2 * TICK_SECS for r in times), (what, times)
