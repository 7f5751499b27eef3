"""Hierarchical softmax (hs=1): gensim's Huffman tree, the C++ kernels against the float64 reference,
validation of the tree before any kernel reads it, and Word2Vec(hs=1) learning, determinism and files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genai_fast.backends.availability import cpp_module
from genai_fast.ops.word2vec_ops import (
    HsTree,
    _cuda_train_check,
    _gpu_train_check,
    _reference_centre,
    hs_step,
    hs_step_reference,
    word2vec_train_chunk,
)
from genai_fast.testing import assert_matches_oracle
from genai_fast.word2vec import Word2Vec
from genai_fast.word2vec.huffman import huffman_tree
from tests.word2vec_data import analogy_file_text, planted_corpus

HAS_CPP = cpp_module()[0] is not None
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="the C++ extension genai_fast._C is not built")


def zipf_counts(vocab: int, seed: int = 0) -> np.ndarray:
    """Descending word counts with many ties (as a real vocabulary's tail has)."""
    rng = np.random.default_rng(seed)
    return np.sort(np.maximum(1, (5000 / np.arange(1, vocab + 1) * rng.uniform(0.8, 1.2, vocab)).astype(int)))[::-1]


# ---------------------------------------------------------------- the tree


def test_huffman_tree_matches_gensim():
    gensim_word2vec = pytest.importorskip("gensim.models.word2vec", reason="gensim is the tree's oracle")
    gensim_kv = pytest.importorskip("gensim.models.keyedvectors")
    counts = zipf_counts(3000)
    kv = gensim_kv.KeyedVectors(4, len(counts))
    kv.index_to_key = [f"w{i}" for i in range(len(counts))]
    kv.key_to_index = {w: i for i, w in enumerate(kv.index_to_key)}
    for i, c in enumerate(counts):
        kv.set_vecattr(i, "count", int(c))
    gensim_word2vec._assign_binary_codes(kv)
    tree = huffman_tree(counts)
    assert len(np.unique(counts)) < len(counts) / 5, "the case must have ties"
    for i in range(len(counts)):
        points, codes = tree.path(i)
        assert np.array_equal(points, kv.get_vecattr(i, "point")), i
        assert np.array_equal(codes, kv.get_vecattr(i, "code")), i


@pytest.mark.parametrize("vocab", [1, 2, 3, 17, 1000])
def test_huffman_tree_is_a_prefix_code_over_the_inner_nodes(vocab):
    counts = zipf_counts(vocab, seed=vocab)
    tree = huffman_tree(counts)
    lengths = tree.lengths
    assert tree.points.shape == tree.codes.shape == (vocab, tree.depth) and lengths.shape == (vocab,)
    if vocab == 1:
        assert tree.depth == 0 and lengths[0] == 0
        return
    assert math.isclose(float(np.sum(2.0 ** -lengths.astype(float))), 1.0)  # a full binary tree (Kraft)
    codes = {"".join(map(str, tree.path(i)[1])) for i in range(vocab)}
    assert len(codes) == vocab and not any(a != b and b.startswith(a) for a in codes for b in codes)
    assert np.all(tree.points[:, 0] == vocab - 2), "every path starts at the root, the last merge"
    used = {int(p) for i in range(vocab) for p in tree.path(i)[0]}
    assert used == set(range(vocab - 1)), "the paths visit exactly the V - 1 inner nodes"
    more_frequent = counts[:, None] > counts[None, :]
    assert not np.any(more_frequent & (lengths[:, None] > lengths[None, :])), "a rarer word never gets a shorter code"


def test_huffman_tree_rejects_empty_counts():
    with pytest.raises(ValueError, match="counts"):
        huffman_tree(np.zeros(0, np.int64))


# ---------------------------------------------------------------- hs_step against the float64 reference


def _tree_tensors(vocab: int, syn1: torch.Tensor, seed: int = 0) -> HsTree:
    t = huffman_tree(zipf_counts(vocab, seed))
    return HsTree(syn1, torch.from_numpy(t.points), torch.from_numpy(t.codes), torch.from_numpy(t.lengths))


def _hs_batch(vocab: int, dim: int, batch: int, contexts: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    syn0 = torch.randn(vocab, dim, generator=g) * 0.3
    syn1 = torch.randn(vocab, dim, generator=g) * 0.3
    centers = torch.randint(0, vocab, (batch,), generator=g)
    ctx = torch.randint(0, vocab, (batch, contexts), generator=g)
    ctx[0, contexts // 2:] = -1  # a short window
    if batch > 2:
        ctx[1, :] = -1           # a centre with no context
        ctx[2, :] = ctx[2, 0]    # one context repeated
    return syn0, syn1, centers, ctx


HS_CASES = [  # (mode, cbow_mean, vocab, dim, batch, contexts): odd dims exercise the vector tails
    pytest.param("sg_shared", True, 60, 100, 10, 8, id="sg-shared-d100"),
    pytest.param("sg_shared", True, 3, 37, 6, 4, id="sg-shared-d37-vocab3"),
    pytest.param("sg_pair", True, 60, 100, 8, 6, id="sg-pair-d100"),
    pytest.param("sg_pair", True, 13, 17, 5, 3, id="sg-pair-d17"),
    pytest.param("cbow", True, 60, 100, 10, 8, id="cbow-mean-d100"),
    pytest.param("cbow", False, 31, 33, 9, 6, id="cbow-sum-d33"),
    pytest.param("sg_shared", True, 40, 1, 6, 2, id="sg-shared-d1"),
    pytest.param("cbow", True, 2, 16, 4, 3, id="cbow-vocab2"),
]


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp), "torch"])
@pytest.mark.parametrize(("mode", "cbow_mean", "vocab", "dim", "batch", "contexts"), HS_CASES)
def test_hs_step_matches_float64_reference(backend, mode, cbow_mean, vocab, dim, batch, contexts):
    syn0, syn1, centers, ctx = _hs_batch(vocab, dim, batch, contexts)
    # Row V-1 of syn1 belongs to no inner node: NaN there shows any read outside the tree.
    syn1[vocab - 1] = float("nan")
    tree = _tree_tensors(vocab, syn1)
    ref0, ref1 = syn0.double(), syn1.double()
    ref_loss = hs_step_reference(ref0, centers, ctx, tree._replace(syn1=ref1), 0.05, mode, cbow_mean)
    base0, base1 = syn0.clone(), syn1.clone()
    hs_step_reference(base0, centers, ctx, tree._replace(syn1=base1), 0.05, mode, cbow_mean)
    out0, out1 = syn0.clone(), syn1.clone()
    loss = hs_step(out0, centers, ctx, tree._replace(syn1=out1), 0.05, mode=mode, cbow_mean=cbow_mean,
                   backend=backend)
    assert torch.isnan(out1[vocab - 1]).all() and torch.isfinite(out1[: vocab - 1]).all()
    assert_matches_oracle(out0, ref0, base0, what=f"{backend} syn0")
    assert_matches_oracle(out1[: vocab - 1], ref1[: vocab - 1], base1[: vocab - 1], what=f"{backend} syn1")
    assert loss.dtype == torch.float64 and loss.shape == (batch,)
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-5), (loss, ref_loss)
    assert not torch.equal(out0, syn0) and not torch.equal(out1[: vocab - 1], syn1[: vocab - 1])


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp), "torch"])
@pytest.mark.parametrize("cyclic", [False, True], ids=["per-word", "cyclic-3"])
@pytest.mark.parametrize(("mode", "cbow_mean", "vocab", "dim", "batch", "contexts"), HS_CASES[:6])
def test_hs_step_with_lock_factors_matches_float64_reference(backend, cyclic, mode, cbow_mean, vocab, dim, batch,
                                                             contexts):
    """gensim's vectors_lockf in hierarchical softmax: each context row's update scaled by lockf[w % L], the
    inner-node rows (syn1) never."""
    syn0, syn1, centers, ctx = _hs_batch(vocab, dim, batch, contexts)
    tree = _tree_tensors(vocab, syn1)
    lockf = torch.tensor([0.5, 0.0, 1.0]) if cyclic else torch.tensor([0.0, 1.0, 0.5] * vocab)[:vocab].contiguous()
    ref0, ref1 = syn0.double(), syn1.double()
    ref_loss = hs_step_reference(ref0, centers, ctx, tree._replace(syn1=ref1), 0.05, mode, cbow_mean, lockf)
    base0, base1 = syn0.clone(), syn1.clone()
    hs_step_reference(base0, centers, ctx, tree._replace(syn1=base1), 0.05, mode, cbow_mean, lockf)
    out0, out1 = syn0.clone(), syn1.clone()
    loss = hs_step(out0, centers, ctx, tree._replace(syn1=out1), 0.05, mode=mode, cbow_mean=cbow_mean, lockf=lockf,
                   backend=backend)
    assert_matches_oracle(out0, ref0, base0, what=f"{backend} syn0 (lock factors)")
    assert_matches_oracle(out1, ref1, base1, what=f"{backend} syn1 (lock factors)")
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    frozen = lockf[torch.arange(vocab) % lockf.numel()] == 0
    assert torch.equal(out0[frozen], syn0[frozen]) and not torch.equal(out0[~frozen], syn0[~frozen])
    assert not torch.equal(out1, syn1)


