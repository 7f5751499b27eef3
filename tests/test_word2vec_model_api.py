"""genai_fast.word2vec.Word2Vec's model-level API against gensim 4's: online vocabulary growth, build_vocab's
keyword arguments, train()'s callbacks and state, estimate_memory / cum_table / reset_from, save/load then more
training, files that are not ours (gensim pickles, .npy, damaged metadata), determinism after an update."""

from __future__ import annotations

import os
import pickle
from collections import Counter

import numpy as np
import pytest

from genai_fast.word2vec import Word2Vec

gensim = pytest.importorskip("gensim", reason="gensim 4.4 is the compatibility oracle (pip install -e '.[test]')")
from gensim.models import Word2Vec as GensimWord2Vec  # noqa: E402
from gensim.models.callbacks import CallbackAny2Vec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(vector_size=16, workers=1, epochs=1, seed=3)


@pytest.fixture(scope="module")
def corpus() -> list[list[str]]:
    rng = np.random.default_rng(1)
    words = [f"t{i}" for i in range(40)]
    return [list(rng.choice(words, size=int(rng.integers(3, 9)))) for _ in range(300)]


@pytest.fixture(scope="module")
def update_corpus() -> list[list[str]]:
    """Known words, most of them under min_count=5 here, and ten new words."""
    rng = np.random.default_rng(2)
    words = [f"t{i}" for i in range(40)] + [f"n{i}" for i in range(10)]
    return [list(rng.choice(words, size=6)) for _ in range(20)] + [[f"n{i}"] * 6 for i in range(10)]


def _counts(model) -> dict[str, int]:
    return {w: int(model.wv.get_vecattr(w, "count")) for w in model.wv.index_to_key}


# ---------------------------------------------------------------- online vocabulary growth


def test_update_adds_the_new_counts_of_every_known_word_like_gensim(corpus, update_corpus):
    """gensim 4 adds a known word's new count even when that count alone is under min_count (the word stays in
    the vocabulary anyway); new words need min_count in the new corpus. Old vectors keep their values."""
    ours = Word2Vec(corpus, min_count=5, **SMALL)
    theirs = GensimWord2Vec(corpus, min_count=5, **SMALL)
    before, before_out = ours.wv.vectors.copy(), ours.syn1neg.copy()
    new_counts = Counter(w for s in update_corpus for w in s)
    assert any(0 < new_counts[w] < 5 for w in ours.wv.index_to_key)  # the case that went wrong
    ours.build_vocab(update_corpus, update=True)
    theirs.build_vocab(update_corpus, update=True)
    assert ours.wv.index_to_key == theirs.wv.index_to_key
    assert _counts(ours) == _counts(theirs)
    assert (ours.corpus_count, ours.corpus_total_words) == (theirs.corpus_count, theirs.corpus_total_words)
    size = len(ours.wv)
    assert ours.wv.vectors.shape == ours.syn1neg.shape == (size, 16) == theirs.wv.vectors.shape
    assert all(ours.wv.key_to_index[w] == i for i, w in enumerate(ours.wv.index_to_key))
    assert np.array_equal(ours.wv.vectors[:len(before)], before)
    assert np.array_equal(ours.syn1neg[:len(before)], before_out)
    assert np.all(ours.syn1neg[len(before):] == 0) and np.all(np.abs(ours.wv.vectors[len(before):]) > 0)
    fresh = ours.wv["n3"].copy()
    ours.train(update_corpus, total_examples=ours.corpus_count, epochs=1)
    assert not np.array_equal(ours.wv["n3"], fresh)


def test_update_from_counts_adds_counts_like_gensim():
    ours, theirs = Word2Vec(min_count=3, **SMALL), GensimWord2Vec(min_count=3, **SMALL)
    for model in (ours, theirs):
        model.build_vocab_from_freq({"a": 9, "b": 5, "c": 3, "d": 1})
        model.build_vocab_from_freq({"a": 2, "b": 1, "e": 4, "f": 1}, update=True)
    assert ours.wv.index_to_key == theirs.wv.index_to_key == ["a", "b", "c", "e"]
    assert _counts(ours) == _counts(theirs) == {"a": 11, "b": 6, "c": 3, "e": 4}


def test_build_vocab_takes_gensims_min_count_and_sample(corpus):
    """build_vocab(min_count=..., sample=...) overrides the model's settings as gensim's prepare_vocab does."""
    ours, theirs = Word2Vec(min_count=1, sample=0.0, **SMALL), GensimWord2Vec(min_count=1, sample=0.0, **SMALL)
    ours.build_vocab(corpus, min_count=40, sample=1e-2)
    theirs.build_vocab(corpus, min_count=40, sample=1e-2)
    assert ours.wv.index_to_key == theirs.wv.index_to_key and len(ours.wv) < 40
    assert (ours.min_count, ours.sample) == (theirs.min_count, theirs.sample) == (40, 1e-2)
    keep = [theirs.wv.get_vecattr(w, "sample_int") / (2**32 - 1) for w in ours.wv.index_to_key]
    assert np.allclose(ours.keep_prob, keep, rtol=1e-6)
    with pytest.raises(ValueError, match="min_count"):
        ours.build_vocab(corpus, min_count=-1)


