"""Hierarchical softmax in the GPU word2vec trainers, on the CPU: the Triton kernel under TRITON_INTERPRET=1
and the CUDA kernel in the warp emulator, each on a chunk against a float64 replay with the same windows (and
negatives), and Word2Vec(hs=1)'s GPU code path. See test_word2vec_gpu_kernels.py for the replay's principle."""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

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
    check_lock_factors_kept,
    lock_factors,
    needs_triton,
)


def replay_hs_chunk(syn0, syn1neg, tree: HsTree, plan, shrink, noise, *, mode: str, window: int, negative: int,
                    cbow_mean: bool, lockf=None) -> float:
    """The kernel's order, centre after centre in slice order: the hierarchical-softmax update of every
    context (hs_step_reference), then, with negatives, the negative-sampling update; lockf: [L] lock factors
    of the input rows, or None."""
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
                                            cbow_mean, lockf).sum())
            if not negative:
                continue
            if mode == "sg_pair":
                for j in positions:
                    slot = j - (i - window) - (1 if j > i else 0)
                    loss += _sg_update(syn0, syn1neg, [tokens[j]], centre, noise[i, slot], alpha, lockf)
            elif mode == "sg_shared":
                loss += _sg_update(syn0, syn1neg, ctx, centre, noise[i, 0], alpha, lockf)
            else:
                loss += _cbow_update(syn0, syn1neg, ctx, centre, noise[i, 0], alpha, cbow_mean, lockf)
    return loss


HS_CASES = [("sg_shared", True, 16, 0), ("sg_pair", True, 16, 0), ("cbow", True, 33, 0), ("cbow", False, 16, 0),
            ("sg_shared", True, 33, 3), ("sg_pair", True, 16, 2), ("cbow", True, 16, 3)]
HS_IDS = ["shared-hs", "pair-hs", "cbow-mean-hs-d33", "cbow-sum-hs", "shared-hs+neg-d33", "pair-hs+neg", "cbow-hs+neg"]


class HsChunk(NamedTuple):
    """One hs test case: the chunk plan and its draws, the tables (the tree's syn1 with a NaN row where no
    inner node is), the tree, and the float64 replay (ref, ref_loss) with PyTorch's fp32 one (base)."""

    plan: Any
    prob: np.ndarray
    alias: np.ndarray
    tables: list[torch.Tensor]  # syn0, syn1neg, syn1
    tree: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # points int32, codes uint8, lengths int32
    lockf: torch.Tensor | None
    ref: list[torch.Tensor]
    ref_loss: float
    base: list[torch.Tensor]


VOCAB, WINDOW, SEED = 23, 3, 5


def hs_chunk(mode: str, cbow_mean: bool, dim: int, negative: int, lockf: torch.Tensor | None = None) -> HsChunk:
    tokens, offsets = _chunk(VOCAB, [9, 1, 14], seed=3, unused=1)  # the last word is never a centre
    t = huffman_tree(np.bincount(tokens, minlength=VOCAB) + 1)
    prob, alias = _noise_tables(VOCAB)
    plan = plan_chunk(torch.from_numpy(tokens), torch.from_numpy(offsets), torch.full((VOCAB,), 0.9), 0.2, 0.05,
                      SEED, 5)
    shrink, noise = word2vec_draws_reference(plan.effective_words, prob, alias, mode=mode, window=WINDOW,
                                             negative=negative, seed=SEED)
    syn0, syn1neg = _tables(VOCAB, dim)
    syn1 = (torch.rand(VOCAB, dim, generator=torch.Generator().manual_seed(2)) - 0.5) / 2
    syn1[VOCAB - 1] = float("nan")  # no inner node: a read of it would poison the results
    tree = (torch.from_numpy(t.points).to(torch.int32).contiguous(),
            torch.from_numpy(t.codes).to(torch.uint8).contiguous(),
            torch.from_numpy(t.lengths).to(torch.int32).contiguous())

    def replay(tables: list[torch.Tensor]) -> float:
        return replay_hs_chunk(tables[0], tables[1], HsTree(tables[2], *tree), plan, shrink, noise, mode=mode,
                               window=WINDOW, negative=negative, cbow_mean=cbow_mean, lockf=lockf)

    ref = [syn0.double(), syn1neg.double(), syn1.double()]
    ref_loss = replay(ref)
    base = [syn0.clone(), syn1neg.clone(), syn1.clone()]
    replay(base)
    return HsChunk(plan, prob, alias, [syn0, syn1neg, syn1], tree, lockf, ref, ref_loss, base)


