"""gensim's lock factors (`wv.vectors_lockf`) and `KeyedVectors.intersect_word2vec_format`, against gensim 4.4:
frozen words stay bit for bit on every trainer (C++ threads, the torch fallback, the Triton kernel in the
interpreter) while the output layers learn, factors all 1 are the default path bit for bit, pretrained vectors
merged from gensim's files, lock factors in model files, and bad factors refused with the argument named.
(The kernels' arithmetic with factors against the float64 references: test_word2vec_kernels.py,
test_word2vec_hs.py, test_word2vec_gpu_kernels.py, test_word2vec_gpu_hs.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genai_fast.backends.availability import cpp_module
from genai_fast.ops.word2vec_ops import plan_chunk, word2vec_train_chunk
from genai_fast.testing import assert_matches_oracle
from genai_fast.word2vec import KeyedVectors, Word2Vec, Word2VecFormatError
from tests.test_cuda_review import w2v_emulated  # noqa: F401  (the CUDA launcher on the warp emulator)
from tests.test_word2vec_gpu_kernels import (
    _chunk,
    _noise_tables,
    _tables,
    check_lock_factors_kept,
    lock_factors,
    replay_planned,
)
from tests.word2vec_data import planted_corpus

gensim = pytest.importorskip("gensim", reason="gensim 4.4 is the compatibility oracle (pip install -e '.[test]')")
from gensim.models import KeyedVectors as GensimKeyedVectors  # noqa: E402
from gensim.models import Word2Vec as GensimWord2Vec  # noqa: E402

needs_cpp = pytest.mark.skipif(cpp_module()[0] is None, reason="the C++ extension genai_fast._C is not built")

# (id, gensim's parameters, ours only): every kind of update the trainers have.
CONFIGS = [
    pytest.param(dict(sg=1), dict(shared_negatives=True), id="sg-shared-negatives"),
    pytest.param(dict(sg=1), dict(shared_negatives=False), id="sg-pairs"),
    pytest.param(dict(sg=0, cbow_mean=1), {}, id="cbow-mean"),
    pytest.param(dict(sg=0, cbow_mean=0), {}, id="cbow-sum"),
    pytest.param(dict(sg=1, hs=1, negative=0), {}, id="sg-hs"),
    pytest.param(dict(sg=0, hs=1, negative=3), {}, id="cbow-hs+negatives"),
]


@pytest.fixture(scope="module")
def corpus() -> list[list[str]]:
    return planted_corpus(1500, seed=3)


def _built(library: str, corpus: list[list[str]], params: dict, ours: dict | None = None, workers: int = 1):
    """A model of `library` ("ours" or "gensim") with its vocabulary built, not trained yet."""
    common = dict(vector_size=16, window=3, min_count=1, seed=7, workers=workers, epochs=2, **params)
    model = GensimWord2Vec(**common) if library == "gensim" else Word2Vec(**common, **(ours or {}), device="cpu")
    model.build_vocab(corpus)
    return model


def _output_tables(model) -> list[np.ndarray]:
    """Copies of the output layers the model trains: syn1neg with negatives, syn1 with hierarchical softmax."""
    return [t.copy() for t, used in ((getattr(model, "syn1neg", None), model.negative),
                                     (getattr(model, "syn1", None), model.hs)) if used]


def _train(model, corpus) -> None:
    model.train(corpus, total_examples=model.corpus_count, epochs=model.epochs)


def _mixed_factors(vocab: int) -> np.ndarray:
    """One factor per word, cycling 0, 1, 0.5."""
    return np.resize(np.array([0.0, 1.0, 0.5], np.float32), vocab)


# ---------------------------------------------------------------- training honours the factors, as gensim's does


@needs_cpp
@pytest.mark.parametrize("library", ["ours", "ours-2-threads", "gensim"])
@pytest.mark.parametrize(("params", "ours"), CONFIGS)
def test_zero_lock_factors_freeze_every_input_vector(corpus, params, ours, library):
    model = _built(library.split("-")[0], corpus, params, ours, workers=2 if "threads" in library else 1)
    model.wv.vectors_lockf = np.zeros(len(model.wv), dtype=np.float32)
    vectors, outputs = model.wv.vectors.copy(), _output_tables(model)
    _train(model, corpus)
    assert np.array_equal(model.wv.vectors, vectors), "lock factors 0 must leave wv.vectors bit for bit"
    assert all(not np.array_equal(after, before) for after, before in zip(_output_tables(model), outputs,
                                                                          strict=True)), "outputs must learn"


@needs_cpp
@pytest.mark.parametrize("library", ["ours", "ours-2-threads", "gensim"])
@pytest.mark.parametrize(("params", "ours"), CONFIGS)
def test_mixed_lock_factors_freeze_exactly_the_zero_rows(corpus, params, ours, library):
    model = _built(library.split("-")[0], corpus, params, ours, workers=2 if "threads" in library else 1)
    factors = _mixed_factors(len(model.wv))
    model.wv.vectors_lockf = factors
    vectors = model.wv.vectors.copy()
    _train(model, corpus)
    moved = (model.wv.vectors != vectors).any(axis=1)
    assert not moved[factors == 0].any(), "rows with factor 0 must stay bit for bit"
    assert moved[factors == 1].all() and moved[factors == 0.5].all(), "rows with factors 1 and 0.5 must train"


@needs_cpp
def test_half_factors_damp_the_updates_like_gensim(corpus):
    """Factor 0.5 against 1 (every word the same factor): the vectors move less, by about as much in both
    libraries (different random streams, so a statistic, not bits)."""
    ratios = {}
    for library in ("ours", "gensim"):
        moves = []
        for factor in (1.0, 0.5):
            model = _built(library, corpus, dict(sg=1))
            model.wv.vectors_lockf = np.array([factor], np.float32)
            start = model.wv.vectors.copy()
            _train(model, corpus)
            moves.append(float(np.linalg.norm(model.wv.vectors - start)))
        ratios[library] = moves[1] / moves[0]
    assert 0.3 < ratios["ours"] < 0.8 and abs(ratios["ours"] - ratios["gensim"]) < 0.1, ratios


@needs_cpp
@pytest.mark.parametrize(("params", "ours"), CONFIGS)
def test_all_one_factors_are_the_default_path_bit_for_bit(corpus, params, ours):
    """workers=1 and a seed: factors all 1 (one per word, or the default np.ones(1)) give the vectors of the
    unscaled path bit for bit (the kernels take it whenever every factor is 1)."""
    runs = []
    for factors in (None, np.ones(len(_built("ours", corpus, params, ours).wv), np.float32), [1.0, 1.0]):
        model = _built("ours", corpus, params, ours)
        if factors is not None:
            model.wv.vectors_lockf = np.asarray(factors, np.float32)
        _train(model, corpus)
        runs.append([model.wv.vectors, *_output_tables(model)])
    for run in runs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(runs[0], run, strict=True))


def test_torch_fallback_honours_lock_factors(monkeypatch):
    """GENAI_FAST_BACKEND=torch: the reference trainer freezes the rows with factor 0 too."""
    from genai_fast.ops.word2vec_ops import WORD2VEC_TRAIN

    monkeypatch.setenv("GENAI_FAST_BACKEND", "torch")
    sentences = [["a", "b", "c", "d", "e"], ["v", "w", "x", "y", "z"]] * 2
    for hs, negative in ((0, 2), (1, 0)):
        model = Word2Vec(vector_size=8, window=2, negative=negative, hs=hs, min_count=1, sample=0, sg=1, epochs=1,
                         seed=3, workers=1, device="cpu")
        model.build_vocab(sentences)
        factors = _mixed_factors(len(model.wv))
        model.wv.vectors_lockf = factors
        start = model.wv.vectors.copy()
        _train(model, sentences)
        assert WORD2VEC_TRAIN.last_backend == "torch"
        moved = (model.wv.vectors != start).any(axis=1)
        assert not moved[factors == 0].any() and moved[factors != 0].all()


@pytest.mark.parametrize(("sg", "hs", "negative"), [(1, 0, 2), (0, 1, 2)], ids=["sg", "cbow-hs+negatives"])
def test_triton_trainer_honours_lock_factors(monkeypatch, sg, hs, negative):
    """Word2Vec's device="cuda" path through the Triton kernel (in the interpreter, tables on the CPU): the lock
    factors are copied to the tables' device and frozen rows come back bit for bit."""
    from genai_fast.backends.availability import triton_interpreter_enabled, triton_module
    from genai_fast.ops.word2vec_ops import WORD2VEC_TRAIN

    if triton_module()[0] is None or torch.cuda.is_available() or not triton_interpreter_enabled():
        pytest.skip("needs Triton's interpreter on a CPU machine (the GPU runs tests/test_gpu_word2vec.py)")
    monkeypatch.setattr(Word2Vec, "_gpu_table_device", "cpu")
    monkeypatch.setenv("GENAI_FAST_BACKEND", "triton")
    sentences = [["a", "b", "c", "d", "e"], ["v", "w", "x", "y", "z"], ["a", "z", "c"]] * 2
    model = Word2Vec(vector_size=8, window=2, negative=negative, hs=hs, min_count=1, sample=0, sg=sg, epochs=2,
                     seed=3, device="cpu")
    model.build_vocab(sentences)
    model.device = "cuda"
    factors = _mixed_factors(len(model.wv))
    model.wv.vectors_lockf = factors
    start, outputs = model.wv.vectors.copy(), _output_tables(model)
    _train(model, sentences)
    assert WORD2VEC_TRAIN.last_backend == "triton"
    moved = (model.wv.vectors != start).any(axis=1)
    assert not moved[factors == 0].any() and moved[factors != 0].all()
    assert all(not np.array_equal(a, b) for a, b in zip(_output_tables(model), outputs, strict=True))


