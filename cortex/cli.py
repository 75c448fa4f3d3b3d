"""The ``cortex`` command: serve the gateway, inspect and steer a running one, or bring up a
one-machine fleet (``cortex up``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

USAGE_ERROR, RUNTIME_ERROR = 2, 1
DEFAULT_ENDPOINT = "http://localhost:31313"
DEMO_MODEL = "helexa/demo"


# --- serving ------------------------------------------------------------------------------


def run_gateway(config, catalogue, *, after_start=None) -> int:
    """Serves the gateway until it is stopped; ``after_start(app)`` (a coroutine function) runs
    as a task once it listens."""
    from cortex.config import split_listen
    from cortex.gateway.app import LISTEN_BACKLOG, create_app
    from cortex.protocol.http import DeadlineProtocol
    from cortex.protocol.systemd import Notifier

    for what, listen in (("", config.gateway.listen), (" (metrics)", config.gateway.metrics_listen)):
        reason = _cannot_listen(*split_listen(listen))
        if reason:
            print(f"error: cannot listen on {listen}{what}: {reason}", file=sys.stderr)
            return RUNTIME_ERROR
    app = create_app(config, catalogue)
    if after_start is not None:
        tasks = []

        @app.after_server_start
        async def _start_task(app) -> None:
            tasks.append(asyncio.get_running_loop().create_task(after_start(app), name="after-start"))

        @app.before_server_stop
        async def _stop_task(app) -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    _tell_service_manager(app, Notifier())
    logging.getLogger("cortex").info(
        "cortex on %s (metrics on %s), %d neurons, %d catalogue models",
        config.gateway.listen,
        config.gateway.metrics_listen,
        len(config.neurons),
        len(catalogue.models),
    )
    host, port = split_listen(config.gateway.listen)
    try:
        app.run(
            host=host,
            port=port,
            single_process=True,
            access_log=False,
            motd=False,
            backlog=LISTEN_BACKLOG,
            protocol=DeadlineProtocol,
        )
    except OSError as exc:
        print(f"error: cannot listen on {config.gateway.listen}: {exc.strerror or exc}", file=sys.stderr)
        return RUNTIME_ERROR
    return 0


def _tell_service_manager(app, notifier) -> None:
    """systemd's side of a ``Type=notify`` unit (``cortex.protocol.systemd``): READY once both
    listeners accept connections, SIGHUP (``systemctl reload cortex``) re-reads the catalogue,
    STOPPING when the shutdown begins, watchdog keep-alives where the unit asks for them."""
    from cortex.config import ConfigError
    from cortex.gateway.app import reload_catalogue

    log = logging.getLogger("cortex")
    config = app.ctx.config
    serving = f"serving on {config.gateway.listen} (metrics on {config.gateway.metrics_listen})"

    def reload() -> None:
        notifier.reloading(f"reloading {config.models_config}")
        try:
            log.info("reloaded %s", reload_catalogue(app.ctx))
        except ConfigError as exc:
            log.error("reload refused, the catalogue in use is kept: %s", exc)
        notifier.ready(serving)

    @app.after_server_start
    async def _ready(app) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reload)
        app.ctx.tasks.append(loop.create_task(notifier.keep_alive(), name="watchdog"))
        notifier.ready(serving)

    @app.before_server_stop
    async def _stopping(app) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        notifier.stopping("stopping: finishing the requests in flight")


def _serve(args: argparse.Namespace) -> int:
    from cortex.config import ConfigError, load_catalogue, load_cortex_config

    try:
        config = load_cortex_config(Path(args.config) if args.config else None)
        catalogue = load_catalogue(Path(config.models_config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    return run_gateway(config, catalogue)


# --- client commands ----------------------------------------------------------------------


class GatewayError(Exception):
    pass


def _call(
    endpoint: str, path: str, body: dict | None = None, timeout: float | None = 30.0, *, accept: tuple[int, ...] = ()
) -> dict:
    """The gateway's JSON answer; an error status raises GatewayError with its message, unless it
    is one of ``accept`` (whose body is the answer, as for /health's 503)."""
    from cortex.config import client_api_key

    headers = {"content-type": "application/json"}
    key = client_api_key()
    if key:
        headers["authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        endpoint.rstrip("/") + path, data=data, headers=headers, method="POST" if data else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        data = exc.read()
        if exc.code in accept:
            return json.loads(data)
        try:
            message = json.loads(data)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise GatewayError(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise GatewayError(f"cannot reach the gateway at {endpoint}: {getattr(exc, 'reason', exc)}") from None


def _status(args: argparse.Namespace) -> int:
    """Fleet health and models; exit 1 when the fleet is down (no neuron answers)."""
    health = _call(args.endpoint, "/health", accept=(503,))
    models = _call(args.endpoint, "/v1/models")["data"]
    nodes = health["nodes"]
    print(f"fleet {health['status']}: {nodes['healthy']}/{nodes['total']} neurons up")
    for m in models:
        where = ", ".join(f"{loc['node']} ({loc['status']})" for loc in m["locations"]) or "-"
        alias = f" -> {m['alias_of']}" if "alias_of" in m else ""
        print(f"  {m['id']}{alias}: {m['status']}  [{where}]")
    return RUNTIME_ERROR if health["status"] == "down" else 0


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _ps(args: argparse.Namespace) -> int:
    fleet = _call(args.endpoint, "/admin/fleet")
    rows = []
    for node in fleet["nodes"]:
        name = node["name"] + (f" ({node['busy']})" if node.get("busy") else "")
        if not node["models"]:
            rows.append(["-", name, "up" if node["up"] else "DOWN", "-", "-", "-", "-", "-", "-"])
        for m in node["models"]:
            mb = m.get("vram_used_mb") or m.get("footprint_mb")
            memory = f"{mb} MB" if mb else "-"
            status = "draining" if m.get("draining") else m["status"]
            if status == "loading" and m.get("load_progress") is not None:
                status = f"loading {100 * m['load_progress']:.0f}%"
            idle = f"{m['idle_secs']:.0f}s" if m.get("idle_secs") is not None else "-"
            in_flight = str(node["in_flight"].get(m["id"], 0))
            quant = m.get("quant") or "-"  # the block type or mix the weights are held in; "-": dense
            priority, queued = str(m.get("priority", "-")), str(m.get("queued", 0))
            rows.append([m["id"], name, status, memory, quant, priority, in_flight, queued, idle])
    for model, count in sorted(fleet.get("waiting", {}).items()):
        rows.append([model, "-", "waiting for room", "-", "-", "-", "0", str(count), "-"])
    print(_table(rows, ["MODEL", "NODE", "STATUS", "MEMORY", "QUANT", "PRIORITY", "IN-FLIGHT", "QUEUED", "IDLE"]))
    return 0


def _progress(endpoint: str, model: str) -> tuple[str, float | None]:
    for node in _call(endpoint, "/admin/fleet")["nodes"]:
        for m in node["models"]:
            if m["id"] == model:
                return m["status"], m.get("load_progress")
    return "waiting", None


def _load(args: argparse.Namespace) -> int:
    """Asks for the load and waits for its answer (which says why, when it fails) on a thread,
    showing the load's progress from /admin/fleet meanwhile."""
    import threading

    body = {"model": args.model, "wait": True}
    if args.node:
        body["node"] = args.node
    started = time.monotonic()
    outcome: dict = {}

    def ask() -> None:
        try:
            outcome["answer"] = _call(args.endpoint, "/admin/models/load", body, timeout=None)
        except GatewayError as exc:
            outcome["error"] = exc

    asking = threading.Thread(target=ask, name="load", daemon=True)
    asking.start()
    tty = sys.stderr.isatty()
    shown = False
    while True:
        asking.join(timeout=0.5 if tty else 5)
        if not asking.is_alive():
            break
        try:
            status, progress = _progress(args.endpoint, args.model)
        except GatewayError:
            continue  # the answer of the load itself says what went wrong
        bar = "#" * int(30 * (progress or 0))
        line = f"{status} {args.model}: [{bar:<30}] {100 * (progress or 0):3.0f}%  {time.monotonic() - started:5.0f} s"
        print("\r" + line if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
        shown = True
    if tty and shown:
        print(file=sys.stderr)
    if "error" in outcome:
        raise GatewayError(f"loading {args.model} failed: {outcome['error']}")
    answer = outcome["answer"]
    print(
        f"{answer.get('model', args.model)} loaded on {answer.get('node', '?')} in {time.monotonic() - started:.1f} s"
    )
    return 0


def _unload(args: argparse.Namespace) -> int:
    body = {"model": args.model, "force": args.force}
    if args.node:
        body["node"] = args.node
    answer = _call(args.endpoint, "/admin/models/unload", body, timeout=600)
    print(f"{answer['model']} unloaded from {', '.join(answer['nodes'])}")
    return 0


# --- cortex up ----------------------------------------------------------------------------

UP_POLL_SECS = 0.25
UP_PROGRESS_SECS = 5.0
NEURON_TAIL_LINES = 20


def _cannot_listen(host: str, port: int) -> str | None:
    """Why a server could not listen there now, or None (bound with SO_REUSEADDR, as the servers
    bind: a port whose last connections linger in TIME_WAIT is free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def neuron_command(*args: str) -> list[str]:
    """The installed ``neuron`` program, whatever the working directory. ``-P`` keeps the current
    directory off ``sys.path``: run from a source checkout, ``python -m neuron.cli`` would
    otherwise import the checkout's ``neuron/`` folder, which has no built extension."""
    return [sys.executable, "-P", "-m", "neuron.cli", *args]


class LocalNeuron:
    """The neuron child of ``cortex up``: in its own session (Ctrl-C reaches the gateway only,
    which then stops it once, cleanly), its log relayed to our stderr and its last lines kept
    for the message if it dies."""

    def __init__(self, config_path: Path) -> None:
        import collections
        import threading

        self.tail: collections.deque[str] = collections.deque(maxlen=NEURON_TAIL_LINES)
        self.proc = subprocess.Popen(
            neuron_command("serve", "--config", str(config_path)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._relay = threading.Thread(target=self._relay_log, name="neuron-log", daemon=True)
        self._relay.start()

    def _relay_log(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(line)
            print(line, file=sys.stderr, flush=True)

    def exited(self) -> int | None:
        return self.proc.poll()

    def death_notice(self) -> str:
        self._relay.join(timeout=2)  # the last lines it wrote before it died
        lines = "\n".join(f"  | {line}" for line in self.tail) or "  | (it wrote nothing)"
        return f"error: the local neuron exited with code {self.proc.returncode}; its last lines:\n{lines}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._relay.join(timeout=2)


async def _model_failure(http, neuron_url: str, model: str) -> str | None:
    """The neuron's reason when its load of ``model`` failed, else None."""
    import aiohttp

    try:
        async with http.get(neuron_url + "/models", timeout=aiohttp.ClientTimeout(total=5)) as r:
            infos = await r.json() if r.status == 200 else []
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    for info in infos:
        if info.get("id") == model and info.get("status") == "failed":
            return info.get("error") or "the load failed"
    return None


async def _ask_once(http, url: str, body: str) -> tuple[int, dict]:
    import aiohttp

    try:
        async with http.post(
            url, data=body, headers={"content-type": "application/json"}, timeout=aiohttp.ClientTimeout(total=60)
        ) as r:
            try:
                return r.status, await r.json(content_type=None)
            except ValueError:
                return r.status, {}
    except (aiohttp.ClientError, TimeoutError):
        return 0, {}


def _up_watcher(neuron: LocalNeuron, model: str, gateway_url: str, neuron_url: str, banner: str, body: str, result):
    """Once the gateway listens: waits until ``model`` answers a real request through it, then
    prints the banner; from then on (and before), a neuron that exits stops ``cortex up`` with
    its last log lines and exit code 1."""

    def stop(code: int) -> None:
        # as Ctrl-C would: Sanic's own signal handler stops the server whatever stage it is in
        result["code"] = code
        os.kill(os.getpid(), signal.SIGINT)

    async def watch(app) -> None:
        http = app.ctx.http
        started = last_note = time.monotonic()
        ready = False
        while True:
            if neuron.exited() is not None:
                print(neuron.death_notice(), file=sys.stderr, flush=True)
                stop(RUNTIME_ERROR)
                return
            if not ready:
                failure = await _model_failure(http, neuron_url, model)
                if failure is not None:
                    print(f"error: the local neuron could not load {model}: {failure}", file=sys.stderr, flush=True)
                    stop(RUNTIME_ERROR)
                    return
                status, answer = await _ask_once(http, gateway_url + "/v1/chat/completions", body)
                if status == 200 and answer.get("usage"):
                    ready = True
                    print(banner, flush=True)
                elif status not in (0, 502, 503, 504):
                    message = (answer.get("error") or {}).get("message", answer)
                    print(f"error: {model} does not answer: HTTP {status}: {message}", file=sys.stderr, flush=True)
                    stop(RUNTIME_ERROR)
                    return
                elif time.monotonic() - last_note >= UP_PROGRESS_SECS:
                    last_note = time.monotonic()
                    waited = last_note - started
                    print(f"cortex up: waiting for the neuron to serve {model} ({waited:.0f} s)", file=sys.stderr)
            await asyncio.sleep(UP_POLL_SECS)

    return watch


def _up(args: argparse.Namespace) -> int:
    import importlib.util

    from cortex.config import (
        Catalogue,
        CortexConfig,
        GatewaySection,
        ModelProfile,
        NeuronEntry,
        demo_models_dir,
        split_listen,
    )

    if importlib.util.find_spec("neuron") is None or importlib.util.find_spec("torch") is None:
        print("error: cortex up runs a local neuron: install it with pip install 'helexa[neuron]'", file=sys.stderr)
        return USAGE_ERROR
    host, port = split_listen(args.listen)
    mhost, mport = split_listen(args.metrics_listen)
    for what, flag, h, p in (
        ("gateway", "--listen", host, port),
        ("metrics", "--metrics-listen", mhost, mport),
        ("neuron", "--neuron-port", "127.0.0.1", args.neuron_port),
    ):
        if _cannot_listen(h, p):
            print(f"error: port {p} ({what}) is in use; pick another with {flag}", file=sys.stderr)
            return RUNTIME_ERROR
    models_dir = Path(args.models_dir) if args.models_dir else demo_models_dir()
    model = args.model or DEMO_MODEL
    if model == DEMO_MODEL and not (models_dir / DEMO_MODEL / "config.json").is_file():
        print(f"cortex up: writing the demo model to {models_dir / DEMO_MODEL}", file=sys.stderr, flush=True)
        made = subprocess.run(neuron_command("demo-model", "--force", str(models_dir / DEMO_MODEL)))
        if made.returncode != 0:
            print("error: writing the demo model failed (see above)", file=sys.stderr)
            return RUNTIME_ERROR
    work = Path(tempfile.mkdtemp(prefix="cortex-up-"))
    neuron_cfg = work / "neuron.toml"
    neuron_cfg.write_text(
        f'host = "127.0.0.1"\nport = {args.neuron_port}\nmodel_roots = [{json.dumps(str(models_dir))}]\n'
        f"allow_download = {'true' if args.allow_download else 'false'}\n"
        f"[[default_models]]\nmodel_id = {json.dumps(model)}\n"
    )
    neuron_url = f"http://127.0.0.1:{args.neuron_port}"
    config = CortexConfig(
        gateway=GatewaySection(listen=args.listen, metrics_listen=args.metrics_listen, poll_interval_secs=2.0),
        neurons=[NeuronEntry(name="local", endpoint=neuron_url)],
    )
    catalogue = Catalogue(models=[ModelProfile(id=model, min_devices=0)])
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32})
    print(f"cortex up: starting a local neuron on {neuron_url} to serve {model}", file=sys.stderr, flush=True)
    neuron = LocalNeuron(neuron_cfg)
    banner = (
        f"\ncortex up: {model} is ready. gateway http://{shown}:{port}/v1 (metrics http://{shown}:{mport}/metrics), "
        f"neuron {neuron_url} (pid {neuron.proc.pid})\n"
        f"try:\n  curl -s http://{shown}:{port}/v1/chat/completions -H 'content-type: application/json' -d '{body}'\n"
        f"fleet page: http://{shown}:{port}/ui\n"
        "Ctrl-C stops both.\n"
    )
    result = {"code": 0}
    loopback = "127.0.0.1" if host in ("0.0.0.0", "", "localhost") else ("::1" if host == "::" else host)
    gateway_url = f"http://{loopback if ':' not in loopback else f'[{loopback}]'}:{port}"
    watcher = _up_watcher(neuron, model, gateway_url, neuron_url, banner, body, result)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        code = run_gateway(config, catalogue, after_start=watcher)
        return code or result["code"]
    except KeyboardInterrupt:
        return result["code"]
    finally:
        neuron.stop()
        shutil.rmtree(work, ignore_errors=True)


# --- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cortex",
        description="The helexa gateway: one OpenAI API in front of every neuron in the fleet.",
        epilog="Client commands present $CORTEX_API_KEY when it is set.",
    )
    from cortex import __version__

    parser.add_argument("--version", action="version", version=f"cortex (helexa) {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway: the API on gateway.listen, Prometheus metrics on gateway.metrics_listen.",
        epilog="SIGHUP (systemctl reload cortex) re-reads models_config: the catalogue and aliases change for new "
        "requests, streams in flight go on; a file that no longer loads is refused and the old catalogue kept. "
        "Under systemd (Type=notify) the gateway reports READY once both listeners accept connections.",
    )
    serve.add_argument("--config", "-c", metavar="PATH", help="cortex.toml (default: built-in defaults + CORTEX_* env)")
    serve.set_defaults(run=_serve)

    def client(name: str, help_text: str, run) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="gateway URL (default: %(default)s)")
        p.set_defaults(run=run)
        return p

    client("status", "fleet health and models of a running gateway", _status)
    client("ps", "table of model x node: status, memory, priority, requests in flight and queued", _ps)
    for name, run, text in (("load", _load, "load MODEL (with progress)"), ("unload", _unload, "unload MODEL")):
        p = client(name, text, run)
        p.add_argument("model", metavar="MODEL")
        p.add_argument("--node", help="this neuron only (default: where placement says / wherever it is)")
        if name == "unload":
            p.add_argument("--force", action="store_true", help="a model in use: let its requests finish, then unload")
    up = sub.add_parser("up", help="a local neuron and a gateway in front of it, serving the demo model")
    up.add_argument("--listen", default="127.0.0.1:31313", help="gateway API address (default: %(default)s)")
    up.add_argument("--metrics-listen", default="127.0.0.1:31314", help="(default: %(default)s)")
    up.add_argument("--neuron-port", type=int, default=13131, help="(default: %(default)s)")
    up.add_argument("--model", help=f"model id to serve (default: the built-in {DEMO_MODEL})")
    up.add_argument("--models-dir", help="model root for the local neuron (default: the helexa cache)")
    up.add_argument("--allow-download", action="store_true", help="let the neuron fetch --model from the hub")
    up.set_defaults(run=_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return RUNTIME_ERROR


if __name__ == "__main__":
    sys.exit(main())
