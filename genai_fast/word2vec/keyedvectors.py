"""`KeyedVectors`: word vectors with gensim 4's query API, evaluations and word2vec file formats.

Queries are batched matrix products over unit-normalised vectors (float32), not a Python loop per
word or per question. Files are written atomically; a truncated or corrupted file raises
`Word2VecFormatError` (a ValueError) naming the file and the line or byte offset.

`vectors_lockf` holds gensim's lock factors: training scales every update of word i's vector by
vectors_lockf[i % len(vectors_lockf)] (0.0 freezes it, 1.0 trains it; default np.ones(1)).
`intersect_word2vec_format` takes pretrained vectors for known words and sets their factors.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genai_fast.io import atomic_write
from genai_fast.word2vec.storage import check_mmap, load_arrays, open_by_suffix, save_arrays

Key = str
PositiveOrNegative = Key | np.ndarray | tuple[Key | np.ndarray, float]


class Word2VecFormatError(ValueError):
    """A word2vec-format file is truncated or corrupted; the message names the file and where."""


def default_lock_factors() -> np.ndarray:
    """gensim's default vectors_lockf: one factor 1.0 (every word trains normally)."""
    return np.ones(1, dtype=np.float32)


def is_default_lock_factors(lockf: np.ndarray) -> bool:
    """Whether `lockf` is the default (one factor 1.0), which model files do not store."""
    return lockf.shape == (1,) and float(lockf[0]) == 1.0


def check_lock_factors(lockf: Any, name: str = "vectors_lockf") -> np.ndarray:
    """Lock factors as the trainers take them: a 1-D C-contiguous float32 array of at least one finite factor.
    Real numbers of another dtype are converted (gensim's factors are float32); anything else raises TypeError
    or ValueError naming `name`."""
    array = np.asarray(lockf)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected real lock factors (a float32 array), got dtype {array.dtype}")
    if array.ndim != 1 or array.size < 1:
        raise ValueError(f"{name}: expected a 1-D array of at least one lock factor, got shape {array.shape}")
    factors = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(factors).all():
        raise ValueError(f"{name}: expected finite lock factors, got {factors[~np.isfinite(factors)][0]}")
    return factors


