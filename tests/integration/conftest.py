"""Real ``neuron serve`` processes on free loopback ports, serving models the tests build:
the packaged demo model and "scripted" tiny Qwen3 models whose weights make greedy decoding
follow a chosen token chain (attention and MLP outputs zeroed, orthogonal embeddings, an
lm_head that maps each chain token to the next), so API behaviour can be asserted exactly."""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from integration.services import (
    FAKE_NEURON,
    FleetUnderTest,
    NeuronProcess,
    ServiceProcess,
    catalogue_toml,
    free_port,
    write_config,
)

from neuron.chat.template import ChatTemplate
from neuron.demo import (
    MARKUP_TOKENS,
    demo_template,
    demo_text,
    qwen3_config,
    random_weights,
    train_tokenizer,
    write_demo_model,
    write_model_dir,
)
from neuron.loading.gguf_export import export_gguf

AFTER_TOOL = "<after_tool>"
SCRIPTS = {
    "test/plain": {"turn": ["Hello", " there!", " How can I help?"]},
    "test/think": {"turn": ["<think>", "\nLet me think about it.\n", "</think>", "\n\nThe answer is 42."]},
    "test/tools": {
        "turn": ["<tool_call>", '\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n', "</tool_call>"],
        "after_tool": ["The weather in Paris is sunny."],
    },
    "test/stop": {"turn": ["Once upon a time", " END", " they lived happily."]},
    # With tool_choice forcing a call the answer starts inside it: these chains finish the call.
    "test/forced": {
        "turn": ["I will not call anything."],
        "named": ['{"city": "Paris"}}\n', "</tool_call>"],
        "required": ['\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n', "</tool_call>"],
    },
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
FORCED_PREFIX = {  # what the neuron appends to the prompt for each tool_choice that demands a call
    "named": '<tool_call>\n{"name": "get_weather", "arguments": ',
    "required": "<tool_call>",
}


def scripted_template() -> str:
    """The demo template, plus a marker token at the very end after a tool result, so a model can
    tell the turns apart (with thinking on or off)."""
    marker = "{%- if add_generation_prompt and messages[-1].role == 'tool' -%}{{- '" + AFTER_TOOL + "' -}}{%- endif -%}"
    return demo_template().rstrip("\n") + marker + "\n"


def write_scripted_model(out: Path, scripts: dict[str, list[str]], *, context: int = 4096) -> Path:
    pieces = list(dict.fromkeys(p for chain in scripts.values() for p in chain))
    extra = [p for p in pieces if p not in MARKUP_TOKENS] + [AFTER_TOOL]
    tok = train_tokenizer(demo_text(), vocab_size=512, extra_tokens=extra)
    cfg = qwen3_config(
        (tok.get_vocab_size() + 63) // 64 * 64, tie_word_embeddings=False, max_position_embeddings=context
    )
    w = random_weights(cfg, seed=3)
    for name in w:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            w[name].zero_()  # the residual stream carries the token's embedding unchanged
    template = ChatTemplate(scripted_template())

    def last_id(messages, tail: str = "", **extra) -> int:
        tools = [WEATHER_TOOL] if tail else None
        text = template.render(messages, tools=tools, extra=extra) + tail
        return tok.encode(text, add_special_tokens=False).ids[-1]

    user = [{"role": "user", "content": "hi"}]
    tool = [*user, {"role": "assistant", "content": "", "tool_calls": []}, {"role": "tool", "content": "x"}]
    triggers = {  # the prompt's last token, with the model's default and with thinking switched off
        "turn": {last_id(user), last_id(user, enable_thinking=False)},
        "after_tool": {last_id(tool), last_id(tool, enable_thinking=False)},
    }
    for kind, tail in FORCED_PREFIX.items():
        triggers[kind] = {last_id(user, tail), last_id(user, tail, enable_thinking=False)}
    kinds = [k for k in triggers if k in scripts]
    for a, b in itertools.combinations(kinds, 2):
        assert not triggers[a] & triggers[b], f"{a} and {b} end their prompts with the same token"
    eos = tok.token_to_id("<|im_end|>")
    nxt: dict[int, int] = {}
    for kind, chain in scripts.items():
        ids = [min(triggers[kind])]
        for p in chain:
            enc = tok.encode(p, add_special_tokens=False).ids
            assert len(enc) == 1, f"{p!r} must be one token"
            ids.append(enc[0])
        ids.append(eos)
        for a, b in itertools.pairwise(ids):
            assert nxt.setdefault(a, b) == b, f"token {a} would need two successors (a bigram machine)"
        for other in triggers[kind] - {ids[0]}:
            nxt[other] = ids[1]
    hidden = cfg["hidden_size"]
    chain_tokens = sorted(set(nxt) | set(nxt.values()))
    assert len(chain_tokens) <= hidden
    basis, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(5)))
    slot = {t: basis[:, i] for i, t in enumerate(chain_tokens)}
    w["lm_head.weight"] = torch.zeros(cfg["vocab_size"], hidden)
    for t in chain_tokens:
        w["model.embed_tokens.weight"][t] = slot[t] * math.sqrt(hidden)  # unit RMS
    for a, b in nxt.items():
        w["lm_head.weight"][b] += 20.0 * slot[a]  # logit 160 for the next token, 0 for every other
    return write_model_dir(out, tok, cfg, w, template=scripted_template(), generation={"temperature": 1.0})