def test_unknown_keywords_raise_type_error_like_gensim(corpus):
    """A misplaced keyword (min_alpha belongs to the constructor) is an error, not silently ignored."""
    ours, theirs = Word2Vec(corpus, min_count=1, **SMALL), GensimWord2Vec(corpus, min_count=1, **SMALL)
    for model in (ours, theirs):
        with pytest.raises(TypeError, match="min_alpha"):
            model.train(corpus, total_examples=len(corpus), epochs=1, min_alpha=0.001)
        with pytest.raises(TypeError, match="bogus"):
            model.build_vocab(corpus, bogus=1)
        with pytest.raises(TypeError, match="bogus"):
            model.build_vocab_from_freq({"a": 3}, bogus=1)
        model.train(corpus, total_examples=len(corpus), epochs=1, queue_factor=4, report_delay=5.0, word_count=0)


# ---------------------------------------------------------------- train(): callbacks and state


class Recorder(CallbackAny2Vec):
    """Logs each hook with the loss the model reports at that moment."""

    def __init__(self) -> None:
        self.log: list[tuple[str, float]] = []

    def on_train_begin(self, model):
        self.log.append(("train_begin", model.get_latest_training_loss()))

    def on_epoch_begin(self, model):
        self.log.append(("epoch_begin", model.get_latest_training_loss()))

    def on_epoch_end(self, model):
        self.log.append(("epoch_end", model.get_latest_training_loss()))

    def on_train_end(self, model):
        self.log.append(("train_end", model.get_latest_training_loss()))


def test_callbacks_run_in_gensims_order_and_only_where_given(corpus):
    """Constructor callbacks serve the constructor's training only; a later train() runs its own (gensim's)."""
    logs = []
    for cls in (Word2Vec, GensimWord2Vec):
        first = Recorder()
        model = cls(corpus, min_count=1, compute_loss=True, callbacks=[first], **SMALL)
        model.train(corpus, total_examples=len(corpus), epochs=2, compute_loss=True)
        second = Recorder()
        model.train(corpus, total_examples=len(corpus), epochs=3, compute_loss=True, callbacks=[second])
        logs.append((first.log, second.log, model.epochs))
    (ours_first, ours_second, ours_epochs), (ref_first, ref_second, ref_epochs) = logs
    assert [name for name, _ in ours_first] == [name for name, _ in ref_first]
    assert [name for name, _ in ours_second] == [name for name, _ in ref_second]
    assert ours_epochs == ref_epochs == 3  # train(epochs=) becomes model.epochs, as in gensim
    # The loss is 0 when training starts (gensim's); at an epoch's end it is that epoch's (ours, per epoch).
    assert ours_second[0] == ref_second[0] == ("train_begin", 0.0)
    epoch_ends = [loss for name, loss in ours_second if name == "epoch_end"]
    assert len(epoch_ends) == 3 and all(loss > 0 for loss in epoch_ends)


def test_epoch_end_loss_is_the_epochs_loss(corpus):
    model = Word2Vec(corpus, min_count=1, compute_loss=True, **SMALL)
    recorder = Recorder()
    model.train(corpus, total_examples=len(corpus), epochs=3, callbacks=[recorder])
    assert [loss for name, loss in recorder.log if name == "epoch_end"] == model.epoch_losses
    assert model.get_latest_training_loss() == model.epoch_losses[-1]


# ---------------------------------------------------------------- smaller model calls


@pytest.mark.parametrize("kwargs", [dict(), dict(hs=1, negative=0), dict(hs=1, negative=5)], ids=["ns", "hs", "both"])
def test_estimate_memory_matches_gensim(corpus, kwargs):
    ours = Word2Vec(min_count=1, **SMALL, **kwargs)
    theirs = GensimWord2Vec(min_count=1, **SMALL, **kwargs)
    ours.build_vocab(corpus)
    theirs.build_vocab(corpus)
    assert ours.estimate_memory() == theirs.estimate_memory()
    assert ours.estimate_memory(vocab_size=1000) == theirs.estimate_memory(vocab_size=1000)


@pytest.mark.parametrize("ns_exponent", [0.75, 0.0, -0.5])
def test_cum_table_matches_gensim(corpus, ns_exponent):
    ours = Word2Vec(min_count=1, ns_exponent=ns_exponent, **SMALL)
    theirs = GensimWord2Vec(min_count=1, ns_exponent=ns_exponent, **SMALL)
    ours.build_vocab(corpus)
    theirs.build_vocab(corpus)
    assert ours.cum_table.dtype == theirs.cum_table.dtype
    assert np.array_equal(ours.cum_table, theirs.cum_table)