@needs_cpp
def test_one_word_vocabulary_has_no_path_and_changes_nothing():
    syn0, syn1 = torch.randn(1, 8), torch.randn(1, 8)
    tree = _tree_tensors(1, syn1.clone())
    out0 = syn0.clone()
    loss = hs_step(out0, torch.zeros(3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), tree, 0.1,
                   backend="cpp")
    assert torch.equal(out0, syn0) and torch.equal(tree.syn1, syn1) and torch.all(loss == 0)


@needs_cpp
@pytest.mark.parametrize("mode", ["sg_shared", "sg_pair", "cbow"])
def test_hs_and_negatives_together_match_the_reference_order(mode):
    """hs=1 with negative > 0: each centre's hierarchical-softmax update, then its negative-sampling one
    (skip-gram pair by pair: a context's path, then its negatives), as gensim orders them."""
    from genai_fast.backends.cpp.word2vec import word2vec_step

    vocab, dim, batch, contexts, negative = 40, 24, 6, 4, 3
    syn0, syn1, centers, ctx = _hs_batch(vocab, dim, batch, contexts, seed=5)
    syn1neg = torch.randn(vocab, dim, generator=torch.Generator().manual_seed(9)) * 0.3
    shape = (batch, contexts, negative) if mode == "sg_pair" else (batch, negative)
    negs = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(3))
    tree = _tree_tensors(vocab, syn1)
    ref = (syn0.double(), syn1neg.double(), tree._replace(syn1=syn1.double()))
    ref_loss = []
    for r in range(batch):
        valid = [j for j in range(contexts) if int(ctx[r, j]) >= 0]
        row_negs = negs[r:r + 1, valid] if mode == "sg_pair" else negs[r:r + 1]
        ref_loss.append(_reference_centre(ref, int(centers[r]), [int(ctx[r, j]) for j in valid], row_negs, 0.05,
                                          mode, True) if valid else 0.0)
    out0, out1neg, out1 = syn0.clone(), syn1neg.clone(), syn1.clone()
    loss = word2vec_step(out0, out1neg, centers, ctx, negs, 0.05, mode, True, tree._replace(syn1=out1))
    for got, want in ((out0, ref[0]), (out1neg, ref[1]), (out1, ref[2].syn1)):
        assert torch.allclose(got.double(), want, atol=1e-5), (got.double() - want).abs().max()
    assert torch.allclose(loss, torch.tensor(ref_loss, dtype=torch.float64), rtol=1e-5)


