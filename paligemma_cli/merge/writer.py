"""Sharded safetensors written chunk by chunk, never holding a shard (or a tensor) in memory.

`safetensors.torch.save_file` needs every tensor of a file in memory at once; a 3B model's
embedding alone is 1 GB in bf16. The merge knows every output name, shape and dtype before it
starts (they are the base's), so each shard's header can be written first and the tensor bytes
appended as the chunks are merged. The files are ordinary safetensors (8-byte header length,
JSON header padded to 8 bytes, then the data in header order) plus the usual index json.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
          torch.uint8: "U8", torch.bool: "BOOL"}
ITEM_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
              "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
DEFAULT_SHARD_BYTES = 2 * 1024**3


@dataclass
class _Entry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


class ShardedWriter:
    """Writes tensors, in the order given, into shards of at most `max_shard_bytes` each.

    `write(name, chunk)` appends a chunk (rows in order) of the current tensor; a tensor larger
    than the limit gets a shard of its own. `close()` checks everything arrived and writes
    `model.safetensors.index.json` when there is more than one shard.
    """

    def __init__(self, folder: Path, tensors: list[tuple[str, tuple[int, ...], str]],
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES, prefix: str = "model"):
        self.folder = Path(folder)
        entries = [_Entry(n, tuple(s), d, math.prod(s) * ITEM_BYTES[d]) for n, s, d in tensors]
        self.shards: list[list[_Entry]] = [[]]
        size = 0
        for e in entries:
            if self.shards[-1] and size + e.nbytes > max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(e)
            size += e.nbytes
        n = len(self.shards)
        self.names = [f"{prefix}.safetensors"] if n == 1 else \
            [f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.order = [(i, e) for i, shard in enumerate(self.shards) for e in shard]
        self.total_bytes = sum(e.nbytes for e in entries)
        self._pos = 0  # index into self.order of the tensor being written
        self._written = 0  # bytes of it written so far
        self._file = None
        self._shard = -1

    def _open(self, shard: int) -> None:
        if self._file is not None:
            self._file.close()
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for e in self.shards[shard]:
            header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
            offset += e.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
        self._file = open(self.folder / self.names[shard], "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._shard = shard

    def write(self, name: str, chunk: torch.Tensor) -> None:
        """Append `chunk` (the next rows of tensor `name`) in the tensor's declared dtype."""
        shard, entry = self.order[self._pos]
        if name != entry.name or DTYPES.get(chunk.dtype) != entry.dtype:
            raise RuntimeError(f"writer expected {entry.name} ({entry.dtype}), got {name} ({chunk.dtype})")
        if shard != self._shard:
            self._open(shard)
        data = chunk.detach().contiguous().reshape(-1).view(torch.uint8)
        if self._written + data.numel() > entry.nbytes:
            raise RuntimeError(f"too many bytes for {name}")
        self._file.write(data.numpy())
        self._written += data.numel()
        if self._written == entry.nbytes:
            self._pos += 1
            self._written = 0

    def close(self) -> list[str]:
        """Finish: flush, check completeness, write the index; returns the file names."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._pos != len(self.order):
            raise RuntimeError(f"writer closed before {self.order[self._pos][1].name} was written")
        if len(self.names) > 1:
            index = {"metadata": {"total_size": self.total_bytes},
                     "weight_map": {e.name: self.names[i] for i, e in self.order}}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return list(self.names)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