def test_reset_from_borrows_the_vocabulary_like_gensim(corpus):
    donor = Word2Vec(corpus, min_count=2, **SMALL)
    model = Word2Vec(vector_size=8, workers=1, seed=5)
    model.reset_from(donor)
    reference = GensimWord2Vec(vector_size=8, workers=1, seed=5)
    reference.reset_from(GensimWord2Vec(corpus, min_count=2, **SMALL))
    assert model.wv.index_to_key == donor.wv.index_to_key == reference.wv.index_to_key
    assert model.corpus_count == reference.corpus_count
    assert model.wv.vectors.shape == model.syn1neg.shape == reference.wv.vectors.shape == (len(donor.wv), 8)
    assert np.all(model.syn1neg == 0) and np.array_equal(model.cum_table, donor.cum_table)
    model.train(corpus, total_examples=model.corpus_count, epochs=1)
    assert np.isfinite(model.wv.vectors).all()


def test_str_matches_gensim(corpus):
    assert str(Word2Vec(corpus, min_count=2, **SMALL)) == str(GensimWord2Vec(corpus, min_count=2, **SMALL))


# ---------------------------------------------------------------- save / load


def test_training_continues_after_load_as_without_saving(corpus, tmp_path):
    """save + load keeps everything the next train() uses: the loaded model trains to the same bits."""
    model = Word2Vec(corpus, min_count=1, compute_loss=True, **SMALL)
    model.save(tmp_path / "model.npz")
    loaded = Word2Vec.load(tmp_path / "model.npz")
    assert str(loaded) == str(model) and loaded.epoch_losses == model.epoch_losses
    for m in (model, loaded):
        m.train(corpus, total_examples=m.corpus_count, epochs=2)
    assert np.array_equal(loaded.wv.vectors, model.wv.vectors) and np.array_equal(loaded.syn1neg, model.syn1neg)
    assert loaded.epoch_losses == model.epoch_losses


class _Payload:
    """Pickling this runs `touch` on load: a file that must never be unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_gensim_pickles_and_other_files_are_refused_clearly(corpus, tmp_path):
    theirs = GensimWord2Vec(corpus, min_count=1, **SMALL)
    theirs.save(str(tmp_path / "gensim.model"), sep_limit=100)  # large arrays beside the pickle, as .npy files
    assert (tmp_path / "gensim.model.wv.vectors.npy").is_file()
    with pytest.raises(ValueError, match=r"gensim\.model: .*pickle.*never unpickled"):
        Word2Vec.load(tmp_path / "gensim.model")
    with pytest.raises(ValueError, match=r"vectors\.npy: .*single numpy array"):
        Word2Vec.load(tmp_path / "gensim.model.wv.vectors.npy")
    marker = tmp_path / "unpickled"
    (tmp_path / "payload.pkl").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ValueError, match="pickle"):
        Word2Vec.load(tmp_path / "payload.pkl")
    assert not marker.exists()


def test_damaged_metadata_and_counts_are_refused(corpus, tmp_path):
    from genai_fast.word2vec.storage import load_arrays, save_arrays

    path = tmp_path / "model.npz"
    Word2Vec(corpus, min_count=1, **SMALL).save(path)
    arrays, meta = load_arrays(path, expect_kind="Word2Vec")
    cases = {
        "no_params": (arrays, {k: v for k, v in meta.items() if k != "params"}, "params"),
        "short_counts": ({**arrays, "attr_count": arrays["attr_count"][:5]}, meta, "count"),
        "negative_counts": ({**arrays, "attr_count": -arrays["attr_count"]}, meta, "count"),
        "unknown_param": (arrays, {**meta, "params": {**meta["params"], "bogus": 1}}, "bogus"),
    }
    for name, (arrs, info, match) in cases.items():
        damaged = tmp_path / f"{name}.npz"
        save_arrays(damaged, arrs, info)
        with pytest.raises(ValueError, match=rf"{name}\.npz: .*{match}"):
            Word2Vec.load(damaged)


# ---------------------------------------------------------------- determinism


def test_workers_1_is_bit_identical_after_an_update(corpus, update_corpus):
    def grown():
        model = Word2Vec(corpus, min_count=1, **SMALL)
        model.build_vocab(update_corpus, update=True)
        model.train(update_corpus, total_examples=model.corpus_count, epochs=2)
        return model

    first, second = grown(), grown()
    assert np.array_equal(first.wv.vectors, second.wv.vectors) and np.array_equal(first.syn1neg, second.syn1neg)
