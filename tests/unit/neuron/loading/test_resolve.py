"""Model ids resolve inside model_roots or the HF cache, never anywhere else."""

from __future__ import annotations

import pytest

from cortex.protocol.errors import ApiError
from neuron.loading.resolve import resolve_model_dir


def make_model(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_model_roots_come_before_the_hf_cache(tmp_path):
    root, cache = tmp_path / "roots", tmp_path / "cache"
    local = make_model(root / "org" / "m")
    snap = make_model(cache / "models--org--m" / "snapshots" / "abc")
    (cache / "models--org--m" / "refs").mkdir()
    (cache / "models--org--m" / "refs" / "main").write_text("abc")
    assert resolve_model_dir("org/m", roots=[str(root)], hf_cache=str(cache), allow_download=False) == local
    assert resolve_model_dir("org/m", roots=[], hf_cache=str(cache), allow_download=False) == snap


@pytest.mark.parametrize("bad", ["../etc", "/etc/passwd", "org/../../x", "a/b/c", "", "org/.hidden", "~root"])
def test_ids_that_are_paths_are_refused(tmp_path, bad):
    with pytest.raises(ApiError) as err:
        resolve_model_dir(bad, roots=[str(tmp_path)], hf_cache=str(tmp_path), allow_download=False)
    assert err.value.status == 400 and err.value.param == "model_id"


def test_a_symlink_out_of_the_root_is_refused(tmp_path):
    outside = make_model(tmp_path / "outside")
    root = tmp_path / "root"
    (root / "org").mkdir(parents=True)
    (root / "org" / "m").symlink_to(outside)
    with pytest.raises(ApiError) as err:
        resolve_model_dir("org/m", roots=[str(root)], hf_cache=str(tmp_path / "c"), allow_download=False)
    assert err.value.status == 400


def test_missing_model_with_downloads_off_is_404_naming_where_it_looked(tmp_path):
    with pytest.raises(ApiError) as err:
        resolve_model_dir("org/none", roots=[str(tmp_path)], hf_cache=str(tmp_path / "c"), allow_download=False)
    assert err.value.status == 404
    assert str(tmp_path) in err.value.message and "allow_download = false" in err.value.message
