"""The ``neuron`` command: ``serve``, ``discover`` and ``demo-model``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import msgspec

USAGE_ERROR, RUNTIME_ERROR = 2, 1


def _serve(args: argparse.Namespace) -> int:
    from neuron.config import ConfigError, load_neuron_config

    try:
        config = load_neuron_config(Path(args.config) if args.config else None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if args.port is not None:
        config = msgspec.structs.replace(config, port=args.port)
    from neuron.api.app import create_app

    app = create_app(config)
    logging.getLogger(__name__).info("neuron listening on %s:%d", config.host, config.port)
    try:
        app.run(host=config.host, port=config.port, single_process=True, access_log=False, motd=False)
    except OSError as exc:
        print(f"error: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return RUNTIME_ERROR
    return 0


def _discover(args: argparse.Namespace) -> int:
    from neuron import __version__, hardware
    from neuron.engine.residency import HARNESSES

    doc = hardware.discover(__version__, list(HARNESSES))
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(doc).decode(), indent=2) + "\n")
    return 0


def _demo_model(args: argparse.Namespace) -> int:
    from neuron.demo import write_demo_model

    out = Path(args.dir)
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"error: {out} exists and is not empty (use --force to overwrite)", file=sys.stderr)
        return USAGE_ERROR
    write_demo_model(out)
    print(f"wrote the demo model to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuron",
        description="The helexa per-host daemon: loads models onto this host's GPUs (or CPU) and serves them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser("serve", help="run the daemon (HTTP API on port 13131 by default)")
    serve.add_argument("--config", "-c", metavar="PATH", help="neuron.toml (default: built-in defaults + NEURON_* env)")
    serve.add_argument("--port", "-p", type=int, metavar="N", help="listen on this port instead of the config's")
    serve.set_defaults(run=_serve)
    discover = sub.add_parser("discover", help="print this host's discovery document (JSON) and exit")
    discover.set_defaults(run=_discover)
    demo = sub.add_parser("demo-model", help="write the built-in demo model (tiny Qwen3) to DIR")
    demo.add_argument("dir", metavar="DIR")
    demo.add_argument("--force", action="store_true", help="write into a non-empty directory")
    demo.set_defaults(run=_demo_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
