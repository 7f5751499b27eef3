"""SGNS kernels: each backend's arithmetic against the float64 reference on fixed batches (with and without
gensim's lock factors), and the C++ kernels' validation (bad ids, sizes, lock factors) before any memory is
touched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genai_fast.backends.availability import cpp_module
from genai_fast.backends.dispatch import BackendNotSupportedError
from genai_fast.ops.word2vec_ops import cbow_step, sgns_step, word2vec_step_reference, word2vec_train_chunk
from genai_fast.testing import assert_matches_oracle

HAS_CPP = cpp_module()[0] is not None
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="the C++ extension genai_fast._C is not built")

# (mode, cbow_mean, vocab, dim, batch, contexts, negative): odd dims exercise the vector tails.
CASES = [
    pytest.param("sg_shared", True, 50, 100, 12, 10, 5, id="sg-shared-d100"),
    pytest.param("sg_shared", True, 7, 37, 9, 4, 3, id="sg-shared-d37-tiny-vocab"),
    pytest.param("sg_pair", True, 50, 100, 8, 6, 5, id="sg-pair-d100"),
    pytest.param("sg_pair", True, 13, 17, 5, 3, 2, id="sg-pair-d17"),
    pytest.param("cbow", True, 50, 100, 12, 10, 5, id="cbow-mean-d100"),
    pytest.param("cbow", False, 31, 33, 10, 6, 4, id="cbow-sum-d33"),
    pytest.param("sg_shared", True, 40, 1, 6, 2, 1, id="sg-shared-d1"),
]


def _batch(mode: str, vocab: int, dim: int, batch: int, contexts: int, negative: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    syn0 = torch.randn(vocab, dim, generator=g) * 0.3
    syn1 = torch.randn(vocab, dim, generator=g) * 0.3
    centers = torch.randint(0, vocab, (batch,), generator=g)
    ctx = torch.randint(0, vocab, (batch, contexts), generator=g)
    ctx[0, contexts // 2:] = -1          # a short window
    if batch > 2:
        ctx[1, :] = -1                   # a centre with no context at all
    shape = (batch, contexts, negative) if mode == "sg_pair" else (batch, negative)
    negs = torch.randint(0, vocab, shape, generator=g)
    negs[-1, ..., 0] = centers[-1]       # a negative equal to the centre is skipped
    if negative > 1:
        negs[-1, ..., 1] = negs[-1, ..., -1]  # duplicate negatives
    return syn0, syn1, centers, ctx, negs


def _run(backend: str | None, mode: str, cbow_mean: bool, syn0, syn1, centers, ctx, negs, alpha=0.05, lockf=None):
    if mode == "cbow":
        return cbow_step(syn0, syn1, centers, ctx, negs, alpha, cbow_mean=cbow_mean, lockf=lockf, backend=backend)
    return sgns_step(syn0, syn1, centers, ctx, negs, alpha, shared_negatives=mode == "sg_shared", lockf=lockf,
                     backend=backend)


def lock_factors(kind: str, vocab: int) -> torch.Tensor:
    """gensim-style lock factors: "per-word" (one per word, cycling 0, 1, 0.5: frozen, trained, damped) or
    "cyclic" (three factors read as lockf[w % 3], gensim's rule for a short array)."""
    if kind == "cyclic":
        return torch.tensor([1.0, 0.0, 0.25])
    return torch.tensor([0.0, 1.0, 0.5] * vocab)[:vocab].contiguous()


def frozen_rows(lockf: torch.Tensor, vocab: int) -> torch.Tensor:
    """[V] bool: the rows whose lock factor is 0."""
    return lockf[torch.arange(vocab) % lockf.numel()] == 0


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp), "torch"])
@pytest.mark.parametrize(("mode", "cbow_mean", "vocab", "dim", "batch", "contexts", "negative"), CASES)
def test_step_matches_float64_reference(backend, mode, cbow_mean, vocab, dim, batch, contexts, negative):
    syn0, syn1, centers, ctx, negs = _batch(mode, vocab, dim, batch, contexts, negative)
    ref0, ref1 = syn0.double(), syn1.double()
    ref_loss = word2vec_step_reference(ref0, ref1, centers, ctx, negs, 0.05, mode, cbow_mean)
    base0, base1 = syn0.clone(), syn1.clone()  # PyTorch's own float32 error sets the budget
    base_loss = word2vec_step_reference(base0, base1, centers, ctx, negs, 0.05, mode, cbow_mean)
    out0, out1 = syn0.clone(), syn1.clone()
    loss = _run(backend, mode, cbow_mean, out0, out1, centers, ctx, negs)
    assert_matches_oracle(out0, ref0, base0, what=f"{backend} syn0")
    assert_matches_oracle(out1, ref1, base1, what=f"{backend} syn1neg")
    assert loss.dtype == torch.float64 and loss.shape == (batch,)
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-5), (loss, ref_loss, base_loss)
    assert not torch.equal(out0, syn0), "the step must update syn0"


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp), "torch"])
@pytest.mark.parametrize("kind", ["per-word", "cyclic"])
@pytest.mark.parametrize(("mode", "cbow_mean", "vocab", "dim", "batch", "contexts", "negative"), CASES[:6])
def test_step_with_lock_factors_matches_float64_reference(backend, kind, mode, cbow_mean, vocab, dim, batch, contexts,
                                                          negative):
    """Each input row's update scaled by its lock factor (0 freezes it bit for bit); outputs unscaled."""
    syn0, syn1, centers, ctx, negs = _batch(mode, vocab, dim, batch, contexts, negative)
    lockf = lock_factors(kind, vocab)
    ref0, ref1 = syn0.double(), syn1.double()
    ref_loss = word2vec_step_reference(ref0, ref1, centers, ctx, negs, 0.05, mode, cbow_mean, lockf)
    base0, base1 = syn0.clone(), syn1.clone()
    word2vec_step_reference(base0, base1, centers, ctx, negs, 0.05, mode, cbow_mean, lockf)
    out0, out1 = syn0.clone(), syn1.clone()
    loss = _run(backend, mode, cbow_mean, out0, out1, centers, ctx, negs, lockf=lockf)
    assert_matches_oracle(out0, ref0, base0, what=f"{backend} {kind} syn0")
    assert_matches_oracle(out1, ref1, base1, what=f"{backend} {kind} syn1neg")
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    frozen = frozen_rows(lockf, vocab)
    assert torch.equal(out0[frozen], syn0[frozen]), "a lock factor 0 must leave the row bit for bit"
    assert not torch.equal(out0[~frozen], syn0[~frozen]) and not torch.equal(out1, syn1)
    unlocked0, unlocked1 = syn0.clone(), syn1.clone()  # the same batch without factors lands elsewhere
    _run(backend, mode, cbow_mean, unlocked0, unlocked1, centers, ctx, negs)
    assert not torch.equal(unlocked0, out0)


