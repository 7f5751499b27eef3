"""`Word2Vec`: gensim 4's Word2Vec API over genai_fast's negative-sampling and hierarchical-softmax kernels.

Same parameter names and semantics as gensim 4 (vocabulary rules, subsampling formula,
unigram^ns_exponent noise, linear learning-rate decay, shrinking windows, CBOW mean/sum rule), with
these differences, each deliberate:

- the training loss is a float64 sum per epoch, reset at each epoch (`epoch_losses`,
  `get_latest_training_loss()` = the latest epoch's), instead of gensim's float32 running total;
- lines of a corpus file are never cut at 10,000 tokens;
- skip-gram shares one set of negatives across a window's contexts (pWord2Vec) unless
  `shared_negatives=False`; the sigmoid is exact (gensim clips scores at +-6);
- noise words are drawn with the alias method from the exact distribution;
- hierarchical softmax (hs=1, alone with negative=0 or beside negative sampling) trains on the C++ and
  Triton trainers (the CUDA one has none). Its Huffman tree is gensim's (same codes and points), rebuilt
  from the word counts on load.

Lock factors (`model.wv.vectors_lockf`, gensim's): each update of word i's input vector is scaled by
vectors_lockf[i % len(vectors_lockf)] on every trainer (0.0 freezes the word, e.g. pretrained vectors
merged with `wv.intersect_word2vec_format`); syn1neg and syn1 are not affected. They are read at the start
of each `train()`; the default, np.ones(1) (or any all-ones array), costs nothing. Departure from gensim:
when `build_vocab(update=True)` adds words and there is one factor per old word, the new words get 1.0
(gensim would give them the factor of word i % len, an unrelated old word).

device="cuda" (and "auto" with workers > 1 on a machine with a CUDA GPU and Triton or CuPy; "auto"
with workers=1 keeps the CPU's deterministic mode) trains on the GPU: the
tables are copied to the GPU at the start of `train()` and back into `wv.vectors` / `syn1neg` at its
end (also after an error or Ctrl-C), and chunks are merged to at least GPU_CHUNK_TOKENS tokens per
kernel call. What each device promises:

- cpu: `workers=1` and a seed give bit-identical vectors on every run (one random stream per thread);
- cuda: a seed fixes every random draw (subsampling, window shrinks, negatives), but thousands of
  sentence slices update the shared tables concurrently (Hogwild, like word2vec.c and gensim with
  several workers), so vectors differ from run to run in their low bits and agree statistically
  (same losses and evaluation scores within noise), whatever `workers` is.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genai_fast.word2vec.corpus import (
    Chunk,
    Counts,
    Encoder,
    check_corpus_file,
    count_file,
    count_sentences,
    prefetched,
)
from genai_fast.word2vec.huffman import HuffmanTree, huffman_tree
from genai_fast.word2vec.keyedvectors import KeyedVectors, check_lock_factors

CACHE_TOKEN_LIMIT = 256 << 20  # encoded corpora up to this many tokens are kept in memory across epochs
GPU_CHUNK_TOKENS = 4 << 20  # tokens per GPU kernel call: enough slices to fill a GPU, few host syncs


# gensim's vocabulary trim rule: (word, count, min_count) -> RULE_DEFAULT, RULE_DISCARD or RULE_KEEP.
TrimRule = Callable[[str, int, int], int]
RULE_DEFAULT, RULE_DISCARD, RULE_KEEP = 0, 1, 2


def _keep_word(word: str, count: int, min_count: int, trim_rule: TrimRule | None) -> bool:
    """Whether the vocabulary keeps a word: the trim rule's verdict, else count >= min_count (gensim's)."""
    verdict = RULE_DEFAULT if trim_rule is None else trim_rule(word, count, min_count)
    if verdict == RULE_KEEP:
        return True
    if verdict == RULE_DISCARD:
        return False
    return count >= min_count


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def _require_int(name: str, value: Any, minimum: int) -> int:
    if not _is_int(value):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _require_number(name: str, value: Any, minimum: float, strict: bool = False) -> float:
    if not _is_number(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name}: expected a number {'>' if strict else '>='} {minimum}, got {value}")
    return float(value)


def _initial_vectors(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """gensim 4's initialisation: uniform in [-1/size, 1/size), float32 [count, size]."""
    vectors = rng.random((count, size), dtype=np.float32)
    vectors *= 2.0
    vectors -= 1.0
    vectors /= size
    return vectors


def alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias table of a distribution proportional to `weights` [V]: (prob float32, alias int32)."""
    n = len(weights)
    scaled = np.asarray(weights, dtype=np.float64) * n / float(np.sum(weights))
    prob = np.ones(n, dtype=np.float64)
    alias = np.arange(n, dtype=np.int32)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, big = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], big
        scaled[big] -= 1.0 - scaled[s]
        (small if scaled[big] < 1.0 else large).append(big)
    return prob.astype(np.float32), alias


def merge_chunks(chunks: Iterable[Chunk], min_tokens: int) -> Iterator[Chunk]:
    """Concatenate consecutive chunks until each holds at least `min_tokens` tokens (the last may hold
    fewer): a GPU call needs many sentences to fill the device and costs a few host syncs."""
    pending: list[Chunk] = []
    size = 0
    for chunk in chunks:
        pending.append(chunk)
        size += chunk.ids.size
        if size >= min_tokens:
            yield _concat_chunks(pending)
            pending, size = [], 0
    if pending:
        yield _concat_chunks(pending)


def _concat_chunks(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    starts = np.cumsum([0] + [c.ids.size for c in chunks[:-1]])
    offsets = [chunks[0].offsets[:1]] + [c.offsets[1:] + s for c, s in zip(chunks, starts, strict=True)]
    return Chunk(np.concatenate([c.ids for c in chunks]), np.concatenate(offsets).astype(np.int64),
                 sum(c.raw_words for c in chunks), sum(c.sentences for c in chunks))


@dataclass(frozen=True)
class _Schedule:
    """train()'s learning rate: linear from start_alpha to end_alpha over all epochs, progress counted in
    raw words (by_words) or sentences, per_epoch of them in each epoch."""

    epochs: int
    start_alpha: float
    end_alpha: float
    per_epoch: float
    by_words: bool

    def alpha(self, epoch: int, done: float) -> float:
        """The rate after `done` words (or sentences) of epoch `epoch`."""
        progress = min(max((epoch + done / self.per_epoch) / self.epochs, 0.0), 1.0)
        return self.start_alpha - (self.start_alpha - self.end_alpha) * progress


class _ChunkSource:
    """The encoded corpus, epoch by epoch. The first epoch's chunks are kept (up to CACHE_TOKEN_LIMIT
    tokens in all) so that later epochs skip reading and encoding the corpus again. With `to_device`
    (device="cuda"), each chunk is moved to the GPU as it is read, and the GPU copies are what is kept:
    later epochs then skip the host-to-device copies too."""

    def __init__(self, read: Callable[[], Iterable[Chunk]], to_device: Callable[[Chunk], Chunk] | None = None
                 ) -> None:
        self._read = read
        self._to_device = to_device
        self._kept: list[Chunk] | None = []  # None once the corpus proved too large to keep
        self._kept_tokens = 0

    def epoch(self, index: int) -> Iterator[Chunk]:
        if index > 0 and self._kept is not None:
            yield from self._kept
            return
        # On the GPU the next chunk is read and encoded while the previous one trains.
        chunks = self._read() if self._to_device is None else prefetched(self._read())
        for chunk in chunks:
            if self._to_device is not None:
                chunk = self._to_device(chunk)
            if index == 0 and self._kept is not None:
                self._keep(chunk)
            yield chunk

    def _keep(self, chunk: Chunk) -> None:
        self._kept_tokens += len(chunk.ids)
        if self._kept_tokens <= CACHE_TOKEN_LIMIT:
            self._kept.append(chunk)
        else:
            self._kept = None


class Word2Vec:
    """Word2vec (skip-gram or CBOW, negative sampling) with gensim 4's parameters.

    Given `sentences` (a restartable iterable of lists of str) or `corpus_file` (LineSentence text),
    the vocabulary is built and the model trained for `epochs` at once, as in gensim.
    `model.wv` holds the word vectors [V, vector_size]; `model.syn1neg` the negative-sampling output
    vectors; with hs=1 `model.syn1` [V, vector_size] the Huffman tree's inner-node vectors (row n is
    inner node n, V - 1 of them) and `model.huffman` the tree.

    Extra parameters: device ("auto": "cuda" when a CUDA GPU and a GPU backend are available and
    workers > 1, else "cpu"; see the module docstring for what each promises),
    shared_negatives (pWord2Vec batching for skip-gram, default True), progress (a tqdm bar).
    """

    # Where device="cuda" keeps the tables while training (the tests' interpreter run uses "cpu").
    _gpu_table_device = "cuda"

    def __init__(
        self,
        sentences: Iterable[Sequence[str]] | None = None,
        corpus_file: str | os.PathLike | None = None,
        vector_size: int = 100,
        alpha: float = 0.025,
        window: int = 5,
        min_count: int = 5,
        max_vocab_size: int | None = None,
        sample: float = 1e-3,
        seed: int = 1,
        workers: int = 3,
        min_alpha: float = 0.0001,
        sg: int = 0,
        hs: int = 0,
        negative: int = 5,
        ns_exponent: float = 0.75,
        cbow_mean: int = 1,
        epochs: int = 5,
        sorted_vocab: int = 1,
        compute_loss: bool = False,
        callbacks: Sequence[Any] = (),
        max_final_vocab: int | None = None,
        shrink_windows: bool = True,
        device: str = "auto",
        shared_negatives: bool = True,
        progress: bool = False,
        trim_rule: TrimRule | None = None,
        batch_words: int = 10000,
        null_word: int = 0,
        hashfxn: Callable[[str], int] = hash,
        comment: str | None = None,
    ) -> None:
        self.vector_size = _require_int("vector_size", vector_size, 1)
        self._set_gensim_extras(batch_words, null_word, hashfxn, comment)
        self.alpha = _require_number("alpha", alpha, 0.0, strict=True)
        self.min_alpha = _require_number("min_alpha", min_alpha, 0.0)
        self.window = _require_int("window", window, 1)
        self.min_count = _require_int("min_count", min_count, 0)
        self.max_vocab_size = None if max_vocab_size is None else _require_int("max_vocab_size", max_vocab_size, 1)
        self.max_final_vocab = None if max_final_vocab is None else _require_int("max_final_vocab", max_final_vocab, 1)
        self.sample = _require_number("sample", sample, 0.0)
        self.seed = _require_int("seed", seed, 0)
        self.workers = _require_int("workers", workers, 1)
        if sg not in (0, 1):
            raise ValueError(f"sg: expected 0 (CBOW) or 1 (skip-gram), got {sg!r}")
        self.sg = int(sg)
        if hs not in (0, 1):
            raise ValueError(f"hs: expected 0 or 1, got {hs!r}")
        self.hs = int(hs)
        self.negative = _require_int("negative", negative, 0)
        if self.negative == 0 and not self.hs:
            raise ValueError("negative: must be > 0 with hs=0 (one of negative sampling or hierarchical softmax "
                             "is needed)")
        self.ns_exponent = _require_number("ns_exponent", ns_exponent, -math.inf)
        if cbow_mean not in (0, 1):
            raise ValueError(f"cbow_mean: expected 0 (sum) or 1 (mean), got {cbow_mean!r}")
        self.cbow_mean = int(cbow_mean)
        self.epochs = _require_int("epochs", epochs, 1)
        self.sorted_vocab = int(bool(sorted_vocab))
        self.compute_loss = bool(compute_loss)
        self.callbacks = tuple(callbacks)
        self.shrink_windows = bool(shrink_windows)
        self.shared_negatives = bool(shared_negatives)
        self.progress = bool(progress)
        self.device = self._resolve_device(device, self.workers, self.hs)
        self.layer1_size = self.vector_size

        self.wv = KeyedVectors(self.vector_size, 0)
        self.syn1neg = np.zeros((0, self.vector_size), dtype=np.float32)
        self.syn1: np.ndarray | None = np.zeros((0, self.vector_size), dtype=np.float32) if self.hs else None
        self.huffman: HuffmanTree | None = None
        self.corpus_count = 0
        self.corpus_total_words = 0
        self.raw_vocab: dict[str, int] = {}
        self.keep_prob: np.ndarray | None = None
        self.noise_prob = np.zeros(0, np.float32)
        self.noise_alias = np.zeros(0, np.int32)
        self.epoch_losses: list[float] = []
        self.running_training_loss = 0.0
        self.train_count = 0
        self.total_train_time = 0.0
        self.interrupted = False
        self.min_alpha_yet_reached = self.alpha

        if sentences is not None and corpus_file is not None:
            raise ValueError("sentences, corpus_file: give one of them, not both")
        if sentences is not None or corpus_file is not None:
            self._check_source(sentences, corpus_file, passes=1 + self.epochs)  # before a generator is consumed
            self.build_vocab(corpus_iterable=sentences, corpus_file=corpus_file, trim_rule=trim_rule)
            self.train(corpus_iterable=sentences, corpus_file=corpus_file, total_examples=self.corpus_count,
                       total_words=self.corpus_total_words, epochs=self.epochs, compute_loss=self.compute_loss,
                       callbacks=self.callbacks)

    # ------------------------------------------------------------ setup

    def _set_gensim_extras(self, batch_words: Any, null_word: Any, hashfxn: Any, comment: Any) -> None:
        """gensim arguments that change nothing here, accepted so that gensim code runs unchanged:
        batch_words (gensim's words per worker job; the kernels here take whole chunks), hashfxn (gensim seeds
        each word's initial vector with it; here the initial vectors come from `seed`), comment (a note)."""
        self.batch_words = _require_int("batch_words", batch_words, 1)
        if null_word not in (0, False):
            raise NotImplementedError(f"null_word: only 0 is supported (the padding word is used by Doc2Vec's "
                                      f"concatenation mode, not by Word2Vec), got {null_word!r}")
        self.null_word = 0
        if not callable(hashfxn):
            raise TypeError(f"hashfxn: expected a callable, got {type(hashfxn).__name__}")
        self.hashfxn = hashfxn
        if comment is not None and not isinstance(comment, str):
            raise TypeError(f"comment: expected a str or None, got {type(comment).__name__}")
        self.comment = comment

    @staticmethod
    def _resolve_device(device: str, workers: int, hs: int = 0) -> str:
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
        if device == "cpu" or (device == "auto" and workers == 1):  # workers=1: the deterministic CPU mode
            return "cpu"
        import torch

        from genai_fast.backends.availability import backend_unavailable_reasons

        if not torch.cuda.is_available():
            if device == "cuda":
                raise ValueError("device: 'cuda' was asked for but no CUDA GPU is available")
            return "cpu"
        why = [r for b in ("triton", "cuda") for r in backend_unavailable_reasons(b)]
        if len(why) == 2:  # neither GPU backend can run
            if device == "cuda":
                raise ValueError("device: 'cuda' needs Triton or CuPy: " + "; ".join(why))
            return "cpu"
        return "cuda"

    @staticmethod
    def _check_source(corpus_iterable: Any, corpus_file: Any, passes: int = 2) -> None:
        """The corpus arguments checked; a one-shot iterator (a generator) is refused when it would be read
        `passes` > 1 times (gensim's rule: build_vocab reads once, train once per epoch)."""
        if corpus_iterable is None and corpus_file is None:
            raise ValueError("sentences/corpus_file: give a corpus (corpus_iterable/sentences or corpus_file)")
        if corpus_iterable is not None and corpus_file is not None:
            raise ValueError("sentences, corpus_file: give one of them, not both")
        if corpus_iterable is not None:
            if isinstance(corpus_iterable, (str, bytes, os.PathLike)):
                raise TypeError("sentences: expected an iterable of lists of str tokens, got a "
                                f"{type(corpus_iterable).__name__} (use corpus_file= for a path)")
            if not hasattr(corpus_iterable, "__iter__"):
                raise TypeError("sentences: expected an iterable of lists of str, got "
                                f"{type(corpus_iterable).__name__}")
            if passes > 1 and iter(corpus_iterable) is corpus_iterable:
                raise TypeError(f"sentences: a generator or iterator can be read only once, and this call reads "
                                f"the corpus {passes} times; pass a restartable iterable (a list, or a class with "
                                f"__iter__)")

    def build_vocab(self, corpus_iterable: Iterable[Sequence[str]] | None = None,
                    corpus_file: str | os.PathLike | None = None, update: bool = False,
                    progress_per: int = 10000, keep_raw_vocab: bool = False, trim_rule: TrimRule | None = None,
                    min_count: int | None = None, sample: float | None = None, dry_run: bool = False) -> None:
        """Count the corpus and build the vocabulary, subsampling and noise tables, and fresh weights.

        update=True adds new words (keeping trained vectors) and adds the new counts to known words.
        trim_rule(word, count, min_count) -> RULE_KEEP (2), RULE_DISCARD (1) or RULE_DEFAULT (0), gensim's
        rule for which words the vocabulary keeps (default: count >= min_count). min_count and sample, when
        given (and not 0), replace the model's for this vocabulary, as gensim's build_vocab(**kwargs) does
        (kept on the model unless update=True).
        """
        self._check_source(corpus_iterable, corpus_file, passes=1)
        self._check_update(update)
        self._check_trim_rule(trim_rule)
        settings = self._vocab_settings(min_count, sample, dry_run)
        if corpus_file is not None:
            raw = count_file(check_corpus_file(corpus_file), self.max_vocab_size)
        else:
            raw = count_sentences(corpus_iterable, self.max_vocab_size)
        if raw.total_words == 0:
            raise ValueError("sentences/corpus_file: the corpus is empty (no tokens)")
        self._build_from_counts(raw, update, trim_rule, keep_raw_vocab, settings)

    def build_vocab_from_freq(self, word_freq: Mapping[str, int], keep_raw_vocab: bool = False,
                              corpus_count: int | None = None, trim_rule: TrimRule | None = None,
                              update: bool = False) -> None:
        """build_vocab from word counts instead of a corpus (gensim's): the same min_count, max_final_vocab,
        subsampling and noise-table rules, the words in the mapping's order for ties. corpus_count sets the
        sentence count that train(total_examples=model.corpus_count) would use; corpus_total_words becomes the
        sum of the counts."""
        self._check_update(update)
        self._check_trim_rule(trim_rule)
        if not isinstance(word_freq, Mapping):
            raise TypeError(f"word_freq: expected a mapping of words to counts, got {type(word_freq).__name__}")
        for word, count in word_freq.items():
            if not isinstance(word, str):
                raise TypeError(f"word_freq: keys must be str words, got {type(word).__name__} {word!r}")
            if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
                raise ValueError(f"word_freq: the count of {word!r} must be an int >= 0, got {count!r}")
        counts = {word: int(count) for word, count in word_freq.items()}
        raw = Counts(counts, sum(counts.values()), int(corpus_count or 0))
        if raw.total_words == 0:
            raise ValueError("word_freq: no word has a positive count")
        self._build_from_counts(raw, update, trim_rule, keep_raw_vocab)

    def _build_from_counts(self, raw: Counts, update: bool, trim_rule: TrimRule | None, keep_raw_vocab: bool,
                           settings: tuple[int, float] | None = None) -> None:
        """The rest of build_vocab once the raw counts are known (from a corpus or given); settings: this call's
        (min_count, sample), by default the model's."""
        settings = settings or (self.min_count, self.sample)
        self.corpus_count = raw.num_sentences
        self.corpus_total_words = raw.total_words
        min_count, sample = settings
        self._prepare_vocab(raw, update, trim_rule, min_count, sample)
        if not update:  # a new vocabulary keeps the settings it was built with; an update's apply to it only
            self.min_count, self.sample = min_count, sample
        if keep_raw_vocab:
            self.raw_vocab = dict(raw.counts)

    def _vocab_settings(self, min_count: int | None, sample: float | None, dry_run: bool) -> tuple[int, float]:
        """(min_count, sample) for one build_vocab call: gensim's `value or the model's`."""
        if dry_run:
            raise NotImplementedError("dry_run: simulating a vocabulary is not supported; build it on a new model")
        return (_require_int("min_count", min_count, 0) if min_count else self.min_count,
                _require_number("sample", sample, 0.0) if sample else self.sample)

    def _check_update(self, update: bool) -> None:
        if update and not len(self.wv):
            raise RuntimeError("update: cannot update a vocabulary that was never built; call build_vocab "
                               "without update=True first (as gensim requires)")

    def _check_trim_rule(self, trim_rule: Any) -> None:
        if trim_rule is not None and not callable(trim_rule):
            raise TypeError(f"trim_rule: expected a callable (word, count, min_count) -> int, got "
                            f"{type(trim_rule).__name__}")
        if trim_rule is not None and self.max_vocab_size is not None:
            # gensim also applies the rule while pruning to max_vocab_size during the scan; the scan here
            # (C++ for corpus files) does not call Python, so the combination is refused rather than differ.
            raise NotImplementedError("trim_rule: not supported together with max_vocab_size")

    def _effective_min_count(self, counts: dict[str, int], min_count: int) -> int:
        if self.max_final_vocab is None or self.max_final_vocab >= len(counts):
            return min_count
        ordered = sorted(counts.values(), reverse=True)
        return max(min_count, ordered[self.max_final_vocab] + 1)

    def _prepare_vocab(self, raw: Counts, update: bool, trim_rule: TrimRule | None, min_count: int,
                       sample: float) -> None:
        min_count = self._effective_min_count(raw.counts, min_count)
        retained = [(w, c) for w, c in raw.counts.items() if _keep_word(w, c, min_count, trim_rule)]
        if update:
            old = self.wv
            # gensim 4 adds the new count of every known word, even one under min_count in this corpus alone
            added = np.array([raw.counts.get(w, 0) for w in old.index_to_key], dtype=np.int64)
            counts = old.expandos["count"] + added
            new_words = [w for w, _ in retained if w not in old.key_to_index]
            new_counts = [c for w, c in retained if w not in old.key_to_index]
            rng = np.random.default_rng([self.seed, len(old)])
            fresh = _initial_vectors(rng, len(new_words), self.vector_size)
            old_size = len(old)
            old.add_vectors(new_words, fresh)
            old.expandos["count"] = np.concatenate([counts, np.asarray(new_counts, dtype=np.int64)])
            old.vectors_lockf = self._grown_lock_factors(old.vectors_lockf, old_size, len(old))
            fresh_rows = np.zeros((len(new_words), self.vector_size), np.float32)
            self.syn1neg = np.ascontiguousarray(np.vstack([self.syn1neg, fresh_rows]))
            if self.hs:  # the tree is rebuilt for the new counts, as gensim does
                self.syn1 = np.ascontiguousarray(np.vstack([self.syn1, fresh_rows]))
        else:
            if not retained:
                top = max(raw.counts.items(), key=lambda kv: kv[1]) if raw.counts else ("", 0)
                raise ValueError(f"min_count: no word occurs at least {min_count} times (the most frequent, "
                                 f"{top[0]!r}, occurs {top[1]} times); lower min_count or give a larger corpus")
            if self.sorted_vocab:
                # gensim's order: by count, ties with the word seen last first (so indices, and the
                # Huffman tree built over them, are gensim's too)
                retained = [wc for _, wc in sorted(enumerate(retained), key=lambda p: (-p[1][1], -p[0]))]
            self._init_weights([w for w, _ in retained], np.array([c for _, c in retained], dtype=np.int64))
        self._make_tables(sample)

    @staticmethod
    def _grown_lock_factors(lockf: np.ndarray, old_size: int, new_size: int) -> np.ndarray:
        """Lock factors after the vocabulary grew from old_size to new_size words: one factor per old word (more
        than one) gets 1.0 for each new word; shorter (cyclic) factors stay as they are."""
        if len(lockf) != old_size or old_size <= 1 or new_size <= old_size:
            return lockf
        return np.concatenate([np.asarray(lockf, np.float32), np.ones(new_size - old_size, np.float32)])

    def _init_weights(self, keys: list[str], counts: np.ndarray) -> None:
        """A new vocabulary (keys, their counts) with fresh weights: gensim's initial vectors, zero output layers.
        The lock factors are kept (gensim keeps them across build_vocab)."""
        kv = KeyedVectors(self.vector_size, 0)
        kv.vectors_lockf = getattr(self.wv, "vectors_lockf", kv.vectors_lockf)
        kv.index_to_key = list(keys)
        kv.key_to_index = {w: i for i, w in enumerate(kv.index_to_key)}
        kv.expandos["count"] = counts
        kv.vectors = _initial_vectors(np.random.default_rng(self.seed), len(keys), self.vector_size)
        self.wv = kv
        self.syn1neg = np.zeros((len(keys), self.vector_size), dtype=np.float32)
        if self.hs:
            self.syn1 = np.zeros((len(keys), self.vector_size), dtype=np.float32)

    def _make_tables(self, sample: float | None = None) -> None:
        """Subsampling (with `sample`, default the model's), noise and Huffman tables for the vocabulary's counts."""
        sample = self.sample if sample is None else sample
        counts = self.wv.expandos["count"].astype(np.float64)
        retain_total = float(counts.sum())
        if not sample:
            self.keep_prob = None
        else:
            threshold = sample * retain_total if sample < 1.0 else float(int(sample * (3 + math.sqrt(5)) / 2))
            prob = (np.sqrt(counts / threshold) + 1.0) * (threshold / counts)
            self.keep_prob = np.minimum(prob, 1.0).astype(np.float32)
        self.noise_prob, self.noise_alias = alias_table(np.power(counts, self.ns_exponent))
        self.huffman = huffman_tree(self.wv.expandos["count"]) if self.hs else None
        self._encoder: Encoder | None = None

    # ------------------------------------------------------------ training

    def train(
        self,
        corpus_iterable: Iterable[Sequence[str]] | None = None,
        corpus_file: str | os.PathLike | None = None,
        total_examples: int | None = None,
        total_words: int | None = None,
        epochs: int | None = None,
        start_alpha: float | None = None,
        end_alpha: float | None = None,
        word_count: int = 0,
        queue_factor: int = 2,
        report_delay: float = 1.0,
        compute_loss: bool | None = None,
        callbacks: Sequence[Any] = (),
        progress: bool | None = None,
    ) -> tuple[int, int]:
        """Train `epochs` passes over the corpus (callable again; gensim's rules for the arguments).

        total_examples (sentences) or total_words (raw tokens) per epoch drives the learning-rate
        schedule: linear from start_alpha (default alpha) to end_alpha (default min_alpha) over all
        epochs; `epochs` becomes model.epochs, as in gensim. Only the callbacks given here are called
        (the constructor's serve the constructor's training, as in gensim). word_count, queue_factor and
        report_delay (gensim's job-queue and logging settings) are accepted and change nothing here.
        Returns (effective words trained, raw words read). Ctrl-C stops after the chunk in
        flight: the model stays usable (vectors trained so far), `interrupted` is set, and the
        KeyboardInterrupt propagates.
        """
        self._check_source(corpus_iterable, corpus_file, passes=epochs if _is_int(epochs) else 1)
        if not len(self.wv):
            raise RuntimeError("you must first build vocabulary before training the model (build_vocab)")
        schedule = self._schedule(corpus_file, total_examples, total_words, epochs, start_alpha, end_alpha)
        self.compute_loss = self.compute_loss if compute_loss is None else bool(compute_loss)
        self.epochs = schedule.epochs
        callbacks = tuple(callbacks)
        progress = self.progress if progress is None else bool(progress)
        chunks = self._chunk_source(corpus_iterable, corpus_file)
        self._prepare_arrays()
        tables = self._device_tables()
        self.train_count += 1
        self.epoch_losses = []
        self.running_training_loss = 0.0  # what callbacks read before the first epoch's first chunk (gensim's)
        self.interrupted = False
        totals = np.zeros(2, np.int64)  # effective words trained, raw words read
        bar = self._progress_bar(schedule.epochs * schedule.per_epoch, schedule.by_words) if progress else None
        started = time.perf_counter()
        self._call(callbacks, "on_train_begin")
        try:
            for epoch in range(schedule.epochs):
                self._call(callbacks, "on_epoch_begin")
                totals += self._train_epoch(epoch, chunks.epoch(epoch), tables, schedule, bar)
                self._call(callbacks, "on_epoch_end")
        except KeyboardInterrupt:
            self.interrupted = True
            raise
        finally:
            if bar is not None:
                bar.close()
            if self.device == "cuda":
                self._copy_back(tables)
            self.total_train_time += time.perf_counter() - started
            self.wv.fill_norms(force=True)
        self._call(callbacks, "on_train_end")
        return int(totals[0]), int(totals[1])

    def _schedule(self, corpus_file: Any, total_examples: int | None, total_words: int | None, epochs: int | None,
                  start_alpha: float | None, end_alpha: float | None) -> _Schedule:
        """train()'s learning-rate arguments checked, with gensim's defaults filled in."""
        if epochs is None:
            raise ValueError("epochs: an explicit epoch count is required (e.g. epochs=model.epochs)")
        epochs = _require_int("epochs", epochs, 1)
        start_alpha = self.alpha if start_alpha is None else _require_number("start_alpha", start_alpha, 0.0, True)
        end_alpha = self.min_alpha if end_alpha is None else _require_number("end_alpha", end_alpha, 0.0)
        if total_examples is None and total_words is None:
            if corpus_file is None:
                raise ValueError("total_examples/total_words: give one of them (e.g. "
                                 "total_examples=model.corpus_count)")
            total_words = self.corpus_total_words
        by_words = total_words is not None
        per_epoch = float(total_words if by_words else total_examples)
        if per_epoch <= 0:
            raise ValueError(f"{'total_words' if by_words else 'total_examples'}: expected > 0, got {per_epoch:g}")
        return _Schedule(epochs, start_alpha, end_alpha, per_epoch, by_words)

    def _chunk_source(self, corpus_iterable: Any, corpus_file: Any) -> _ChunkSource:
        path = check_corpus_file(corpus_file) if corpus_file is not None else None
        encoder = self._get_encoder()

        def read() -> Iterable[Chunk]:
            chunks = encoder.encode_file(path, self.workers) if path is not None else \
                encoder.encode_sentences(corpus_iterable)
            return merge_chunks(chunks, GPU_CHUNK_TOKENS) if self.device == "cuda" else chunks

        return _ChunkSource(read, self._chunk_to_device if self.device == "cuda" else None)

    def _chunk_to_device(self, chunk: Chunk) -> Chunk:
        """The chunk with its ids and offsets on the tables' device (device="cuda")."""
        import torch

        def to_device(a: np.ndarray) -> Any:
            return torch.from_numpy(a).to(self._gpu_table_device)

        return Chunk(to_device(chunk.ids), to_device(chunk.offsets), chunk.raw_words, chunk.sentences)

    def _train_epoch(self, epoch: int, chunks: Iterable[Chunk], tables: tuple[Any, ...], schedule: _Schedule,
                     bar: Any) -> np.ndarray:
        """One pass; appends the epoch's loss to epoch_losses. Returns [effective words, raw words]."""
        epoch_loss, done = 0.0, 0.0  # float64 loss sum, reset each epoch
        totals = np.zeros(2, np.int64)
        for index, chunk in enumerate(chunks):
            step = chunk.raw_words if schedule.by_words else chunk.sentences
            a0 = schedule.alpha(epoch, done)
            done += step
            a1 = schedule.alpha(epoch, done)
            seed = (self.seed * 1_000_003 + self.train_count * 7919 + epoch * 104_729 + index) & (2**63 - 1)
            effective, loss = self._train_chunk(chunk, tables, a0, a1, seed)
            totals += (effective, chunk.raw_words)
            epoch_loss += loss
            self.min_alpha_yet_reached = a1
            self.running_training_loss = epoch_loss
            if bar is not None:
                bar.update(step)
                postfix = {"alpha": f"{a1:.5f}", "epoch": f"{epoch + 1}/{schedule.epochs}"}
                if self.compute_loss:
                    postfix["loss"] = f"{epoch_loss:.4g}"
                bar.set_postfix(postfix, refresh=False)
        self.epoch_losses.append(epoch_loss)
        return totals

    def _train_chunk(self, chunk: Chunk, tables: tuple[Any, ...], alpha: float, next_alpha: float,
                     seed: int) -> tuple[int, float]:
        """The kernel over one chunk, alpha decaying linearly to next_alpha; (effective words, loss)."""
        if not len(chunk.ids):
            return 0, 0.0

        from genai_fast.ops.word2vec_ops import word2vec_train_chunk

        mode = "cbow" if not self.sg else ("sg_shared" if self.shared_negatives else "sg_pair")
        _, effective, loss = word2vec_train_chunk(
            tables[0], tables[1], chunk.ids, chunk.offsets, *tables[2:5], alpha, next_alpha, mode=mode,
            window=self.window, negative=self.negative, cbow_mean=bool(self.cbow_mean),
            shrink_windows=self.shrink_windows, compute_loss=self.compute_loss, seed=seed, workers=self.workers,
            hs=tables[5], lockf=tables[6])
        return effective, loss

    def _prepare_arrays(self) -> None:
        vectors = self.wv.vectors
        if vectors.dtype != np.float32 or not vectors.flags.c_contiguous or not vectors.flags.writeable:
            self.wv.vectors = np.ascontiguousarray(vectors, dtype=np.float32).copy()
        if self.syn1neg.shape != self.wv.vectors.shape:
            raise ValueError(f"syn1neg: expected shape {self.wv.vectors.shape}, got {self.syn1neg.shape}")
        if self.syn1neg.dtype != np.float32 or not self.syn1neg.flags.c_contiguous or \
                not self.syn1neg.flags.writeable:
            self.syn1neg = np.ascontiguousarray(self.syn1neg, dtype=np.float32).copy()
        if self.hs:
            if self.syn1 is None or self.syn1.shape != self.wv.vectors.shape:
                shape = None if self.syn1 is None else self.syn1.shape
                raise ValueError(f"syn1: expected shape {self.wv.vectors.shape} (hs=1), got {shape}")
            if self.syn1.dtype != np.float32 or not self.syn1.flags.c_contiguous or not self.syn1.flags.writeable:
                self.syn1 = np.ascontiguousarray(self.syn1, dtype=np.float32).copy()

    def _device_tables(self) -> tuple[Any, ...]:
        """(syn0, syn1neg, keep_prob, noise_prob, noise_alias, hs tree or None, lock factors or None) where
        training reads them: the numpy arrays on the CPU, copies on the GPU for device="cuda" (copied back by
        _copy_back)."""
        from genai_fast.ops.word2vec_ops import HsTree

        arrays = (self.wv.vectors, self.syn1neg, self.keep_prob, self.noise_prob, self.noise_alias)
        tree = HsTree(self.syn1, self.huffman.points, self.huffman.codes, self.huffman.lengths) if self.hs else None
        lockf = self._lock_factors()
        if self.device != "cuda":
            return (*arrays, tree, lockf)
        import torch

        def to_gpu(a: np.ndarray | None) -> Any:
            return None if a is None else torch.from_numpy(a).to(self._gpu_table_device, copy=True)

        return (*(to_gpu(a) for a in arrays), None if tree is None else HsTree(*(to_gpu(a) for a in tree)),
                to_gpu(lockf))

    def _lock_factors(self) -> np.ndarray | None:
        """wv.vectors_lockf checked and as float32 [L], or None when every factor is 1: the kernels' unscaled
        path, bit-identical and as fast as training without lock factors."""
        lockf = check_lock_factors(getattr(self.wv, "vectors_lockf", np.ones(1, np.float32)), "wv.vectors_lockf")
        return None if bool(np.all(lockf == 1.0)) else lockf

    def _copy_back(self, tables: tuple[Any, ...]) -> None:
        self.wv.vectors = np.ascontiguousarray(tables[0].cpu().numpy())
        self.syn1neg = np.ascontiguousarray(tables[1].cpu().numpy())
        if tables[5] is not None:
            self.syn1 = np.ascontiguousarray(tables[5].syn1.cpu().numpy())

    def _get_encoder(self) -> Encoder:
        encoder = getattr(self, "_encoder", None)
        if encoder is None or len(encoder.key_to_index) != len(self.wv):
            encoder = Encoder(self.wv.index_to_key, self.wv.key_to_index)
            self._encoder = encoder
        return encoder

    def _progress_bar(self, total: float, by_words: bool) -> Any:
        from tqdm import tqdm

        return tqdm(total=int(total), unit="word" if by_words else "sentence", unit_scale=True,
                    desc="word2vec", smoothing=0.1)

    def _call(self, callbacks: Sequence[Any], name: str) -> None:
        for cb in callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(self)

    def score(self, sentences: Iterable[Sequence[str]], total_sentences: int = 1_000_000, chunksize: int = 100,
              **_: Any) -> np.ndarray:
        """Log probability of each sentence (the first `total_sentences`), float32 [n], as gensim's `score`:
        hierarchical-softmax models only (hs=1); see genai_fast.word2vec.scoring."""
        from genai_fast.word2vec.scoring import score_sentences

        return score_sentences(self, sentences, total_sentences, chunksize)

    def predict_output_word(self, context_words_list: Sequence[str], topn: int | None = 10
                            ) -> list[tuple[str, float]] | None:
        """gensim's CBOW-style guess of the centre word: [(word, probability)] most probable first, or None
        when no context word is known. Negative-sampling models only."""
        from genai_fast.word2vec.scoring import predict_output_word

        return predict_output_word(self, context_words_list, topn)

    def reset_from(self, other_model: Word2Vec) -> None:
        """Take `other_model`'s vocabulary (words, counts) and corpus_count, with fresh weights of this model's
        vector_size (gensim's, e.g. to train several models on one corpus without counting it again). The
        vocabulary is copied, so either model may grow its own afterwards."""
        if not isinstance(other_model, Word2Vec):
            raise TypeError(f"other_model: expected a genai_fast Word2Vec, got {type(other_model).__name__}")
        if not len(other_model.wv):
            raise ValueError("other_model: has no vocabulary yet (call its build_vocab first)")
        self._init_weights(other_model.wv.index_to_key, other_model.wv.expandos["count"].copy())
        self.corpus_count = other_model.corpus_count
        self._make_tables()

    def estimate_memory(self, vocab_size: int | None = None, report: dict[str, int] | None = None) -> dict[str, int]:
        """Bytes needed for `vocab_size` words (default the vocabulary's), by part, as gensim estimates them:
        vocab (per-word bookkeeping, gensim's 500 bytes a word, 700 with hs), vectors, syn1 (hs), syn1neg
        (negative sampling), total. Entries are added to `report` when given."""
        vocab_size = vocab_size or len(self.wv)
        report = {} if report is None else report
        table_bytes = vocab_size * self.vector_size * np.dtype(np.float32).itemsize
        report["vocab"] = vocab_size * (700 if self.hs else 500)
        report["vectors"] = table_bytes
        if self.hs:
            report["syn1"] = table_bytes
        if self.negative:
            report["syn1neg"] = table_bytes
        report["total"] = sum(v for k, v in report.items() if k != "total")
        return report

    @property
    def cum_table(self) -> np.ndarray | None:
        """gensim's negative-sampling table, uint32 [V]: entry i is round(2**31 - 1 times the share of
        count**ns_exponent held by words 0..i); None without negative sampling or a vocabulary, as in gensim.
        For inspection: training draws from the same distribution through an alias table (noise_prob,
        noise_alias)."""
        if not self.negative or not len(self.wv):
            return None
        powers = np.power(self.wv.expandos["count"].astype(np.float64), float(self.ns_exponent))
        cumulative = np.cumsum(powers)  # sequential sums, as gensim's loop adds them
        return np.rint(cumulative / cumulative[-1] * (2**31 - 1)).astype(np.uint32)

    def get_latest_training_loss(self) -> float:
        """Loss of the latest epoch (float64 sum over pairs; 0 unless compute_loss)."""
        return self.running_training_loss

    def __str__(self) -> str:
        return f"Word2Vec<vocab={len(self.wv)}, vector_size={self.vector_size}, alpha={self.alpha}>"

    # ------------------------------------------------------------ save / load (npz + JSON, no pickle)

    PARAMS = ("vector_size", "alpha", "min_alpha", "window", "min_count", "max_vocab_size", "max_final_vocab",
              "sample", "seed", "workers", "sg", "hs", "negative", "ns_exponent", "cbow_mean", "epochs",
              "sorted_vocab", "compute_loss", "shrink_windows", "shared_negatives", "batch_words", "comment")

    def save(self, path: str | os.PathLike) -> None:
        """Save the whole model (vectors, output weights, vocabulary, parameters, non-default lock factors) to one
        .npz, atomically."""
        from genai_fast.word2vec.storage import save_arrays

        meta = {
            "kind": "Word2Vec",
            "params": {k: getattr(self, k) for k in self.PARAMS},
            "index_to_key": self.wv.index_to_key,
            "corpus_count": self.corpus_count,
            "corpus_total_words": self.corpus_total_words,
            "epoch_losses": self.epoch_losses,
            "train_count": self.train_count,
        }
        arrays = {"vectors": self.wv.vectors, "syn1neg": self.syn1neg,
                  **({"syn1": self.syn1} if self.hs else {}),
                  **self.wv._extra_arrays()}
        save_arrays(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: str | None = None) -> Word2Vec:
        """Load a model written by `save` (continues training with `train`). mmap (gensim's memory-mapping mode)
        is accepted for compatibility; the arrays are read into memory."""
        from genai_fast.word2vec.storage import check_mmap, load_arrays

        check_mmap(mmap)

        arrays, meta = load_arrays(path, expect_kind="Word2Vec")
        try:
            model = cls._from_saved(arrays, meta)
        except (KeyError, TypeError, ValueError) as exc:  # a damaged or hand-edited file: name it
            what = f"missing entry {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{path}: not a valid Word2Vec file: {what}") from None
        return model

    @classmethod
    def _from_saved(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Word2Vec:
        """The model held by a saved file's arrays and metadata; KeyError, TypeError or ValueError when they do
        not fit together."""
        model = cls(**dict(meta["params"]))
        model.wv._set_from(arrays, meta)
        model.syn1neg = np.ascontiguousarray(arrays["syn1neg"], dtype=np.float32)
        if model.syn1neg.shape != model.wv.vectors.shape:
            raise ValueError(f"syn1neg shape {model.syn1neg.shape} does not match vectors {model.wv.vectors.shape}")
        if model.hs:
            if "syn1" not in arrays or arrays["syn1"].shape != model.wv.vectors.shape:
                shape = arrays["syn1"].shape if "syn1" in arrays else "missing"
                raise ValueError(f"hs=1 needs syn1 of shape {model.wv.vectors.shape}, got {shape}")
            model.syn1 = np.ascontiguousarray(arrays["syn1"], dtype=np.float32)
        model.corpus_count = int(meta["corpus_count"])
        model.corpus_total_words = int(meta["corpus_total_words"])
        model.epoch_losses = [float(x) for x in meta.get("epoch_losses", [])]
        model.train_count = int(meta.get("train_count", 0))
        counts = model.wv.expandos.get("count")
        if counts is None or counts.shape != (len(model.wv),) or counts.dtype.kind not in "iu" or \
                (counts.size and counts.min() < 0):
            shape = None if counts is None else f"{counts.dtype} {counts.shape}"
            raise ValueError(f"word counts: expected {len(model.wv)} ints >= 0, got {shape}")
        model._make_tables()
        return model