@needs_cpp
def test_growing_the_vocabulary_trains_the_new_words(corpus):
    """build_vocab(update=True) with one factor per word: new words get factor 1 (departure from gensim, which
    would give them an unrelated old word's factor), and the frozen old words stay frozen."""
    model = _built("ours", corpus, dict(sg=1))
    old = len(model.wv)
    model.wv.vectors_lockf = np.zeros(old, np.float32)
    extra = [["brandnew", "novel", "city1", "fresh"]] * 40
    model.build_vocab(extra, update=True)
    assert len(model.wv) == old + 3
    assert np.array_equal(model.wv.vectors_lockf, np.r_[np.zeros(old), np.ones(3)].astype(np.float32))
    start = model.wv.vectors.copy()
    model.train(extra, total_examples=len(extra), epochs=1)
    assert np.array_equal(model.wv.vectors[:old], start[:old]) and (model.wv.vectors[old:] != start[old:]).all()


@needs_cpp
@pytest.mark.parametrize(("factors", "error", "match"), [
    (np.array(["0", "1"]), TypeError, r"wv\.vectors_lockf: expected real lock factors"),
    (np.zeros(0, np.float32), ValueError, r"wv\.vectors_lockf: expected a 1-D array of at least one"),
    (np.zeros((2, 3), np.float32), ValueError, r"wv\.vectors_lockf: expected a 1-D array"),
    (np.array([0.0, np.nan], np.float32), ValueError, r"wv\.vectors_lockf: expected finite lock factors"),
], ids=["strings", "empty", "2d", "nan"])
def test_bad_vectors_lockf_is_refused_before_training(corpus, factors, error, match):
    model = _built("ours", corpus, dict(sg=1))
    model.wv.vectors_lockf = factors
    start = model.wv.vectors.copy()
    with pytest.raises(error, match=match):
        _train(model, corpus)
    assert np.array_equal(model.wv.vectors, start)


