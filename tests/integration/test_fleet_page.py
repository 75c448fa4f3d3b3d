"""The fleet page (``GET /ui``) in a real headless Chromium against a real ``cortex serve`` in
front of two neuron test doubles: the neurons' cards with their memory bars and models, a cold
load's progress and its end, an eviction told in the event log, an operator unload through the
page (the busy model's 409 asks for confirmation, then drains), no console errors and nothing
fetched from elsewhere, a lost connection resumed from ``Last-Event-ID`` (through a relay the test
cuts), the admin-key form when ``[auth]`` is on, and screenshots at desktop and phone width in
light and dark. Skipped without chromium, chromedriver or selenium."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

MB = 1024  # the page shows MiB figures as GiB with one decimal
USER = [{"role": "user", "content": "Hi"}]
DESKTOP, PHONE = (1360, 900), (390, 844)
WAIT_SECS = 20.0
HOSTILE = '<img src=x onerror="document.title=1">'  # a model id that must reach the page as text


class Relay:
    """A loopback TCP relay in front of the gateway that the test can cut: the page's connections
    break as if the network went away (``cut``), new ones are closed at once until ``resume``.
    It keeps what the browser sent (request heads) and the SSE ids it forwarded."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.accepting = True
        self.sockets: list[socket.socket] = []
        self.sent: list[bytes] = []  # browser -> gateway chunks
        self.ids: list[str] = []  # SSE ids gateway -> browser
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.accepting:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, self.sent), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: list[bytes] | None) -> None:
        pending = b""  # gateway -> browser: the line not yet complete
        try:
            while data := src.recv(65536):
                if record is not None:
                    record.append(data)
                else:
                    *lines, pending = (pending + data).split(b"\n")
                    self.ids += [line[4:].decode() for line in lines if line.startswith(b"id: ")]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.accepting = False
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets.clear()

    def resume(self) -> None:
        self.accepting = True

    def close(self) -> None:
        self.server.close()
        self.cut()

    def stream_requests(self) -> list[dict[str, str]]:
        """The headers of each GET /admin/events the browser sent, lower-cased names."""
        out = []
        for chunk in self.sent:
            head = chunk.decode(errors="replace")
            if head.startswith("GET /admin/events "):
                lines = head.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
                out.append({k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)})
        return out


def eviction(**keys) -> str:
    values = {"min_residency_secs": 0, "swap_after_secs": 0.2, "max_wait_secs": 10, **keys}
    return "[eviction]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())


@pytest.fixture
def browser(tmp_path) -> Iterator[WebDriver]:
    """Headless Chromium that can reach nothing but loopback, its console log kept."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # anything external fails loudly
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, what: str, predicate: Callable[[WebDriver], object], secs: float = WAIT_SECS):
    """predicate's first truthy answer, polled every 50 ms; fails naming ``what`` (and showing the
    page's event log) after ``secs``."""
    try:
        return WebDriverWait(
            driver,
            secs,
            poll_frequency=0.05,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(predicate)
    except TimeoutException:
        log = driver.execute_script("return document.getElementById('log')?.innerText ?? ''")
        pytest.fail(f"the page never showed {what} within {secs:g} s; its event log:\n{log}")


def card(driver: WebDriver, node: str):
    return driver.find_element(By.CSS_SELECTOR, f'article[data-node="{node}"]')


def model_row(driver: WebDriver, node: str, model: str):
    return driver.find_element(By.CSS_SELECTOR, f'article[data-node="{node}"] li[data-model="{model}"]')


def has_row(driver: WebDriver, node: str, model: str) -> bool:
    return bool(driver.find_elements(By.CSS_SELECTOR, f'article[data-node="{node}"] li[data-model="{model}"]'))


def role(el, name: str) -> str:
    """The text of el's ``data-role=name`` element (hidden or not)."""
    return el.find_element(By.CSS_SELECTOR, f'[data-role="{name}"]').get_attribute("textContent").strip()


def fact(row, name: str) -> str:
    return row.find_element(By.CSS_SELECTOR, f'.facts [data-role="{name}"] dd').get_attribute("textContent")


def log_lines(driver: WebDriver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#log li .text')].map(e => e.textContent)")


def fleet_models(fleet, node: str) -> dict[str, str]:
    view = httpx.get(fleet.url + "/admin/fleet", timeout=5).json()
    return {m["id"]: m["status"] for n in view["nodes"] if n["name"] == node for m in n["models"]}


def severe(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def record_progress(driver: WebDriver) -> None:
    """Has the page remember every value any progress element takes (and whether it was shown)."""
    driver.execute_script(
        """
        window.progressSeen = [];
        new MutationObserver(records => {
          for (const r of records) if (r.target.tagName === 'PROGRESS')
            window.progressSeen.push([r.target.closest('li').dataset.model, r.target.value,
                                      r.target.offsetParent !== null]);
        }).observe(document.body, {subtree: true, attributes: true, attributeFilter: ['value']});
        """
    )


def luminance(css_rgb: str) -> float:
    r, g, b = (int(x) / 255 for x in re.findall(r"\d+", css_rgb)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def screenshot(driver: WebDriver, path: Path, size: tuple[int, int], *, dark: bool) -> dict:
    """The whole page at ``size``'s width, light or dark; returns what the page measured then."""
    scheme = "dark" if dark else "light"
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"media": "", "features": [{"name": "prefers-color-scheme", "value": scheme}]}
    )
    metrics = {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": size[0] < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": max(size[1], height)})
    measured = driver.execute_script(
        """return {scheme: matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light',
                   background: getComputedStyle(document.body).backgroundColor,
                   text: getComputedStyle(document.body).color,
                   width: document.documentElement.scrollWidth}"""
    )
    driver.save_screenshot(str(path))
    print(f"screenshot ({size[0]} px, {scheme}): {path}")
    return measured


def reset_emulation(driver: WebDriver) -> None:
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "", "features": []})