@needs_cpp
@pytest.mark.parametrize(("mode", "cbow_mean", "vocab", "dim", "batch", "contexts", "negative"), CASES)
def test_step_with_all_ones_is_bit_identical_to_no_lock_factors(mode, cbow_mean, vocab, dim, batch, contexts,
                                                                negative):
    syn0, syn1, centers, ctx, negs = _batch(mode, vocab, dim, batch, contexts, negative)
    plain0, plain1 = syn0.clone(), syn1.clone()
    plain_loss = _run("cpp", mode, cbow_mean, plain0, plain1, centers, ctx, negs)
    ones0, ones1 = syn0.clone(), syn1.clone()
    ones_loss = _run("cpp", mode, cbow_mean, ones0, ones1, centers, ctx, negs, lockf=torch.ones(vocab))
    assert torch.equal(ones0, plain0) and torch.equal(ones1, plain1) and torch.equal(ones_loss, plain_loss)


@needs_cpp
def test_step_rows_without_context_change_nothing():
    syn0, syn1, centers, ctx, negs = _batch("cbow", 20, 8, 3, 4, 2)
    ctx[:] = -1
    a, b = syn0.clone(), syn1.clone()
    loss = cbow_step(a, b, centers, ctx, negs, 0.1, backend="cpp")
    assert torch.equal(a, syn0) and torch.equal(b, syn1) and torch.all(loss == 0)