@needs_cpp
def test_float64_factors_are_converted_at_the_model_level(corpus):
    """np.zeros(len(wv)) is float64; the model converts real factors to float32 (the ops refuse them)."""
    model = _built("ours", corpus, dict(sg=0))
    model.wv.vectors_lockf = np.zeros(len(model.wv))
    start = model.wv.vectors.copy()
    _train(model, corpus)
    assert np.array_equal(model.wv.vectors, start)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp), "torch", "triton"])
def test_train_chunk_rejects_bad_lock_factors_before_touching_memory(backend):
    from genai_fast.backends.availability import triton_interpreter_enabled, triton_module

    if backend == "triton" and (triton_module()[0] is None or not triton_interpreter_enabled()):
        pytest.skip("forcing the triton backend on CPU tensors needs TRITON_INTERPRET=1")
    vocab = 12
    rng = np.random.default_rng(0)
    syn0, syn1 = torch.rand(vocab, 8) - 0.5, torch.zeros(vocab, 8)
    tokens, offsets = rng.integers(0, vocab, 40).astype(np.int32), np.array([0, 20, 40], np.int64)
    prob, alias = np.ones(vocab, np.float32), np.arange(vocab, dtype=np.int32)
    before = syn0.clone()
    bad = [(np.zeros(vocab), TypeError, "lockf: expected float32"),
           (torch.zeros(vocab, dtype=torch.float16), TypeError, "lockf: expected float32"),
           ("zeros", TypeError, "lockf: expected a float32 numpy array or torch.Tensor"),
           (torch.zeros(3, 4), ValueError, "lockf: expected a 1-D array"),
           (np.zeros(0, np.float32), ValueError, "lockf: expected a 1-D array of at least one lock factor"),
           (np.zeros(2 * vocab, np.float32)[::2], ValueError, "lockf: expected a contiguous array"),
           (torch.zeros(vocab, device="meta"), ValueError, "lockf: expected lock factors on the tables' device cpu")]
    for lockf, error, match in bad:
        with pytest.raises(error, match=match):
            word2vec_train_chunk(syn0, syn1, tokens, offsets, None, prob, alias, 0.1, 0.1, mode="sg_shared",
                                 window=2, negative=2, lockf=lockf, backend=backend)
    assert torch.equal(syn0, before) and not syn1.any(), "rejected calls must not touch the tables"


