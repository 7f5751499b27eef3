"""genai_fast.word2vec.Word2Vec: gensim's vocabulary rules, real learning on a planted corpus, determinism,
per-epoch loss, repeated training, interrupts, and the bad inputs of issue 3."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genai_fast.word2vec import KeyedVectors, LineSentence, Word2Vec
from tests.word2vec_data import N_PAIRS, analogy_file_text, pairs_file_text, planted_corpus

gensim = pytest.importorskip("gensim", reason="gensim 4.4 is the compatibility oracle (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def corpus() -> list[list[str]]:
    return planted_corpus()


@pytest.fixture(scope="module")
def sg_model(corpus) -> Word2Vec:
    return Word2Vec(corpus, vector_size=32, window=3, min_count=1, sg=1, workers=2, epochs=8, seed=3, sample=0,
                    compute_loss=True)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("w2v_eval")
    analogies, pairs = root / "analogies.txt", root / "pairs.tsv"
    analogies.write_text(analogy_file_text())
    pairs.write_text(pairs_file_text())
    return analogies, pairs


# ---------------------------------------------------------------- learning


@pytest.mark.parametrize("sg", [1, 0], ids=["skip-gram", "cbow"])
def test_planted_analogies_are_learned(corpus, data_files, sg):
    model = sg_model_for(corpus, sg)
    score, sections = model.wv.evaluate_word_analogies(data_files[0])
    assert score >= 0.9, f"planted analogies answered {score:.2%}"
    assert sections[-1]["section"] == "Total accuracy"
    assert len(sections[-1]["correct"]) + len(sections[-1]["incorrect"]) == N_PAIRS * (N_PAIRS - 1)
    top = model.wv.most_similar(positive=["city1", "country2"], negative=["country1"], topn=3)
    assert top[0][0] == "city2"


def sg_model_for(corpus, sg):
    return Word2Vec(corpus, vector_size=32, window=3, min_count=1, sg=sg, workers=2, epochs=8, seed=3, sample=0)


def test_loss_decreases_across_epochs(sg_model):
    losses = sg_model.epoch_losses
    assert len(losses) == 8 and all(math.isfinite(x) and x > 0 for x in losses)
    assert all(x < losses[0] for x in losses[1:]) and losses[-1] < 0.95 * losses[0], losses
    assert sg_model.get_latest_training_loss() == losses[-1]


def test_train_again_with_explicit_epochs(corpus):
    model = Word2Vec(vector_size=16, window=2, min_count=1, workers=1, seed=1, compute_loss=True)
    model.build_vocab(corpus[:3000])
    with pytest.raises(ValueError, match="epochs"):
        model.train(corpus[:3000], total_examples=model.corpus_count)
    with pytest.raises(ValueError, match="total_examples"):
        model.train(corpus[:3000], epochs=1)
    first = model.train(corpus[:3000], total_examples=model.corpus_count, epochs=2)
    vectors = model.wv.vectors.copy()
    second = model.train(corpus[:3000], total_examples=model.corpus_count, epochs=1)
    assert first[1] == 2 * second[1] == 2 * 18000
    assert len(model.epoch_losses) == 1 and not np.array_equal(vectors, model.wv.vectors)


def test_workers_1_and_a_seed_are_bit_identical(corpus, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(s) for s in corpus[:5000]) + "\n")
    runs = [Word2Vec(corpus_file=str(path), vector_size=20, min_count=1, sg=sg, workers=1, seed=11, epochs=2)
            for sg in (1, 1, 0, 0)]
    assert np.array_equal(runs[0].wv.vectors, runs[1].wv.vectors)
    assert np.array_equal(runs[0].syn1neg, runs[1].syn1neg)
    assert np.array_equal(runs[2].wv.vectors, runs[3].wv.vectors)
    other = Word2Vec(corpus_file=str(path), vector_size=20, min_count=1, sg=1, workers=1, seed=12, epochs=2)
    assert not np.array_equal(runs[0].wv.vectors, other.wv.vectors)
    in_memory = Word2Vec(LineSentence(path), vector_size=20, min_count=1, sg=1, workers=1, seed=11, epochs=2)
    assert in_memory.wv.index_to_key == runs[0].wv.index_to_key


def test_later_epochs_reuse_the_first_epochs_chunks(corpus, monkeypatch):
    class CountedCorpus:
        """A restartable corpus that counts the sentences read from it."""

        def __init__(self, sentences):
            self.sentences, self.read = sentences, 0

        def __iter__(self):
            for sentence in self.sentences:
                self.read += 1
                yield sentence

    def trained(limit):
        monkeypatch.setattr(model_module, "CACHE_TOKEN_LIMIT", limit)
        source = CountedCorpus(corpus[:2000])
        model = Word2Vec(source, vector_size=16, window=2, min_count=1, sg=1, workers=1, seed=5, epochs=3,
                         compute_loss=True)
        return model, source.read / len(source.sentences)  # passes over the corpus

    import genai_fast.word2vec.model as model_module

    kept, kept_passes = trained(model_module.CACHE_TOKEN_LIMIT)
    reread, reread_passes = trained(10)  # far fewer tokens than the corpus: every epoch reads it again
    assert kept_passes == 2  # build_vocab, then the first epoch; epochs 2 and 3 replay the kept chunks
    assert reread_passes == 1 + 3
    assert np.array_equal(kept.wv.vectors, reread.wv.vectors)
    assert kept.epoch_losses == reread.epoch_losses


def test_interrupt_leaves_a_usable_model(corpus):
    class StopAfterFirstEpoch:
        def on_epoch_end(self, model):
            raise KeyboardInterrupt

    model = Word2Vec(vector_size=16, window=2, min_count=1, workers=2, seed=1)
    model.build_vocab(corpus[:2000])
    with pytest.raises(KeyboardInterrupt):
        model.train(corpus[:2000], total_examples=model.corpus_count, epochs=3, callbacks=[StopAfterFirstEpoch()])
    assert model.interrupted and np.isfinite(model.wv.vectors).all()
    assert len(model.wv.most_similar("city0", topn=3)) == 3


def test_long_lines_are_not_cut(tmp_path):
    words = [f"w{i % 7}" for i in range(25000)]
    path = tmp_path / "long.txt"
    path.write_text(" ".join(words) + "\nw1 w2 w3\n")
    model = Word2Vec(corpus_file=str(path), vector_size=8, min_count=1, workers=2, epochs=2, sample=0)
    assert model.corpus_total_words == 25003 and model.corpus_count == 2
    assert model.wv.get_vecattr("w0", "count") == len(range(0, 25000, 7))
    effective, raw = model.train(corpus_file=str(path), total_words=model.corpus_total_words, epochs=1)
    assert raw == 25003 and effective == 25003


# ---------------------------------------------------------------- gensim's vocabulary rules


def test_vocabulary_and_tables_match_gensim(corpus):
    from gensim.models import Word2Vec as GensimWord2Vec

    sentences = [*corpus[:4000], ["rare"] * 2, ["uncommon"] * 4]
    for kwargs in ({"min_count": 3}, {"min_count": 1, "max_final_vocab": 30}, {"min_count": 1, "sample": 1e-2}):
        ours = Word2Vec(vector_size=8, **kwargs)
        ours.build_vocab(sentences)
        theirs = GensimWord2Vec(vector_size=8, **kwargs)
        theirs.build_vocab(sentences)
        assert ours.wv.index_to_key == theirs.wv.index_to_key, kwargs  # the same order, ties included
        assert ours.corpus_total_words == theirs.corpus_total_words
        for word in ours.wv.index_to_key:
            assert ours.wv.get_vecattr(word, "count") == theirs.wv.get_vecattr(word, "count")
            keep = theirs.wv.get_vecattr(word, "sample_int") / (2**32 - 1)
            assert ours.keep_prob[ours.wv.key_to_index[word]] == pytest.approx(keep, rel=1e-6)
        counts = ours.wv.expandos["count"]
        assert np.all(np.diff(counts) <= 0), "most frequent first"


def test_vocabulary_from_counts_matches_gensim(corpus):
    """build_vocab_from_freq: gensim's vocabulary order (ties in the mapping's order), counts and subsampling
    from a dict of counts; the model then trains on sentences; bad mappings name the problem."""
    from collections import Counter

    from gensim.models import Word2Vec as GensimWord2Vec

    freq = dict(Counter(w for sentence in corpus[:3000] for w in sentence))
    freq.update({"tie_b": 7, "tie_a": 7, "rare": 1})
    for kwargs in ({"min_count": 2}, {"min_count": 1, "max_final_vocab": 25, "sample": 1e-2}):
        ours = Word2Vec(vector_size=8, **kwargs)
        ours.build_vocab_from_freq(freq, corpus_count=3000)
        theirs = GensimWord2Vec(vector_size=8, **kwargs)
        theirs.build_vocab_from_freq(freq, corpus_count=3000)
        assert ours.wv.index_to_key == theirs.wv.index_to_key, kwargs
        assert ours.corpus_count == theirs.corpus_count == 3000
        for word in ours.wv.index_to_key:
            assert ours.wv.get_vecattr(word, "count") == theirs.wv.get_vecattr(word, "count")
            keep = theirs.wv.get_vecattr(word, "sample_int") / (2**32 - 1)
            assert ours.keep_prob[ours.wv.key_to_index[word]] == pytest.approx(keep, rel=1e-6)
    before = ours.wv.vectors.copy()
    ours.train(corpus[:200], total_examples=200, epochs=1)
    assert not np.allclose(ours.wv.vectors, before)
    with pytest.raises(TypeError, match="word_freq"):
        Word2Vec(vector_size=8).build_vocab_from_freq([("a", 1)])
    with pytest.raises(ValueError, match="word_freq: the count of 'a'"):
        Word2Vec(vector_size=8).build_vocab_from_freq({"a": -1})
    with pytest.raises(ValueError, match="word_freq: no word"):
        Word2Vec(vector_size=8).build_vocab_from_freq({"a": 0})


def test_trim_rule_matches_gensim(corpus):
    """A trim rule that keeps a rare word and discards a frequent one gives gensim's vocabulary, from sentences,
    from counts and through the constructor; a non-callable rule, or one with max_vocab_size, is refused."""
    from collections import Counter

    from gensim.models import Word2Vec as GensimWord2Vec

    from genai_fast.word2vec import RULE_DEFAULT, RULE_DISCARD, RULE_KEEP

    sentences = [*corpus[:2000], ["rare"]]
    frequent = max(set(corpus[0]), key=lambda w: sum(s.count(w) for s in corpus[:2000]))

    def rule(word, count, min_count):
        return RULE_KEEP if word == "rare" else RULE_DISCARD if word == frequent else RULE_DEFAULT

    ours = Word2Vec(vector_size=8, min_count=3)
    ours.build_vocab(sentences, trim_rule=rule)
    theirs = GensimWord2Vec(vector_size=8, min_count=3)
    theirs.build_vocab(sentences, trim_rule=rule)
    assert ours.wv.index_to_key == theirs.wv.index_to_key
    assert "rare" in ours.wv and frequent not in ours.wv
    from_freq = Word2Vec(vector_size=8, min_count=3)
    from_freq.build_vocab_from_freq(dict(Counter(w for s in sentences for w in s)), trim_rule=rule)
    assert from_freq.wv.index_to_key == ours.wv.index_to_key
    built = Word2Vec([*sentences[:300], ["rare"]], vector_size=8, min_count=3, epochs=1, trim_rule=rule)
    assert "rare" in built.wv and frequent not in built.wv
    with pytest.raises(TypeError, match="trim_rule"):
        Word2Vec(vector_size=8).build_vocab(sentences, trim_rule=3)
    with pytest.raises(NotImplementedError, match="trim_rule"):
        Word2Vec(vector_size=8, max_vocab_size=100).build_vocab(sentences, trim_rule=rule)


def test_max_vocab_size_prunes_like_gensim():
    from gensim.models import Word2Vec as GensimWord2Vec

    sentences = [[f"a{i}", f"b{i % 5}", "c"] for i in range(200)]
    ours = Word2Vec(vector_size=8, min_count=1, max_vocab_size=50)
    ours.build_vocab(sentences)
    theirs = GensimWord2Vec(vector_size=8, min_count=1, max_vocab_size=50)
    theirs.build_vocab(sentences)
    assert set(ours.wv.index_to_key) == set(theirs.wv.index_to_key)


# ---------------------------------------------------------------- KeyedVectors queries against gensim's


def _gensim_kv(wv: KeyedVectors):
    kv = gensim.models.KeyedVectors(wv.vector_size)
    kv.add_vectors(list(wv.index_to_key), wv.vectors.copy())
    return kv


def test_queries_and_evaluations_match_gensim(sg_model, data_files):
    wv, ref = sg_model.wv, _gensim_kv(sg_model.wv)
    ours = wv.most_similar(positive=["city3", "country5"], negative=["country3"], topn=5)
    theirs = ref.most_similar(positive=["city3", "country5"], negative=["country3"], topn=5)
    assert [w for w, _ in ours] == [w for w, _ in theirs]
    assert np.allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-5)
    assert [w for w, _ in wv.most_similar("city0", topn=4, restrict_vocab=20)] == \
        [w for w, _ in ref.most_similar("city0", topn=4, restrict_vocab=20)]
    cos_ours = wv.most_similar_cosmul(positive=["city3", "country5"], negative=["country3"], topn=3)
    cos_ref = ref.most_similar_cosmul(positive=["city3", "country5"], negative=["country3"], topn=3)
    assert [w for w, _ in cos_ours] == [w for w, _ in cos_ref]
    assert wv.similarity("city1", "country1") == pytest.approx(float(ref.similarity("city1", "country1")), abs=1e-6)
    assert wv.doesnt_match(["city1", "city2", "city3", "nation"]) == \
        ref.doesnt_match(["city1", "city2", "city3", "nation"])
    assert np.allclose(wv.get_vector("city1", norm=True), ref.get_vector("city1", norm=True), atol=1e-6)
    assert wv["city1"].shape == (32,) and wv[["city1", "city2"]].shape == (2, 32)
    assert "city1" in wv and "atlantis" not in wv and wv.key_to_index[wv.index_to_key[5]] == 5

    score, sections = wv.evaluate_word_analogies(data_files[0])
    ref_score, ref_sections = ref.evaluate_word_analogies(str(data_files[0]))
    assert score == ref_score
    assert [(s["section"], s["correct"], s["incorrect"]) for s in sections] == \
        [(s["section"], s["correct"], s["incorrect"]) for s in ref_sections]
    pearson, spearman, oov = wv.evaluate_word_pairs(data_files[1])
    ref_pearson, ref_spearman, ref_oov = ref.evaluate_word_pairs(str(data_files[1]))
    assert pearson[0] == pytest.approx(ref_pearson[0], abs=1e-6)
    assert spearman[0] == pytest.approx(ref_spearman[0], abs=1e-6)
    assert oov == pytest.approx(ref_oov)


def test_distance_queries_match_gensim(sg_model):
    """distances, closer_than, rank, most_similar_to_given, relative_cosine_similarity and cosine_similarities
    give gensim's answers on the same vectors."""
    wv, ref = sg_model.wv, _gensim_kv(sg_model.wv)
    assert np.allclose(wv.distances("city1"), ref.distances("city1"), atol=1e-6)
    others = ["city2", "country1", "nation"]
    assert np.allclose(wv.distances("city1", others), ref.distances("city1", others), atol=1e-6)
    vector = wv["country3"] * 2 - wv["city3"]
    assert np.allclose(wv.distances(vector, others), ref.distances(vector, others), atol=1e-6)
    assert wv.closer_than("city1", "country1") == ref.closer_than("city1", "country1")
    assert [wv.rank("city1", w) for w in others] == [ref.rank("city1", w) for w in others]
    assert wv.rank("city1", wv.most_similar("city1", topn=1)[0][0]) == 1
    assert wv.most_similar_to_given("city4", others) == ref.most_similar_to_given("city4", others)
    assert wv.relative_cosine_similarity("city1", "city2", topn=5) == pytest.approx(
        float(ref.relative_cosine_similarity("city1", "city2", topn=5)), abs=1e-6)
    assert np.allclose(wv.cosine_similarities(vector, wv.vectors[:7]), ref.cosine_similarities(vector, wv.vectors[:7]),
                       atol=1e-6)
    with pytest.raises(KeyError, match="atlantis"):
        wv.distances("city1", ["city2", "atlantis"])
    with pytest.raises(KeyError, match="atlantis"):
        wv.rank("atlantis", "city1")
    assert wv.similar_by_key("city1", topn=3) == wv.similar_by_word("city1", topn=3)


