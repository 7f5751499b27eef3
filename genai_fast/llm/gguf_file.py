"""The tensor table of a GGUF file, read directly (the gguf package's reader spends seconds building Python
objects for the tokenizer's ~100k metadata strings, which this skips without decoding them).

Layout (GGUF v2/v3, little-endian): magic "GGUF", uint32 version, uint64 tensor count, uint64 metadata
count; the metadata key/value pairs; one info record per tensor (name, dims, type, offset); then the
tensor data, starting at the next multiple of `general.alignment` (default 32), each tensor at its offset.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# GGML type ids of the block formats genai_fast.gguf_linear reads (ggml.h's enum ggml_type).
GGML_TYPES = {2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
# Metadata value types with a fixed size: uint8, int8, uint16, int16, uint32, int32, float32, bool, uint64,
# int64, float64. 8 is a string, 9 an array.
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of the file in a block format: data [rows, row bytes] uint8, a read-only view of the file."""

    name: str
    block_type: str
    shape: tuple[int, ...]  # GGUF order: shape[0] is the row length K
    data: np.ndarray


class _Cursor:
    def __init__(self, buffer: mmap.mmap, path: Path) -> None:
        self.buffer, self.path, self.pos = buffer, path, 0

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buffer):
            raise ValueError(f"{self.path}: truncated GGUF file (header ends early at byte {self.pos})")
        values = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += size
        return values

    def string(self) -> bytes:
        (length,) = self.take("<Q")
        if self.pos + length > len(self.buffer):
            raise ValueError(f"{self.path}: truncated GGUF file (a string runs past the end)")
        self.pos += length
        return bytes(self.buffer[self.pos - length:self.pos])

    def skip_value(self, kind: int) -> None:
        if kind in _FIXED:
            self.pos += _FIXED[kind]
        elif kind == _STRING:
            (length,) = self.take("<Q")
            self.pos += length
        elif kind == _ARRAY:
            item, count = self.take("<IQ")
            if item in _FIXED:
                self.pos += _FIXED[item] * count
            else:
                for _ in range(count):
                    self.skip_value(item)
        else:
            raise ValueError(f"{self.path}: unknown GGUF metadata value type {kind} at byte {self.pos}")


def read_block_tensors(path: str | Path) -> list[GgufTensor]:
    """The file's 2-D tensors stored in Q4_0, Q4_1 or Q8_0 blocks (others are skipped). ValueError naming the
    file when it is not GGUF or is truncated."""
    path = Path(path)
    with open(path, "rb") as f:
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    cursor = _Cursor(buffer, path)
    magic, version, n_tensors, n_kv = cursor.take("<4sIQQ")
    if magic != b"GGUF" or version not in (2, 3):
        raise ValueError(f"{path}: not a GGUF v2/v3 file (magic {magic!r}, version {version})")
    alignment = 32
    for _ in range(n_kv):
        key = cursor.string()
        (kind,) = cursor.take("<I")
        if key == b"general.alignment" and kind == 4:
            (alignment,) = cursor.take("<I")
        else:
            cursor.skip_value(kind)
    infos = []
    for _ in range(n_tensors):
        name = cursor.string().decode("utf-8", "replace")
        (n_dims,) = cursor.take("<I")
        shape = cursor.take(f"<{n_dims}Q")
        kind, offset = cursor.take("<IQ")
        infos.append((name, shape, kind, offset))
    data_start = -(-cursor.pos // alignment) * alignment
    tensors = []
    for name, shape, kind, offset in infos:
        block_type = GGML_TYPES.get(kind)
        if block_type is None or len(shape) != 2 or shape[0] % 32:
            continue
        row_bytes = shape[0] // 32 * _BLOCK_BYTES[block_type]
        start, size = data_start + offset, row_bytes * shape[1]
        if start + size > len(buffer):
            raise ValueError(f"{path}: truncated GGUF file (tensor {name} runs past the end)")
        data = np.frombuffer(buffer, dtype=np.uint8, count=size, offset=start).reshape(shape[1], row_bytes)
        tensors.append(GgufTensor(name, block_type, tuple(shape), data))
    return tensors