# ---------------------------------------------------------------- validation


def test_hs_step_validation_names_the_argument():
    syn0, syn1, centers, ctx = _hs_batch(20, 8, 3, 2)
    tree = _tree_tensors(20, syn1)
    bad_points = tree.points.clone()
    bad_points[4, 0] = 19  # only 0..18 are inner nodes
    with pytest.raises(ValueError, match=r"hs\.points: value 19"):
        hs_step(syn0, centers, ctx, tree._replace(points=bad_points), 0.1)
    bad_codes = tree.codes.clone()
    bad_codes[0, 0] = 2
    with pytest.raises(ValueError, match=r"hs\.codes"):
        hs_step(syn0, centers, ctx, tree._replace(codes=bad_codes), 0.1)
    with pytest.raises(ValueError, match=r"hs\.lengths"):
        hs_step(syn0, centers, ctx, tree._replace(lengths=tree.lengths + tree.points.shape[1]), 0.1)
    with pytest.raises(ValueError, match=r"hs\.syn1"):
        hs_step(syn0, centers, ctx, tree._replace(syn1=syn1[:5]), 0.1)
    with pytest.raises(ValueError, match="syn1"):
        hs_step(syn0, centers, ctx, tree._replace(syn1=syn1.double()), 0.1)
    with pytest.raises(ValueError, match="contexts: id 20"):
        hs_step(syn0, centers, torch.full_like(ctx, 20), tree, 0.1)
    with pytest.raises(ValueError, match="mode"):
        hs_step(syn0, centers, ctx, tree, 0.1, mode="skipgram")
    with pytest.raises(TypeError, match="hs"):
        hs_step(syn0, centers, ctx, tuple(tree), 0.1)