@pytest.fixture(scope="session")
def model_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_demo_model(root / "helexa" / "demo")
    for model_id, scripts in SCRIPTS.items():
        write_scripted_model(root / model_id, scripts)
    write_scripted_model(root / "test" / "short", SCRIPTS["test/plain"], context=64)
    write_scripted_model(root / "test" / "extra", SCRIPTS["test/plain"])
    write_demo_model(root / "test" / "demo2")
    tokenizer = train_tokenizer(demo_text())  # wide enough for K-quant blocks and megabytes of weights
    wide = qwen3_config((tokenizer.get_vocab_size() + 255) // 256 * 256, hidden_size=512, intermediate_size=1024)
    isq = write_model_dir(
        root / "test" / "isq", tokenizer, wide, random_weights(wide, seed=3), template=demo_template()
    )
    for quant in ("q8_0", "q4_k_m"):  # a GGUF-only model folder, two files: quant picks one
        export_gguf(isq, root / "test" / "gguf" / f"isq-{quant.upper()}.gguf", quant)
    ctx = write_demo_model(root / "test" / "ctx48")
    cfg = json.loads((ctx / "config.json").read_text())
    (ctx / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 48}))
    llama = root / "test" / "mamba"  # an architecture this neuron does not serve
    write_scripted_model(llama, SCRIPTS["test/plain"])
    cfg = json.loads((llama / "config.json").read_text())
    cfg.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (llama / "config.json").write_text(json.dumps(cfg))
    broken_index = write_demo_model(root / "test" / "broken-index")  # an index that is not one
    (broken_index / "model.safetensors.index.json").write_text('{"weight_map": ')
    lacking = write_demo_model(root / "test" / "no-hidden-size")
    cfg = json.loads((lacking / "config.json").read_text())
    del cfg["hidden_size"]
    (lacking / "config.json").write_text(json.dumps(cfg))
    return root


DEFAULTS = ["helexa/demo", "test/plain", "test/think", "test/tools", "test/stop", "test/short", "test/forced"]


@pytest.fixture(scope="module")
def running_neuron(model_root, tmp_path_factory) -> Iterator[NeuronProcess]:
    work = tmp_path_factory.mktemp("neuron")
    port = free_port()
    cfg = write_config(
        work / "neuron.toml", port, model_root, DEFAULTS, max_num_seqs=1, max_queue_depth=1, max_wait_secs=30
    )
    server = NeuronProcess(cfg, port, work / "neuron.log")
    try:
        server.wait_ready(DEFAULTS)
        yield server
    finally:
        server.stop()


def launch_gateway(
    work: Path,
    endpoints: dict[str, str],
    *,
    models: list[dict] | None = None,
    aliases: dict[str, str] | None = None,
    extra: str = "",
    gateway: dict | None = None,
    poll_secs: float = 0.3,
    neuron_keys: dict[str, str] | None = None,
    want_healthy: int | None = None,
    env: dict[str, str] | None = None,
) -> FleetUnderTest:
    """A real ``cortex serve`` in ``work`` in front of ``endpoints`` (neuron name -> URL), polled
    until ``want_healthy`` neurons (default: all) are up."""
    (work / "models.toml").write_text(catalogue_toml(models or [], aliases))
    port, mport = free_port(), free_port()
    lines = ['models_config = "models.toml"', "[gateway]", f'listen = "127.0.0.1:{port}"']
    lines += [f'metrics_listen = "127.0.0.1:{mport}"', f"poll_interval_secs = {poll_secs}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in (gateway or {}).items()]
    for name, url in endpoints.items():
        lines += ["[[neurons]]", f'name = "{name}"', f'endpoint = "{url}"']
        if name in (neuron_keys or {}):
            lines.append(f"api_key = {json.dumps(neuron_keys[name])}")
    cfg = work / "cortex.toml"
    cfg.write_text("\n".join(lines) + "\n" + extra + "\n")
    proc = ServiceProcess(
        [sys.executable, "-m", "cortex.cli", "serve", "--config", str(cfg)],
        f"http://127.0.0.1:{port}",
        work / "cortex.log",
        work,
        env,
    )
    want = len(endpoints) if want_healthy is None else want_healthy
    try:
        proc.wait_http("/health", lambda h: h["nodes"]["healthy"] == want, 30, what="polling its neurons")
    except BaseException:
        proc.stop()
        raise
    return FleetUnderTest(proc, f"http://127.0.0.1:{mport}/metrics", {})


@pytest.fixture
def start_fleet(tmp_path) -> Iterator[Callable[..., FleetUnderTest]]:
    """Starts neuron test doubles (``neurons``: name -> their spec) and a gateway in front of them
    and of any real ``endpoints``."""
    started: list[ServiceProcess] = []

    def start(neurons: dict[str, dict], *, endpoints: dict[str, str] | None = None, **gateway) -> FleetUnderTest:
        fakes = {}
        for name, spec in neurons.items():
            port = free_port()
            cmd = [sys.executable, str(FAKE_NEURON), "--name", name, "--port", str(port), "--spec", json.dumps(spec)]
            fakes[name] = ServiceProcess(cmd, f"http://127.0.0.1:{port}", tmp_path / f"{name}.log", tmp_path)
            started.append(fakes[name])
        for fake in fakes.values():
            fake.wait_http("/discovery", lambda d: True, 30)
        urls = {name: fake.url for name, fake in fakes.items()} | (endpoints or {})
        fleet = launch_gateway(tmp_path, urls, **gateway)
        started.append(fleet.gateway)
        fleet.neurons = fakes
        return fleet

    yield start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture(scope="module")
def real_fleet_module(running_neuron, tmp_path_factory) -> Iterator[FleetUnderTest]:
    """A gateway in front of this module's real neuron, with the demo model in its catalogue."""
    fleet = launch_gateway(
        tmp_path_factory.mktemp("gateway"),
        {"real": running_neuron.url},
        models=[{"id": "helexa/demo", "min_devices": 0}],
    )
    try:
        yield fleet
    finally:
        fleet.gateway.stop()