def _as_list(value: Any) -> list:
    """positive/negative as a list, as gensim reads them: one key (str or int index) or one [D] vector is a
    list of one, a [n, D] array is n vectors, anything else is iterated."""
    if value is None:
        return []
    if isinstance(value, (str, int, np.integer)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        return [value]
    return list(value)


def _is_count(topn: Any) -> bool:
    """Whether topn asks for a list (an int, bools included, as gensim's Integral check) rather than the
    whole similarity array (None)."""
    return isinstance(topn, (int, np.integer))


class KeyedVectors:
    """Vectors [V, D] (float32) indexed by string keys, most frequent first.

    Attributes (gensim names): vectors [V, D]; index_to_key list[str]; key_to_index dict[str, int];
    vector_size D; counts via get_vecattr(key, "count").
    """

    def __init__(self, vector_size: int, count: int = 0, dtype: Any = np.float32) -> None:
        if isinstance(vector_size, bool) or not isinstance(vector_size, (int, np.integer)) or vector_size <= 0:
            raise ValueError(f"vector_size: expected a positive int, got {vector_size!r}")
        self.vector_size = int(vector_size)
        self.vectors = np.zeros((count, self.vector_size), dtype=dtype)
        self.index_to_key: list[str] = []
        self.key_to_index: dict[str, int] = {}
        self.expandos: dict[str, np.ndarray] = {}
        self.vectors_lockf = default_lock_factors()  # gensim's lock factors (see the module docstring)
        self._norms: np.ndarray | None = None
        self._norm_source: tuple[int, tuple[int, ...]] | None = None

    # ------------------------------------------------------------ basic access

    def __len__(self) -> int:
        return len(self.index_to_key)

    def __contains__(self, key: object) -> bool:
        return self.has_index_for(key)

    def has_index_for(self, key: object) -> bool:
        """Whether get_index(key) finds a row: a known key, or an int index in range (gensim's rule)."""
        return self.get_index(key, -1) >= 0

    def __repr__(self) -> str:
        return f"<KeyedVectors: {len(self)} keys x {self.vector_size} dims>"

    def get_index(self, key: Key | int, default: int | None = None) -> int:
        """Row of `key` (ints in range are returned as is); KeyError naming the key when absent."""
        index = self.key_to_index.get(key)  # unhashable keys raise TypeError, as in gensim
        if index is not None:
            return index
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= key < len(self.index_to_key):
            return int(key)
        if default is not None:
            return default
        raise KeyError(f"Key '{key}' not present in vocabulary")

    def __getitem__(self, key_or_keys: Key | Sequence[Key]) -> np.ndarray:
        """[D] vector of a key, or [n, D] for a list of keys."""
        if isinstance(key_or_keys, (str, int, np.integer)):
            return self.get_vector(key_or_keys)
        return np.vstack([self.get_vector(k) for k in key_or_keys]) if len(key_or_keys) else \
            np.zeros((0, self.vector_size), dtype=self.vectors.dtype)

    def get_vector(self, key: Key, norm: bool = False) -> np.ndarray:
        """[D] vector of `key` (unit length when norm=True)."""
        index = self.get_index(key)
        if norm:
            return self.get_normed_vectors()[index]
        return self.vectors[index]

    word_vec = get_vector

    def add_vectors(self, keys: Key | Sequence[Key], weights: np.ndarray, replace: bool = False) -> None:
        """Append keys with their vectors [n, D] (or one key and its [D] vector). Keys already present keep their
        vectors, or get the given ones with replace=True (gensim's rule)."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        weights = np.asarray(weights, dtype=self.vectors.dtype).reshape(len(keys), self.vector_size)
        if replace:
            known = [i for i, k in enumerate(keys) if k in self.key_to_index]
            self.vectors[[self.key_to_index[keys[i]] for i in known]] = weights[known]
        new = [i for i, k in enumerate(keys) if k not in self.key_to_index]
        start = len(self.index_to_key)
        for offset, i in enumerate(new):
            self.key_to_index[keys[i]] = start + offset
            self.index_to_key.append(keys[i])
        self.vectors = np.ascontiguousarray(np.vstack([self.vectors[:start], weights[new]]))
        for name, values in self.expandos.items():
            self.expandos[name] = np.concatenate([values[:start], np.zeros(len(new), dtype=values.dtype)])
        self._norms = None

    def add_vector(self, key: Key, vector: np.ndarray) -> int:
        """Append one key with its [D] vector (a known key keeps its vector); returns the key's row."""
        self.add_vectors([key], np.asarray(vector).reshape(1, -1))
        return self.key_to_index[key]

    def vectors_for_all(self, keys: Iterable[Key], allow_inference: bool = True,
                        copy_vecattrs: bool = False) -> KeyedVectors:
        """A new KeyedVectors with the known keys among `keys` (first occurrence order, duplicates and unknown keys
        dropped, as gensim). allow_inference only matters for models that make up vectors for unknown keys
        (FastText); copy_vecattrs copies attributes such as counts."""
        wanted = [k for k in dict.fromkeys(keys) if k in self.key_to_index]
        rows = [self.key_to_index[k] for k in wanted]
        kv = KeyedVectors(self.vector_size, 0, dtype=self.vectors.dtype)
        kv.add_vectors(wanted, self.vectors[rows])
        if copy_vecattrs:
            kv.expandos = {name: values[rows].copy() for name, values in self.expandos.items()}
        return kv

    def get_vecattr(self, key: Key, attr: str) -> Any:
        return self.expandos[attr][self.get_index(key)].item()

    def set_vecattr(self, key: Key, attr: str, value: Any) -> None:
        if attr not in self.expandos:
            self.expandos[attr] = np.zeros(len(self.index_to_key), dtype=np.int64)
        self.expandos[attr][self.get_index(key)] = value

    # ------------------------------------------------------------ norms and similarity

    def fill_norms(self, force: bool = False) -> None:
        source = (self.vectors.__array_interface__["data"][0], self.vectors.shape)
        if self._norms is None or force or self._norm_source != source:
            self._norms = np.linalg.norm(self.vectors, axis=1)
            self._norm_source = source

    @property
    def norms(self) -> np.ndarray:
        self.fill_norms()
        return self._norms

    def get_normed_vectors(self) -> np.ndarray:
        """[V, D] unit-length copies of the vectors (zero vectors stay zero)."""
        self.fill_norms(force=True)
        norms = np.where(self._norms > 0, self._norms, 1.0).astype(self.vectors.dtype)
        return self.vectors / norms[:, None]

    def _mean_vector(self, keys: Sequence[Key | np.ndarray], weights: Sequence[float],
                     normed: np.ndarray) -> np.ndarray:
        mean = np.zeros(self.vector_size, dtype=np.float32)
        total = 0.0
        for key, weight in zip(keys, weights, strict=True):
            vec = key if isinstance(key, np.ndarray) else normed[self.get_index(key)]
            mean += weight * vec
            total += abs(weight)
        if total == 0:
            raise ValueError("positive/negative: cannot compute similarity with no input")
        mean /= total
        n = np.linalg.norm(mean)
        return (mean / n if n > 0 else mean).astype(np.float32)

    @staticmethod
    def _split_weighted(items: list, default: float) -> tuple[list, list[float]]:
        keys, weights = [], []
        for item in items:
            if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[0], tuple):
                keys.append(item[0])
                weights.append(float(item[1]))
            else:
                keys.append(item)
                weights.append(default)
        return keys, weights

    def most_similar(
        self,
        positive: PositiveOrNegative | Sequence[PositiveOrNegative] | None = None,
        negative: PositiveOrNegative | Sequence[PositiveOrNegative] | None = None,
        topn: int | None = 10,
        clip_start: int = 0,
        clip_end: int | None = None,
        restrict_vocab: int | None = None,
        indexer: Any = None,
    ) -> list[tuple[str, float]] | np.ndarray:
        """Top-N keys by cosine similarity to the weighted mean of unit vectors (positive +1, negative -1).

        Returns [(key, similarity)] (inputs excluded), or all [V'] similarities when topn is None.
        Unknown keys raise KeyError naming the key.
        """
        pos_keys, pos_w = self._split_weighted(_as_list(positive), 1.0)
        neg_keys, neg_w = self._split_weighted(_as_list(negative), -1.0)
        keys, weights = pos_keys + neg_keys, pos_w + neg_w
        if _is_count(topn) and topn < 1:
            return []
        normed = self.get_normed_vectors()
        mean = self._mean_vector(keys, weights, normed)
        if indexer is not None and _is_count(topn):
            return indexer.most_similar(mean, topn)  # an approximate index answers instead (gensim's hook)
        clip_end = restrict_vocab if restrict_vocab else (clip_end or len(self.index_to_key))
        sims = normed[clip_start:clip_end] @ mean
        if topn is None:
            return sims
        # inputs given as keys (str or int index) never answer; raw vectors exclude nothing
        exclude = {self.get_index(k) for k in keys if not isinstance(k, np.ndarray)}
        count = min(len(sims), topn + len(exclude))
        best = np.argpartition(-sims, count - 1)[:count] if count < len(sims) else np.arange(len(sims))
        best = best[np.argsort(-sims[best], kind="stable")]
        out = [(self.index_to_key[i + clip_start], float(sims[i])) for i in best if i + clip_start not in exclude]
        return out[:topn]

    def most_similar_cosmul(
        self,
        positive: Key | Sequence[Key] | None = None,
        negative: Key | Sequence[Key] | None = None,
        topn: int | None = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]] | np.ndarray:
        """3CosMul (Levy and Goldberg 2014): prod((1 + cos(pos)) / 2) / (prod((1 + cos(neg)) / 2) + 1e-6)."""
        positive, negative = _as_list(positive), _as_list(negative)
        if _is_count(topn) and topn < 1:
            return []
        if not positive:
            raise ValueError("positive: cannot compute similarity with no positive input (3CosMul needs at least "
                             "one key or vector)")
        normed = self.get_normed_vectors()
        end = restrict_vocab or len(self.index_to_key)
        targets = normed[:end]

        def vec(k: Any) -> np.ndarray:
            return k if isinstance(k, np.ndarray) else normed[self.get_index(k)]

        pos = np.stack([vec(k) for k in positive]) if positive else np.zeros((0, self.vector_size), np.float32)
        neg = np.stack([vec(k) for k in negative]) if negative else np.zeros((0, self.vector_size), np.float32)
        pos_d = (1 + targets @ pos.T) / 2
        neg_d = (1 + targets @ neg.T) / 2
        sims = pos_d.prod(axis=1) / (neg_d.prod(axis=1) + 0.000001)
        if topn is None:
            return sims
        exclude = {self.get_index(k) for k in positive + negative if not isinstance(k, np.ndarray)}
        order = np.argsort(-sims, kind="stable")[: topn + len(exclude)]
        return [(self.index_to_key[i], float(sims[i])) for i in order if i not in exclude][:topn]

    def similar_by_word(self, word: Key, topn: int = 10, restrict_vocab: int | None = None) -> list[tuple[str, float]]:
        return self.most_similar(positive=[word], topn=topn, restrict_vocab=restrict_vocab)

    similar_by_key = similar_by_word

    def get_mean_vector(self, keys: Sequence[Key | np.ndarray], weights: Sequence[float] | np.ndarray | None = None,
                        pre_normalize: bool = True, post_normalize: bool = False,
                        ignore_missing: bool = True) -> np.ndarray:
        """[D] weighted mean of the keys' vectors (unit vectors when pre_normalize; arrays in keys are used as
        given), divided by the sum of |weight| of the items used, then scaled to unit length when post_normalize.
        Unknown keys are skipped, or raise KeyError naming the key when ignore_missing is False."""
        if not len(keys):
            raise ValueError("keys: cannot compute a mean with no input")
        weights = np.ones(len(keys), np.float32) if weights is None else np.asarray(weights, np.float32)
        if weights.shape != (len(keys),):
            raise ValueError(f"weights: expected one per key ({len(keys)}), got shape {weights.shape}")
        table = self.get_normed_vectors() if pre_normalize else self.vectors
        rows, used = [], []
        for key, weight in zip(keys, weights, strict=True):
            if isinstance(key, np.ndarray):
                rows.append(key.astype(np.float32, copy=False))
            elif key in self.key_to_index:
                rows.append(table[self.key_to_index[key]])
            elif ignore_missing:
                continue
            else:
                raise KeyError(f"Key '{key}' not present in vocabulary")
            used.append(weight)
        mean = np.zeros(self.vector_size, np.float32)
        if rows:
            used_weights = np.asarray(used, np.float32)
            mean = used_weights @ np.stack(rows) / np.abs(used_weights).sum()
        if post_normalize:
            norm = np.linalg.norm(mean)
            mean = mean / norm if norm > 0 else mean
        return mean.astype(np.float32)

    def init_sims(self, replace: bool = False) -> None:
        """gensim 3's call, kept by gensim 4: computes the norms; replace=True also scales every vector to unit
        length in place (see unit_normalize_all)."""
        self.fill_norms()
        if replace:
            self.unit_normalize_all()

    def unit_normalize_all(self) -> None:
        """Scale every vector to unit length, in place (zero vectors stay zero). Training cannot go on sensibly
        after this."""
        self.vectors = self.get_normed_vectors()
        self._norms = None

    def similar_by_vector(self, vector: np.ndarray, topn: int = 10,
                          restrict_vocab: int | None = None) -> list[tuple[str, float]]:
        return self.most_similar(positive=[np.asarray(vector, dtype=np.float32)], topn=topn,
                                 restrict_vocab=restrict_vocab)

    def similarity(self, w1: Key, w2: Key) -> float:
        """Cosine similarity of two keys."""
        a, b = self.get_vector(w1, norm=True), self.get_vector(w2, norm=True)
        return float(np.dot(a, b))

    def n_similarity(self, ws1: Sequence[Key | np.ndarray], ws2: Sequence[Key | np.ndarray]) -> float:
        """Cosine similarity of the means of the two sets' raw vectors (as gensim: the vectors are not scaled to
        unit length before averaging). Unknown keys raise KeyError naming the key."""
        if not len(ws1) or not len(ws2):
            raise ZeroDivisionError("At least one of the passed list is empty.")
        a = self.get_mean_vector(ws1, pre_normalize=False, post_normalize=True, ignore_missing=False)
        b = self.get_mean_vector(ws2, pre_normalize=False, post_normalize=True, ignore_missing=False)
        return float(np.dot(a, b))

    def distance(self, w1: Key, w2: Key) -> float:
        return 1.0 - self.similarity(w1, w2)

    @staticmethod
    def cosine_similarities(vector_1: np.ndarray, vectors_all: np.ndarray) -> np.ndarray:
        """Cosine similarity of vector_1 [D] with each row of vectors_all [N, D] -> [N] (as gensim: a zero
        vector gives NaN, not an exception)."""
        vector_1, vectors_all = np.asarray(vector_1), np.asarray(vectors_all)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (vectors_all @ vector_1) / (np.linalg.norm(vectors_all, axis=1) * np.linalg.norm(vector_1))

    def distances(self, word_or_vector: Key | np.ndarray, other_words: Sequence[Key] = ()) -> np.ndarray:
        """1 - cosine similarity from a key or a vector to each of other_words, or to every key (itself
        included) when other_words is empty -> [N]. Unknown keys raise KeyError naming the key."""
        source = self.get_vector(word_or_vector) if isinstance(word_or_vector, str) else word_or_vector
        targets = self.vectors[[self.get_index(w) for w in other_words]] if len(other_words) else self.vectors
        return 1 - self.cosine_similarities(source, targets)

    def closer_than(self, key1: Key, key2: Key) -> list[str]:
        """Every key (key1 itself aside) closer to key1 than key2 is, in index order."""
        distance = self.distances(key1)
        own, limit = self.get_index(key1), distance[self.get_index(key2)]
        return [self.index_to_key[i] for i in np.flatnonzero(distance < limit) if i != own]

    words_closer_than = closer_than

    def rank(self, key1: Key, key2: Key) -> int:
        """key2's rank among all keys by distance from key1 (1: the closest one)."""
        return len(self.closer_than(key1, key2)) + 1

    def most_similar_to_given(self, key1: Key, keys_list: Sequence[Key]) -> Key:
        """The key of keys_list with the highest cosine similarity to key1 (the first one on a tie)."""
        return keys_list[int(np.argmax([self.similarity(key1, key) for key in keys_list]))]

    def relative_cosine_similarity(self, wa: Key, wb: Key, topn: int = 10) -> float:
        """similarity(wa, wb) over the sum of wa's topn most-similar scores (Leeuwenberg et al. 2016: above
        about 0.10 at topn 10, wa and wb are closer than an arbitrary pair)."""
        neighbours = self.similar_by_word(wa, topn)
        if not neighbours:
            raise ValueError("topn: relative cosine similarity needs at least one similar word")
        return self.similarity(wa, wb) / sum(score for _, score in neighbours)

    def doesnt_match(self, words: Sequence[Key]) -> str:
        """The word furthest from the mean of the others' unit vectors (unknown words are ignored, like gensim)."""
        known = [w for w in words if w in self.key_to_index]
        if not known:
            raise ValueError("words: none of the words is in the vocabulary")
        vecs = np.stack([self.get_vector(w, norm=True) for w in known])
        mean = vecs.mean(axis=0)
        mean /= np.linalg.norm(mean)
        return known[int(np.argmin(vecs @ mean))]

    # ------------------------------------------------------------ evaluations (gensim's semantics, batched)

    def _ok_vocab(self, restrict_vocab: int, case_insensitive: bool) -> dict[str, int]:
        ok_keys = self.index_to_key[:restrict_vocab]
        if case_insensitive:
            return {k.upper(): i for i, k in reversed(list(enumerate(ok_keys)))}
        return {k: i for i, k in enumerate(ok_keys)}

    def evaluate_word_analogies(
        self,
        analogies: str | os.PathLike,
        restrict_vocab: int = 300000,
        case_insensitive: bool = True,
        dummy4unknown: bool = False,
        similarity_function: str = "most_similar",
    ) -> tuple[float, list[dict[str, Any]]]:
        """Accuracy on an analogy file (`: section` headers, lines `a b c expected`), 3CosAdd like gensim.

        Returns (accuracy of the answered questions, sections) where each section is
        {"section": name, "correct": [(a, b, c, d)], "incorrect": [...]} and the last is "Total accuracy".
        Questions are scored in batches of matrix products.
        """
        if similarity_function != "most_similar":
            raise ValueError(f"similarity_function: only 'most_similar' is supported, got {similarity_function!r}")
        ok_vocab = self._ok_vocab(restrict_vocab, case_insensitive)
        sections: list[dict[str, Any]] = []
        questions: list[tuple[int, tuple[str, str, str, str], bool]] = []  # (section index, words, all known)
        oov = quadruplets = 0
        path = Path(analogies)
        with open(path, "rb") as fin:
            for line_no, raw in enumerate(fin):
                line = raw.decode("utf-8")
                if line.startswith(": "):
                    sections.append({"section": line.lstrip(": ").strip(), "correct": [], "incorrect": []})
                    continue
                if not sections:
                    raise ValueError(f"Missing section header before line #{line_no} in {analogies}")
                words = line.split()
                if len(words) != 4:
                    continue
                if case_insensitive:
                    words = [w.upper() for w in words]
                quadruplets += 1
                known = all(w in ok_vocab for w in words)
                oov += not known
                if known or dummy4unknown:  # dummy4unknown: an unknown word makes the question count as wrong
                    questions.append((len(sections) - 1, tuple(words), known))
        answers = iter(self._answer_analogies([q for _, q, known in questions if known], ok_vocab, restrict_vocab,
                                              case_insensitive))
        for sec, words, known in questions:  # file order within each section, as gensim lists them
            sections[sec]["correct" if known and next(answers) else "incorrect"].append(words)
        total = {
            "section": "Total accuracy",
            "correct": list(itertools.chain.from_iterable(s["correct"] for s in sections)),
            "incorrect": list(itertools.chain.from_iterable(s["incorrect"] for s in sections)),
        }
        self.analogy_oov_ratio = float(oov) / quadruplets * 100 if quadruplets else 0.0
        answered = len(total["correct"]) + len(total["incorrect"])
        score = len(total["correct"]) / answered if answered else 0.0
        sections.append(total)
        return score, sections

    def _answer_analogies(self, questions: list[tuple[str, str, str, str]], ok_vocab: dict[str, int],
                          restrict_vocab: int, case_insensitive: bool, batch: int = 1024) -> list[bool]:
        if not questions:
            return []
        normed = self.get_normed_vectors()
        limit = min(restrict_vocab, len(self.index_to_key))
        targets = normed[:limit]
        idx = np.array([[ok_vocab[w] for w in q] for q in questions], dtype=np.int64)  # a, b, c, expected
        fold = (lambda k: k.upper()) if case_insensitive else (lambda k: k)
        folded = [fold(k) for k in self.index_to_key[:limit]]
        out: list[bool] = []
        for start in range(0, len(questions), batch):
            part = idx[start:start + batch]
            # gensim: mean of unit vectors with weights b +1, c +1, a -1, then unit length.
            mean = (normed[part[:, 1]] + normed[part[:, 2]] - normed[part[:, 0]]) / 3.0
            mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-30)
            sims = mean @ targets.T                                        # [batch, limit]
            rows = np.arange(len(part))[:, None]
            sims[rows, part[:, :3]] = -np.inf                              # inputs never answer
            k = min(5, limit)
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < limit else np.argsort(-sims, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            for r, q in enumerate(questions[start:start + batch]):
                ignore = set(q[:3])
                predicted = None
                for i in top[r]:
                    if not np.isfinite(sims[r, i]):
                        continue
                    predicted = folded[i]
                    if predicted in ok_vocab and predicted not in ignore:
                        break
                out.append(predicted == q[3])
        return out

    def evaluate_word_pairs(
        self,
        pairs: str | os.PathLike,
        delimiter: str = "\t",
        encoding: str = "utf8",
        restrict_vocab: int = 300000,
        case_insensitive: bool = True,
        dummy4unknown: bool = False,
    ) -> tuple[Any, Any, float]:
        """Correlation of cosine similarities with human judgements (lines `w1<TAB>w2<TAB>score`, '#' comments).

        Returns (pearson, spearman, oov_ratio) like gensim: scipy's result objects
        (statistic, pvalue) and the percentage of pairs with an unknown word.
        """
        from scipy import stats

        ok_vocab = self._ok_vocab(restrict_vocab, case_insensitive)
        gold: list[float] = []
        left: list[int] = []
        right: list[int] = []
        dummy: list[bool] = []
        oov = 0
        with open(pairs, encoding=encoding) as fin:
            for line in fin:
                if not line or line.startswith("#"):
                    continue
                try:
                    parts = line.split(delimiter)
                    if case_insensitive:
                        parts = [p.upper() for p in parts]
                    a, b, sim = parts
                    sim = float(sim)
                except (ValueError, TypeError):
                    continue
                if a not in ok_vocab or b not in ok_vocab:
                    oov += 1
                    if dummy4unknown:
                        gold.append(sim)
                        left.append(0)
                        right.append(0)
                        dummy.append(True)
                    continue
                gold.append(sim)
                left.append(ok_vocab[a])
                right.append(ok_vocab[b])
                dummy.append(False)
        if not gold:
            raise ValueError(f"No valid similarity judgements found in {pairs}: either invalid format or all "
                             f"are out-of-vocabulary in {self}")
        normed = self.get_normed_vectors()
        model = np.einsum("ij,ij->i", normed[left], normed[right]).astype(np.float64)
        model[np.array(dummy, dtype=bool)] = 0.0
        spearman = stats.spearmanr(gold, model)
        pearson = stats.pearsonr(gold, model)
        real = len(gold) - (oov if dummy4unknown else 0)
        oov_ratio = float(oov) / len(gold) * 100 if dummy4unknown else float(oov) / (real + oov) * 100
        return pearson, spearman, oov_ratio

    # ------------------------------------------------------------ word2vec formats

    def save_word2vec_format(self, fname: str | os.PathLike, fvocab: str | os.PathLike | None = None,
                             binary: bool = False, total_vec: int | None = None, write_header: bool = True) -> None:
        """Write the word2vec.c format (text or binary), most frequent first when counts are known; atomic."""
        order = list(range(len(self.index_to_key)))
        if "count" in self.expandos:
            counts = self.expandos["count"]
            order = sorted(order, key=lambda i: -int(counts[i]))
        total_vec = len(order) if total_vec is None else total_vec
        vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)

        def write(tmp: str) -> None:
            with open_by_suffix(fname, "wb", tmp) as out:
                if write_header:
                    out.write(f"{total_vec} {self.vector_size}\n".encode())
                if binary:
                    for i in order:
                        out.write(self.index_to_key[i].encode("utf-8") + b" " + vectors[i].tobytes())
                else:
                    block = 4096
                    for start in range(0, len(order), block):
                        rows = order[start:start + block]
                        text = vectors[rows].astype(str)  # shortest round-trip float32 text
                        out.write("".join(f"{self.index_to_key[i]} {' '.join(t)}\n"
                                          for i, t in zip(rows, text, strict=True)).encode("utf-8"))

        atomic_write(fname, write)
        if fvocab is not None:
            counts = self.expandos.get("count")
            lines = "".join(f"{self.index_to_key[i]} {int(counts[i]) if counts is not None else 0}\n" for i in order)
            atomic_write(fvocab, lambda tmp: _write_text(fvocab, tmp, lines))

    @classmethod
    def load_word2vec_format(cls, fname: str | os.PathLike, fvocab: str | os.PathLike | None = None,
                             binary: bool = False, encoding: str = "utf8", unicode_errors: str = "strict",
                             limit: int | None = None, datatype: Any = np.float32,
                             no_header: bool = False) -> KeyedVectors:
        """Read the word2vec.c format (text or binary) written by gensim, word2vec.c or this class.

        Raises FileNotFoundError for a missing file and Word2VecFormatError (ValueError) naming the file
        and the line (text) or byte offset (binary) for a bad header, a truncated file or bad numbers.
        """
        path = Path(fname)
        counts = None
        if fvocab is not None:
            counts = {}
            with open_by_suffix(fvocab, "rt", encoding=encoding, errors=unicode_errors) as fin:
                for line_no, line in enumerate(fin, 1):
                    parts = line.split()
                    if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                        raise Word2VecFormatError(f"{fvocab}: line {line_no}: expected 'word count', got {line!r}")
                    counts[parts[0]] = int(parts[1])
        keys, vecs, vocab_size = _read_vectors(path, binary, encoding, unicode_errors, limit, no_header)
        kv = cls(vecs.shape[1], 0)
        seen: dict[str, int] = {}
        for i, k in enumerate(keys):
            seen.setdefault(k, i)
        rows = list(seen.values())
        kv.index_to_key = [keys[i] for i in rows]
        kv.key_to_index = {k: i for i, k in enumerate(kv.index_to_key)}
        kv.vectors = np.ascontiguousarray(vecs[rows].astype(datatype))
        n = len(rows)
        if counts is None:
            kv.expandos["count"] = np.arange(n, 0, -1, dtype=np.int64) + (vocab_size - n)
        else:
            kv.expandos["count"] = np.array([counts.get(k, 0) for k in kv.index_to_key], dtype=np.int64)
        return kv

    def intersect_word2vec_format(self, fname: str | os.PathLike, lockf: float = 0.0, binary: bool = False,
                                  encoding: str = "utf8", unicode_errors: str = "strict") -> int:
        """Take the vectors of a word2vec.c-format file (text or binary) for the words already in the vocabulary,
        as gensim does: no word is added, words absent from the file keep their vectors, and each word taken gets
        the lock factor `lockf` (0.0, the default, freezes it in later training; 1.0 lets it train).

        The file's vector size must equal vector_size (ValueError naming both); a truncated or corrupted file
        raises Word2VecFormatError before any vector changes. A word listed twice takes its last vector (gensim's
        order). Departure from gensim 4, which raises IndexError there: lock factors shorter than the vocabulary
        are first spread over it (word i keeps its factor vectors_lockf[i % len], so the default becomes
        len(self) ones). Returns the number of vocabulary words that took a vector from the file.
        """
        if isinstance(lockf, bool) or not isinstance(lockf, (int, float, np.integer, np.floating)) or \
                not np.isfinite(lockf):
            raise ValueError(f"lockf: expected a finite number, got {lockf!r}")
        keys, vecs, _ = _read_vectors(Path(fname), binary, encoding, unicode_errors)
        if vecs.shape[1] != self.vector_size:
            raise ValueError(f"{fname}: holds vectors of size {vecs.shape[1]}, but these vectors have size "
                             f"{self.vector_size}; the sizes must match to merge them")
        taken = {self.key_to_index[k]: i for i, k in enumerate(keys) if k in self.key_to_index}  # last one wins
        rows = np.array(list(taken.keys()), dtype=np.int64)
        sources = np.array(list(taken.values()), dtype=np.int64)
        self.vectors[rows] = vecs[sources]
        self._norms = None  # the cached norms no longer describe these rows
        factors = check_lock_factors(self.vectors_lockf)
        if len(factors) < len(self):
            factors = np.resize(factors, len(self))  # cyclic, as the trainers read them: factors[i % len]
        factors[rows] = np.float32(lockf)
        self.vectors_lockf = factors
        return len(rows)

    # ------------------------------------------------------------ safe native save/load

    def save(self, path: str | os.PathLike) -> None:
        """Save to one .npz file (numpy arrays only, no pickle), atomically; lock factors other than the default
        are kept."""
        save_arrays(path, {"vectors": self.vectors, **self._extra_arrays()},
                    {"kind": "KeyedVectors", "vector_size": self.vector_size, "index_to_key": self.index_to_key})

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        """What a model file holds besides the vectors: the attributes (counts) and non-default lock factors."""
        lockf = check_lock_factors(self.vectors_lockf)
        return {**{f"attr_{k}": v for k, v in self.expandos.items()},
                **({} if is_default_lock_factors(lockf) else {"vectors_lockf": lockf})}

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: str | None = None) -> KeyedVectors:
        """Load a file written by `save`. mmap (gensim's memory-mapping mode) is accepted for compatibility; the
        arrays are read into memory (one .npz cannot be memory-mapped)."""
        check_mmap(mmap)

        arrays, meta = load_arrays(path, expect_kind="KeyedVectors")
        kv = cls(int(meta["vector_size"]), 0)
        kv._set_from(arrays, meta)
        return kv

    def _set_from(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.index_to_key = list(meta["index_to_key"])
        self.key_to_index = {k: i for i, k in enumerate(self.index_to_key)}
        self.vectors = np.ascontiguousarray(arrays["vectors"])
        self.expandos = {k[len("attr_"):]: v for k, v in arrays.items() if k.startswith("attr_")}
        # files written before lock factors were saved have none: the default
        self.vectors_lockf = check_lock_factors(arrays["vectors_lockf"]) if "vectors_lockf" in arrays else \
            default_lock_factors()
        if self.vectors.shape != (len(self.index_to_key), self.vector_size):
            raise ValueError(f"vectors: expected shape ({len(self.index_to_key)}, {self.vector_size}), "
                             f"got {self.vectors.shape}")


def _write_text(name: str | os.PathLike, tmp: str, text: str) -> None:
    with open_by_suffix(name, "wt", tmp, encoding="utf-8") as out:
        out.write(text)


def _read_vectors(path: Path, binary: bool, encoding: str, unicode_errors: str, limit: int | None = None,
                  no_header: bool = False) -> tuple[list[str], np.ndarray, int]:
    """The keys and float32 vectors [n, D] of a word2vec.c-format file, in file order (duplicates kept), and the
    vocabulary size its header announces. Word2VecFormatError naming the file and where when it is corrupted."""
    with open_by_suffix(path, "rb") as fin:
        if no_header:
            if binary:
                raise NotImplementedError("no_header: only available for text-format files")
            first = fin.readline()
            vector_size = len(first.rstrip().split(b" ")) - 1
            vocab_size = 1 + sum(1 for _ in fin)
            fin.seek(0)
        else:
            header = fin.readline()
            try:
                vocab_size, vector_size = (int(x) for x in header.decode(encoding).split())
            except (ValueError, UnicodeDecodeError):
                raise Word2VecFormatError(
                    f"{path}: line 1: expected a header 'vocab_size vector_size', got {header[:80]!r}") from None
            if vocab_size < 0 or vector_size <= 0:
                raise Word2VecFormatError(f"{path}: line 1: invalid sizes {vocab_size} x {vector_size}")
        if limit:
            vocab_size = min(vocab_size, limit)
        if binary:
            keys, vecs = _read_binary(fin, path, vocab_size, vector_size, encoding, unicode_errors)
        else:
            keys, vecs = _read_text(fin, path, vocab_size, vector_size, encoding, unicode_errors, no_header)
    return keys, vecs, vocab_size


def _read_text(fin: Any, path: Path, vocab_size: int, vector_size: int, encoding: str, unicode_errors: str,
               no_header: bool) -> tuple[list[str], np.ndarray]:
    keys: list[str] = []
    vecs = np.empty((vocab_size, vector_size), dtype=np.float32)
    first_line = 1 if no_header else 2
    for i in range(vocab_size):
        line_no = i + first_line
        raw = fin.readline()
        if raw == b"":
            raise Word2VecFormatError(f"{path}: line {line_no}: unexpected end of file after {i} of {vocab_size} "
                                      f"vectors (truncated file or wrong header)")
        try:
            parts = raw.decode(encoding, errors=unicode_errors).rstrip().split(" ")
        except UnicodeDecodeError as exc:
            raise Word2VecFormatError(f"{path}: line {line_no}: not valid {encoding} ({exc.reason})") from None
        if len(parts) != vector_size + 1:
            raise Word2VecFormatError(f"{path}: line {line_no}: expected a word and {vector_size} numbers, got "
                                      f"{len(parts) - 1} numbers (truncated or corrupted)")
        try:
            vecs[i] = np.array(parts[1:], dtype=np.float32)
        except ValueError:
            raise Word2VecFormatError(f"{path}: line {line_no}: invalid number in the vector of "
                                      f"'{parts[0]}'") from None
        keys.append(parts[0])
    return keys, vecs


def _read_binary(fin: Any, path: Path, vocab_size: int, vector_size: int, encoding: str,
                 unicode_errors: str) -> tuple[list[str], np.ndarray]:
    data = fin.read()
    base = fin.tell() - len(data)  # byte offset of data[0] in the file
    width = 4 * vector_size
    keys: list[str] = []
    vecs = np.empty((vocab_size, vector_size), dtype=np.float32)
    pos = 0
    for i in range(vocab_size):
        while pos < len(data) and data[pos:pos + 1] in (b"\n", b"\r"):
            pos += 1  # word2vec.c writes a newline after each vector
        space = data.find(b" ", pos, pos + 100000)
        if space < 0:
            raise Word2VecFormatError(f"{path}: byte offset {base + pos}: unexpected end of file or missing "
                                      f"word in vector {i + 1} of {vocab_size} (truncated file or wrong header)")
        if space + 1 + width > len(data):
            raise Word2VecFormatError(f"{path}: byte offset {base + space + 1}: vector {i + 1} of {vocab_size} "
                                      f"needs {width} bytes, {len(data) - space - 1} left (truncated file)")
        try:
            key = data[pos:space].decode(encoding, errors=unicode_errors)
        except UnicodeDecodeError as exc:
            raise Word2VecFormatError(f"{path}: byte offset {base + pos}: word is not valid {encoding} "
                                      f"({exc.reason}; corrupted file?)") from None
        keys.append(key)
        vecs[i] = np.frombuffer(data, dtype=np.float32, count=vector_size, offset=space + 1)
        pos = space + 1 + width
    return keys, vecs


def iter_keys(kv: KeyedVectors, keys: Iterable[Key]) -> list[int]:
    """Rows of `keys`; KeyError naming the first unknown key."""
    return [kv.get_index(k) for k in keys]
