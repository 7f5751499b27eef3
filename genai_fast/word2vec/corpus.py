"""Corpus reading for word2vec: word counting and encoding to token ids, in chunks.

Two sources, gensim's two: `sentences` (a restartable iterable of lists of str tokens) and
`corpus_file` (LineSentence format: UTF-8 text, one sentence per line, tokens separated by ASCII
whitespace). A line is one sentence however long it is: lines are never cut at 10,000 tokens (gensim
cuts them). Files are read in blocks that end at a newline; the C++ extension counts and encodes a
block (GIL released) when it is built, else the same tokenisation runs in Python.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from genai_fast.backends.availability import cpp_module
from genai_fast.word2vec.storage import open_by_suffix

BLOCK_BYTES = 2 << 20        # corpus_file read size
CHUNK_TOKENS = 1 << 20       # tokens per training call for `sentences`


@dataclass
class Chunk:
    """A piece of corpus ready for the kernel: ids [N] int32, sentence offsets [S + 1] int64 (numpy arrays;
    tensors on the GPU once Word2Vec(device="cuda") has moved them there), and the raw token count (in the
    vocabulary or not) and sentence count it came from."""

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


def region_bounds(path: Path, parts: int) -> list[tuple[int, int]]:
    """Split the file into `parts` byte ranges that start after a newline (gensim's corpus_file workers)."""
    size = path.stat().st_size
    starts = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            f.seek(max(size * k // parts - 1, starts[-1]))
            f.readline()  # move to the start of the next line
            starts.append(min(f.tell(), size))
    ends = [*starts[1:], size]
    return [(a, b) for a, b in zip(starts, ends, strict=True) if b > a]


def iter_blocks(path: Path, block_bytes: int = BLOCK_BYTES, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Blocks of the file's bytes [start, end) that end at a newline (or at `end`); a long line extends
    its block, so lines are never cut."""
    carry = b""
    with open(path, "rb") as f:
        f.seek(start)
        remaining = (end - start) if end is not None else None
        while remaining is None or remaining > 0:
            data = f.read(block_bytes if remaining is None else min(block_bytes, remaining))
            if not data:
                break
            if remaining is not None:
                remaining -= len(data)
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
    """Iterate a LineSentence-format file as lists of str tokens, gensim's class with its arguments.

    source: a path (.gz and .bz2 files are decompressed, as gensim does) or an open file object with seek().
    max_sentence_length: cut a line into pieces of at most this many tokens, as gensim does (its default is
    10000); None (the default here) keeps every line whole. limit: read only the first `limit` lines.
    Blank lines give no sentence (as in gensim), so corpus_count counts the lines that hold words.
    """

    def __init__(self, source: str | os.PathLike | Any, max_sentence_length: int | None = None,
                 limit: int | None = None) -> None:
        self.source = source if _is_open_file(source) else check_corpus_file(source)
        if max_sentence_length is not None and (isinstance(max_sentence_length, bool) or
                                                not isinstance(max_sentence_length, int) or max_sentence_length < 1):
            raise ValueError(f"max_sentence_length: expected an int >= 1 or None, got {max_sentence_length!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit: expected an int >= 0 or None, got {limit!r}")
        self.max_sentence_length = max_sentence_length
        self.limit = limit

    def __iter__(self) -> Iterator[list[str]]:
        if _is_open_file(self.source):
            self.source.seek(0)
            yield from self._sentences(self.source)
            return
        with open_by_suffix(self.source, "rb") as f:  # .gz and .bz2 decompressed, as gensim's
            yield from self._sentences(f)

    def _sentences(self, lines: Iterable[bytes | str]) -> Iterator[list[str]]:
        step = self.max_sentence_length
        for line in itertools.islice(lines, self.limit):
            # bytes split on ASCII whitespace, as corpus_file's reader does, so both give the same sentences
            words = [w.decode("utf-8", errors="replace") for w in line.split()] if isinstance(line, bytes) \
                else line.split()
            if step is None:
                if words:
                    yield words
                continue
            for start in range(0, len(words), step):
                yield words[start:start + step]


def _is_open_file(source: Any) -> bool:
    return hasattr(source, "seek") and hasattr(source, "read")


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

    def encode_file(self, path: Path, parts: int = 1) -> Iterator[Chunk]:
        """Chunks of the file. With parts > 1 the file is read as `parts` regions in lockstep and each
        chunk joins one block of every region, so the kernel's threads (which split a chunk evenly)
        each stream their own region at the same time, as gensim's corpus_file workers do."""
        regions = region_bounds(path, parts) if parts > 1 else [(0, None)]
        streams = [self._encode_blocks(iter_blocks(path, start=a, end=b)) for a, b in regions]
        if len(streams) == 1:
            yield from streams[0]
            return
        for group in itertools.zip_longest(*streams):
            yield join_chunks([c for c in group if c is not None])

    def _encode_blocks(self, blocks: Iterable[bytes]) -> Iterator[Chunk]:
        for block in blocks:
            if self.native is not None:
                bound = (len(block) + 1) // 2
                ids = np.empty(bound, dtype=np.int32)
                offsets = np.empty(bound + 1, dtype=np.int64)
                n_ids, n_off, raw, lines = self.native.encode(block, ids.ctypes.data, ids.size, offsets.ctypes.data,
                                                              offsets.size)
                yield Chunk(ids[:n_ids].copy(), offsets[:n_off].copy(), raw, lines)
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


def join_chunks(chunks: list[Chunk]) -> Chunk:
    """One chunk holding the given chunks one after the other."""
    if len(chunks) == 1:
        return chunks[0]
    ids = np.concatenate([c.ids for c in chunks])
    parts, base = [np.zeros(1, np.int64)], 0
    for c in chunks:
        parts.append(c.offsets[1:] + base)
        base += c.ids.size
    return Chunk(ids, np.concatenate(parts), sum(c.raw_words for c in chunks), sum(c.sentences for c in chunks))


_DONE = object()


def prefetched(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """`items` in order, produced by a background thread up to `depth` ahead of the consumer.

    Word2Vec(device="cuda") reads and encodes its first epoch this way, so the corpus encoding (C++, the
    GIL released) overlaps the GPU's training on the previous chunk. An exception in the producer is
    raised here, in the consumer; a consumer that stops early (Ctrl-C, an error) stops the producer
    at its next chunk.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_DONE, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer((_DONE, exc))

    worker = threading.Thread(target=produce, name="genai_fast-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()

