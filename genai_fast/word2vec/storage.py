"""Safe model files: one .npz of plain numpy arrays plus a JSON metadata entry. Never pickle.

Loading uses `allow_pickle=False`, so a file cannot run code; writes are atomic (a temporary file
renamed over the target), so an interrupted save leaves the old file or none.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from genai_fast.io import atomic_write

FORMAT = "genai_fast.word2vec"
VERSION = 1


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write `arrays` and the JSON-serialisable `meta` to `path` (.npz, uncompressed), atomically."""
    header = {"format": FORMAT, "version": VERSION, **meta}
    blob = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray) or value.dtype == object:
            raise TypeError(f"{name}: expected a numeric numpy array, got {type(value).__name__}")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, __meta__=blob, **arrays)

    atomic_write(path, write)


def load_arrays(path: str | os.PathLike, expect_kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by save_arrays; ValueError naming the file when it is not one or is damaged."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    _check_not_foreign(p)
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{p}: not a readable genai_fast model file (truncated or corrupted?): {exc}") from None
    if "__meta__" not in arrays:
        raise ValueError(f"{p}: not a genai_fast model file (no metadata entry)")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: corrupted metadata ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p}: not a genai_fast word2vec file (format {meta.get('format')!r})")
    if meta.get("kind") != expect_kind:
        raise ValueError(f"{p}: holds a {meta.get('kind')}, expected a {expect_kind}")
    return arrays, meta


def _check_not_foreign(path: Path) -> None:
    """ValueError naming what `path` is when its first bytes show a pickle (what gensim's save writes) or a
    single .npy array (what gensim writes beside it), before numpy reports it in its own terms."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise ValueError(f"{path}: not a readable genai_fast model file: {exc}") from None
    if head[:1] == b"\x80":  # pickle protocols 2 to 5 start with PROTO (gensim writes protocol 4)
        raise ValueError(f"{path}: is a Python pickle (gensim's save() writes one); pickles are never unpickled "
                         "here, as loading one can run code. Convert it with gensim: "
                         "model.wv.save_word2vec_format('vectors.bin', binary=True), then "
                         "KeyedVectors.load_word2vec_format('vectors.bin', binary=True)")
    if head == b"\x93NUMPY":
        raise ValueError(f"{path}: is a single numpy array (.npy, such as gensim writes beside its pickle), "
                         "not a genai_fast model file (.npz written by save)")


MMAP_MODES = (None, "r", "r+", "w+", "c")


def check_mmap(mmap: Any) -> None:
    """gensim's load(mmap=...) values are accepted (the .npz is read into memory); anything else is an error."""
    if mmap not in MMAP_MODES:
        raise ValueError(f"mmap: expected one of {MMAP_MODES}, got {mmap!r}")


def open_by_suffix(name: str | os.PathLike, mode: str, data_path: str | os.PathLike | None = None,
                   **text: Any) -> Any:
    """Open `data_path` (default: `name`) for reading or writing, compressed with gzip or bz2 when `name` ends in
    .gz or .bz2, as gensim's smart_open does (e.g. GoogleNews-vectors-negative300.bin.gz). `name` decides the
    compression so that an atomic write's temporary file gets the target's."""
    path = name if data_path is None else data_path
    suffix = Path(name).suffix.lower()
    opener = gzip.open if suffix == ".gz" else bz2.open if suffix == ".bz2" else open
    return opener(path, mode, **text)