def check_hs_chunk(case: HsChunk, out: list[torch.Tensor], loss: torch.Tensor, negative: int, what: str) -> None:
    assert bool(torch.isfinite(loss).all()), "every program writes its loss slot"
    assert bool(torch.isnan(out[2][VOCAB - 1]).all()), "the row of no inner node stays untouched"
    inner = slice(0, VOCAB - 1)
    assert_matches_oracle(out[0], case.ref[0], case.base[0], what=f"{what} syn0")
    assert_matches_oracle(out[2][inner], case.ref[2][inner], case.base[2][inner], what=f"{what} syn1 (tree)")
    assert_matches_oracle(out[1], case.ref[1], case.base[1], what=f"{what} syn1neg")
    assert float(loss.sum()) == pytest.approx(case.ref_loss, rel=1e-5)
    assert not torch.equal(out[2][inner], case.tables[2][inner])
    assert torch.equal(out[1], case.tables[1]) == (negative == 0), "syn1neg trains only with negatives"
    if case.lockf is not None:
        check_lock_factors_kept(out[0], case.tables[0], case.lockf)


# With lock factors (one per word, cycling 0, 1, 0.5): hs alone and hs beside negatives, each kind of update.
LOCKF_CASES = [HS_CASES[i] for i in (0, 1, 3, 5, 6)]
LOCKF_IDS = [HS_IDS[i] + "-lockf" for i in (0, 1, 3, 5, 6)]


def run_triton_hs(case: HsChunk, mode: str, cbow_mean: bool, negative: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    from genai_fast.kernels.word2vec import word2vec_train_fwd

    out = [t.clone() for t in case.tables]
    plan = case.plan
    with memory.poison_outputs():
        loss = word2vec_train_fwd(out[0], out[1], plan.tokens, plan.alphas, plan.bounds, torch.from_numpy(case.prob),
                                  torch.from_numpy(case.alias), mode=mode, window=WINDOW, negative=negative,
                                  cbow_mean=cbow_mean, shrink_windows=True, compute_loss=True, seed=SEED,
                                  tree=(out[2], *case.tree), lockf=case.lockf)
    return out, loss


@needs_triton
@pytest.mark.parametrize(("mode", "cbow_mean", "dim", "negative"), HS_CASES, ids=HS_IDS)
def test_triton_hs_chunk_matches_float64_replay(mode, cbow_mean, dim, negative):
    case = hs_chunk(mode, cbow_mean, dim, negative)
    out, loss = run_triton_hs(case, mode, cbow_mean, negative)
    check_hs_chunk(case, out, loss, negative, f"triton {mode}")


@needs_triton
@pytest.mark.parametrize(("mode", "cbow_mean", "dim", "negative"), LOCKF_CASES, ids=LOCKF_IDS)
def test_triton_hs_chunk_with_lock_factors_matches_float64_replay(mode, cbow_mean, dim, negative):
    case = hs_chunk(mode, cbow_mean, dim, negative, lock_factors(VOCAB))
    out, loss = run_triton_hs(case, mode, cbow_mean, negative)
    check_hs_chunk(case, out, loss, negative, f"triton {mode} (lock factors)")


def run_cuda_hs(lib: Any, case: HsChunk, mode: str, cbow_mean: bool, negative: int
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
    out = [t.clone() for t in case.tables]
    plan, (points, codes, lengths) = case.plan, case.tree
    num_slices = plan.bounds.shape[0]
    loss = torch.full((num_slices,), float("nan"), dtype=torch.float64)
    lockf = (ctypes.c_void_p(0), 0) if case.lockf is None else (_ptr(case.lockf), case.lockf.numel())
    lib.emulate_word2vec_train(
        _ptr(out[0]), _ptr(out[1]), _ptr(plan.tokens), _ptr(plan.alphas), _ptr(plan.bounds),
        _ptr(torch.from_numpy(case.prob)), _ptr(torch.from_numpy(case.alias)), _ptr(loss), _ptr(out[2]), _ptr(points),
        _ptr(codes), _ptr(lengths), num_slices, VOCAB, out[0].shape[1], SEED, WINDOW, negative,
        _cuda_draw_stride(mode, WINDOW, negative), MODE_CODES[mode], int(cbow_mean), 1, 1, points.shape[1], 1, *lockf)
    return out, loss


@pytest.mark.parametrize(("mode", "cbow_mean", "dim", "negative"), HS_CASES, ids=HS_IDS)
def test_cuda_hs_chunk_emulated_matches_float64_replay(cuda_emulator, mode, cbow_mean, dim, negative):
    """csrc/cuda/word2vec.cu with a Huffman tree, run by the warp emulator: the path update, then the
    negatives, per centre."""
    case = hs_chunk(mode, cbow_mean, dim, negative)
    out, loss = run_cuda_hs(cuda_emulator, case, mode, cbow_mean, negative)
    check_hs_chunk(case, out, loss, negative, f"cuda {mode}")


@pytest.mark.parametrize(("mode", "cbow_mean", "dim", "negative"), LOCKF_CASES, ids=LOCKF_IDS)
def test_cuda_hs_chunk_emulated_with_lock_factors_matches_float64_replay(cuda_emulator, mode, cbow_mean, dim,
                                                                         negative):
    case = hs_chunk(mode, cbow_mean, dim, negative, lock_factors(VOCAB))
    out, loss = run_cuda_hs(cuda_emulator, case, mode, cbow_mean, negative)
    check_hs_chunk(case, out, loss, negative, f"cuda {mode} (lock factors)")


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
