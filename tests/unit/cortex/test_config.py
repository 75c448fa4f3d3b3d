"""cortex.toml and models.toml: the examples load, bad values name their key, aliases stay one hop."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.config import Catalogue, ConfigError, ModelProfile, load_catalogue, load_cortex_config

ETC = Path(__file__).resolve().parents[3] / "etc"


def test_the_example_configs_load():
    cfg = load_cortex_config(ETC / "cortex.example.toml", env={})
    assert cfg.gateway.listen == "0.0.0.0:31313" and [n.name for n in cfg.neurons] == ["beast", "benjy"]
    assert cfg.auth is not None and cfg.auth.api_keys
    catalogue = load_catalogue(Path(cfg.models_config), required=True)
    assert catalogue.aliases["claude-sonnet-5"] == "Qwen/Qwen3-8B"
    assert catalogue.profile("Qwen/Qwen3-0.6B").min_devices == 0
    assert cfg.gateway.keepalive_secs == 5


def test_aliases_resolve_exact_names_then_ids_then_patterns_in_order():
    catalogue = Catalogue(
        models=[ModelProfile(id="big"), ModelProfile(id="small"), ModelProfile(id="claude-local")],
        aliases={"claude-haiku-*": "small", "claude-*": "big", "claude-opus-9": "small", "gpt-?": "small"},
    )
    assert catalogue.resolve("claude-opus-9") == "small"  # an exact alias beats every pattern
    assert catalogue.resolve("claude-haiku-4-5-20251001") == "small"  # the first matching pattern wins
    assert catalogue.resolve("claude-sonnet-5") == "big"
    assert catalogue.resolve("claude-local") == "claude-local"  # a model id is never hijacked by a pattern
    assert catalogue.resolve("gpt-5") == "small" and catalogue.resolve("gpt-55") == "gpt-55"
    assert catalogue.resolve("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"


def test_legacy_nodes_table_and_env_overrides(tmp_path, caplog):
    path = tmp_path / "cortex.toml"
    path.write_text('[[nodes]]\nname = "a"\nendpoint = "http://a:13131"\n')
    cfg = load_cortex_config(path, env={"CORTEX_GATEWAY__LISTEN": "127.0.0.1:9000", "CORTEX_GATEWAY__MAX_BODY_MB": "4"})
    assert cfg.neurons[0].name == "a" and "legacy name" in caplog.text
    assert cfg.gateway.listen == "127.0.0.1:9000" and cfg.gateway.max_body_mb == 4
    assert cfg.models_config == str(tmp_path / "models.toml")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[eviction]\nstrategy = 'fifo'", "eviction.strategy: expected 'lru' or 'priority', got 'fifo'"),
        ("[gateway]\npoll_interval_secs = 0", "gateway.poll_interval_secs: expected a number > 0, got 0.0"),
        (
            "[[neurons]]\nname = 'a'\nendpoint = 'http://a'\n[[neurons]]\nname = 'a'\nendpoint = 'http://b'",
            "neurons: names must be unique, a appears more than once",
        ),
        ("[gateway]\nlisten_addr = ':1'", "gateway.listen_addr: unknown key (expected one of: listen, metrics_listen"),
    ],
)
def test_bad_gateway_config_names_the_key(tmp_path, text, line):
    path = tmp_path / "cortex.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_cortex_config(path, env={})
    assert str(err.value).startswith(f"{path}: {line}")


def test_aliases_are_one_hop_and_ids_unique(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nid = "m"\n[aliases]\n"a" = "b"\n"b" = "m"\n')
    with pytest.raises(ConfigError, match="'a' points at the alias 'b'; aliases are one hop"):
        load_catalogue(path)
    path.write_text('[[models]]\nid = "m"\n[[models]]\nid = "m"\n')
    with pytest.raises(ConfigError, match="m appears more than once"):
        load_catalogue(path)
    assert load_catalogue(tmp_path / "absent.toml").models == []
