"""A model resident on one device: its torch modules, tokenizer, chat template, generation
defaults and admission, and the jobs the device worker runs for it (prefill, decode).

``load_model`` runs on the device's worker thread; everything touching tensors does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from cortex.protocol.errors import ApiError
from neuron import ops
from neuron.chat.template import ChatTemplate
from neuron.chat.text import load_tokenizer, longest_token_chars
from neuron.engine.admission import Admission
from neuron.engine.sampling import Sampler, SamplingParams
from neuron.engine.worker import DeviceWorker
from neuron.loading.safetensors import Checkpoint
from neuron.loading.weights import load_weights
from neuron.models import ARCHITECTURES, MODEL_TYPES
from neuron.models.layers import KVCache

log = logging.getLogger(__name__)


@dataclass
class Throughput:
    """Exponential moving averages of prefill and decode speed (tokens/s)."""

    prefill_tps: float | None = None
    decode_tps: float | None = None

    @staticmethod
    def _ema(old: float | None, new: float) -> float:
        return new if old is None else 0.8 * old + 0.2 * new

    def record_prefill(self, tokens: int, secs: float) -> None:
        if secs > 0:
            self.prefill_tps = self._ema(self.prefill_tps, tokens / secs)

    def record_decode(self, tokens: int, secs: float) -> None:
        if secs > 0:
            self.decode_tps = self._ema(self.decode_tps, tokens / secs)


@dataclass
class Sequence:
    """One request's state on the device: KV cache, sampler and the next position."""

    cache: KVCache
    sampler: Sampler
    position: int = 0


_TORCH_THREADS = torch.get_num_threads()
DECODE_SPIN_US, PREFILL_SPIN_US = 2000, 0


def _cpu_phase(device: torch.device, dtype: torch.dtype, *, decode: bool) -> None:
    """Shares the CPU between torch's thread pool and ours for the step about to run.

    A decode step is our GEMV kernels back to back with small torch ops between them: torch
    gets one thread (an idle OpenMP team would spin on the cores our kernels need) and our pool
    spins between kernels. A prefill is torch's matrix products: all threads to torch, and our
    pool sleeps at once when idle.
    """
    if device.type != "cpu" or dtype != torch.bfloat16:  # float32 decode is torch's own GEMV
        return
    want = 1 if decode else _TORCH_THREADS
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
        ops.set_pool_spin_us(DECODE_SPIN_US if decode else PREFILL_SPIN_US)


def architecture_of(model_dir: Path) -> tuple[type, dict[str, Any]]:
    """The architecture class for a model directory; 409 naming the type when unsupported."""
    cfg_path = model_dir / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ApiError(
            "invalid_request", f"config.json of the model cannot be read: {exc}", code="bad_model_config"
        ) from None
    for name in raw.get("architectures") or []:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name], raw
    model_type = raw.get("model_type")
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type], raw
    supported = ", ".join(sorted(MODEL_TYPES))
    raise ApiError(
        "conflict",
        f"model_type {model_type!r} (architectures {raw.get('architectures')}) is not supported: "
        f"this neuron serves {supported}",
        code="unsupported_architecture",
    )