def test_step_validation_names_the_argument():
    syn0, syn1, centers, ctx, negs = _batch("sg_shared", 10, 4, 3, 2, 2)
    bad = ctx.clone()
    bad[0, 0] = 10
    with pytest.raises(ValueError, match="contexts: id 10 is outside"):
        sgns_step(syn0, syn1, centers, bad, negs, 0.1)
    with pytest.raises(ValueError, match="centers"):
        sgns_step(syn0, syn1, centers - 5, ctx, negs, 0.1)
    with pytest.raises(ValueError, match="negatives"):
        sgns_step(syn0, syn1, centers, ctx, negs, 0.1, shared_negatives=False)  # needs [B, C, K]
    with pytest.raises(TypeError, match="contexts"):
        sgns_step(syn0, syn1, centers, ctx.float(), negs, 0.1)
    with pytest.raises(ValueError, match="syn1neg"):
        sgns_step(syn0, syn1[:5], centers, ctx, negs, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        sgns_step(syn0, syn1, centers, ctx, negs, float("nan"))
    with pytest.raises(BackendNotSupportedError, match="cpp"):
        sgns_step(syn0.double(), syn1.double(), centers, ctx, negs, 0.1, backend="cpp")


@pytest.mark.parametrize(("lockf", "error", "match"), [
    (torch.ones(10, dtype=torch.float64), TypeError, "lockf: expected float32"),
    (np.ones(10, np.float16), TypeError, "lockf: expected float32"),
    ([1.0] * 10, TypeError, "lockf: expected a float32 numpy array or torch.Tensor"),
    (torch.ones(2, 5), ValueError, r"lockf: expected a 1-D array .* shape \(2, 5\)"),
    (torch.ones(0), ValueError, r"lockf: expected a 1-D array of at least one lock factor"),
    (torch.ones(20)[::2], ValueError, "lockf: expected a contiguous array"),
    (torch.ones(10, device="meta"), ValueError, "lockf: expected lock factors on the tables' device cpu, got meta"),
], ids=["float64", "float16", "list", "2d", "empty", "strided", "other-device"])
@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp), "torch"])
def test_step_rejects_bad_lock_factors_before_touching_memory(backend, lockf, error, match):
    syn0, syn1, centers, ctx, negs = _batch("sg_shared", 10, 4, 3, 2, 2)
    before0, before1 = syn0.clone(), syn1.clone()
    with pytest.raises(error, match=match):
        sgns_step(syn0, syn1, centers, ctx, negs, 0.1, lockf=lockf, backend=backend)
    with pytest.raises(error, match=match):
        cbow_step(syn0, syn1, centers, ctx, negs, 0.1, lockf=lockf, backend=backend)
    assert torch.equal(syn0, before0) and torch.equal(syn1, before1)


