"""A model resident on one device: its torch modules, tokenizer, chat template, generation
defaults, admission, KV pool and engine.

``load_model`` runs on the device's worker thread; everything touching tensors does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from cortex.protocol.errors import ApiError
from neuron.chat.template import ChatTemplate
from neuron.chat.text import load_text_side, longest_token_chars
from neuron.engine.admission import Admission
from neuron.engine.engine import Engine
from neuron.engine.executor import Throughput, UniExecutor
from neuron.engine.grammar import Grammars
from neuron.engine.kv_cache import BLOCK_TOKENS, KVLayout, KVPool, blocks_for, kv_layout, recurrent_spec
from neuron.engine.sampling import SamplingParams
from neuron.engine.state_slots import StatePool, state_bytes
from neuron.engine.worker import DeviceWorker
from neuron.loading.gguf import GgufPlan, GgufSource, gguf_files
from neuron.loading.isq import IsqPlan, isq_types
from neuron.loading.safetensors import Checkpoint
from neuron.loading.weights import WeightSource, load_weights, planned_bytes, resident_bytes
from neuron.models import BadCheckpoint, BadQuant, Batch, architecture_for
from neuron.models.methods import DensePlan, WeightPlan

log = logging.getLogger(__name__)


def architecture_of(model_dir: Path) -> tuple[type, dict[str, Any]]:
    """The architecture class for a model directory; :class:`UnsupportedModel` naming the type
    when this neuron has none for it."""
    cfg_path = model_dir / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise BadCheckpoint(f"config.json cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise BadCheckpoint("config.json is not a JSON object")
    return architecture_for(raw), raw


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


def weight_plan(quant: str | None, cfg: Any, dtype: torch.dtype) -> WeightPlan:
    """The methods a safetensors load gives its weights: dense in ``dtype``, or quantized in
    situ to ``quant`` (a block type or a ``_m`` mix; any case). :class:`BadQuant` names the
    accepted values."""
    if quant is None:
        return DensePlan(dtype)
    name = quant.strip().lower()
    if name not in isq_types():
        accepted = ", ".join(isq_types())
        raise BadQuant(f"quant {quant!r} is not a type this neuron quantizes to: expected one of {accepted}")
    return IsqPlan(name, dtype, cfg.num_hidden_layers, cfg.tie_word_embeddings)


@dataclass
class Weights:
    """A model's weights, opened: its architecture and config, where the tensors come from, the
    plan that gives each its method, and how the weights are held (``quant``: None = dense)."""

    arch: type
    cfg: Any
    source: WeightSource
    plan: WeightPlan
    quant: str | None
    gguf: GgufSource | None  # the GGUF file, when the model is one

    @property
    def redundant(self) -> set[str]:
        return {"lm_head.weight"} if self.cfg.tie_word_embeddings else set()

    def planned_bytes(self, dtype: torch.dtype) -> int:
        return planned_bytes(
            self.source, self.plan, dtype, redundant=self.redundant, skip_prefixes=self.arch.skip_prefixes
        )


def open_weights(model_dir: Path, dtype: torch.dtype, quant: str | None) -> Weights:
    """The weights of ``model_dir``: a GGUF file (``quant`` picks it) or safetensors (``quant``
    quantizes them in situ; in a folder that has both, a ``quant`` that names a GGUF file picks
    it, any other reads the safetensors). Headers only: no tensor is read. Close ``source`` when
    done."""
    paths = gguf_files(model_dir, quant, beside_safetensors=any(model_dir.glob("*.safetensors")))
    if paths is None:
        arch, raw_cfg = architecture_of(model_dir)
        cfg = arch.config_class.from_dict(raw_cfg)
        plan = weight_plan(quant, cfg, dtype)
        held = plan.quant if isinstance(plan, IsqPlan) else None
        return Weights(arch, cfg, Checkpoint(model_dir), plan, held, None)
    source = GgufSource(paths)
    try:
        raw_cfg = source.hf_config()
        arch = architecture_for(raw_cfg)
        cfg = arch.config_class.from_dict(raw_cfg)
    except Exception:
        source.close()
        raise
    return Weights(arch, cfg, source, GgufPlan(source, dtype), source.file_type() or quant, source)


def footprint_bytes(model_dir: Path, dtype: torch.dtype, quant: str | None = None) -> int:
    """What the weights of ``model_dir`` take once loaded in ``dtype`` (``quant``: the GGUF file,
    or the in-situ type), from the file headers alone: what a load needs free, and what a
    footprint reports."""
    weights = open_weights(model_dir, dtype, quant)
    try:
        return weights.planned_bytes(dtype)
    finally:
        weights.source.close()


@dataclass
class KVSettings:
    """How a load sizes its KV pool and its engine (from neuron.toml, per device kind)."""

    kv_cache_mb: int | None  # the pool's size; None: a share of what is free after the weights
    share: float  # that share
    max_num_seqs: int
    max_batch_tokens: int


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
    context_length: int  # what a request may use: the model's own, or less when the KV pool holds less
    memory_bytes: int  # the weights and the KV pool
    admission: Admission
    load_secs: float
    engine: Engine
    executor: UniExecutor | Any  # a TpExecutor when tensor-parallel
    grammars: Grammars
    longest_token_chars: int = 1
    quant: str | None = None  # how the weights are held: a block type or a mix; None: dense in ``dtype``

    @property
    def device(self) -> torch.device:
        return self.worker.device

    @property
    def throughput(self) -> Throughput:
        return self.executor.throughput

    def kv_usage(self) -> tuple[int, int]:
        """(tokens the KV pool holds, tokens in blocks in use)."""
        pool, alloc = self.engine.pool, self.engine.allocator
        return pool.capacity_tokens, alloc.num_used * BLOCK_TOKENS


RUNNING_STATES_SHARE = 0.5  # of the pool's budget, at most, for the running sequences' recurrent states
KEPT_STATES_SHARE = 0.25  # of the pool's budget, at most, for recurrent states kept for prefix reuse


@dataclass(frozen=True)
class PoolSize:
    blocks: int  # KV blocks
    state_slots: int  # recurrent-state slots: one per running sequence, then the kept ones
    kept_states: int
    max_num_seqs: int  # sequences the engine runs at once: fewer than asked when their states do not fit


def pool_size(
    layout: KVLayout, slot_bytes: int, settings: KVSettings, free_after_weights: int, context: int
) -> tuple[PoolSize, int]:
    """How the pool's budget (``kv_cache_mb`` when set, else ``share`` of the memory free after
    the weights) is spent, and the budget: a hybrid model's recurrent states first (a slot per
    running sequence, as many of ``max_num_seqs`` as :data:`RUNNING_STATES_SHARE` of the budget
    holds; then up to :data:`KEPT_STATES_SHARE` of it for kept states, one per running sequence
    at most), then KV blocks, never more than the running sequences' full contexts need."""
    if settings.kv_cache_mb is not None:
        budget = settings.kv_cache_mb << 20
    else:
        budget = int(max(0, free_after_weights) * settings.share)
    seqs, running, kept = settings.max_num_seqs, 0, 0
    if slot_bytes:
        seqs = running = int(min(settings.max_num_seqs, int(budget * RUNNING_STATES_SHARE) // slot_bytes))
        kept = int(min(running, int(budget * KEPT_STATES_SHARE) // slot_bytes))
    left = budget - (running + kept) * slot_bytes
    blocks = max(0, left) // layout.bytes_per_block()
    blocks = int(min(blocks, max(1, seqs) * blocks_for(context)))
    return PoolSize(blocks, running + kept, kept, seqs), budget


def load_model(
    model_id: str,
    model_dir: Path,
    worker: DeviceWorker,
    dtype: torch.dtype,
    admission: Admission,
    settings: KVSettings,
    *,
    free_bytes: Callable[[], int],
    progress: Callable[[float], None],
    loop: asyncio.AbstractEventLoop,
    quant: str | None = None,
    tensor_parallel: int = 1,
    on_failure: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Builds and fills the model on ``worker``'s device, sizes its KV pool and starts its
    engine on the worker. Runs on the worker thread. A checkpoint it cannot use raises a
    :class:`~neuron.models.ModelError`; one that does not fit raises a 507.

    ``tensor_parallel`` > 1 (on the CPU, over gloo): this thread is rank 0 and the other ranks are
    processes (``neuron.tp``); the memory figures count every rank (they share the host), the KV
    budget is split between them, and ``on_failure`` is told (on this thread) when a rank fails,
    after which every step fails."""
    t0 = time.perf_counter()
    opened = open_weights(model_dir, dtype, quant)
    arch, cfg, plan = opened.arch, opened.cfg, opened.plan
    try:
        side = load_text_side(model_id, model_dir, opened.gguf)
        need = opened.planned_bytes(dtype)
        free = free_bytes()
        if need > free:
            raise ApiError(
                "insufficient_storage",
                f"model {model_id!r} needs about {need >> 20} MiB on {worker.name} but {free >> 20} MiB are free",
                code="does_not_fit",
            )
        if tensor_parallel > 1:  # the ranks build their shards once the pool is sized; the spec is rank 0's
            from neuron.tp.shard import Shard, local_config

            local = local_config(cfg, Shard(0, tensor_parallel))
            spec = arch(local, dtype=dtype, device=torch.device("meta"), plan=DensePlan(dtype)).state_spec()
        else:
            before = torch.cuda.memory_allocated(worker.device) if worker.device.type == "cuda" else 0
            net = arch(cfg, dtype=dtype, device=worker.device, plan=plan).eval()
            load_weights(
                net,
                opened.source,
                redundant=net.tied_names,
                progress=progress,
                arch=arch.model_type,
                skip_prefixes=arch.skip_prefixes,
            )
    finally:
        opened.source.close()
    on_gpu = worker.device.type == "cuda"
    ranks = max(1, tensor_parallel)
    if tensor_parallel > 1:
        weights = need  # the shards' planned bytes, all ranks together
    else:
        weights = torch.cuda.memory_allocated(worker.device) - before if on_gpu else resident_bytes(net)
        spec = net.state_spec()
    layout, recurrent = kv_layout(spec, dtype), recurrent_spec(spec)
    slot_bytes = state_bytes(recurrent)
    context = cfg.max_position_embeddings
    # what the fit check saw free, less what the weights took, is what is left for the pool (each
    # rank holds a pool of this size)
    size, budget = pool_size(layout, slot_bytes, settings, (free - weights) // ranks, context)
    blocks = size.blocks
    if recurrent and size.max_num_seqs < 1:
        raise ApiError(
            "insufficient_storage",
            f"model {model_id!r} fits on {worker.name}, but not the recurrent state of one sequence "
            f"({slot_bytes >> 20} MiB) in half of its pool's {budget >> 20} MiB",
            code="does_not_fit",
        )
    if size.max_num_seqs < settings.max_num_seqs:
        log.info(
            "%s runs %d sequences at once, not max_num_seqs = %d: their recurrent states (%d MiB each) "
            "take half of its %d MiB pool",
            model_id,
            size.max_num_seqs,
            settings.max_num_seqs,
            slot_bytes >> 20,
            budget >> 20,
        )
    if ranks * (blocks * layout.bytes_per_block() + size.state_slots * slot_bytes) > free - weights:
        # a kv_cache_mb larger than what is left
        raise ApiError(
            "insufficient_storage",
            f"model {model_id!r} fits on {worker.name}, but its KV cache (kv_cache_mb = {settings.kv_cache_mb}) "
            f"does not: {max(0, free - weights) >> 20} MiB are left after the weights",
            code="does_not_fit",
        )
    if blocks < 1:
        raise ApiError(
            "insufficient_storage",
            f"model {model_id!r} fits on {worker.name}, but no room is left for its KV cache "
            f"({layout.bytes_per_block() >> 10} KiB a block of {BLOCK_TOKENS} tokens)",
            code="does_not_fit",
        )
    if tensor_parallel > 1:
        from neuron.tp.executor import TpExecutor

        executor: UniExecutor | TpExecutor = TpExecutor.start(
            model_dir, tensor_parallel, dtype, blocks=blocks, state_slots=size.state_slots, quant=quant,
            on_failure=on_failure,
        )  # fmt: skip
        net, pool = executor.model, executor.kv
    else:
        states = StatePool(recurrent, size.state_slots, worker.device) if recurrent else None
        pool = KVPool(layout, blocks, worker.device, states)
        executor = UniExecutor(net, pool, worker.device, dtype)
    engine = Engine(
        executor,
        pool,
        vocab_size=cfg.vocab_size,
        max_num_seqs=size.max_num_seqs,
        max_batch_tokens=settings.max_batch_tokens,
        loop=loop,
        wake=worker.wake,
        kept_states=size.kept_states,
    )
    defaults, eos_ids = _generation_defaults(model_dir)
    eos_ids |= side.eos_ids
    tokenizer = side.tokenizer
    loaded = LoadedModel(
        model_id=model_id,
        model_dir=model_dir,
        worker=worker,
        dtype=dtype,
        net=net,
        tokenizer=tokenizer,
        template=side.template,
        defaults=defaults,
        eos_ids=eos_ids,
        context_length=min(context, pool.capacity_tokens),
        memory_bytes=weights + ranks * pool.nbytes(),
        admission=admission,
        load_secs=0.0,
        engine=engine,
        executor=executor,
        grammars=Grammars(tokenizer, cfg.vocab_size, eos_ids),
        longest_token_chars=longest_token_chars(tokenizer),
        quant=opened.quant,
    )
    _warm_up(executor)
    worker.attach(engine)
    loaded.load_secs = time.perf_counter() - t0
    return loaded


def _warm_up(executor: UniExecutor) -> None:
    """One token through the whole stack (lazy kernel set-up happens now, not in a request);
    it writes block 0, which no sequence holds yet."""
    one = torch.zeros(1, dtype=torch.long, device=executor.device)
    batch = Batch(
        input_ids=one,
        positions=one,
        query_starts=[0, 1],
        context_lens=[1],
        block_tables=one[None],
        slot_mapping=one,
        sample_indices=one,
        state_slots=torch.zeros(1, dtype=torch.long) if executor.kv.states is not None else None,
    )
    executor.execute(batch)
    executor.throughput = Throughput()


def release_model(lm: LoadedModel) -> None:
    """Ends the model's sequences and drops its tensors, on its own thread."""
    lm.engine.close()
    lm.worker.detach(lm.engine)
    close = getattr(lm.executor, "close", None)
    if close is not None:  # a tensor-parallel model's ranks stop
        close()
    lm.net = None  # type: ignore[assignment]
    lm.executor.model = None  # type: ignore[assignment]
    lm.engine.pool.k = lm.engine.pool.v = None  # type: ignore[assignment]  (its size stays readable)
    if lm.engine.pool.states is not None:
        lm.engine.pool.states.conv = lm.engine.pool.states.ssm = []
    if lm.device.type == "cuda":
        torch.cuda.empty_cache()