@pytest.mark.parametrize("as_numpy", [True, False], ids=["numpy", "tensor"])
def test_train_chunk_on_the_triton_backend_takes_numpy_or_tensor_factors(as_numpy):
    """word2vec_train_chunk(backend="triton") on CPU tables (the interpreter): lock factors as a numpy array
    or a tensor; all 0 leave syn0 bit for bit while syn1neg learns."""
    from genai_fast.backends.availability import triton_interpreter_enabled, triton_module

    if triton_module()[0] is None or not triton_interpreter_enabled():
        pytest.skip("forcing the triton backend on CPU tensors needs TRITON_INTERPRET=1")
    vocab = 12
    syn0, syn1 = _tables(vocab, 8)
    tokens, offsets = _chunk(vocab, [7, 5])
    prob, alias = _noise_tables(vocab)
    start = syn0.clone()
    lockf = np.zeros(1, np.float32) if as_numpy else torch.zeros(1)
    word2vec_train_chunk(syn0, syn1, tokens, offsets, None, prob, alias, 0.1, 0.1, mode="sg_shared", window=2,
                         negative=2, seed=1, lockf=lockf, backend="triton")
    assert torch.equal(syn0, start) and not torch.equal(syn1, _tables(vocab, 8)[1])


@pytest.mark.parametrize("mode", ["sg_shared", "cbow"])
def test_cuda_launcher_passes_lock_factors_to_the_kernel(w2v_emulated, mode):  # noqa: F811
    """genai_fast.backends.cuda.word2vec packs lockf's pointer and length; the kernel (in the warp emulator)
    scales by them like the float64 replay."""
    from genai_fast.backends.cuda import word2vec as launcher

    vocab, dim, window, negative, seed = 29, 24, 3, 4, 2**33 + 7
    tokens, offsets = _chunk(vocab, [23, 1, 17], seed=4)
    prob, alias = _noise_tables(vocab)
    plan = plan_chunk(torch.from_numpy(tokens), torch.from_numpy(offsets), torch.full((vocab,), 0.9), 0.2, 0.05,
                      seed, slice_tokens=5)
    syn0, syn1 = _tables(vocab, dim)
    lockf = lock_factors(vocab)
    ref0, ref1, ref_loss, base0, base1 = replay_planned(syn0, syn1, plan, prob, alias, mode=mode, window=window,
                                                        negative=negative, seed=seed, lockf=lockf)
    out0, out1 = syn0.clone(), syn1.clone()
    loss = launcher.word2vec_train_fwd(out0, out1, plan.tokens, plan.alphas, plan.bounds, torch.from_numpy(prob),
                                       torch.from_numpy(alias), mode=mode, window=window, negative=negative,
                                       cbow_mean=True, shrink_windows=True, compute_loss=True, seed=seed, lockf=lockf)
    assert_matches_oracle(out0, ref0, base0, what=f"cuda launcher {mode} syn0 (lock factors)")
    assert_matches_oracle(out1, ref1, base1, what=f"cuda launcher {mode} syn1neg (lock factors)")
    assert float(loss.sum()) == pytest.approx(ref_loss, rel=1e-5)
    check_lock_factors_kept(out0, syn0, lockf)


# ---------------------------------------------------------------- intersect_word2vec_format


