"""Using a trained Word2Vec as a language model: gensim's `score` and `predict_output_word`.

- `score_sentences`: the log probability of each sentence under the hierarchical-softmax output layer
  (gensim scores with hs only): skip-gram sums, over every word and every context word within `window`
  of it, log P(word | context) = sum over the word's Huffman path of log sigmoid(+-context . node);
  CBOW sums log P(word | mean (or sum) of its window). No subsampling, no window shrinking; unknown words
  are dropped first, as gensim does. Terms are exact (gensim skips the terms whose score is beyond +-6
  and looks the rest up in a 1000-entry table).
- `predict_output_word`: gensim's crude CBOW-style guess of the centre word from context words, a
  softmax over the vocabulary of syn1neg . h (negative-sampling models only).

Both are vectorised: pairs of a batch of sentences are gathered and scored as batched dot products.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from genai_fast.word2vec.model import Word2Vec

PAIRS_PER_BATCH = 1024  # (input, path) pairs scored at once: bounds the gathered [P, depth, D] block


def score_sentences(model: Word2Vec, sentences: Iterable[Sequence[str]], total_sentences: int = 1_000_000,
                    chunksize: int = 100) -> np.ndarray:
    """Log probability of each of the first `total_sentences` sentences: float32 [n_sentences]."""
    if not model.hs or model.syn1 is None or model.huffman is None:
        raise RuntimeError("score: needs a model trained with hs=1 (log probabilities come from hierarchical "
                           "softmax, as in gensim)")
    if isinstance(total_sentences, bool) or not isinstance(total_sentences, int) or total_sentences < 1:
        raise ValueError(f"total_sentences: expected an int >= 1, got {total_sentences!r}")
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize: expected an int >= 1, got {chunksize!r}")
    scores: list[np.ndarray] = []
    for batch in _batches(model, sentences, total_sentences, chunksize):
        scores.append(_score_batch(model, *batch))
    return np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)


def _batches(model: Word2Vec, sentences: Iterable[Sequence[str]], limit: int,
             size: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(ids of the known words, sentence index of each within the batch, sentences in the batch) for
    `size` sentences at a time."""
    index = model.wv.key_to_index
    ids: list[int] = []
    owner: list[int] = []
    count = 0
    for count, sentence in enumerate(sentences, start=1):
        if isinstance(sentence, str):
            raise TypeError(f"sentences: expected lists of str tokens, got a str at sentence {count - 1}")
        known = [index[w] for w in sentence if w in index]
        ids += known
        owner += [(count - 1) % size] * len(known)
        if count % size == 0:
            yield np.asarray(ids, np.int64), np.asarray(owner, np.int64), size
            ids, owner = [], []
        if count >= limit:
            break
    if count % size:
        yield np.asarray(ids, np.int64), np.asarray(owner, np.int64), count % size


def _score_batch(model: Word2Vec, ids: np.ndarray, owner: np.ndarray, n_sentences: int) -> np.ndarray:
    """Scores [n_sentences] float64 of one batch (ids [N], owner [N]: each word's sentence in the batch)."""
    totals = np.zeros(n_sentences, np.float64)
    # Skip-gram: one term per (word, context word) pair; CBOW: one per word, its window as the input.
    centre, context = _window_pairs(owner, model.window) if model.sg else (np.arange(len(ids)), None)
    for start in range(0, len(centre), PAIRS_PER_BATCH):
        rows = centre[start:start + PAIRS_PER_BATCH]
        if context is not None:
            inputs = model.wv.vectors[ids[context[start:start + PAIRS_PER_BATCH]]]
        else:
            inputs = _cbow_inputs(model, ids, owner, rows)
        np.add.at(totals, owner[rows], _path_log_probability(model, inputs, ids[rows]))
    return totals


def _window_pairs(owner: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(centre, context) positions of every pair within `window` of each other in the same sentence."""
    n = len(owner)
    centres, contexts = [], []
    for offset in range(-window, window + 1):
        if offset == 0:
            continue
        centre = np.arange(max(0, -offset), min(n, n - offset))
        context = centre + offset
        same = owner[centre] == owner[context]
        centres.append(centre[same])
        contexts.append(context[same])
    return np.concatenate(centres), np.concatenate(contexts)


def _cbow_inputs(model: Word2Vec, ids: np.ndarray, owner: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """h [len(rows), D]: the sum (mean with cbow_mean) of each position's window in its sentence; zero
    for a word alone in its sentence (its path is then scored at h = 0, as gensim does)."""
    vectors = model.wv.vectors
    h = np.zeros((len(rows), vectors.shape[1]), np.float32)
    count = np.zeros(len(rows), np.int64)
    n = len(ids)
    for offset in range(-model.window, model.window + 1):
        other = rows + offset
        ok = (offset != 0) & (other >= 0) & (other < n)
        ok[ok] = owner[other[ok]] == owner[rows[ok]]
        h[ok] += vectors[ids[other[ok]]]
        count += ok
    if model.cbow_mean:
        h /= np.maximum(count, 1.0)[:, None].astype(np.float32)
    return h


def _path_log_probability(model: Word2Vec, inputs: np.ndarray, words: np.ndarray) -> np.ndarray:
    """log P(word | input) [P] under hierarchical softmax: sum over the path of log sigmoid(+-x . node)."""
    tree = model.huffman
    nodes = model.syn1[tree.points[words]]                      # [P, depth, D]
    dots = np.einsum("pd,pbd->pb", inputs, nodes).astype(np.float64)
    signed = np.where(tree.codes[words] == 0, dots, -dots)      # code 0: label 1
    on_path = np.arange(tree.depth)[None, :] < tree.lengths[words][:, None]
    return -(np.logaddexp(0.0, -signed) * on_path).sum(axis=1)  # log sigmoid(s) = -log(1 + e^-s)


def predict_output_word(model: Word2Vec, context_words_list: Sequence[str],
                        topn: int | None = 10) -> list[tuple[str, float]] | None:
    """The topn most probable centre words given the context words: [(word, probability)], most probable
    first; None (as gensim) when no context word is in the vocabulary. As gensim's: topn None gives every word,
    topn <= 0 none."""
    if not model.negative or model.syn1neg.shape != model.wv.vectors.shape:
        raise RuntimeError("predict_output_word: needs a model trained with negative sampling (negative > 0), "
                           "as in gensim")
    if topn is not None and (isinstance(topn, bool) or not isinstance(topn, int)):
        raise ValueError(f"topn: expected an int or None, got {topn!r}")
    if isinstance(context_words_list, str):
        raise TypeError("context_words_list: expected a list of words, got a str")
    known = [model.wv.key_to_index[w] for w in context_words_list if w in model.wv.key_to_index]
    if not known:
        return None
    h = model.wv.vectors[known].sum(axis=0, dtype=np.float64)
    if model.cbow_mean:
        h /= len(known)
    logits = model.syn1neg.astype(np.float64) @ h
    prob = np.exp(logits - logits.max())
    prob /= prob.sum()
    if topn is not None and topn <= 0:
        return []
    top = np.argsort(-prob, kind="stable")[:topn]
    return [(model.wv.index_to_key[i], float(prob[i])) for i in top]