@needs_cpp
def test_cpp_validates_the_tree_before_reading_it():
    """The C++ entry point checks the tree itself (here bypassing the Python checks)."""
    from genai_fast.backends.cpp.word2vec import word2vec_train

    syn0, syn1neg, ap, ai = _tables()
    t = huffman_tree(zipf_counts(30))
    points = t.points.copy()
    points[0, 0] = 1_000_000
    tokens, offsets = _chunk()
    with pytest.raises(ValueError, match="tree points: id 1000000"):
        word2vec_train(syn0, syn1neg, tokens, offsets, None, ap, ai, 0.05, 0.01, "sg_shared", 3, 0, True, True,
                       False, 1, 1, HsTree(np.zeros_like(syn0), points, t.codes, t.lengths))
    with pytest.raises(ValueError, match="negative"):  # negative 0 needs a tree
        word2vec_train(syn0, syn1neg, tokens, offsets, None, ap, ai, 0.05, 0.01, "sg_shared", 3, 0, True, True,
                       False, 1, 1, None)


def test_train_chunk_checks_hs_and_negative():
    syn0, syn1neg, ap, ai = _tables()
    tokens, offsets = _chunk()
    kwargs = {"mode": "sg_shared", "window": 3}
    with pytest.raises(ValueError, match=r"negative.*hierarchical softmax"):
        word2vec_train_chunk(syn0, syn1neg, tokens, offsets, None, ap, ai, 0.05, 0.01, negative=0, **kwargs)
    t = huffman_tree(zipf_counts(30))
    codes = t.codes.copy()
    codes[3, 0] = 7
    with pytest.raises(ValueError, match=r"hs\.codes: value 7"):
        word2vec_train_chunk(syn0, syn1neg, tokens, offsets, None, ap, ai, 0.05, 0.01, negative=0, **kwargs,
                             hs=HsTree(np.zeros_like(syn0), t.points, codes, t.lengths))
    # Both GPU trainers take hs; the CUDA one stages a whole path per warp in shared memory, so a path
    # too long for it at this width is refused with the reason (and the dispatcher moves on).
    inputs = {"syn0": torch.from_numpy(syn0), "syn1neg": torch.from_numpy(syn1neg), "hs": True, "mode": "cbow",
              "window": 3, "negative": 0, "hs_depth": 20}
    assert not _cuda_train_check(inputs) and not _gpu_train_check(inputs)
    wide = {**inputs, "syn0": torch.zeros(30, 600), "syn1neg": torch.zeros(30, 600), "hs_depth": 40}
    assert any("shared memory" in r for r in _cuda_train_check(wide))


