"""Config loading rules shared by both programs: unknown keys, types, env overrides, renames."""

from __future__ import annotations

import msgspec
import pytest

from cortex.protocol.settings import ConfigError, load_config


class Inner(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    size: int = 1
    names: list[str] = []

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size: expected an integer >= 1, got {self.size}")


class Item(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: str


class Outer(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    port: int = 10
    inner: Inner = Inner()
    items: list[Item] = []


def load(tmp_path, text: str, env: dict[str, str] | None = None, **kw) -> Outer:
    path = tmp_path / "x.toml"
    path.write_text(text)
    return load_config(path, Outer, env=env or {}, env_prefix="APP_", **kw)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("portt = 1", "portt: unknown key (expected one of: port, inner, items)"),
        ("[inner]\nsise = 2", "inner.sise: unknown key (expected one of: size, names)"),
        ('port = "x"', "port: expected int, got str"),
        ("[inner]\nsize = 0", "inner.size: expected an integer >= 1, got 0"),
        ("[[items]]\nnam = 'a'", "items[0].nam: unknown key (expected one of: name)"),
        ("[[items]]\n", "items[0].name: required key is missing"),
        ("port = ", "(syntax): "),
    ],
)
def test_every_problem_is_one_line_naming_file_and_key(tmp_path, text, line):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert str(err.value).startswith(f"{tmp_path / 'x.toml'}: {line}")
    assert "\n" not in str(err.value)


def test_environment_overrides_typed_values_and_names_the_variable(tmp_path):
    cfg = load(tmp_path, "port = 1", {"APP_PORT": "7", "APP_INNER__NAMES": '["a", "b"]', "OTHER": "x"})
    assert cfg.port == 7 and cfg.inner.names == ["a", "b"]
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "", {"APP_INNER__SIZE": "big"})
    assert str(err.value) == "APP_INNER__SIZE (environment): inner.size: expected int, got str"


def test_legacy_table_names_are_read_with_a_warning(tmp_path, caplog):
    cfg = load(tmp_path, "[[things]]\nname = 'a'", renames={"things": "items"})
    assert cfg.items == [Item(name="a")]
    assert "legacy name" in caplog.text


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", Outer, env={}, env_prefix="APP_")
