"""The executor seam: the engine hands a batch to ``execute`` and gets logits back. A
:class:`UniExecutor` runs the model on one device (its worker thread calls it); tensor
parallelism adds a multi-rank executor behind the same call.

The CPU's threads are shared between torch's pool and ours here, once per kind of step, and
nowhere else: a step our kernels carry (a few rows per linear layer: decodes of up to
``OUR_KERNEL_ROWS`` sequences) gives torch one thread, so an idle OpenMP team does not spin on
the cores our kernels need, and keeps our pool spinning between kernels; any other step (prompt
chunks: torch's matrix products) gives torch every thread and lets our pool sleep at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from neuron import ops
from neuron.engine.kv_cache import KVPool
from neuron.models import Batch

OUR_KERNEL_ROWS = ops.MATMUL_MAX_ROWS  # steps of at most this many tokens run on our kernels (CPU, bf16)
DECODE_SPIN_US, PREFILL_SPIN_US = 2000, 0
_TORCH_THREADS = torch.get_num_threads()


@dataclass
class Throughput:
    """Exponential moving averages of prefill and decode speed (tokens/s, all sequences)."""

    prefill_tps: float | None = None
    decode_tps: float | None = None

    @staticmethod
    def _ema(old: float | None, new: float) -> float:
        return new if old is None else 0.8 * old + 0.2 * new

    def record(self, batch: Batch, secs: float) -> None:
        if secs <= 0:
            return
        tokens = int(batch.input_ids.numel())
        if tokens == batch.num_seqs:  # one new token each: a decode step
            self.decode_tps = self._ema(self.decode_tps, tokens / secs)
        else:
            self.prefill_tps = self._ema(self.prefill_tps, tokens / secs)


class UniExecutor:
    def __init__(self, model: torch.nn.Module, kv: KVPool, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.kv = kv
        self.device = device
        self.dtype = dtype
        self.throughput = Throughput()

    def execute(self, batch: Batch) -> torch.Tensor:
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:  # float32 runs on torch alone
            _share_cpu(ours=int(batch.input_ids.numel()) <= OUR_KERNEL_ROWS)
        t0 = time.perf_counter()
        logits = self.model(batch, self.kv)
        self.throughput.record(batch, time.perf_counter() - t0)
        return logits


_cpu_phase: list[bool | None] = [None]  # the process's CPU threads are shared by every CPU model


def _share_cpu(*, ours: bool) -> None:
    if _cpu_phase[0] is not ours:
        torch.set_num_threads(1 if ours else _TORCH_THREADS)
        ops.set_pool_spin_us(DECODE_SPIN_US if ours else PREFILL_SPIN_US)
        _cpu_phase[0] = ours