@needs_cpp
def test_cpp_launchers_and_entry_points_reject_bad_lock_factors():
    """The launcher (backends/cpp/word2vec.py) checks what the op checks; the _C entry point itself refuses a
    lock-factor table with no element or no data, before any thread starts."""
    from genai_fast.backends.cpp.word2vec import word2vec_step as cpp_step
    from genai_fast.backends.cpp.word2vec import word2vec_train as cpp_train

    syn0, syn1, centers, ctx, negs = _batch("cbow", 10, 4, 3, 2, 2)
    before = syn0.clone()
    with pytest.raises(TypeError, match="lockf: expected float32"):
        cpp_step(syn0, syn1, centers, ctx, negs, 0.1, "cbow", True, lockf=torch.ones(10, dtype=torch.float64))
    n0, n1, ap, ai = _tables(10, 4)
    tokens, offsets = _chunk(10, 5000)
    args = (n0, n1, tokens, offsets, None, ap, ai, 0.05, 0.01, "sg_shared", 3, 2, True, True, False, 1, 1)
    with pytest.raises(ValueError, match="lockf: expected a contiguous array"):
        cpp_train(*args, lockf=np.ones(20, np.float32)[::2])
    C = cpp_module()[0]

    def raw_train(lockf: int, lockf_numel: int) -> None:
        C.word2vec_train(tokens.ctypes.data, tokens.size, offsets.ctypes.data, offsets.size, n0.ctypes.data, n0.size,
                         n1.ctypes.data, n1.size, 10, 4, 0, 0, ap.ctypes.data, ai.ctypes.data, 10, 0.05, 0.01, 1, 3, 2,
                         True, True, False, 1, 1, lockf=lockf, lockf_numel=lockf_numel)

    factors = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="lockf: expected at least one lock factor, got 0"):
        raw_train(factors.ctypes.data, 0)
    with pytest.raises(ValueError, match="lockf: null data pointer"):
        raw_train(0, 10)
    assert torch.equal(syn0, before) and not n1.any(), "rejected calls must not touch the tables"
    raw_train(factors.ctypes.data, factors.size)  # all frozen: the inputs stay, the outputs learn
    assert np.array_equal(n0, _tables(10, 4)[0]) and n1.any()


# ---------------------------------------------------------------- the chunk trainer (C++)


