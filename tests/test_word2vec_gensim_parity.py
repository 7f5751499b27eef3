"""genai_fast.word2vec against gensim 4 on the calls a gensim user makes: int keys and [n, D] arrays in queries,
n_similarity, indexers, topn edge cases, analogy sections' order, compressed word2vec files, one-shot corpora,
gensim-only arguments, mmap loads, LineSentence and the smaller KeyedVectors calls."""

from __future__ import annotations

import bz2
import gzip
import io
from pathlib import Path

import numpy as np
import pytest

from genai_fast.word2vec import KeyedVectors, LineSentence, Word2Vec

gensim = pytest.importorskip("gensim", reason="gensim 4.4 is the compatibility oracle (pip install -e '.[test]')")
from gensim.models import KeyedVectors as GensimKeyedVectors  # noqa: E402
from gensim.models import Word2Vec as GensimWord2Vec  # noqa: E402
from gensim.models.word2vec import LineSentence as GensimLineSentence  # noqa: E402
from gensim.test.utils import datapath  # noqa: E402


def _random_pair(keys: list[str], dim: int = 8, seed: int = 0) -> tuple[KeyedVectors, GensimKeyedVectors]:
    """The same vectors, of very different lengths (so raw and unit-length means differ), in both libraries."""
    rng = np.random.default_rng(seed)
    vectors = (rng.standard_normal((len(keys), dim)) * rng.uniform(0.1, 5.0, (len(keys), 1))).astype(np.float32)
    ours, theirs = KeyedVectors(dim), GensimKeyedVectors(dim)
    ours.add_vectors(keys, vectors)
    theirs.add_vectors(keys, vectors)
    return ours, theirs


@pytest.fixture(scope="module")
def pair() -> tuple[KeyedVectors, GensimKeyedVectors]:
    return _random_pair([f"w{i}" for i in range(60)])


@pytest.fixture(scope="module")
def corpus() -> list[list[str]]:
    rng = np.random.default_rng(1)
    words = [f"t{i}" for i in range(40)]
    return [list(rng.choice(words, size=int(rng.integers(3, 9)))) for _ in range(300)]


def _assert_same_ranking(ours: list, theirs: list) -> None:
    assert [w for w, _ in ours] == [w for w, _ in theirs]
    assert np.allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-5)


# ---------------------------------------------------------------- queries


def test_n_similarity_averages_raw_vectors_like_gensim(pair):
    ours, theirs = pair
    left, right = ["w1", "w2", "w3"], ["w4", "w5"]
    assert ours.n_similarity(left, right) == pytest.approx(float(theirs.n_similarity(left, right)), abs=1e-6)
    mixed = [ours["w7"] * 3.0, "w8"]
    assert ours.n_similarity(mixed, right) == pytest.approx(float(theirs.n_similarity(mixed, right)), abs=1e-6)
    with pytest.raises(KeyError, match="atlantis"):
        ours.n_similarity(["w1", "atlantis"], right)
    with pytest.raises(ZeroDivisionError):
        ours.n_similarity([], right)


@pytest.mark.parametrize("query", [
    dict(positive=5), dict(positive=np.int64(5)), dict(positive=[5, 6]), dict(positive=["w1"], negative=5),
    dict(positive=[5, "w9"], negative=["w3"]), dict(positive="w1"),
], ids=["int", "np-int", "int-list", "int-negative", "mixed", "one-str"])
def test_most_similar_takes_int_indices_like_gensim(pair, query):
    ours, theirs = pair
    _assert_same_ranking(ours.most_similar(**query, topn=5), theirs.most_similar(**query, topn=5))


def test_most_similar_reads_a_2d_array_as_several_vectors(pair):
    ours, theirs = pair
    block = ours.vectors[10:13] * 0.5
    _assert_same_ranking(ours.most_similar(block, topn=5), theirs.most_similar(block, topn=5))
    _assert_same_ranking(ours.most_similar_cosmul(block, topn=5), theirs.most_similar_cosmul(block, topn=5))
    _assert_same_ranking(ours.most_similar_cosmul(ours["w4"], topn=5), theirs.most_similar_cosmul(ours["w4"], topn=5))


def test_int_indices_are_in_the_vectors_like_gensim(pair):
    ours, theirs = pair
    for key in ["w3", "zz", 0, 5, np.int64(59), 60, -1, None]:
        assert (key in ours) == (key in theirs), key
        assert ours.has_index_for(key) == theirs.has_index_for(key), key
    with pytest.raises(TypeError):
        [1] in ours  # noqa: B015 - unhashable, as in gensim


def test_most_similar_hands_the_query_to_an_indexer(pair):
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[np.ndarray, int]] = []

        def most_similar(self, vector: np.ndarray, topn: int) -> list[tuple[str, float]]:
            self.calls.append((np.array(vector), topn))
            return [("from-indexer", 1.0)]

    ours, theirs = pair
    mine, reference = Recorder(), Recorder()
    query = dict(positive=["w1", "w2"], negative=["w3"], topn=4)
    assert ours.most_similar(**query, indexer=mine) == theirs.most_similar(**query, indexer=reference)
    assert mine.calls[0][1] == reference.calls[0][1] == 4
    assert np.allclose(mine.calls[0][0], reference.calls[0][0], atol=1e-6)
    assert isinstance(ours.most_similar("w1", topn=None, indexer=mine), np.ndarray)  # no list asked: exact array


