"""The streaming shard writer produces ordinary safetensors files and index."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from paligemma_cli.merge.writer import DTYPES, ShardedWriter


def test_chunked_writes_round_trip_through_safetensors(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {"a.weight": torch.randn(10, 6, generator=gen).to(torch.bfloat16),
               "b.bias": torch.randn(7, generator=gen),
               "c.weight": torch.randn(3, 2, 2, generator=gen).half(),
               "d.ids": torch.arange(5),
               "e.scale": torch.tensor(2.5)}
    writer = ShardedWriter(tmp_path, [(k, tuple(v.shape), DTYPES[v.dtype]) for k, v in tensors.items()],
                           max_shard_bytes=130)
    for key, value in tensors.items():
        for piece in (value.split(3) if value.dim() else [value]):
            writer.write(key, piece)
    files = writer.close()
    assert len(files) > 1 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    loaded = {}
    for name in files:
        loaded.update(load_file(tmp_path / name))
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


def test_one_shard_needs_no_index(tmp_path):
    writer = ShardedWriter(tmp_path, [("w", (2, 2), "F32")])
    writer.write("w", torch.ones(2, 2))
    assert writer.close() == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert torch.equal(load_file(tmp_path / "model.safetensors")["w"], torch.ones(2, 2))
