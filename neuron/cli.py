"""The ``neuron`` command: ``serve``, ``discover`` and ``demo-model``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from cortex.protocol.fleet import ModelSpec

USAGE_ERROR, RUNTIME_ERROR = 2, 1


def _serve(args: argparse.Namespace) -> int:
    from neuron.config import ConfigError, load_neuron_config, restore_models

    try:
        config = load_neuron_config(Path(args.config) if args.config else None)
        restore = restore_models()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if args.port is not None:
        config = msgspec.structs.replace(config, port=args.port)
    from cortex.protocol.http import DeadlineProtocol
    from cortex.protocol.systemd import Notifier
    from neuron.api.app import create_app

    notifier = Notifier()
    app = create_app(config, restore_models=restore, notifier=notifier)
    logging.getLogger(__name__).info("neuron listening on %s:%d", config.host, config.port)
    try:
        app.run(
            host=config.host,
            port=config.port,
            single_process=True,
            access_log=False,
            motd=False,
            protocol=DeadlineProtocol,
        )
    except OSError as exc:
        print(f"error: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return RUNTIME_ERROR
    if app.ctx.restart_models is not None:
        notifier.reloading(f"restarting in place to load {len(app.ctx.restart_models)} models again")
        return _reexec(app.ctx.restart_models)
    return 0


def _reexec(models: list[ModelSpec]) -> int:
    """The end of ``POST /admin/restart``, once the server has stopped and every model is
    unloaded: replaces this process with a fresh copy of itself (same PID, same command line,
    whether started as ``neuron`` or ``python -m neuron.cli``), whose environment names the
    models to load again. A fresh process is the point: it gives back the memory that load and
    unload cycles left fragmented."""
    from neuron.config import restart_environ

    env = restart_environ(models)
    logging.getLogger(__name__).info("re-executing in place (pid %d) to load %d models again", os.getpid(), len(models))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError as exc:
        print(f"error: cannot re-execute {sys.executable}: {exc.strerror or exc}", file=sys.stderr)
    return RUNTIME_ERROR


def _discover(args: argparse.Namespace) -> int:
    from neuron import __version__, hardware
    from neuron.engine.residency import HARNESSES
    from neuron.loading.isq import isq_types

    doc = hardware.discover(__version__, list(HARNESSES), list(isq_types()))
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


def _quantize(args: argparse.Namespace) -> int:
    from neuron.loading.gguf_export import export_gguf
    from neuron.models import ModelError

    src, dst = Path(args.src), Path(args.dst)
    if not (src / "config.json").is_file():
        print(f"error: {src} is not an HF model folder (no config.json)", file=sys.stderr)
        return USAGE_ERROR
    if dst.is_dir() or dst.suffix.lower() != ".gguf":  # a folder: the file is named after the model and type
        dst = dst / f"{src.name}-{args.type.upper()}.gguf"
    if dst.exists() and not args.force:
        print(f"error: {dst} exists (use --force to overwrite)", file=sys.stderr)
        return USAGE_ERROR
    dst.parent.mkdir(parents=True, exist_ok=True)
    tty = sys.stderr.isatty()

    def progress(done: int, total: int, tensor: str) -> None:
        filled = 30 * done // total
        line = f"  [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {tensor}"
        if tty:
            print(f"\r{line:<90}", end="" if done < total else "\n", file=sys.stderr, flush=True)
        elif done == total or done % max(1, total // 10) == 0:
            print(line, file=sys.stderr, flush=True)

    logging.getLogger("gguf").setLevel(logging.WARNING)
    print(f"quantizing {src} to {args.type} -> {dst}", file=sys.stderr)
    try:
        out = export_gguf(src, dst, args.type, progress=progress)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        dst.unlink(missing_ok=True)
        return USAGE_ERROR
    kinds = ", ".join(f"{n} {t}" for t, n in sorted(out.types.items()))
    print(f"wrote {out.path} ({out.bytes / 2**20:.1f} MiB of tensors: {kinds}) in {out.secs:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuron",
        description="The helexa per-host daemon: loads models onto this host's GPUs (or CPU) and serves them.",
    )
    from neuron import __version__

    parser.add_argument("--version", action="version", version=f"neuron (helexa) {__version__}")
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
    from neuron.loading.gguf_export import FLOAT_EXPORTS
    from neuron.loading.isq import isq_types

    types = [*isq_types(), *FLOAT_EXPORTS]
    quant = sub.add_parser(
        "quantize",
        help="write an HF model folder as a GGUF file (llama.cpp loads it) with its weights quantized",
        description="Quantizes every matrix of an HF-layout model (config.json, safetensors, tokenizer.json) as an "
        "in-situ load with the same quant would, and writes one GGUF file with the model's metadata, tokenizer "
        "and chat template.",
    )
    quant.add_argument("src", metavar="SRC", help="the HF model folder")
    quant.add_argument("dst", metavar="DST", help="the .gguf file to write, or a folder to write it in")
    quant.add_argument(
        "--type",
        "-t",
        type=str.lower,
        default="q4_k_m",
        choices=types,
        metavar="TYPE",
        help=f"block type or mix, or f32 / f16 / bf16 unquantized (default: %(default)s; one of {', '.join(types)})",
    )
    quant.add_argument("--force", action="store_true", help="overwrite DST")
    quant.set_defaults(run=_quantize)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
