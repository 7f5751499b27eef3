"""Hierarchical softmax in the GPU word2vec trainers, on the CPU: the Triton kernel under TRITON_INTERPRET=1
and the CUDA kernel in the warp emulator, each on a chunk against a float64 replay with the same windows (and
negatives), and Word2Vec(hs=1)'s GPU code path. See test_word2vec_gpu_kernels.py for the replay's principle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genai_fast.backends import memory
from genai_fast.ops.word2vec_ops import HsTree, hs_step_reference, plan_chunk, word2vec_draws_reference
from genai_fast.testing import assert_matches_oracle
from genai_fast.word2vec.huffman import huffman_tree
from tests.test_word2vec_gpu_kernels import (
    MODE_CODES,
    _cbow_update,
    _chunk,
    _cuda_draw_stride,
    _noise_tables,
    _ptr,
    _sg_update,
    _tables,
    needs_triton,
)


def replay_hs_chunk(syn0, syn1neg, tree: HsTree, plan, shrink, noise, *, mode: str, window: int, negative: int,
                    cbow_mean: bool) -> float:
    """The kernel's order, centre after centre in slice order: the hierarchical-softmax update of every
    context (hs_step_reference), then, with negatives, the negative-sampling update."""
    tokens, alphas = plan.tokens.tolist(), plan.alphas.tolist()
    loss = 0.0
    for lo, hi, sent_lo, sent_hi in plan.bounds.tolist():
        for i in range(lo, hi):
            b = int(shrink[i])
            positions = [j for j in range(max(sent_lo, i - window + b), min(sent_hi, i + window + 1 - b)) if j != i]
            if not positions:
                continue
            centre, alpha, ctx = tokens[i], alphas[i], [tokens[j] for j in positions]
            loss += float(hs_step_reference(syn0, torch.tensor([centre]), torch.tensor([ctx]), tree, alpha, mode,
                                            cbow_mean).sum())
            if not negative:
                continue
            if mode == "sg_pair":
                for j in positions:
                    slot = j - (i - window) - (1 if j > i else 0)
                    loss += _sg_update(syn0, syn1neg, [tokens[j]], centre, noise[i, slot], alpha)
            elif mode == "sg_shared":
                loss += _sg_update(syn0, syn1neg, ctx, centre, noise[i, 0], alpha)
            else:
                loss += _cbow_update(syn0, syn1neg, ctx, centre, noise[i, 0], alpha, cbow_mean)
    return loss


HS_CASES = [("sg_shared", True, 16, 0), ("sg_pair", True, 16, 0), ("cbow", True, 33, 0), ("cbow", False, 16, 0),
            ("sg_shared", True, 33, 3), ("sg_pair", True, 16, 2), ("cbow", True, 16, 3)]
HS_IDS = ["shared-hs", "pair-hs", "cbow-mean-hs-d33", "cbow-sum-hs", "shared-hs+neg-d33", "pair-hs+neg", "cbow-hs+neg"]


@needs_triton
@pytest.mark.parametrize(("mode", "cbow_mean", "dim", "negative"), HS_CASES, ids=HS_IDS)
def test_triton_hs_chunk_matches_float64_replay(mode, cbow_mean, dim, negative):
    from genai_fast.kernels.word2vec import word2vec_train_fwd

    vocab, window, seed = 23, 3, 5
    tokens, offsets = _chunk(vocab, [9, 1, 14], seed=3, unused=1)  # the last word is never a centre
    counts = np.bincount(tokens, minlength=vocab) + 1
    t = huffman_tree(counts)
    prob, alias = _noise_tables(vocab)
    plan = plan_chunk(torch.from_numpy(tokens), torch.from_numpy(offsets), torch.full((vocab,), 0.9), 0.2, 0.05,
                      seed, 5)
    shrink, noise = word2vec_draws_reference(plan.effective_words, prob, alias, mode=mode, window=window,
                                             negative=negative, seed=seed)
    syn0, syn1neg = _tables(vocab, dim)
    syn1 = (torch.rand(vocab, dim, generator=torch.Generator().manual_seed(2)) - 0.5) / 2
    syn1[vocab - 1] = float("nan")  # no inner node: a read of it would poison the results
    points, codes, lengths = (torch.from_numpy(a) for a in (t.points, t.codes, t.lengths))
    ref = [syn0.double(), syn1neg.double(), syn1.double()]
    ref_loss = replay_hs_chunk(ref[0], ref[1], HsTree(ref[2], points, codes, lengths), plan, shrink, noise,
                               mode=mode, window=window, negative=negative, cbow_mean=cbow_mean)
    base = [syn0.clone(), syn1neg.clone(), syn1.clone()]
    replay_hs_chunk(base[0], base[1], HsTree(base[2], points, codes, lengths), plan, shrink, noise, mode=mode,
                    window=window, negative=negative, cbow_mean=cbow_mean)
    out = [syn0.clone(), syn1neg.clone(), syn1.clone()]
    with memory.poison_outputs():
        loss = word2vec_train_fwd(out[0], out[1], plan.tokens, plan.alphas, plan.bounds, torch.from_numpy(prob),
                                  torch.from_numpy(alias), mode=mode, window=window, negative=negative,
                                  cbow_mean=cbow_mean, shrink_windows=True, compute_loss=True, seed=seed,
                                  tree=(out[2], points, codes, lengths))
    assert bool(torch.isnan(out[2][vocab - 1]).all()), "the row of no inner node stays untouched"
    inner = slice(0, vocab - 1)
    assert_matches_oracle(out[0], ref[0], base[0], what=f"triton {mode} syn0")
    assert_matches_oracle(out[2][inner], ref[2][inner], base[2][inner], what=f"triton {mode} syn1 (tree)")
    assert_matches_oracle(out[1], ref[1], base[1], what=f"triton {mode} syn1neg")
    assert float(loss.sum()) == pytest.approx(ref_loss, rel=1e-5)
    assert not torch.equal(out[2][inner], syn1[inner])
    assert torch.equal(out[1], syn1neg) == (negative == 0), "syn1neg trains only with negatives"


@pytest.mark.parametrize(("mode", "cbow_mean", "dim", "negative"), HS_CASES, ids=HS_IDS)
def test_cuda_hs_chunk_emulated_matches_float64_replay(cuda_emulator, mode, cbow_mean, dim, negative):
    """csrc/cuda/word2vec.cu with a Huffman tree, run by the warp emulator: the path update, then the
    negatives, per centre; the table row of no inner node is NaN and must stay untouched."""
    import ctypes

    vocab, window, seed = 23, 3, 5
    tokens, offsets = _chunk(vocab, [9, 1, 14], seed=3, unused=1)
    t = huffman_tree(np.bincount(tokens, minlength=vocab) + 1)
    prob, alias = _noise_tables(vocab)
    plan = plan_chunk(torch.from_numpy(tokens), torch.from_numpy(offsets), torch.full((vocab,), 0.9), 0.2, 0.05,
                      seed, 5)
    shrink, noise = word2vec_draws_reference(plan.effective_words, prob, alias, mode=mode, window=window,
                                             negative=negative, seed=seed)
    syn0, syn1neg = _tables(vocab, dim)
    syn1 = (torch.rand(vocab, dim, generator=torch.Generator().manual_seed(2)) - 0.5) / 2
    syn1[vocab - 1] = float("nan")
    points, codes, lengths = (torch.from_numpy(np.ascontiguousarray(a)) for a in (t.points, t.codes, t.lengths))
    ref = [syn0.double(), syn1neg.double(), syn1.double()]
    ref_loss = replay_hs_chunk(ref[0], ref[1], HsTree(ref[2], points, codes, lengths), plan, shrink, noise,
                               mode=mode, window=window, negative=negative, cbow_mean=cbow_mean)
    base = [syn0.clone(), syn1neg.clone(), syn1.clone()]
    replay_hs_chunk(base[0], base[1], HsTree(base[2], points, codes, lengths), plan, shrink, noise, mode=mode,
                    window=window, negative=negative, cbow_mean=cbow_mean)
    out = [syn0.clone(), syn1neg.clone(), syn1.clone()]
    num_slices = plan.bounds.shape[0]
    loss = torch.full((num_slices,), float("nan"), dtype=torch.float64)
    cuda_emulator.emulate_word2vec_train(
        _ptr(out[0]), _ptr(out[1]), _ptr(plan.tokens), _ptr(plan.alphas), _ptr(plan.bounds),
        _ptr(torch.from_numpy(prob)), _ptr(torch.from_numpy(alias)), _ptr(loss), _ptr(out[2]),
        _ptr(points.to(torch.int32)), _ptr(codes.to(torch.uint8)), _ptr(lengths.to(torch.int32)), num_slices, vocab,
        dim, seed, window, negative, _cuda_draw_stride(mode, window, negative), MODE_CODES[mode], int(cbow_mean), 1,
        1, ctypes.c_int(points.shape[1]), 1)
    assert bool(torch.isfinite(loss).all()), "every warp writes its loss slot"
    assert bool(torch.isnan(out[2][vocab - 1]).all()), "the row of no inner node stays untouched"
    inner = slice(0, vocab - 1)
    assert_matches_oracle(out[0], ref[0], base[0], what=f"cuda {mode} syn0")
    assert_matches_oracle(out[2][inner], ref[2][inner], base[2][inner], what=f"cuda {mode} syn1 (tree)")
    assert_matches_oracle(out[1], ref[1], base[1], what=f"cuda {mode} syn1neg")
    assert float(loss.sum()) == pytest.approx(ref_loss, rel=1e-5)
    assert torch.equal(out[1], syn1neg) == (negative == 0), "syn1neg trains only with negatives"


@needs_triton
def test_word2vec_hs_gpu_path_trains_through_the_triton_kernel(monkeypatch):
    """Word2Vec(hs=1)'s device="cuda" path: syn1 and the tree copied in and syn1 back, with the tables on
    the CPU and the Triton kernel in the interpreter."""
    from genai_fast.ops.word2vec_ops import WORD2VEC_TRAIN
    from genai_fast.word2vec import Word2Vec

    if torch.cuda.is_available():
        pytest.skip("the GPU runs tests/test_gpu_word2vec.py")
    monkeypatch.setattr(Word2Vec, "_gpu_table_device", "cpu")
    monkeypatch.setenv("GENAI_FAST_BACKEND", "triton")
    sentences = [["a", "b", "c", "d", "e"], ["v", "w", "x", "y", "z"], ["a", "a", "b"]] * 2
    model = Word2Vec(vector_size=8, window=2, hs=1, negative=0, min_count=1, sample=0, sg=0, epochs=2, seed=3,
                     device="cpu", compute_loss=True)
    model.build_vocab(sentences)
    model.device = "cuda"
    start = model.wv.vectors.copy()
    model.train(sentences, total_examples=model.corpus_count, epochs=2)
    assert WORD2VEC_TRAIN.last_backend == "triton"
    assert isinstance(model.syn1, np.ndarray) and model.syn1.dtype == np.float32
    assert model.syn1[: len(model.wv) - 1].any() and not model.syn1neg.any()
    assert not np.array_equal(model.wv.vectors, start) and np.isfinite(model.wv.vectors).all()
    assert len(model.epoch_losses) == 2 and all(loss > 0 for loss in model.epoch_losses)