def test_the_fleet_page_follows_loads_evictions_and_unloads_live(start_fleet, browser, tmp_path):
    fleet = start_fleet(
        {
            "beast": {
                "devices": [24 * MB],
                "loaded": ["m1"],
                "footprints": {"m1": 14 * MB, "m2": 14 * MB, "m3": 6 * MB},  # m1 and m2 never fit together
                "load_secs": 3,
                "tokens": 80,  # a request takes 4 s: long enough to be in flight when the page unloads
                "token_delay": 0.05,
            },
            "pi": {"devices": [], "memory_mb": 32 * MB, "loaded": ["small"], "footprint": 2 * MB},
        },
        models=[{"id": m} for m in ("m1", "m2", "m3", HOSTILE)]
        + [{"id": "small", "min_devices": 0, "residency_priority": 7}],
        extra=eviction(),
    )
    driver = browser
    driver.get(fleet.url + "/ui")

    # 1. both neurons and their models, as the snapshot has them
    wait_for(driver, "the live stream", lambda d: d.find_element(By.ID, "conn").get_attribute("data-state") == "live")
    wait_for(driver, "m1 on beast", lambda d: role(model_row(d, "beast", "m1"), "status") == "loaded")
    beast = card(driver, "beast")
    assert role(beast, "state") == "up"
    assert role(beast, "endpoint") == fleet.neurons["beast"].url
    assert role(beast, "host").startswith("beast · 1× Fake GPU · CUDA 13.0")
    gpu = beast.find_element(By.CSS_SELECTOR, '[data-device="0"]')
    assert role(gpu, "memory") == "14.0 GiB / 24.0 GiB" and role(gpu, "free") == "10.0 GiB free"
    assert (role(gpu, "util"), role(gpu, "temp")) == ("0% util", "40 °C")
    segment = gpu.find_element(By.CSS_SELECTOR, '[data-segment="m1"]')
    assert segment.get_attribute("style").count("width: 58.33%") == 1  # 14 of 24 GiB
    assert not gpu.find_elements(By.CSS_SELECTOR, '[data-segment="other"]')  # all used memory is m1's
    m1 = model_row(driver, "beast", "m1")
    assert role(m1, "placement") == "14.0 GiB on GPU 0"
    assert [fact(m1, f) for f in ("priority", "in-flight", "queued", "context")] == ["100", "0", "0", "4096"]
    wait_for(driver, "small on pi", lambda d: role(model_row(d, "pi", "small"), "status") == "loaded")
    pi = card(driver, "pi")
    host = pi.find_element(By.CSS_SELECTOR, '[data-device="host"]')  # a CPU-only neuron: its host memory
    assert role(host, "memory") == "2.0 GiB / 32.0 GiB" and role(host, "free") == "30.0 GiB free"
    assert role(pi, "host").startswith("pi · CPU only, 8 cores")
    small = model_row(driver, "pi", "small")
    assert (role(small, "placement"), fact(small, "priority")) == ("2.0 GiB on host memory", "7")
    catalogue = {
        c.get_attribute("data-catalogue"): (
            role(c, "needs"),
            role(c, "where"),
            c.find_element(By.CSS_SELECTOR, ".load-control").is_displayed(),
        )
        for c in driver.find_elements(By.CSS_SELECTOR, "tr[data-catalogue]")
    }
    assert catalogue == {  # a load control only where the model is resident nowhere
        "m1": ("1 GPU · prio 100", "beast", False),
        "m2": ("1 GPU · prio 100", "—", True),
        "m3": ("1 GPU · prio 100", "—", True),
        "small": ("CPU · prio 7", "pi", False),
        HOSTILE: ("1 GPU · prio 100", "—", True),
    }
    names = driver.execute_script("return [...document.querySelectorAll('#catalogue .mname')].map(e => e.textContent)")
    assert HOSTILE in names and driver.find_elements(By.TAG_NAME, "img") == []  # text, not markup

    # 2. a cold load through the page's own control: progress, then loaded, without a reload
    record_progress(driver)
    row = driver.find_element(By.CSS_SELECTOR, 'tr[data-catalogue="m3"]')
    Select(row.find_element(By.CSS_SELECTOR, '[data-role="load-node"]')).select_by_value("beast")
    row.find_element(By.CSS_SELECTOR, '[data-role="load"]').click()
    wait_for(driver, "m3 loading on beast", lambda d: role(model_row(d, "beast", "m3"), "status") == "loading")
    wait_for(  # (for the screenshot: a load under way)
        driver,
        "m3's progress",
        lambda d: float(model_row(d, "beast", "m3").find_element(By.TAG_NAME, "progress").get_attribute("value")) > 0,
    )
    screenshot(driver, tmp_path / "desktop-loading.png", DESKTOP, dark=False)
    reset_emulation(driver)
    wait_for(driver, "m3 loaded on beast", lambda d: role(model_row(d, "beast", "m3"), "status") == "loaded")
    seen = driver.execute_script("return window.progressSeen")
    between = [v for model, v, shown in seen if model == "m3" and shown and 0 < v < 1]
    assert between, f"no progress strictly between 0 and 1 was shown for m3: {seen}"
    assert between == sorted(between)  # it only grew
    m3 = model_row(driver, "beast", "m3")
    assert not m3.find_element(By.CSS_SELECTOR, '[data-role="progress"]').is_displayed()
    assert role(m3, "placement") == "6.0 GiB on GPU 0"
    assert "m3 loaded on beast (6.0 GiB on GPU 0)" in log_lines(driver)
    assert fleet_models(fleet, "beast") == {"m1": "loaded", "m3": "loaded"}

    # 3. an eviction: m2 needs the room m1 holds (m1 is the least recently used)
    fleet.control("beast", load_secs=0.3)
    r = httpx.post(fleet.url + "/admin/models/load", json={"model": "m2", "node": "beast", "wait": False}, timeout=10)
    assert r.status_code == 202
    wait_for(driver, "the eviction in the log", lambda d: "evicted m1 from beast (lru, room for m2)" in log_lines(d))
    wait_for(driver, "m2 loaded on beast", lambda d: role(model_row(d, "beast", "m2"), "status") == "loaded")
    wait_for(driver, "m1 gone from beast", lambda d: not has_row(d, "beast", "m1"))
    gpu = card(driver, "beast").find_element(By.CSS_SELECTOR, '[data-device="0"]')
    segments = [s.get_attribute("data-segment") for s in gpu.find_elements(By.CSS_SELECTOR, ".seg")]
    assert sorted(segments) == ["m2", "m3"]
    wait_for(driver, "the memory reading after the swap", lambda d: role(gpu, "memory") == "20.0 GiB / 24.0 GiB")
    wait_for(
        driver,
        "beast no longer busy",
        lambda d: not card(d, "beast").find_element(By.CSS_SELECTOR, ".note").is_displayed(),
    )

    # screenshots with the fleet in a full state: desktop and phone, light and dark
    for size, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
        for dark in (False, True):
            measured = screenshot(driver, tmp_path / f"{name}-{'dark' if dark else 'light'}.png", size, dark=dark)
            assert measured["scheme"] == ("dark" if dark else "light")
            assert (luminance(measured["background"]) < 0.15) == dark  # the page follows the scheme
            assert abs(luminance(measured["background"]) - luminance(measured["text"])) > 0.6  # and stays readable
            assert measured["width"] <= size[0], f"the page is wider than {size[0]} px: {measured['width']}"
    reset_emulation(driver)

    # 4. unload through the page: m2 is busy, so the gateway answers 409 and the page asks first
    answers: list[httpx.Response] = []
    reader = threading.Thread(
        target=lambda: answers.append(
            httpx.post(fleet.url + "/v1/chat/completions", json={"model": "m2", "messages": USER}, timeout=30)
        )
    )
    reader.start()
    try:

        def m2_in_flight(_) -> bool:
            view = httpx.get(fleet.url + "/admin/fleet", timeout=5).json()
            return next(n for n in view["nodes"] if n["name"] == "beast")["in_flight"].get("m2") == 1

        wait_for(driver, "the request to m2 in flight", m2_in_flight)
        model_row(driver, "beast", "m2").find_element(By.CSS_SELECTOR, '[data-role="unload"]').click()
        confirm = wait_for(
            driver,
            "the confirmation for busy m2",
            lambda d: (
                (c := model_row(d, "beast", "m2").find_element(By.CSS_SELECTOR, '[data-role="confirm"]')).is_displayed()
                and c
            ),
        )
        assert "1 request(s) in flight or queued on beast" in confirm.text
        screenshot(driver, tmp_path / "phone-confirm-dark.png", PHONE, dark=True)
        reset_emulation(driver)
        assert fleet_models(fleet, "beast")["m2"] == "loaded"  # nothing unloaded before the operator agrees
        confirm.find_element(By.CSS_SELECTOR, '[data-role="force"]').click()
        wait_for(driver, "m2 gone from beast", lambda d: not has_row(d, "beast", "m2"))
    finally:
        reader.join(30)
    assert [a.status_code for a in answers] == [200]  # the request in flight finished first
    assert answers[0].json()["choices"][0]["message"]["content"] == "reply from beast"
    assert "m2 unloaded from beast (operator)" in log_lines(driver)
    assert fleet_models(fleet, "beast") == {"m3": "loaded"}
    assert fleet.stats("beast")["unloads"] == ["m1", "m2"]

    # ... and an idle model unloads at once, no question asked
    model_row(driver, "pi", "small").find_element(By.CSS_SELECTOR, '[data-role="unload"]').click()
    wait_for(driver, "small gone from pi", lambda d: not has_row(d, "pi", "small"))
    assert card(driver, "pi").find_element(By.CSS_SELECTOR, ".empty").is_displayed()
    assert fleet_models(fleet, "pi") == {}
    assert driver.find_element(By.CSS_SELECTOR, 'tr[data-catalogue="small"] .load-control').is_displayed()

    # 5. a streamed request's decode speed and first-token latency reach the model's row ("stats")
    fleet.control("beast", tokens=5, token_delay=0.02)  # the neuron reports 4 tokens in 80 ms: 50 tok/s
    body = {"model": "m3", "messages": USER, "stream": True}
    with httpx.stream("POST", fleet.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and "data: [DONE]" in r.read().decode()
    wait_for(driver, "m3's decode speed", lambda d: fact(model_row(d, "beast", "m3"), "tps") == "50.0")
    ttft = fact(model_row(driver, "beast", "m3"), "ttft")
    assert re.fullmatch(r"\d+\.\d\d s", ttft) and 0 < float(ttft[:-2]) < 5, ttft

    # 6. no console errors but the one 409 the page handled; nothing loaded from anywhere else
    expected = f"{fleet.url}/admin/models/unload - Failed to load resource: the server responded with a status of 409"
    assert [m for m in severe(driver) if not m.startswith(expected)] == []
    origins = driver.execute_script(
        "return [...new Set(performance.getEntriesByType('resource').map(e => new URL(e.name).origin))]"
    )
    assert origins == [fleet.url]


def test_the_page_resumes_after_a_lost_connection_from_the_last_event_it_saw(start_fleet, browser):
    fleet = start_fleet(
        {"beast": {"devices": [24 * MB], "loaded": ["m1"], "footprint": 4 * MB, "load_secs": 0.3}},
        models=[{"id": "m1"}, {"id": "m2"}],
    )
    relay = Relay(int(fleet.url.rsplit(":", 1)[1]))
    driver = browser
    try:
        driver.get(relay.url + "/ui")
        wait_for(driver, "m1 on beast", lambda d: role(model_row(d, "beast", "m1"), "status") == "loaded")
        wait_for(driver, "a few events after the snapshot", lambda _: len(relay.ids) >= 3)
        relay.cut()  # the network goes away; while it is away, m2 loads
        wait_for(
            driver,
            "the lost connection",
            lambda d: d.find_element(By.ID, "conn").get_attribute("data-state") == "retrying",
        )
        forwarded = list(relay.ids)
        r = httpx.post(fleet.url + "/admin/models/load", json={"model": "m2", "wait": True}, timeout=30)
        assert r.json() == {"status": "loaded", "model": "m2", "node": "beast"}
        assert not has_row(driver, "beast", "m2")
        relay.resume()
        wait_for(
            driver, "m2 on beast after the reconnect", lambda d: role(model_row(d, "beast", "m2"), "status") == "loaded"
        )
        assert driver.find_element(By.ID, "conn").get_attribute("data-state") == "live"
    finally:
        relay.close()
    first, *retries = relay.stream_requests()
    assert "last-event-id" not in first
    resumed = retries[-1].get("last-event-id")  # the one that got through: from the last event the page saw
    assert all(r.get("last-event-id") == resumed for r in retries)
    assert resumed in forwarded[-2:], f"{resumed} is not among the last ids forwarded {forwarded[-5:]}"
    lines = log_lines(driver)
    assert "m2 loaded on beast (4.0 GiB on GPU 0)" in lines and "loading m2 on beast" in lines  # replayed
    assert not [line for line in lines if "snapshot" in line]  # a resume, not a fresh snapshot
    assert any(line.startswith("event stream lost") for line in lines)
    broken = re.escape(relay.url) + r"/admin/(events|fleet) - Failed to load resource: net::ERR_"  # the cut
    assert [m for m in severe(driver) if not re.match(broken, m)] == []


def test_the_page_asks_for_the_admin_key_and_keeps_it_for_the_tab(start_fleet, browser, tmp_path):
    fleet = start_fleet(
        {"beast": {"devices": [24 * MB], "loaded": ["m1"], "footprint": 4 * MB}},
        models=[{"id": "m1"}],
        extra='[auth]\napi_keys = ["k"]\nadmin_keys = ["adm"]',
    )
    driver = browser
    driver.get(fleet.url + "/ui")
    form = wait_for(driver, "the key form", lambda d: (f := d.find_element(By.ID, "auth")).is_displayed() and f)
    assert driver.find_element(By.ID, "conn").get_attribute("data-state") == "auth"
    assert form.find_element(By.ID, "auth-message").text == "This gateway asks for an admin key to show its fleet."
    assert driver.find_elements(By.CSS_SELECTOR, "article[data-node]") == []

    key = driver.find_element(By.ID, "auth-key")
    key.send_keys("k")  # an API key is not an admin key: refused, asked again
    driver.find_element(By.ID, "auth-submit").click()
    wait_for(
        driver,
        "the refusal",
        lambda d: (
            d.find_element(By.ID, "auth").is_displayed()
            and d.find_element(By.ID, "auth-message").text
            == "That key was refused: the key presented is not an admin key."
        ),
    )
    screenshot(driver, tmp_path / "phone-auth-light.png", PHONE, dark=False)
    reset_emulation(driver)
    key.clear()
    key.send_keys("adm")
    driver.find_element(By.ID, "auth-submit").click()
    wait_for(driver, "m1 on beast", lambda d: role(model_row(d, "beast", "m1"), "status") == "loaded")
    assert not driver.find_element(By.ID, "auth").is_displayed()
    assert driver.find_element(By.ID, "conn").get_attribute("data-state") == "live"
    assert driver.execute_script("return sessionStorage.getItem('cortex-admin-key')") == "adm"

    driver.refresh()  # the tab keeps the key: no question this time
    wait_for(driver, "m1 on beast after a reload", lambda d: role(model_row(d, "beast", "m1"), "status") == "loaded")
    assert not driver.find_element(By.ID, "auth").is_displayed()

    # the only console errors: the stream's own 401 and 403 before the key was right
    statuses = []
    for message in severe(driver):
        m = re.match(re.escape(fleet.url) + r"/admin/events - Failed to load resource: .* status of (\d+)", message)
        assert m is not None, f"unexpected console error: {message}"
        statuses.append(int(m.group(1)))
    assert statuses == [401, 403]