# ---------------------------------------------------------------- the chunk trainer


def _tables(vocab: int = 30, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    syn0 = ((rng.random((vocab, dim), dtype=np.float32) - 0.5) / dim).astype(np.float32)
    return syn0, np.zeros((vocab, dim), np.float32), np.ones(vocab, np.float32), np.arange(vocab, dtype=np.int32)


def _chunk(vocab: int = 30, n: int = 5000, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, n).astype(np.int32), np.arange(0, n + 1, 25, dtype=np.int64)


@needs_cpp
@pytest.mark.parametrize("mode", ["sg_shared", "sg_pair", "cbow"])
@pytest.mark.parametrize("negative", [0, 4])
def test_train_chunk_with_hs_is_deterministic_with_one_worker(mode, negative):
    tokens, offsets = _chunk()
    t = huffman_tree(np.bincount(tokens, minlength=30))
    runs = []
    for seed in (7, 7, 8):
        syn0, syn1neg, ap, ai = _tables()
        syn1 = np.zeros_like(syn0)
        out = word2vec_train_chunk(syn0, syn1neg, tokens, offsets, None, ap, ai, 0.05, 0.01, mode=mode, window=3,
                                   negative=negative, compute_loss=True, seed=seed, workers=1,
                                   hs=HsTree(syn1, t.points, t.codes, t.lengths))
        runs.append((syn0, syn1neg, syn1, out))
    (a0, aneg, a1, out), (b0, bneg, b1, out_b), (c0, *_) = runs
    assert np.array_equal(a0, b0) and np.array_equal(a1, b1) and np.array_equal(aneg, bneg) and out == out_b
    assert out[0] == out[1] == tokens.size and out[2] > 0
    assert np.abs(a1).sum() > 0, "the tree's vectors must train"
    assert (np.abs(aneg).sum() > 0) == (negative > 0), "syn1neg trains only with negative sampling"
    assert not np.array_equal(a0, c0), "another seed must give other vectors"


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp), "torch"])
def test_train_chunk_with_hs_lowers_the_loss(backend):
    """Twenty passes over a chunk with a strong pattern (each word followed by the next): the loss falls."""
    n = 3000
    tokens = (np.arange(n) % 30).astype(np.int32)
    offsets = np.arange(0, n + 1, 30, dtype=np.int64)
    t = huffman_tree(np.bincount(tokens, minlength=30) + np.arange(30))
    syn0, syn1neg, ap, ai = _tables()
    tree = HsTree(np.zeros_like(syn0), t.points, t.codes, t.lengths)
    losses = [word2vec_train_chunk(syn0, syn1neg, tokens, offsets, None, ap, ai, 0.05, 0.05, mode="cbow", window=1,
                                   negative=0, compute_loss=True, seed=epoch, hs=tree, backend=backend)[2]
              for epoch in range(3 if backend == "torch" else 20)]
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------- Word2Vec(hs=1)


@pytest.fixture(scope="module")
def corpus() -> list[list[str]]:
    return planted_corpus()


@pytest.fixture(scope="module")
def analogy_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("w2v_hs") / "analogies.txt"
    path.write_text(analogy_file_text())
    return path


