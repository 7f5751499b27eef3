"""Corpus reading for word2vec: word counting and encoding to token ids, in chunks.

Two sources, gensim's two: `sentences` (a restartable iterable of lists of str tokens) and
`corpus_file` (LineSentence format: UTF-8 text, one sentence per line, tokens separated by ASCII
whitespace). A line is one sentence however long it is: lines are never cut at 10,000 tokens (gensim
cuts them). Files are read in blocks that end at a newline; the C++ extension counts and encodes a
block (GIL released) when it is built, else the same tokenisation runs in Python.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from genai_fast.backends.availability import cpp_module

BLOCK_BYTES = 2 << 20        # corpus_file read size
CHUNK_TOKENS = 1 << 20       # tokens per training call for `sentences`


@dataclass
class Chunk:
    """A piece of corpus ready for the kernel: ids [N] int32, sentence offsets [S + 1] int64, and the
    raw token count (in the vocabulary or not) and sentence count it came from."""

    ids: np.ndarray
    offsets: np.ndarray
    raw_words: int
    sentences: int


def check_corpus_file(corpus_file: Any) -> Path:
    """The corpus path, or FileNotFoundError/IsADirectoryError/PermissionError/TypeError naming it."""
    if not isinstance(corpus_file, (str, os.PathLike)):
        raise TypeError(f"corpus_file: expected a path, got {type(corpus_file).__name__}")
    path = Path(corpus_file)
    if not path.exists():
        raise FileNotFoundError(f"corpus_file: {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"corpus_file: {path} is a folder, expected a text file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"corpus_file: {path} is not readable")
    return path


def iter_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """Blocks of the file that end at a newline (or at the end of file); a long line extends its block."""
    carry = b""
    with open(path, "rb") as f:
        while True:
            data = f.read(block_bytes)
            if not data:
                break
            data = carry + data
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1:]
            yield data[: cut + 1]
    if carry:
        yield carry


class LineSentence:
    """Iterate a LineSentence-format file as lists of str tokens (whole lines, never cut)."""

    def __init__(self, source: str | os.PathLike, limit: int | None = None) -> None:
        self.source = check_corpus_file(source)
        self.limit = limit

    def __iter__(self) -> Iterator[list[str]]:
        with open(self.source, "rb") as f:
            for i, line in enumerate(f):
                if self.limit is not None and i >= self.limit:
                    break
                yield [w.decode("utf-8", errors="replace") for w in line.split()]


# ---------------------------------------------------------------- counting


@dataclass
class Counts:
    """Raw counts in first-seen order, total tokens, sentence count, and the final min_reduce of pruning."""

    counts: dict[str, int]
    total_words: int
    num_sentences: int
    min_reduce: int = 1


def count_file(path: Path, max_vocab_size: int | None) -> Counts:
    module, _ = cpp_module()
    if module is not None:
        counter = module.Word2VecCounter(int(max_vocab_size or 0))
        for block in iter_blocks(path):
            counter.add_text(block)
        return Counts(counter.counts(), counter.total_words, counter.num_lines, counter.min_reduce)
    return count_sentences(
        ([w.decode("utf-8", errors="replace") for w in line.split()] for block in iter_blocks(path)
         for line in block.split(b"\n")), max_vocab_size, skip_empty=True)


def _prune(counts: Counter, min_reduce: int) -> Counter:
    return Counter({w: c for w, c in counts.items() if c >= min_reduce})


def count_sentences(sentences: Iterable[Any], max_vocab_size: int | None, skip_empty: bool = False) -> Counts:
    """Counts of an iterable of token lists; TypeError naming a sentence that is not a list of str."""
    counts: Counter = Counter()
    total = num = 0
    min_reduce = 1
    for i, sentence in enumerate(sentences):
        if isinstance(sentence, (str, bytes)) or not hasattr(sentence, "__iter__"):
            raise TypeError(f"sentences: sentence {i} is a {type(sentence).__name__}, expected a list of str "
                            f"tokens")
        if skip_empty and not sentence:
            continue
        counts.update(sentence)
        total += len(sentence)
        num += 1
        if max_vocab_size and len(counts) > max_vocab_size:
            counts = _prune(counts, min_reduce)
            min_reduce += 1
    for word in counts:
        if not isinstance(word, str):
            raise TypeError(f"sentences: token {word!r} is a {type(word).__name__}, expected str")
    return Counts(dict(counts), total, num, min_reduce)


# ---------------------------------------------------------------- encoding


class Encoder:
    """Maps tokens to vocabulary ids (out-of-vocabulary tokens are dropped, as gensim drops them)."""

    def __init__(self, index_to_key: list[str], key_to_index: dict[str, int]) -> None:
        self.key_to_index = key_to_index
        module, _ = cpp_module()
        self.native = module.Word2VecVocab([k.encode("utf-8") for k in index_to_key]) if module else None

    def encode_file(self, path: Path) -> Iterator[Chunk]:
        for block in iter_blocks(path):
            if self.native is not None:
                bound = (len(block) + 1) // 2
                ids = np.empty(bound, dtype=np.int32)
                offsets = np.empty(bound + 1, dtype=np.int64)
                n_ids, n_off, raw, lines = self.native.encode(block, ids.ctypes.data, ids.size, offsets.ctypes.data,
                                                              offsets.size)
                if n_ids:
                    yield Chunk(ids[:n_ids].copy(), offsets[:n_off].copy(), raw, lines)
                elif raw:
                    yield Chunk(np.zeros(0, np.int32), np.zeros(1, np.int64), raw, lines)
            else:
                lines = [[w.decode("utf-8", errors="replace") for w in line.split()] for line in block.split(b"\n")]
                yield from self.encode_sentences([ln for ln in lines if ln], chunk_tokens=1 << 62)

    def encode_sentences(self, sentences: Iterable[Any], chunk_tokens: int = CHUNK_TOKENS) -> Iterator[Chunk]:
        get = self.key_to_index.get
        flat: list[Any] = []
        lengths: list[int] = []
        for i, sentence in enumerate(sentences):
            if isinstance(sentence, (str, bytes)):
                raise TypeError(f"sentences: sentence {i} is a {type(sentence).__name__}, expected a list of str "
                                f"tokens")
            flat.extend(sentence)
            lengths.append(len(sentence))
            if len(flat) >= chunk_tokens:
                yield self._pack(flat, lengths, get)
                flat, lengths = [], []
        if lengths:
            yield self._pack(flat, lengths, get)

    @staticmethod
    def _pack(flat: list[Any], lengths: list[int], get: Any) -> Chunk:
        raw = np.fromiter(map(get, flat, repeat(-1)), dtype=np.int64, count=len(flat))
        keep = raw >= 0
        ids = raw[keep].astype(np.int32)
        kept_cumsum = np.concatenate([[0], np.cumsum(keep)])
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        kept_per_sentence = kept_cumsum[bounds[1:]] - kept_cumsum[bounds[:-1]]
        ends = np.cumsum(kept_per_sentence[kept_per_sentence > 0])
        offsets = np.concatenate([[0], ends]).astype(np.int64)
        return Chunk(ids, offsets, len(flat), len(lengths))
