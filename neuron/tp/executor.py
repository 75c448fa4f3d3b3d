"""The multi-rank executor behind the engine's executor seam: rank 0 is the neuron's own device
thread, ranks 1.. are processes it starts (``python -m neuron.tp.worker``), one per extra device
(on the CPU: extra processes over gloo). Each step's batch goes to every rank first, rank 0 then
runs its own forward (the all-reduces meet inside it), and every rank answers before the step
returns; logits come from rank 0 (every rank computes the same).

A rank that dies or errs, or a collective that times out, fails the step (the engine fails the
step's requests with the error) and the executor with it: every later step fails at once with
the same message, and :attr:`TpExecutor.failed` says why, until the model is unloaded
(:meth:`close` stops the ranks). Nothing waits forever: a collective gives up after
``timeout_s``, a rank's answer after the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cortex.protocol.fleet import RankMemory
from neuron.engine.kv_cache import KVPool, kv_layout, recurrent_spec
from neuron.engine.state_slots import StatePool
from neuron.loading.weights import resident_bytes
from neuron.models import Batch
from neuron.tp import wire
from neuron.tp.comm import Communicator, GlooCommunicator, free_port
from neuron.tp.shard import Shard, ShardedSource, attach, local_config, splits_vocab

log = logging.getLogger(__name__)


def build_rank(
    model_dir: Path, comm: Communicator, dtype: torch.dtype, quant: str | None, blocks: int, state_slots: int
) -> tuple[torch.nn.Module, KVPool]:
    """This rank's shard of the model in ``model_dir`` (its all-reduces on ``comm``) and a KV pool
    of ``blocks`` blocks (``state_slots`` recurrent-state slots for a hybrid), on the CPU."""
    from neuron.engine.loaded import open_weights
    from neuron.loading.weights import load_weights

    device = torch.device("cpu")
    opened = open_weights(model_dir, dtype, quant)
    try:
        shard = Shard(comm.rank, comm.world)
        model = opened.arch(local_config(opened.cfg, shard), dtype=dtype, device=device, plan=opened.plan).eval()
        load_weights(
            model,
            ShardedSource(opened.source, opened.cfg, shard),
            redundant=model.tied_names,
            arch=opened.arch.model_type,
            skip_prefixes=opened.arch.skip_prefixes,
        )
    finally:
        opened.source.close()
    attach(model, comm, vocab_parallel=splits_vocab(opened.cfg, comm.world))
    spec = model.state_spec()
    recurrent = recurrent_spec(spec)
    states = StatePool(recurrent, state_slots, device) if recurrent else None
    return model, KVPool(kv_layout(spec, dtype), blocks, device, states)


class RankFailed(RuntimeError):
    """A rank died, erred or hung: the tensor-parallel model cannot step any more."""


def _join(ranks: list[subprocess.Popen], world: int, port: int, timeout_s: float) -> GlooCommunicator:
    """Rank 0's side of the rendezvous, watching the ranks meanwhile: one that exits first (it
    could not start) fails the start at once instead of after the timeout."""
    result: list = []

    def rendezvous() -> None:
        try:
            result.append(GlooCommunicator(0, world, "127.0.0.1", port, timeout_s=timeout_s))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=rendezvous, name="tp-rendezvous", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.05)
        for r, p in enumerate(ranks, start=1):
            if p.poll() is not None:
                raise RankFailed(f"rank {r} exited while starting (status {p.returncode}); see the neuron's log")
    if isinstance(result[0], BaseException):
        raise RankFailed(f"the ranks did not meet: {result[0]}") from result[0]
    return result[0]


class TpExecutor:
    def __init__(
        self,
        model: torch.nn.Module,
        kv: KVPool,
        comm: Communicator,
        ranks: list[subprocess.Popen],
        *,
        dtype: torch.dtype,
        timeout_s: float,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        from neuron.engine.executor import Throughput

        self.model, self.kv, self.comm, self.ranks = model, kv, comm, ranks
        self.device = torch.device("cpu")
        self.dtype = dtype
        self.timeout_s = timeout_s
        self.throughput = Throughput()
        self.failed: str | None = None
        self.rank_memory: list[RankMemory] = []  # what each rank holds, as it measured it at load
        self.on_failure = on_failure  # told once, on the device thread, when the model fails

    @classmethod
    def start(
        cls,
        model_dir: Path,
        world: int,
        dtype: torch.dtype,
        *,
        blocks: int,
        state_slots: int = 0,
        quant: str | None = None,
        timeout_s: float = 60.0,
        threads: int = 1,
        on_failure: Callable[[str], None] | None = None,
    ) -> TpExecutor:
        """Starts ranks 1..world-1, joins them as rank 0 and builds every shard; raises (and stops
        what it started) when a rank cannot load."""
        port = free_port()
        # -P: the installed neuron, never a source tree that happens to be the working directory
        argv = [sys.executable, "-P", "-m", "neuron.tp.worker", str(model_dir), "--world", str(world)]
        argv += ["--port", str(port)]
        argv += ["--dtype", str(dtype).removeprefix("torch."), "--blocks", str(blocks)]
        argv += ["--state-slots", str(state_slots)]
        argv += ["--timeout-s", str(timeout_s), "--threads", str(threads)] + (["--quant", quant] if quant else [])
        ranks = [
            subprocess.Popen([*argv, "--rank", str(r)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            for r in range(1, world)
        ]
        try:
            comm = _join(ranks, world, port, timeout_s)
            model, kv = build_rank(model_dir, comm, dtype, quant, blocks, state_slots)
            executor = cls(model, kv, comm, ranks, dtype=dtype, timeout_s=timeout_s, on_failure=on_failure)
            own = RankMemory(
                rank=0, device=None, pid=os.getpid(), memory_mb=(resident_bytes(model) + kv.nbytes()) >> 20
            )
            executor.rank_memory = [own]
            for r, reply in enumerate(executor._replies(), start=1):
                if reply[0] != "ready":
                    raise RankFailed(f"rank {r} could not load the model: {reply[1]}")
                told = reply[1]
                executor.rank_memory.append(
                    RankMemory(rank=r, device=None, pid=told["pid"], memory_mb=told["memory_bytes"] >> 20)
                )
        except BaseException:
            for p in ranks:
                p.kill()
                p.wait()
                p.stdin.close()
                p.stdout.close()
            raise
        log.info("tensor-parallel model %s: %d ranks, rank pids %s", model_dir.name, world, [p.pid for p in ranks])
        return executor

    def _replies(self) -> list[tuple]:
        """One frame from every rank; RankFailed naming the first that is gone or silent."""
        out, deadline = [], time.monotonic() + self.timeout_s
        for r, p in enumerate(self.ranks, start=1):
            ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RankFailed(f"rank {r} (pid {p.pid}) did not answer within {self.timeout_s:g} s")
            try:
                out.append(wire.recv(p.stdout))
            except EOFError:
                raise RankFailed(f"rank {r} (pid {p.pid}) exited (status {p.poll()})") from None
        return out

    def execute(self, batch: Batch) -> torch.Tensor:
        if self.failed is not None:
            raise RankFailed(self.failed)
        t0 = time.perf_counter()
        try:
            fields = wire.batch_fields(batch)
            for r, p in enumerate(self.ranks, start=1):
                try:
                    wire.send(p.stdin, ("step", fields))
                except (BrokenPipeError, OSError):
                    raise RankFailed(f"rank {r} (pid {p.pid}) exited (status {p.poll()})") from None
            error: BaseException | None = None
            try:
                logits = self.model(batch, self.kv)
            except Exception as exc:  # a collective with a dead or silent peer: the ranks say which
                error = exc
            replies = self._replies()  # always: an unread answer would be taken for the next step's
            bad = [f"rank {r}: {reply[1]}" for r, reply in enumerate(replies, start=1) if reply[0] == "error"]
            if error is not None or bad:
                raise RankFailed("; ".join([f"rank 0: {type(error).__name__}: {error}"] * bool(error) + bad))
        except RankFailed as exc:
            self.failed = f"the tensor-parallel model failed: {exc}"
            log.error("%s", self.failed)
            if self.on_failure is not None:
                self.on_failure(self.failed)
            raise RankFailed(self.failed) from None
        self.throughput.record(batch, time.perf_counter() - t0)
        return logits

    def close(self) -> None:
        """Stops every rank (asks, then kills what does not go within a few seconds)."""
        for p in self.ranks:
            for step in (lambda p=p: wire.send(p.stdin, ("stop",)), p.stdin.close):
                with contextlib.suppress(BrokenPipeError, OSError, ValueError):  # a rank that is gone
                    step()
        deadline = time.monotonic() + 5
        for p in self.ranks:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stdout.close()
        self.comm.close()
