"""Checkpoint sizes come from the safetensors headers alone, for one file and for an index of shards."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from neuron.loading.safetensors import Checkpoint, read_header
from neuron.models import BadCheckpoint

TENSORS = {"a.weight": torch.zeros(7, 13), "b.weight": torch.zeros(769), "c.bias": torch.zeros(2, 3, 5)}
ELEMENTS = 7 * 13 + 769 + 2 * 3 * 5


def test_numel_counts_every_tensor_without_reading_tensor_data(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, str(path), metadata={"format": "pt"})
    assert Checkpoint(tmp_path).numel() == ELEMENTS
    size = int.from_bytes(path.read_bytes()[:8], "little")
    path.write_bytes(path.read_bytes()[: 8 + size])  # the header alone: the tensor data is gone
    assert set(read_header(path)) == set(TENSORS)
    assert sum(torch.Size(info["shape"]).numel() for info in read_header(path).values()) == ELEMENTS


def test_numel_follows_the_index_across_shards(tmp_path):
    save_file({"a.weight": TENSORS["a.weight"]}, str(tmp_path / "part-1.safetensors"))
    save_file({k: TENSORS[k] for k in ("b.weight", "c.bias")}, str(tmp_path / "part-2.safetensors"))
    weight_map = {"a.weight": "part-1.safetensors", "b.weight": "part-2.safetensors", "c.bias": "part-2.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert Checkpoint(tmp_path).numel() == ELEMENTS


def test_a_broken_header_is_a_bad_checkpoint(tmp_path):
    save_file(TENSORS, str(tmp_path / "model.safetensors"))
    ckpt = Checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((40).to_bytes(8, "little") + b"{not json")
    with pytest.raises(BadCheckpoint) as err:
        ckpt.numel()
    assert "model.safetensors is not a readable safetensors file" in str(err.value)


@pytest.mark.parametrize(
    ("index", "needle"),
    [
        ('{"weight_map": ', "is not a shard index"),
        ('{"other": {}}', "is not a shard index"),
        ('{"weight_map": {"a.weight": "../outside.safetensors"}}', "outside the model directory: outside.safetensors"),
    ],
)
def test_a_broken_shard_index_is_a_bad_checkpoint(tmp_path, index, needle):
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(BadCheckpoint) as err:
        Checkpoint(tmp_path)
    assert needle in str(err.value)


def test_a_missing_or_unreadable_shard_names_the_file(tmp_path):
    save_file({"a.weight": TENSORS["a.weight"]}, str(tmp_path / "part-1.safetensors"))
    (tmp_path / "part-2.safetensors").write_bytes(b"\x10" + b"\0" * 7 + b"{}")  # a header and no room for data
    weight_map = {"a.weight": "part-1.safetensors", "b.weight": "part-2.safetensors", "c.bias": "part-3.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ckpt = Checkpoint(tmp_path)
    assert ckpt.shape("a.weight") == (7, 13)
    with pytest.raises(BadCheckpoint, match=r"part-3.safetensors \(holding c.bias\) is missing"):
        ckpt.read("c.bias")
    with pytest.raises(BadCheckpoint, match=r"part-2.safetensors is not a readable safetensors file"):
        ckpt.read("b.weight")