@pytest.mark.parametrize(("sg", "negative"), [(1, 0), (0, 0), (1, 5)], ids=["sg-hs", "cbow-hs", "sg-hs+neg"])
def test_hs_model_learns_the_planted_analogies(corpus, analogy_path, sg, negative):
    model = Word2Vec(corpus, vector_size=32, window=3, min_count=1, sg=sg, hs=1, negative=negative, workers=2,
                     epochs=8, seed=3, sample=0, compute_loss=True)
    score, _ = model.wv.evaluate_word_analogies(analogy_path)
    assert score >= 0.9, f"planted analogies answered {score:.2%}"
    losses = model.epoch_losses  # near the corpus's entropy after one epoch: it falls, but slowly
    assert all(x < losses[0] for x in losses[1:]) and losses[-1] < 0.99 * losses[0], losses
    assert model.device == "cpu" and model.syn1.shape == model.wv.vectors.shape
    assert np.abs(model.syn1[: len(model.wv) - 1]).sum() > 0 and not np.abs(model.syn1[-1]).any()
    assert (np.abs(model.syn1neg).sum() > 0) == (negative > 0)


def test_hs_model_matches_gensims_quality(corpus, analogy_path):
    gensim_models = pytest.importorskip("gensim.models", reason="gensim is the quality oracle")
    params = {"vector_size": 32, "window": 3, "min_count": 1, "sg": 1, "hs": 1, "negative": 0, "workers": 2,
              "epochs": 4, "seed": 3, "sample": 0}
    ours = Word2Vec(corpus, **params)
    theirs = gensim_models.Word2Vec(corpus, **params)
    ours_score = ours.wv.evaluate_word_analogies(analogy_path)[0]
    theirs_score = theirs.wv.evaluate_word_analogies(analogy_path)[0]
    assert ours_score >= theirs_score - 0.05, (ours_score, theirs_score)
    for word in ("city0", "country5"):  # each library's nearest neighbours agree largely
        a = {w for w, _ in ours.wv.most_similar(word, topn=5)}
        b = {w for w, _ in theirs.wv.most_similar(word, topn=5)}
        assert len(a & b) >= 2, (word, a, b)


@needs_cpp
def test_hs_workers_1_and_a_seed_are_bit_identical(corpus):
    runs = [Word2Vec(corpus[:5000], vector_size=16, min_count=1, sg=sg, hs=1, negative=0, workers=1, seed=5,
                     epochs=2) for sg in (1, 1, 0)]
    assert np.array_equal(runs[0].wv.vectors, runs[1].wv.vectors) and np.array_equal(runs[0].syn1, runs[1].syn1)
    assert not np.array_equal(runs[0].wv.vectors, runs[2].wv.vectors)


def test_hs_model_save_load_round_trip_and_more_training(corpus, tmp_path):
    model = Word2Vec(corpus[:5000], vector_size=16, min_count=1, sg=1, hs=1, negative=0, workers=1, seed=5,
                     epochs=1)
    path = tmp_path / "hs.npz"
    model.save(path)
    loaded = Word2Vec.load(path)
    assert loaded.hs == 1 and loaded.negative == 0
    assert np.array_equal(loaded.syn1, model.syn1) and np.array_equal(loaded.wv.vectors, model.wv.vectors)
    assert np.array_equal(loaded.huffman.points, model.huffman.points)
    before = loaded.syn1.copy()
    loaded.train(corpus[:5000], total_examples=loaded.corpus_count, epochs=1)
    assert not np.array_equal(loaded.syn1, before)
    # Vocabulary growth: new rows in syn1 and a tree over the new counts.
    loaded.build_vocab([["brandnew", "words", "here"]] * 3, update=True)
    assert loaded.syn1.shape == loaded.wv.vectors.shape and loaded.huffman.lengths.shape == (len(loaded.wv),)


def test_hs_model_file_without_syn1_is_refused(corpus, tmp_path):
    from genai_fast.word2vec.storage import load_arrays, save_arrays

    model = Word2Vec(corpus[:2000], vector_size=8, min_count=1, hs=1, negative=0, workers=1, epochs=1)
    path = tmp_path / "hs.npz"
    model.save(path)
    arrays, meta = load_arrays(path, expect_kind="Word2Vec")
    del arrays["syn1"]
    save_arrays(path, arrays, meta)
    with pytest.raises(ValueError, match="syn1"):
        Word2Vec.load(path)