def _tables(vocab: int = 30, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    syn0 = ((rng.random((vocab, dim), dtype=np.float32) - 0.5) / dim).astype(np.float32)
    syn1 = np.zeros((vocab, dim), np.float32)
    alias_prob = np.ones(vocab, np.float32)
    alias_index = np.arange(vocab, dtype=np.int32)
    return syn0, syn1, alias_prob, alias_index


def _chunk(vocab: int = 30, n: int = 5000, seed: int = 1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, n).astype(np.int32)
    offsets = np.arange(0, n + 1, 25, dtype=np.int64)
    return tokens, offsets


@needs_cpp
@pytest.mark.parametrize("mode", ["sg_shared", "sg_pair", "cbow"])
def test_train_chunk_is_deterministic_with_one_worker(mode):
    tokens, offsets = _chunk()
    results = []
    for _ in range(2):
        syn0, syn1, ap, ai = _tables()
        keep = np.full(30, 0.7, np.float32)
        raw, eff, loss = word2vec_train_chunk(syn0, syn1, tokens, offsets, keep, ap, ai, 0.05, 0.01, mode=mode,
                                              window=3, negative=4, compute_loss=True, seed=7, workers=1)
        results.append((syn0, syn1, raw, eff, loss))
    (a0, a1, raw, eff, loss), (b0, b1, *rest) = results
    assert np.array_equal(a0, b0) and np.array_equal(a1, b1) and (raw, eff, loss) == tuple(rest)
    assert raw == tokens.size and 0.6 * raw < eff < 0.8 * raw and loss > 0
    syn0, syn1, ap, ai = _tables()
    word2vec_train_chunk(syn0, syn1, tokens, offsets, None, ap, ai, 0.05, 0.01, mode=mode, window=3, negative=4,
                         seed=8, workers=1)
    assert not np.array_equal(syn0, a0), "another seed must give other vectors"


@needs_cpp
def test_train_chunk_rejects_bad_input_before_touching_memory():
    syn0, syn1, ap, ai = _tables()
    before = syn0.copy()
    tokens, offsets = _chunk()
    bad = tokens.copy()
    bad[4321] = 30
    kwargs = {"mode": "sg_shared", "window": 3, "negative": 2, "workers": 2}
    with pytest.raises(ValueError, match=r"tokens: id 30 at index 4321 is outside \[0, vocab_size=30\)"):
        word2vec_train_chunk(syn0, syn1, bad, offsets, None, ap, ai, 0.05, 0.01, **kwargs)
    bad_offsets = offsets.copy()
    bad_offsets[-1] += 1
    with pytest.raises(ValueError, match="offsets"):
        word2vec_train_chunk(syn0, syn1, tokens, bad_offsets, None, ap, ai, 0.05, 0.01, **kwargs)
    bad_offsets = offsets.copy()
    bad_offsets[5], bad_offsets[6] = bad_offsets[6], bad_offsets[5]
    with pytest.raises(ValueError, match="non-decreasing"):
        word2vec_train_chunk(syn0, syn1, tokens, bad_offsets, None, ap, ai, 0.05, 0.01, **kwargs)
    bad_alias = ai.copy()
    bad_alias[3] = -1
    with pytest.raises(ValueError, match="alias_index"):
        word2vec_train_chunk(syn0, syn1, tokens, offsets, None, ap, bad_alias, 0.05, 0.01, **kwargs)
    with pytest.raises(ValueError, match="keep_prob"):
        word2vec_train_chunk(syn0, syn1, tokens, offsets, np.ones(29, np.float32), ap, ai, 0.05, 0.01, **kwargs)
    with pytest.raises(ValueError, match="syn1neg"):
        word2vec_train_chunk(syn0, syn1[:10].copy(), tokens, offsets, None, ap, ai, 0.05, 0.01, **kwargs)
    with pytest.raises(ValueError, match="window"):
        word2vec_train_chunk(syn0, syn1, tokens, offsets, None, ap, ai, 0.05, 0.01,
                             **{**kwargs, "window": 0})
    with pytest.raises(ValueError, match="tokens"):
        word2vec_train_chunk(syn0, syn1, tokens.astype(np.int64), offsets, None, ap, ai, 0.05, 0.01, **kwargs)
    assert np.array_equal(syn0, before) and not syn1.any(), "rejected calls must not touch the tables"


@needs_cpp
@pytest.mark.parametrize("hs", [False, True], ids=["ns", "hs+ns"])
@pytest.mark.parametrize("mode", ["sg_shared", "sg_pair", "cbow"])
def test_train_chunk_lock_factors_ones_zeros_and_mix(mode, hs):
    """One worker and a seed: factors all 1 give the same bits as none; all 0 leave syn0 bit for bit while the
    output tables learn; a mix freezes exactly the rows whose factor is 0."""
    from genai_fast.ops.word2vec_ops import HsTree
    from genai_fast.word2vec.huffman import huffman_tree

    vocab = 30
    tokens, offsets = _chunk(vocab, 3000)

    def train(lockf):
        syn0, syn1, ap, ai = _tables(vocab)
        tree = None
        if hs:
            t = huffman_tree(np.bincount(tokens, minlength=vocab) + 1)
            tree = HsTree(np.zeros_like(syn0), t.points, t.codes, t.lengths)
        word2vec_train_chunk(syn0, syn1, tokens, offsets, np.full(vocab, 0.8, np.float32), ap, ai, 0.05, 0.01,
                             mode=mode, window=3, negative=3, seed=7, workers=1, hs=tree, lockf=lockf)
        return syn0, syn1, None if tree is None else tree.syn1

    start = _tables(vocab)[0]
    plain = train(None)
    ones = train(np.ones(vocab, np.float32))
    assert all(np.array_equal(a, b) for a, b in zip(plain[:2], ones[:2], strict=True))
    assert not hs or np.array_equal(plain[2], ones[2])
    frozen = train(np.zeros(1, np.float32))
    assert np.array_equal(frozen[0], start) and frozen[1].any() and (not hs or frozen[2].any())
    mix = lock_factors("per-word", vocab).numpy()
    mixed = train(mix)
    assert np.array_equal(mixed[0][mix == 0], start[mix == 0])
    assert (mixed[0][mix != 0] != start[mix != 0]).any(axis=1).all(), "every trained row must move"


def test_train_chunk_torch_fallback_learns():
    tokens, offsets = _chunk(n=600)
    syn0, syn1, ap, ai = _tables()
    raw, eff, loss = word2vec_train_chunk(syn0, syn1, tokens, offsets, None, ap, ai, 0.05, 0.01, mode="sg_shared",
                                          window=2, negative=2, compute_loss=True, seed=3, workers=1,
                                          backend="torch")
    assert raw == eff == 600 and loss > 0 and syn1.any()