@pytest.mark.parametrize("topn", [0, False, -2])
def test_topn_below_one_gives_an_empty_list_like_gensim(pair, topn):
    ours, theirs = pair
    assert ours.most_similar("w1", topn=topn) == theirs.most_similar("w1", topn=topn) == []
    assert ours.most_similar_cosmul("w1", topn=topn) == theirs.most_similar_cosmul("w1", topn=topn) == []


def test_cosmul_needs_a_positive_input_like_gensim(pair):
    ours, theirs = pair
    for query in [dict(), dict(negative=["w1"])]:
        with pytest.raises(ValueError):
            theirs.most_similar_cosmul(**query)
        with pytest.raises(ValueError, match="positive"):
            ours.most_similar_cosmul(**query)
    assert np.allclose(ours.most_similar_cosmul("w1", topn=None), theirs.most_similar_cosmul("w1", topn=None),
                       atol=1e-5)


# ---------------------------------------------------------------- evaluations


def _analogy_pair() -> tuple[KeyedVectors, GensimKeyedVectors]:
    """Vectors for about half the words of gensim's questions-words.txt, so many questions are unknown."""
    words = sorted({w for line in Path(datapath("questions-words.txt")).read_text().splitlines()
                    if not line.startswith(":") for w in line.lower().split()})
    return _random_pair(words[::2], dim=16, seed=2)


@pytest.mark.parametrize("kwargs", [dict(dummy4unknown=True), dict(dummy4unknown=True, case_insensitive=False),
                                    dict(restrict_vocab=150, dummy4unknown=True)])
def test_analogy_sections_list_questions_in_file_order_like_gensim(kwargs):
    ours, theirs = _analogy_pair()
    score, sections = ours.evaluate_word_analogies(datapath("questions-words.txt"), **kwargs)
    ref_score, ref_sections = theirs.evaluate_word_analogies(datapath("questions-words.txt"), **kwargs)
    assert score == pytest.approx(ref_score)
    assert [s["section"] for s in sections] == [s["section"] for s in ref_sections]
    for mine, reference in zip(sections, ref_sections, strict=True):
        assert mine["correct"] == reference["correct"], mine["section"]
        assert mine["incorrect"] == reference["incorrect"], mine["section"]


# ---------------------------------------------------------------- word2vec files


@pytest.mark.parametrize("suffix", [".gz", ".bz2"])
@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_compressed_word2vec_files_interoperate_with_gensim(pair, tmp_path, suffix, binary):
    ours, theirs = pair
    for kv in (ours, theirs):
        kv.set_vecattr("w0", "count", 7)
    mine, reference = tmp_path / f"ours.bin{suffix}", tmp_path / f"gensim.bin{suffix}"
    ours.save_word2vec_format(mine, binary=binary, fvocab=tmp_path / f"ours.vocab{suffix}")
    theirs.save_word2vec_format(str(reference), binary=binary)
    opener = gzip.open if suffix == ".gz" else bz2.open
    with opener(mine, "rb") as f:
        assert f.read(len(b"60 8\n")) == b"60 8\n"  # really compressed
    back = GensimKeyedVectors.load_word2vec_format(str(mine), binary=binary)
    assert back.index_to_key == ours.index_to_key and np.allclose(back.vectors, ours.vectors)
    loaded = KeyedVectors.load_word2vec_format(reference, binary=binary)
    assert loaded.index_to_key == theirs.index_to_key and np.allclose(loaded.vectors, theirs.vectors)
    with_counts = KeyedVectors.load_word2vec_format(mine, binary=binary, fvocab=tmp_path / f"ours.vocab{suffix}")
    assert with_counts.get_vecattr("w0", "count") == 7


# ---------------------------------------------------------------- Word2Vec arguments and corpora