def test_mean_vectors_match_gensim(sg_model):
    """get_mean_vector with and without weights, pre/post normalisation, raw arrays and unknown keys."""
    wv, ref = sg_model.wv, _gensim_kv(sg_model.wv)
    keys = ["city1", "country2", "atlantis", "nation"]
    cases = [dict(), dict(weights=[1.0, -0.5, 2.0, 0.25]), dict(pre_normalize=False), dict(post_normalize=True),
             dict(weights=np.array([0.5, 0.5, 3.0, -1.0]), pre_normalize=False, post_normalize=True)]
    for kwargs in cases:
        assert np.allclose(wv.get_mean_vector(keys, **kwargs), ref.get_mean_vector(keys, **kwargs), atol=1e-6)
    raw = [wv["city3"], "city2"]
    assert np.allclose(wv.get_mean_vector(raw), ref.get_mean_vector(raw), atol=1e-6)
    with pytest.raises(KeyError, match="atlantis"):
        wv.get_mean_vector(keys, ignore_missing=False)
    with pytest.raises(ValueError, match=r"^weights"):
        wv.get_mean_vector(keys, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"^keys"):
        wv.get_mean_vector([])
    copy = KeyedVectors(wv.vector_size)
    copy.add_vectors(list(wv.index_to_key), wv.vectors.copy())
    copy.unit_normalize_all()
    assert np.allclose(np.linalg.norm(copy.vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(copy.vectors, wv.get_normed_vectors(), atol=1e-6)


def test_unknown_words_raise_key_error_naming_the_word(sg_model):
    with pytest.raises(KeyError, match="atlantis"):
        sg_model.wv.most_similar(positive=["city1", "atlantis"])
    with pytest.raises(KeyError, match="atlantis"):
        sg_model.wv["atlantis"]
    with pytest.raises(KeyError, match="atlantis"):
        sg_model.wv.similarity("atlantis", "city1")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"vector_size": 0}, ValueError, "vector_size"),
    ({"vector_size": -3}, ValueError, "vector_size"),
    ({"window": 0}, ValueError, "window"),
    ({"epochs": 0}, ValueError, "epochs"),
    ({"negative": -1}, ValueError, "negative"),
    ({"negative": 0}, ValueError, "negative"),
    ({"sample": -0.1}, ValueError, "sample"),
    ({"alpha": 0.0}, ValueError, "alpha"),
    ({"alpha": float("nan")}, ValueError, "alpha"),
    ({"vector_size": 2.5}, TypeError, "vector_size"),
    ({"workers": 0}, ValueError, "workers"),
    ({"sg": 2}, ValueError, "sg"),
    ({"device": "tpu"}, ValueError, "device"),
    ({"hs": 2}, ValueError, "hs"),
    ({"hs": 1, "negative": -1}, ValueError, "negative"),
    ({"hs": 1, "negative": 0, "cbow_mean": 2}, ValueError, "cbow_mean"),
])
def test_bad_parameters_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        Word2Vec(**kwargs)


def test_bad_corpora(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        Word2Vec([], min_count=1)
    with pytest.raises(ValueError, match="empty"):
        Word2Vec([[], []], min_count=1)
    with pytest.raises(ValueError, match="min_count"):
        Word2Vec([["a", "b"], ["c"]], min_count=5)
    with pytest.raises(TypeError, match="token 3"):
        Word2Vec([["a", 3, "b"]], min_count=1)
    with pytest.raises(TypeError, match="sentence 1"):
        Word2Vec([["a"], "just a string"], min_count=1)
    with pytest.raises(TypeError, match="generator"):
        Word2Vec((s for s in [["a", "b"]]), min_count=1)
    with pytest.raises(FileNotFoundError, match="corpus_file"):
        Word2Vec(corpus_file=str(tmp_path / "missing.txt"))
    with pytest.raises(IsADirectoryError, match="corpus_file"):
        Word2Vec(corpus_file=str(tmp_path))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        Word2Vec(corpus_file=str(empty))
    with pytest.raises(ValueError, match="not both"):
        Word2Vec([["a"]], corpus_file=str(empty))
    model = Word2Vec(vector_size=8)
    with pytest.raises(RuntimeError, match="build_vocab"):
        model.train([["a"]], total_examples=1, epochs=1)
