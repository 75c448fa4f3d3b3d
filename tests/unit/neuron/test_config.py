"""neuron.toml: cpu_memory_mb is checked with a one-line error, and the models a restart hands to
its new process travel in NEURON_RESTORE_MODELS, which is never read as a config key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cortex.protocol.fleet import ModelSpec
from neuron.config import (
    RESTORE_MODELS_ENV,
    ConfigError,
    load_neuron_config,
    restart_environ,
    restore_models,
)

ETC = Path(__file__).resolve().parents[3] / "etc"


def test_the_example_sets_a_cpu_memory_cap_and_the_default_is_none(tmp_path):
    assert load_neuron_config(ETC / "neuron.example.toml", env={}).cpu_memory_mb == 65536
    assert load_neuron_config(None, env={}).cpu_memory_mb is None
    assert load_neuron_config(None, env={"NEURON_CPU_MEMORY_MB": "2048"}).cpu_memory_mb == 2048


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", "expected an integer > 0, got 0"), ("-5", "expected an integer > 0, got -5"), ('"lots"', "expected int")],
)
def test_a_bad_cpu_memory_cap_is_one_line_naming_the_key(tmp_path, value, expected):
    cfg = tmp_path / "neuron.toml"
    cfg.write_text(f"cpu_memory_mb = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_neuron_config(cfg, env={})
    assert str(err.value).startswith(f"{cfg}: cpu_memory_mb: {expected}")
    assert "\n" not in str(err.value)


def test_the_restore_variable_is_not_a_config_key():
    env = {RESTORE_MODELS_ENV: '[{"model_id": "org/a", "devices": []}]', "NEURON_PORT": "14000"}
    assert load_neuron_config(None, env=env).port == 14000


def test_restore_models_reads_the_specs_a_restart_wrote(monkeypatch):
    monkeypatch.setenv("NEURON_PORT", "14000")
    models = [ModelSpec(model_id="org/a", devices=[]), ModelSpec(model_id="b", devices=[1], harness="torch")]
    env = restart_environ(models)
    assert env["NEURON_PORT"] == "14000"  # the rest of the environment travels as it is
    assert json.loads(env[RESTORE_MODELS_ENV]) == [
        {"model_id": "org/a", "devices": []},
        {"model_id": "b", "harness": "torch", "devices": [1]},
    ]
    assert restore_models(env) == models
    monkeypatch.setenv(RESTORE_MODELS_ENV, env[RESTORE_MODELS_ENV])
    assert RESTORE_MODELS_ENV not in restart_environ([])  # nothing to restore: the variable goes
    assert restore_models({}) == [] and restore_models({RESTORE_MODELS_ENV: " "}) == []


@pytest.mark.parametrize("text", ["not json", '{"model_id": "a"}', '[{"model": "a"}]', '[{"model_id": 5}]'])
def test_a_bad_restore_variable_is_one_line_naming_it(text):
    with pytest.raises(ConfigError) as err:
        restore_models({RESTORE_MODELS_ENV: text})
    assert str(err.value).startswith(f"{RESTORE_MODELS_ENV} (environment): expected a JSON list of load specs")
    assert "\n" not in str(err.value)


def test_the_fleet_key_comes_from_the_file_or_neuron_api_key(tmp_path):
    assert load_neuron_config(None, env={}).api_key is None
    assert load_neuron_config(None, env={"NEURON_API_KEY": "k-123"}).api_key == "k-123"
    cfg = tmp_path / "neuron.toml"
    cfg.write_text('api_key = "from-file"\n')
    assert load_neuron_config(cfg, env={}).api_key == "from-file"
    assert load_neuron_config(cfg, env={"NEURON_API_KEY": "from-env"}).api_key == "from-env"
    cfg.write_text('api_key = " spaced "\n')
    with pytest.raises(ConfigError) as err:
        load_neuron_config(cfg, env={})
    assert str(err.value) == f"{cfg}: api_key: expected a non-empty key without surrounding spaces"


def test_the_legacy_keys_are_read_under_their_new_names_with_a_warning(tmp_path, caplog):
    cfg = tmp_path / "neuron.toml"
    cfg.write_text("prefill_chunk_tokens = 256\n[admission]\nmax_in_flight = 3\n")
    loaded = load_neuron_config(cfg, env={})
    assert loaded.admission.max_num_seqs == 3 and loaded.max_batch_tokens == 256
    assert "admission.max_in_flight is the legacy name of admission.max_num_seqs" in caplog.text
    assert "prefill_chunk_tokens is the legacy name of max_batch_tokens" in caplog.text
    assert load_neuron_config(None, env={"NEURON_ADMISSION__MAX_IN_FLIGHT": "2"}).admission.max_num_seqs == 2
    cfg.write_text("[admission]\nmax_in_flight = 3\nmax_num_seqs = 4\n")
    with pytest.raises(ConfigError) as err:
        load_neuron_config(cfg, env={})
    assert "both admission.max_in_flight and its new name admission.max_num_seqs" in str(err.value)
    defaults = load_neuron_config(None, env={})
    assert defaults.admission.max_num_seqs is None and defaults.max_batch_tokens is None  # per device kind
