"""A rank process of a tensor-parallel model (rank >= 1): joins the model's gloo group, builds its
shard of the checkpoint and a KV pool (and state slots) the size rank 0's engine uses, then runs
every step rank 0 sends, in lockstep with it (the collectives meet inside the forward).

Started by :class:`neuron.tp.executor.TpExecutor`, never by hand:

    python -m neuron.tp.worker MODEL_DIR --rank R --world N --port P --dtype float32
        --blocks B --state-slots S [--quant Q] [--timeout-s T]

Frames go over stdin/stdout (``neuron.tp.wire``); stdout is kept for them, anything printed goes
to stderr (the neuron's log).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

import torch

from neuron.tp import wire


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m neuron.tp.worker", description=__doc__)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--quant")
    ap.add_argument("--blocks", type=int, required=True)
    ap.add_argument("--state-slots", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout-s", type=float, default=60.0)
    args = ap.parse_args()
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # prints must not corrupt the frames
    inbox = sys.stdin.buffer
    torch.set_num_threads(args.threads)

    from neuron.tp.comm import GlooCommunicator
    from neuron.tp.executor import build_rank

    comm = GlooCommunicator(args.rank, args.world, args.host, args.port, timeout_s=args.timeout_s)
    try:
        model, pool = build_rank(
            args.model_dir, comm, getattr(torch, args.dtype), args.quant, args.blocks, args.state_slots
        )
    except Exception as exc:
        wire.send(channel, ("error", f"{type(exc).__name__}: {exc}"))
        return 1
    from neuron.loading.weights import resident_bytes

    memory = resident_bytes(model) + pool.nbytes()  # this rank's shard and its KV pool
    wire.send(channel, ("ready", {"rank": args.rank, "pid": os.getpid(), "memory_bytes": memory}))
    device = torch.device("cpu")
    while True:
        try:
            message = wire.recv(inbox)
        except EOFError:
            return 0  # the neuron went away
        if message[0] == "stop":
            wire.send(channel, ("ok",))
            return 0
        try:
            with torch.inference_mode():
                model(wire.batch_of(message[1], device), pool)
            wire.send(channel, ("ok",))
        except Exception as exc:
            traceback.print_exc()
            wire.send(channel, ("error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    sys.exit(main())
