"""``GET /admin/events`` on a real gateway in front of neuron test doubles: the snapshot, the
events of a cold load and of an eviction in order, resume from Last-Event-ID, a stalled page
dropped without slowing another, admin auth; and ``GET /`` for browsers."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

USER = [{"role": "user", "content": "Hi"}]
GB10 = 10000


class EventStream:
    """A reader of one server-sent-event stream: (id, kind, data) frames, comments skipped."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()
        self.seen: list[tuple[str, str, dict]] = []

    def next(self) -> tuple[str, str, dict]:
        event_id = kind = ""
        data: list[str] = []
        for line in self.lines:
            if line.startswith(":"):
                continue
            if not line:
                if data:
                    frame = (event_id, kind, json.loads("\n".join(data)))
                    self.seen.append(frame)
                    return frame
                continue
            field, _, value = line.partition(": ")
            if field == "id":
                event_id = value
            elif field == "event":
                kind = value
            elif field == "data":
                data.append(value)
        raise EOFError("the stream ended")

    def until(self, match, deadline_secs: float = 30.0) -> list[tuple[str, str, dict]]:
        """Frames up to and including the first that ``match`` accepts."""
        got, deadline = [], time.monotonic() + deadline_secs
        while time.monotonic() < deadline:
            frame = self.next()
            got.append(frame)
            if match(frame):
                return got
        pytest.fail(f"no matching event within {deadline_secs} s; got {[(k, d) for _, k, d in got][-10:]}")


