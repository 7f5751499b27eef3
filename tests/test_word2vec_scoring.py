"""Word2Vec.score (sentence log probabilities, hs=1) and predict_output_word (negative sampling): against
an exact float64 loop, and against gensim 4.4 on the same weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genai_fast.word2vec import Word2Vec
from tests.word2vec_data import planted_corpus

gensim_models = pytest.importorskip("gensim.models", reason="gensim 4.4 is the compatibility oracle")

PARAMS = {"vector_size": 16, "window": 3, "min_count": 1, "sample": 0, "epochs": 1, "workers": 1, "seed": 1}


@pytest.fixture(scope="module")
def corpus() -> list[list[str]]:
    return planted_corpus(3000)


def twin_models(corpus, **params):
    """A gensim model and ours holding exactly its weights (the vocabularies and trees are the same)."""
    theirs = gensim_models.Word2Vec(corpus, **PARAMS, **params)
    ours = Word2Vec(**PARAMS, **params)
    ours.build_vocab(corpus)
    assert ours.wv.index_to_key == theirs.wv.index_to_key
    ours.wv.vectors[:] = theirs.wv.vectors
    if ours.hs:
        ours.syn1[:] = theirs.syn1
    if ours.negative:
        ours.syn1neg[:] = theirs.syn1neg
    return ours, theirs


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > -30 else x


# gensim's log sigmoid: a 1000-entry float32 table over (-6, 6), indexed with (x + 6) * 83 (1000 / 6 / 2 in
# integer arithmetic), and terms beyond +-6 left out.
_X = (np.arange(1000) / 1000 * 2 - 1) * 6
_GENSIM_LOG_TABLE = np.log(np.exp(_X) / (np.exp(_X) + 1)).astype(np.float32)


def gensim_log_sigmoid(x: float) -> float:
    return 0.0 if abs(x) >= 6 else float(_GENSIM_LOG_TABLE[int((x + 6) * 83)])


def brute_force_score(model: Word2Vec, sentence: list[str], log_sigmoid=log_sigmoid) -> float:
    """The definition, one term at a time in float64."""
    ids = [model.wv.key_to_index[w] for w in sentence if w in model.wv.key_to_index]
    vectors, syn1 = model.wv.vectors.astype(np.float64), model.syn1.astype(np.float64)
    total = 0.0
    for i, word in enumerate(ids):
        window = [ids[j] for j in range(max(0, i - model.window), min(len(ids), i + model.window + 1)) if j != i]
        if model.sg:
            inputs = [vectors[c] for c in window]
        else:
            h = vectors[window].sum(axis=0) if window else np.zeros(vectors.shape[1])
            inputs = [h / max(len(window), 1) if model.cbow_mean else h]
        points, codes = model.huffman.path(word)
        for x in inputs:
            total += sum(log_sigmoid((1 - 2 * int(c)) * float(x @ syn1[p])) for p, c in zip(points, codes, strict=True))
    return total


SENTENCES = [["city1", "town", "p1a", "mayor"], ["country3", "atlantis", "flag", "p3b", "nation", "f7"],
             ["atlantis", "nowhere"], [], ["f1"], ["tram", "city4"]]


@pytest.mark.parametrize(("sg", "cbow_mean"), [(1, 1), (0, 1), (0, 0)], ids=["skip-gram", "cbow-mean", "cbow-sum"])
def test_score_is_the_exact_log_probability(corpus, sg, cbow_mean):
    model = Word2Vec(corpus, **PARAMS, sg=sg, cbow_mean=cbow_mean, hs=1, negative=0)
    sentences = SENTENCES + corpus[:40]
    scores = model.score(sentences, chunksize=7)  # batches that split the list unevenly
    want = np.array([brute_force_score(model, s) for s in sentences])
    assert scores.dtype == np.float32 and scores.shape == (len(sentences),)
    assert np.allclose(scores, want, rtol=1e-5, atol=1e-4), np.abs(scores - want).max()
    assert scores[2] == scores[3] == 0.0, "sentences without a known word score 0"
    assert np.all(scores[:2] < 0)


@pytest.mark.parametrize(("sg", "cbow_mean"), [(1, 1), (0, 1), (0, 0)], ids=["skip-gram", "cbow-mean", "cbow-sum"])
def test_score_matches_gensim(corpus, sg, cbow_mean):
    """Same weights: gensim's scores are the same sums with its table in place of the exact log sigmoid
    (so the same pairs, windows and paths), and ours are within that table's error of them."""
    ours, theirs = twin_models(corpus, sg=sg, cbow_mean=cbow_mean, hs=1, negative=0)
    sentences = SENTENCES + corpus[:40]
    got = ours.score(sentences)
    want = theirs.score(sentences, total_sentences=len(sentences))
    with_table = np.array([brute_force_score(ours, s, gensim_log_sigmoid) for s in sentences])
    assert np.allclose(want, with_table, rtol=1e-4, atol=1e-3), np.abs(want - with_table).max()
    # The table reads log sigmoid at about x - 0.024: a bias of ~1% per term, always downwards.
    assert np.all(got >= want - 1e-3) and np.allclose(got, want, rtol=0.04, atol=0.05), np.abs(got - want).max()


def test_score_arguments(corpus):
    model = Word2Vec(corpus[:500], **PARAMS, sg=1, hs=1, negative=0)
    assert model.score(iter(corpus[:10]), total_sentences=4).shape == (4,)
    assert model.score([]).shape == (0,)
    with pytest.raises(ValueError, match="total_sentences"):
        model.score(corpus[:3], total_sentences=0)
    with pytest.raises(TypeError, match="sentences"):
        model.score(["a sentence given as one string"])
    negative_only = Word2Vec(corpus[:500], **PARAMS, sg=1)
    with pytest.raises(RuntimeError, match="hs=1"):
        negative_only.score(corpus[:3])


@pytest.mark.parametrize("cbow_mean", [1, 0])
def test_predict_output_word_matches_gensim(corpus, cbow_mean):
    ours, theirs = twin_models(corpus, sg=0, cbow_mean=cbow_mean, negative=5)
    for context in (["town", "mayor", "p1a"], ["flag", "atlantis"], ["nation"]):
        got = ours.predict_output_word(context, topn=5)
        want = theirs.predict_output_word(context, topn=5)
        assert [w for w, _ in got] == [w for w, _ in want], (got, want)
        assert np.allclose([p for _, p in got], [p for _, p in want], rtol=1e-4)
    assert ours.predict_output_word(["atlantis", "nowhere"]) is None
    assert theirs.predict_output_word(["atlantis", "nowhere"]) is None
    probs = ours.predict_output_word(["town"], topn=len(ours.wv))
    assert math.isclose(sum(p for _, p in probs), 1.0, rel_tol=1e-6)
    # gensim's edges: topn 0 (or less) gives no word, None every word.
    for topn in (0, -3):
        assert ours.predict_output_word(["town"], topn=topn) == theirs.predict_output_word(["town"], topn=topn) == []
    every = ours.predict_output_word(["town"], topn=None)
    assert len(every) == len(theirs.predict_output_word(["town"], topn=None)) == len(ours.wv)


def test_predict_output_word_arguments(corpus):
    model = Word2Vec(corpus[:500], **PARAMS, sg=0)
    with pytest.raises(ValueError, match="topn"):
        model.predict_output_word(["town"], topn=2.5)
    with pytest.raises(TypeError, match="context_words_list"):
        model.predict_output_word("town")
    hs_only = Word2Vec(corpus[:500], **PARAMS, sg=0, hs=1, negative=0)
    with pytest.raises(RuntimeError, match="negative"):
        hs_only.predict_output_word(["town"])