@pytest.fixture(scope="module")
def pretrained(corpus) -> GensimWord2Vec:
    """gensim vectors over part of our vocabulary plus words we do not have."""
    theirs = [s for s in corpus if "city0" not in s] + [["zz1", "zz2", "country3", "zz3"]] * 5
    return GensimWord2Vec(theirs, vector_size=16, window=3, min_count=1, seed=11, workers=1, epochs=1)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_intersect_takes_gensim_vectors_for_known_words_only(corpus, pretrained, tmp_path, binary):
    path = tmp_path / ("pre.bin" if binary else "pre.txt")
    pretrained.wv.save_word2vec_format(str(path), binary=binary)
    ours = corpus + [["ourword", "city1", "ourword", "p1a"]] * 3
    model = Word2Vec(vector_size=16, window=3, min_count=1, seed=7, workers=1, device="cpu")
    model.build_vocab(ours)
    keys = model.wv.index_to_key
    before = model.wv.vectors.copy()
    shared = [k for k in keys if k in pretrained.wv.key_to_index]
    assert "city0" not in shared and "ourword" not in shared and len(shared) > 20

    merged = model.wv.intersect_word2vec_format(path, binary=binary)

    assert merged == len(shared) and len(model.wv) == len(keys) and "zz1" not in model.wv
    rows = [model.wv.key_to_index[k] for k in shared]
    assert np.array_equal(model.wv.vectors[rows], pretrained.wv[shared]), "exact float32 values from the file"
    others = np.setdiff1d(np.arange(len(keys)), rows)
    assert np.array_equal(model.wv.vectors[others], before[others])
    expected = np.ones(len(keys), np.float32)
    expected[rows] = 0.0
    assert model.wv.vectors_lockf.dtype == np.float32 and np.array_equal(model.wv.vectors_lockf, expected)

    if not binary:  # gensim 4.4's binary branch calls np.fromstring, which numpy 2 removed
        # gensim's own intersect on the same starting vectors (its factors sized first: gensim 4 would IndexError)
        theirs = GensimKeyedVectors(16)
        theirs.add_vectors(keys, before)
        theirs.vectors_lockf = np.ones(len(keys), np.float32)
        theirs.intersect_word2vec_format(str(path), binary=binary)
        assert np.array_equal(theirs.vectors, model.wv.vectors)
        assert np.array_equal(theirs.vectors_lockf, model.wv.vectors_lockf)

    # fine-tuning keeps the pretrained words as the file had them, and trains the rest
    _train(model, ours)
    assert np.array_equal(model.wv.vectors[rows], pretrained.wv[shared])
    assert (model.wv.vectors[others] != before[others]).any(axis=1).all()


def test_intersect_with_lockf_one_and_short_factors(corpus, pretrained, tmp_path):
    path = tmp_path / "pre.txt"
    pretrained.wv.save_word2vec_format(str(path))
    model = Word2Vec(vector_size=16, window=3, min_count=1, seed=7, workers=1, device="cpu")
    model.build_vocab(corpus)
    model.wv.vectors_lockf = np.array([0.0, 0.5], np.float32)  # cyclic: even rows frozen, odd damped
    model.wv.intersect_word2vec_format(path, lockf=1.0)
    rows = np.array([model.wv.key_to_index[k] for k in model.wv.index_to_key if k in pretrained.wv.key_to_index])
    expected = np.resize(np.array([0.0, 0.5], np.float32), len(model.wv))
    expected[rows] = 1.0
    assert np.array_equal(model.wv.vectors_lockf, expected), "short factors spread cyclically, then set"
    with pytest.raises(ValueError, match="lockf: expected a finite number"):
        model.wv.intersect_word2vec_format(path, lockf=float("nan"))


def test_intersect_keeps_gensim_order_for_a_repeated_word(tmp_path):
    """A word listed twice takes its last vector, as gensim's sequential merge does; unknown words are skipped."""
    path = tmp_path / "dup.txt"
    path.write_text("4 2\nb 1 2\nnope 9 9\nb 3 4\na 5 6\n", encoding="utf-8")
    ours = KeyedVectors(2)
    ours.add_vectors(["a", "b", "c"], np.zeros((3, 2), np.float32))
    theirs = GensimKeyedVectors(2)
    theirs.add_vectors(["a", "b", "c"], np.zeros((3, 2), np.float32))
    theirs.vectors_lockf = np.ones(3, np.float32)
    assert ours.intersect_word2vec_format(path, lockf=0.25) == 2
    theirs.intersect_word2vec_format(str(path), lockf=0.25)
    assert np.array_equal(ours.vectors, theirs.vectors) and np.array_equal(ours.vectors_lockf, theirs.vectors_lockf)
    assert ours.vectors[1].tolist() == [3.0, 4.0]