def test_one_shot_generators_work_where_gensim_reads_them_once(corpus):
    ours, theirs = Word2Vec(vector_size=8, min_count=1, workers=1, epochs=3), \
        GensimWord2Vec(vector_size=8, min_count=1, workers=1, epochs=3)
    ours.build_vocab(s for s in corpus)
    theirs.build_vocab(s for s in corpus)
    assert ours.wv.index_to_key == theirs.wv.index_to_key and ours.corpus_count == theirs.corpus_count
    before = ours.wv.vectors.copy()
    _, raw = ours.train((s for s in corpus), total_examples=ours.corpus_count, epochs=1)
    assert raw == sum(map(len, corpus)) and not np.array_equal(before, ours.wv.vectors)
    with pytest.raises(TypeError, match="generator"):
        ours.train((s for s in corpus), total_examples=ours.corpus_count, epochs=2)
    with pytest.raises(TypeError, match="generator"):
        Word2Vec((s for s in corpus), vector_size=8, min_count=1, epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        ours.train((s for s in corpus), total_examples=ours.corpus_count)


def test_vocabulary_update_needs_a_vocabulary_like_gensim(corpus):
    with pytest.raises(RuntimeError):
        GensimWord2Vec(vector_size=8, min_count=1).build_vocab(corpus, update=True)
    with pytest.raises(RuntimeError, match="update"):
        Word2Vec(vector_size=8, min_count=1).build_vocab(corpus, update=True)
    with pytest.raises(RuntimeError, match="update"):
        Word2Vec(vector_size=8, min_count=1).build_vocab_from_freq({"a": 3}, update=True)


def test_gensim_only_arguments_are_accepted(corpus, tmp_path):
    kwargs = dict(vector_size=8, min_count=1, workers=1, epochs=1, batch_words=500, hashfxn=hash, comment="run 1")
    model = Word2Vec(corpus, null_word=0, **kwargs)
    assert len(model.wv) == len(GensimWord2Vec(corpus, null_word=0, **kwargs).wv)
    model.save(tmp_path / "model.npz")
    assert Word2Vec.load(tmp_path / "model.npz").batch_words == 500
    with pytest.raises(NotImplementedError, match="null_word"):
        Word2Vec(vector_size=8, null_word=1)
    with pytest.raises(ValueError, match="batch_words"):
        Word2Vec(vector_size=8, batch_words=0)
    with pytest.raises(TypeError, match="hashfxn"):
        Word2Vec(vector_size=8, hashfxn=3)


def test_load_accepts_gensims_mmap_argument(corpus, tmp_path):
    model = Word2Vec(corpus, vector_size=8, min_count=1, workers=1, epochs=1)
    model.save(tmp_path / "model.npz")
    model.wv.save(tmp_path / "vectors.kv")
    assert np.array_equal(Word2Vec.load(tmp_path / "model.npz", mmap="r").wv.vectors, model.wv.vectors)
    assert np.array_equal(KeyedVectors.load(tmp_path / "vectors.kv", mmap="r").vectors, model.wv.vectors)
    with pytest.raises(ValueError, match="mmap"):
        KeyedVectors.load(tmp_path / "vectors.kv", mmap="rw")


def test_line_sentence_reads_like_gensims(tmp_path):
    lines = ["a b c d e", "", "   ", "f g", "h i j k l m n", "", "o"]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    for kwargs in [dict(max_sentence_length=3), dict(max_sentence_length=3, limit=5), dict(limit=2)]:
        reference = list(GensimLineSentence(str(path), **{"max_sentence_length": 10000, **kwargs}))
        assert list(LineSentence(path, **kwargs)) == reference, kwargs
    assert list(LineSentence(path, 2)) == list(GensimLineSentence(str(path), 2))  # gensim's argument order
    packed = tmp_path / "corpus.txt.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert list(LineSentence(packed)) == list(GensimLineSentence(str(packed)))
    opened = io.BytesIO(path.read_bytes())
    assert list(LineSentence(opened)) == list(LineSentence(opened)) == list(GensimLineSentence(str(path)))
    model = Word2Vec(LineSentence(path), vector_size=8, min_count=1, workers=1, epochs=1)
    assert model.corpus_count == GensimWord2Vec(GensimLineSentence(str(path)), vector_size=8, min_count=1).corpus_count
    with pytest.raises(ValueError, match="max_sentence_length"):
        LineSentence(path, max_sentence_length=0)


# ---------------------------------------------------------------- smaller KeyedVectors calls


def test_smaller_keyedvectors_calls_match_gensim():
    ours, theirs = _random_pair([f"w{i}" for i in range(20)], seed=4)
    new = np.arange(8, dtype=np.float32)
    assert ours.add_vector("extra", new) == theirs.add_vector("extra", new) == 20
    assert np.array_equal(ours["extra"], theirs["extra"])
    ours.add_vectors(["w1", "extra2"], np.ones((2, 8)), replace=True)
    theirs.add_vectors(["w1", "extra2"], np.ones((2, 8)), replace=True)
    assert ours.index_to_key == theirs.index_to_key and np.allclose(ours.vectors, theirs.vectors)
    ours.set_vecattr("w2", "count", 9)
    theirs.set_vecattr("w2", "count", 9)
    subset, ref_subset = (kv.vectors_for_all(["w3", "zz", "w2", "w3"], copy_vecattrs=True) for kv in (ours, theirs))
    assert subset.index_to_key == ref_subset.index_to_key == ["w3", "w2"]
    assert np.array_equal(subset.vectors, ref_subset.vectors)
    assert subset.get_vecattr("w2", "count") == ref_subset.get_vecattr("w2", "count") == 9
    assert ours.words_closer_than("w1", "w5") == theirs.words_closer_than("w1", "w5")
    ours.init_sims(replace=True)
    assert np.allclose(np.linalg.norm(ours.vectors, axis=1), 1.0, atol=1e-5)
