"""The ``neuron`` command as a user runs it: help, discover, demo-model, and a config error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from neuron.config import load_neuron_config


def neuron(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neuron.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_help_names_every_command(tmp_path):
    out = neuron("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in ("serve", "discover", "demo-model"):
        assert command in out.stdout
    assert neuron(cwd=tmp_path).returncode == 2  # no command is a usage error
    version = neuron("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("neuron (helexa) ")


def test_discover_prints_the_discovery_document(tmp_path):
    out = neuron("discover", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["harnesses"] == ["torch"] and doc["cpu"]["cores"] >= 1
    assert set(doc) >= {"hostname", "os", "kernel", "cuda_version", "driver_version", "devices", "version"}


def test_demo_model_writes_a_loadable_model_and_refuses_to_overwrite(tmp_path):
    out = neuron("demo-model", str(tmp_path / "demo"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    files = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {
        "config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "model.safetensors",
        "generation_config.json",
    } <= files
    again = neuron("demo-model", str(tmp_path / "demo"), cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr


def test_a_config_error_is_one_line_naming_file_and_key(tmp_path):
    cfg = tmp_path / "neuron.toml"
    cfg.write_text("port = 13131\n[admission]\nmax_num_seqs = 0\n")
    out = neuron("serve", "--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {cfg}: admission.max_num_seqs: expected an integer >= 1, got 0"
    cfg.write_text("prot = 1\n")
    out = neuron("serve", "--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith(
        f"error: {cfg}: prot: unknown key (expected one of: host, port"
    )


def test_the_example_config_loads():
    example = Path(__file__).resolve().parents[2] / "etc" / "neuron.example.toml"
    cfg = load_neuron_config(example, env={})
    assert cfg.port == 13131 and cfg.admission.max_num_seqs >= 1 and cfg.default_models
    assert cfg.kv_cache_mb > 0 and cfg.max_batch_tokens >= 16
