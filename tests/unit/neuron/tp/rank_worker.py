"""One rank of a tensor-parallel model, as its own process (started by test_tp_shard.py):
builds its shard of the checkpoint, joins the gloo group, runs the prompt and the decode steps
given, and (rank 0) writes every step's logits where it is told.

    python rank_worker.py FOLDER RANK WORLD PORT OUT [--quant Q] [--tokens JSON]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neuron.engine.stepper import SingleSequence, pool_for
from neuron.loading.isq import IsqPlan
from neuron.loading.safetensors import Checkpoint
from neuron.loading.weights import load_weights
from neuron.models import architecture_for
from neuron.tp.comm import GlooCommunicator
from neuron.tp.shard import Shard, ShardedSource, attach, local_config, splits_vocab


def build(folder: Path, shard: Shard, quant: str | None):
    raw = json.loads((folder / "config.json").read_text())
    arch = architecture_for(raw)
    cfg = arch.config_class.from_dict(raw)
    local = local_config(cfg, shard)
    plan = IsqPlan(quant, torch.float32, cfg.num_hidden_layers, cfg.tie_word_embeddings) if quant else None
    model = arch(local, dtype=torch.float32, device=torch.device("cpu"), plan=plan).eval()
    source = ShardedSource(Checkpoint(folder), cfg, shard)
    load_weights(model, source, redundant=model.tied_names, arch=arch.model_type, skip_prefixes=arch.skip_prefixes)
    source.close()
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("rank", type=int)
    ap.add_argument("world", type=int)
    ap.add_argument("port", type=int)
    ap.add_argument("out", type=Path)
    ap.add_argument("--quant")
    ap.add_argument("--tokens", required=True, help="JSON: [prompt ids, [decode ids...]]")
    args = ap.parse_args()
    torch.set_num_threads(1)
    shard = Shard(args.rank, args.world)
    comm = GlooCommunicator(args.rank, args.world, "127.0.0.1", args.port, timeout_s=60)
    model = build(args.folder, shard, args.quant)
    raw = json.loads((args.folder / "config.json").read_text())
    cfg = architecture_for(raw).config_class.from_dict(raw)
    blocks = attach(model, comm, vocab_parallel=splits_vocab(cfg, args.world))
    prompt, steps = json.loads(args.tokens)
    seq = SingleSequence(model, pool_for(model, len(prompt) + len(steps) + 16))
    logits = [seq.run(prompt, all_logits=True)] + [seq.run([t])[None] for t in steps]
    if args.rank == 0:
        torch.save({"logits": torch.cat(logits), "blocks": blocks}, args.out)
    comm.close()


if __name__ == "__main__":
    main()