def _generation_defaults(model_dir: Path) -> tuple[SamplingParams, set[int]]:
    path = model_dir / "generation_config.json"
    raw: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    eos = raw.get("eos_token_id")
    eos_ids = set(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
    greedy = raw.get("do_sample") is False
    defaults = SamplingParams(
        temperature=0.0 if greedy else float(raw.get("temperature", 1.0)),
        top_p=float(raw.get("top_p", 1.0)),
        top_k=int(raw.get("top_k", 0) or 0),
        min_p=float(raw.get("min_p", 0.0) or 0.0),
        repetition_penalty=float(raw.get("repetition_penalty", 1.0)),
    )
    return defaults, eos_ids


def _special_eos(tokenizer: Tokenizer, model_dir: Path) -> set[int]:
    ids = set()
    cfg_path = model_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        eos = json.loads(cfg_path.read_text()).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if isinstance(eos, str) and tokenizer.token_to_id(eos) is not None:
            ids.add(tokenizer.token_to_id(eos))
    return ids


def weight_bytes(ckpt: Checkpoint, dtype: torch.dtype) -> int:
    """Memory the checkpoint's tensors take as ``dtype``, counted from the file headers (as a
    footprint counts them): what a load needs free before it starts."""
    return ckpt.numel() * dtype.itemsize


def _param_bytes(net: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in [*net.parameters(), *net.buffers()]:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


@dataclass
class LoadedModel:
    model_id: str
    model_dir: Path
    worker: DeviceWorker
    dtype: torch.dtype
    net: torch.nn.Module
    tokenizer: Tokenizer
    template: ChatTemplate
    defaults: SamplingParams
    eos_ids: set[int]
    context_length: int
    memory_bytes: int
    admission: Admission
    load_secs: float
    longest_token_chars: int = 1
    throughput: Throughput = field(default_factory=Throughput)

    @property
    def device(self) -> torch.device:
        return self.worker.device

    # --- jobs for the worker thread ---------------------------------------------------------

    def start_sequence(self, prompt_ids: list[int], capacity: int, params: SamplingParams) -> Sequence:
        sampler = Sampler(params, self.net.config.vocab_size, prompt_ids, self.device)
        return Sequence(cache=self.net.new_cache(capacity), sampler=sampler)

    def prefill(self, seq: Sequence, ids: list[int], *, sample: bool) -> int | None:
        """Runs a chunk of the prompt; on the last chunk samples the first new token."""
        _cpu_phase(self.device, self.dtype, decode=False)
        t0 = time.perf_counter()
        logits = self.net(torch.tensor(ids, dtype=torch.long, device=self.device), seq.position, seq.cache)
        seq.position += len(ids)
        token = seq.sampler.sample(logits) if sample else None
        if token is not None:
            seq.sampler.observe(token)
        self.throughput.record_prefill(len(ids), time.perf_counter() - t0)
        return token

    def decode(self, seq: Sequence, token: int) -> int:
        """Feeds the last token and samples the next."""
        _cpu_phase(self.device, self.dtype, decode=True)
        t0 = time.perf_counter()
        logits = self.net(torch.tensor([token], dtype=torch.long, device=self.device), seq.position, seq.cache)
        seq.position += 1
        nxt = seq.sampler.sample(logits)
        seq.sampler.observe(nxt)
        self.throughput.record_decode(1, time.perf_counter() - t0)
        return nxt


def load_model(
    model_id: str,
    model_dir: Path,
    worker: DeviceWorker,
    dtype: torch.dtype,
    admission: Admission,
    *,
    free_bytes: Callable[[], int],
    progress: Callable[[float], None],
) -> LoadedModel:
    """Builds and fills the model on ``worker``'s device. Runs on the worker thread."""
    t0 = time.perf_counter()
    arch, raw_cfg = architecture_of(model_dir)
    cfg = arch.config_class.from_dict(raw_cfg)
    tokenizer = load_tokenizer(model_id, model_dir)
    ckpt = Checkpoint(model_dir)
    try:
        need = weight_bytes(ckpt, dtype)
        free = free_bytes()
        if need > free:
            raise ApiError(
                "insufficient_storage",
                f"model {model_id!r} needs about {need >> 20} MiB on {worker.name} but {free >> 20} MiB are free",
                code="does_not_fit",
            )
        before = torch.cuda.memory_allocated(worker.device) if worker.device.type == "cuda" else 0
        net = arch(cfg, dtype=dtype, device=worker.device).eval()
        load_weights(net, ckpt, redundant=net.tied_names, progress=progress, arch=arch.model_type)
    finally:
        ckpt.close()
    on_gpu = worker.device.type == "cuda"
    memory = torch.cuda.memory_allocated(worker.device) - before if on_gpu else _param_bytes(net)
    defaults, eos_ids = _generation_defaults(model_dir)
    eos_ids |= _special_eos(tokenizer, model_dir)
    loaded = LoadedModel(
        model_id=model_id,
        model_dir=model_dir,
        worker=worker,
        dtype=dtype,
        net=net,
        tokenizer=tokenizer,
        template=ChatTemplate.from_model_dir(model_dir),
        defaults=defaults,
        eos_ids=eos_ids,
        context_length=cfg.max_position_embeddings,
        memory_bytes=memory,
        admission=admission,
        load_secs=0.0,
        longest_token_chars=longest_token_chars(tokenizer),
    )
    # One token through the whole stack: lazy kernel set-up happens now, not in a request.
    seq = loaded.start_sequence([0], 2, SamplingParams(temperature=0.0))
    loaded.prefill(seq, [0], sample=True)
    loaded.throughput = Throughput()
    loaded.load_secs = time.perf_counter() - t0
    return loaded