def test_intersect_refuses_a_size_mismatch_and_damaged_files(corpus, pretrained, tmp_path):
    model = Word2Vec(vector_size=12, min_count=1, seed=7, workers=1, device="cpu")
    model.build_vocab(corpus)
    before, factors = model.wv.vectors.copy(), model.wv.vectors_lockf.copy()
    text, binary = tmp_path / "pre.txt", tmp_path / "pre.bin"
    pretrained.wv.save_word2vec_format(str(text))
    pretrained.wv.save_word2vec_format(str(binary), binary=True)
    with pytest.raises(ValueError, match=r"pre\.txt: holds vectors of size 16, but these vectors have size 12"):
        model.wv.intersect_word2vec_format(text)

    model16 = Word2Vec(vector_size=16, min_count=1, seed=7, workers=1, device="cpu")
    model16.build_vocab(corpus)
    before16 = model16.wv.vectors.copy()
    lines = text.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.txt"
    cut.write_bytes(b"".join(lines[:-3]))
    with pytest.raises(Word2VecFormatError, match=r"cut\.txt: line \d+: unexpected end of file"):
        model16.wv.intersect_word2vec_format(cut)
    garbled = tmp_path / "garbled.txt"
    garbled.write_bytes(b"".join(lines[:4]) + lines[4].replace(b" ", b" x", 1) + b"".join(lines[5:]))
    with pytest.raises(Word2VecFormatError, match=r"garbled\.txt: line 5"):
        model16.wv.intersect_word2vec_format(garbled)
    short = tmp_path / "short.bin"
    short.write_bytes(binary.read_bytes()[:-10])
    with pytest.raises(Word2VecFormatError, match=r"short\.bin: byte offset \d+"):
        model16.wv.intersect_word2vec_format(short, binary=True)
    assert np.array_equal(model.wv.vectors, before) and np.array_equal(model.wv.vectors_lockf, factors)
    assert np.array_equal(model16.wv.vectors, before16), "a damaged file changes nothing"
    assert np.array_equal(model16.wv.vectors_lockf, np.ones(1, np.float32))


# ---------------------------------------------------------------- model files


@needs_cpp
def test_model_files_keep_lock_factors(corpus, tmp_path):
    model = _built("ours", corpus, dict(sg=1))
    plain = tmp_path / "plain.npz"
    model.save(plain)
    with np.load(plain) as npz:
        assert "vectors_lockf" not in npz.files, "the default is not stored (files stay as before)"
    assert np.array_equal(Word2Vec.load(plain).wv.vectors_lockf, np.ones(1, np.float32))

    model.wv.vectors_lockf = _mixed_factors(len(model.wv))
    locked = tmp_path / "locked.npz"
    model.save(locked)
    loaded = Word2Vec.load(locked)
    assert loaded.wv.vectors_lockf.dtype == np.float32
    assert np.array_equal(loaded.wv.vectors_lockf, model.wv.vectors_lockf)
    start = loaded.wv.vectors.copy()
    _train(loaded, corpus)  # the loaded factors take effect
    frozen = model.wv.vectors_lockf == 0
    assert np.array_equal(loaded.wv.vectors[frozen], start[frozen]) and not np.array_equal(loaded.wv.vectors, start)

    kv_path = tmp_path / "kv.npz"
    model.wv.save(kv_path)
    assert np.array_equal(KeyedVectors.load(kv_path).vectors_lockf, model.wv.vectors_lockf)


def test_damaged_lock_factors_in_a_model_file_are_named(corpus, tmp_path):
    from genai_fast.word2vec.storage import load_arrays, save_arrays

    model = Word2Vec(vector_size=8, min_count=1, seed=7, workers=1, device="cpu")
    model.build_vocab(corpus)
    good = tmp_path / "good.npz"
    model.save(good)
    arrays, meta = load_arrays(good, expect_kind="Word2Vec")
    bad = tmp_path / "bad.npz"
    save_arrays(bad, {**arrays, "vectors_lockf": np.zeros((2, 2), np.float32)}, meta)
    with pytest.raises(ValueError, match=r"bad\.npz: not a valid Word2Vec file: vectors_lockf: expected a 1-D"):
        Word2Vec.load(bad)
