"""Model ids resolve inside model_roots or the HF cache, never anywhere else."""

from __future__ import annotations

import pytest

from neuron.api.errors import api_error_of
from neuron.loading.resolve import resolve_model_dir
from neuron.models import BadModelId, ModelNotFound


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
    with pytest.raises(BadModelId) as err:
        resolve_model_dir(bad, roots=[str(tmp_path)], hf_cache=str(tmp_path), allow_download=False)
    answer = api_error_of(err.value)
    assert answer.status == 400 and answer.param == "model_id" and "never a filesystem path" in answer.message


def test_a_symlink_out_of_the_root_is_refused(tmp_path):
    outside = make_model(tmp_path / "outside")
    root = tmp_path / "root"
    (root / "org").mkdir(parents=True)
    (root / "org" / "m").symlink_to(outside)
    with pytest.raises(BadModelId, match="resolves outside its model root"):
        resolve_model_dir("org/m", roots=[str(root)], hf_cache=str(tmp_path / "c"), allow_download=False)


def test_missing_model_with_downloads_off_is_404_naming_where_it_looked(tmp_path):
    with pytest.raises(ModelNotFound) as err:
        resolve_model_dir("org/none", roots=[str(tmp_path)], hf_cache=str(tmp_path / "c"), allow_download=False)
    assert api_error_of(err.value).status == 404
    assert str(tmp_path) in str(err.value) and "allow_download = false" in str(err.value)