@contextmanager
def events(fleet, headers: dict | None = None) -> Iterator[EventStream]:
    with (
        httpx.Client(timeout=httpx.Timeout(5, read=30)) as client,
        client.stream("GET", fleet.url + "/admin/events", headers=headers or {}) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "text/event-stream"
        yield EventStream(response)


def model_events(frames, model: str) -> list[dict]:
    return [d for _, kind, d in frames if kind == "model" and d["model"] == model]


def eviction(**keys) -> str:
    values = {"min_residency_secs": 0, "swap_after_secs": 0.2, "max_wait_secs": 5, **keys}
    return "[eviction]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())


def test_the_snapshot_is_what_admin_fleet_says(start_fleet):
    fleet = start_fleet(
        {"a": {"devices": [24000], "loaded": ["m1"]}, "b": {"devices": [], "loaded": ["m2"]}},
        models=[{"id": "m1"}, {"id": "m3", "min_devices": 0}],
        aliases={"gpt-x": "m1"},
    )
    with events(fleet) as stream:
        event_id, kind, snap = stream.next()
        view = httpx.get(fleet.url + "/admin/fleet", timeout=5).json()
    assert kind == "snapshot" and event_id.rsplit("-", 1)[1].isdigit()

    def steady(nodes: list[dict]) -> list[dict]:  # what moves between two reads: uptime, idle clocks
        out = []
        for n in nodes:
            n = {**n, "health": {**n["health"], "uptime_secs": None}}
            n["models"] = [{**m, "idle_secs": None} for m in n["models"]]
            out.append(n)
        return out

    assert steady(snap["nodes"]) == steady(view["nodes"]) and snap["waiting"] == view["waiting"]
    assert [n["name"] for n in snap["nodes"]] == ["a", "b"]
    assert {n["name"]: [m["id"] for m in n["models"]] for n in snap["nodes"]} == {"a": ["m1"], "b": ["m2"]}
    assert [m["id"] for m in snap["catalogue"]] == ["m1", "m3"] and snap["aliases"] == {"gpt-x": "m1"}
    assert set(snap["stats"]) == {"m1", "m2"} and snap["stats"]["m1"]["requests"] == 0


def test_a_cold_load_is_told_loading_progress_loaded_then_served_in_stats(start_fleet):
    fleet = start_fleet({"a": {"devices": [24000], "load_secs": 2.0}}, models=[{"id": "m1"}], poll_secs=0.2)
    with events(fleet) as stream:
        assert stream.next()[1] == "snapshot"
        r = httpx.post(fleet.url + "/admin/models/load", json={"model": "m1", "wait": False}, timeout=5)
        assert r.status_code == 202
        frames = stream.until(lambda f: f[1] == "model" and f[2]["state"] == "loaded")
        told = model_events(frames, "m1")
        assert [e["state"] for e in told][-1] == "loaded" and told[-1]["node"] == "a"
        loading = [e["progress"] for e in told if e["state"] == "loading"]
        assert loading == sorted(loading) and len(set(loading)) == len(loading)  # told as it grows, once each
        assert any(0 < p < 1 for p in loading), loading
        assert {e["state"] for e in told} == {"loading", "loaded"}
        # a request served: the stats count it against the model
        with fleet.client() as client:
            assert list(client.chat.completions.create(model="m1", messages=USER, stream=True))  # TTFT: streamed
        frames = stream.until(lambda f: f[1] == "stats" and f[2]["models"].get("m1", {}).get("requests") == 1)
        row = frames[-1][2]["models"]["m1"]
        assert row["in_flight"] == 0 and row["queued"] == 0
        assert row["tokens_per_second"]["mean"] > 0 and row["ttft_seconds"]["mean"] > 0


def test_an_eviction_is_told_with_its_reason_and_the_model_that_needed_room(start_fleet):
    fleet = start_fleet(
        {"a": {"devices": [24000], "footprint": GB10 * 2, "loaded": ["m1"], "load_secs": 0.1}},
        models=[{"id": "m1"}, {"id": "m2"}],
        extra=eviction(),
    )
    with events(fleet) as stream:
        stream.next()
        r = httpx.post(fleet.url + "/admin/models/load", json={"model": "m2"}, timeout=30)
        assert r.status_code == 200, r.text
        frames = stream.until(lambda f: f[1] == "model" and f[2]["model"] == "m2" and f[2]["state"] == "loaded")
    told = [(e["state"], e.get("reason"), e.get("needed_by")) for e in model_events(frames, "m1")]
    assert told == [("unloading", "lru", "m2"), ("evicted", "lru", "m2")]
    order = [(d["model"], d["state"]) for _, k, d in frames if k == "model"]
    assert order.index(("m1", "evicted")) < order.index(("m2", "loaded"))


def test_resume_from_last_event_id_replays_what_was_missed(start_fleet):
    fleet = start_fleet({"a": {"devices": [24000], "load_secs": 0.1}}, models=[{"id": "m1"}])
    with events(fleet) as stream:
        last_id = stream.next()[0]
    r = httpx.post(fleet.url + "/admin/models/load", json={"model": "m1"}, timeout=30)  # while away
    assert r.status_code == 200
    with events(fleet, {"last-event-id": last_id}) as stream:
        frames = stream.until(lambda f: f[1] == "model" and f[2]["state"] == "loaded")
    assert "snapshot" not in [k for _, k, _ in frames]
    ids = [int(i.rsplit("-", 1)[1]) for i, _, _ in frames]
    assert ids[0] == int(last_id.rsplit("-", 1)[1]) + 1 and ids == sorted(ids)
    # an id this gateway never gave out gets a fresh snapshot
    with events(fleet, {"last-event-id": "0-5"}) as stream:
        assert stream.next()[1] == "snapshot"


def test_a_stalled_page_is_dropped_without_slowing_another(start_fleet):
    fleet = start_fleet(
        {"a": {"devices": [24000]}, "b": {"devices": [24000]}},
        poll_secs=0.05,  # a health event per neuron and poll: a steady flow
        gateway={"events_buffer": 16},
    )
    port = int(fleet.url.rsplit(":", 1)[1])
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connect: a small window)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(b"GET /admin/events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
    try:
        with events(fleet) as stream:
            stream.next()
            gaps, last, deadline = [], time.monotonic(), time.monotonic() + 60
            while "dropped an event stream" not in fleet.gateway.log_path.read_text():
                assert time.monotonic() < deadline, "the stalled page was never dropped"
                _, kind, _ = stream.next()
                if kind == "health":
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
            assert len(gaps) > 50 and max(gaps) < 1.0, max(gaps)  # the reading page never waited
            for _ in range(20):  # and it goes on after the drop
                stream.next()
        # the server closed the stalled connection: reading it now ends (EOF or reset), it never hangs
        stalled.settimeout(10)
        received = 0
        try:
            while chunk := stalled.recv(65536):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received > 0  # (it had been sent events until it stalled)
    finally:
        stalled.close()


def test_events_need_the_admin_key(start_fleet):
    fleet = start_fleet({"a": {"devices": [24000]}}, extra='[auth]\napi_keys = ["k"]\nadmin_keys = ["adm"]')
    url = fleet.url + "/admin/events"
    r = httpx.get(url, timeout=5)
    assert r.status_code == 401 and "admin key" in r.json()["error"]["message"]
    r = httpx.get(url, headers={"authorization": "Bearer k"}, timeout=5)
    assert r.status_code == 403
    with events(fleet, {"authorization": "Bearer adm"}) as stream:
        assert stream.next()[1] == "snapshot"


def test_browsers_at_the_root_find_the_fleet_page(start_fleet):
    fleet = start_fleet({"a": {"devices": [24000]}})
    page = httpx.get(fleet.url + "/", headers={"accept": "text/html,application/xhtml+xml;q=0.9"}, timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'href="/ui"' in page.text.replace("'", '"') and "1 of 1 neurons up" in page.text
    assert httpx.get(fleet.url + "/", timeout=5).json()["status"] == "ok"  # probes still get JSON
    ui = httpx.get(fleet.url + "/ui", timeout=5)
    assert ui.status_code == 200 and ui.headers["content-type"].startswith("text/html")
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        r = httpx.get(f"{fleet.url}/ui/{name}", timeout=5)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    r = httpx.get(fleet.url + "/ui/secrets.txt", timeout=5)
    assert r.status_code == 404 and "no file" in r.json()["error"]["message"]


def test_a_gateway_with_pages_open_stops_at_once(start_fleet):
    fleet = start_fleet({"a": {"devices": [24000]}})
    with events(fleet) as stream:
        stream.next()
        t0 = time.monotonic()
        os.killpg(fleet.gateway.proc.pid, signal.SIGTERM)
        with pytest.raises(EOFError):  # the stream ends cleanly, not at the graceful-shutdown timeout
            while True:
                stream.next()
        assert fleet.gateway.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5
