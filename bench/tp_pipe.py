"""What the pipe to a tensor-parallel rank costs per engine step (``neuron.tp.wire``).

Each step, rank 0 pickles the batch's fields and writes them to every rank's stdin; the rank reads
and unpickles them before it can enter the step's first collective, and answers a small frame when
the step is done. This times that path against a rank process that only echoes (no model), for
decode batches of 1 to 64 sequences with 4,096-token contexts (block tables of 256 blocks) and a
2,048-token prefill, and prints it as a share of the step it would delay: the per-token budget
of a 70 tok/s GPU decode (14 ms). The round trip is what rank 0 spends: pickling, writing to
every rank, and reading their answers (the ranks' own unpickling overlaps rank 0's forward).

    .venv/bin/python bench/tp_pipe.py [--reps 2000] [--ranks 1]

Prints: ``| batch | frame bytes | fields + pickle µs | round trip µs (p50) | p99 µs | share of a 14 ms step |``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

import torch

from neuron.models import Batch
from neuron.tp import wire

ECHO = """
import sys
from neuron.tp import wire
inbox, out = sys.stdin.buffer, sys.stdout.buffer
while True:
    try:
        message = wire.recv(inbox)
    except EOFError:
        break
    wire.send(out, ("ok",))
"""
BLOCK = 16
GPU_STEP_MS = 1000 / 70


def decode_batch(seqs: int, context: int) -> Batch:
    blocks = context // BLOCK
    table = torch.arange(seqs * blocks, dtype=torch.int64).view(seqs, blocks)
    slots = table[:, -1] * BLOCK + (context - 1) % BLOCK
    return Batch(
        input_ids=torch.randint(0, 150_000, (seqs,)),
        positions=torch.full((seqs,), context - 1),
        query_starts=list(range(seqs + 1)),
        context_lens=[context] * seqs,
        block_tables=table,
        slot_mapping=slots,
        sample_indices=torch.arange(seqs),
    )


def prefill_batch(tokens: int) -> Batch:
    blocks = tokens // BLOCK
    return Batch(
        input_ids=torch.randint(0, 150_000, (tokens,)),
        positions=torch.arange(tokens),
        query_starts=[0, tokens],
        context_lens=[tokens],
        block_tables=torch.arange(blocks).view(1, blocks),
        slot_mapping=torch.arange(tokens),
        sample_indices=torch.tensor([tokens - 1]),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--ranks", type=int, default=1, help="echo processes written to each step (world - 1)")
    args = ap.parse_args()
    procs = [
        subprocess.Popen([sys.executable, "-c", ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in range(args.ranks)
    ]
    cases = [(f"decode B={b}", decode_batch(b, 4096)) for b in (1, 8, 32, 64)]
    cases.append(("prefill 2048 tokens", prefill_batch(2048)))
    print(
        f"# tp pipe: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"torch {torch.__version__}, {args.ranks} rank process(es), {args.reps} steps a row"
    )
    print("| batch | frame bytes | fields + pickle µs | round trip µs (p50) | p99 µs | share of a 14 ms step |")
    print("|---|---|---|---|---|---|")
    for name, batch in cases:
        fields = wire.batch_fields(batch)
        size = len(wire.pickle.dumps(("step", fields), protocol=wire.pickle.HIGHEST_PROTOCOL))
        pickles, trips = [], []
        for i in range(args.reps + 50):
            t0 = time.perf_counter()
            fields = wire.batch_fields(batch)
            wire.pickle.dumps(("step", fields), protocol=wire.pickle.HIGHEST_PROTOCOL)
            t1 = time.perf_counter()
            for p in procs:
                wire.send(p.stdin, ("step", fields))
            for p in procs:
                wire.recv(p.stdout)
            t2 = time.perf_counter()
            if i >= 50:  # warm-up
                pickles.append((t1 - t0) * 1e6)
                trips.append((t2 - t1) * 1e6)
        trips.sort()
        p50, p99 = statistics.median(trips), trips[int(len(trips) * 0.99)]
        share = p50 / (GPU_STEP_MS * 1000)
        print(f"| {name} | {size:,} | {statistics.median(pickles):.0f} | {p50:.0f} | {p99:.0f} | {share:.1%} |")
    for p in procs:
        p.stdin.close()
        p.wait()


if __name__ == "__main__":
    main()
