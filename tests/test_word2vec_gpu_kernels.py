"""The GPU word2vec trainer's pieces on the CPU: the Triton kernel under TRITON_INTERPRET=1 (forced
backend="triton"), the device-side chunk plan, the counter-based random stream, and input validation.

The kernel's draws are a pure function of (seed, kept index, slot), reproduced here in numpy
(`word2vec_draws_reference`), so a chunk run by the kernel can be replayed by a float64 reference
with the same windows and negatives and compared element by element (tolerance rule of DESIGN.md).
Under the interpreter the programs run one after another in slice order, so the replay is exact in
order too. The interpreter is slow (tens of ms per centre): chunks here are a few dozen tokens.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genai_fast.backends import memory
from genai_fast.backends.availability import triton_interpreter_enabled, triton_module
from genai_fast.backends.cpp.word2vec import MODE_CODES
from genai_fast.backends.dispatch import BackendNotSupportedError
from genai_fast.ops.word2vec_ops import (
    ChunkPlan,
    philox4x32,
    plan_chunk,
    word2vec_draws_reference,
    word2vec_train_chunk,
)
from genai_fast.testing import assert_matches_oracle
from genai_fast.word2vec.model import alias_table

needs_triton = pytest.mark.skipif(
    triton_module()[0] is None or not (torch.cuda.is_available() or triton_interpreter_enabled()),
    reason="needs Triton with a GPU or TRITON_INTERPRET=1",
)


# ---------------------------------------------------------------- float64 replay of the kernel


def _lock(err, rows, lockf):
    """err [n, D] of input rows `rows` [n] scaled by their lock factors lockf[row % L] (None: err itself)."""
    if lockf is None:
        return err
    return err * lockf.to(err.dtype)[rows % lockf.numel()][:, None]


def _sg_update(syn0, syn1, ctx: list[int], centre: int, negs, alpha: float, lockf=None) -> float:
    """All contexts against one target set, every score from the rows before the update."""
    targets = torch.tensor([centre, *[int(n) for n in negs]])
    valid = torch.ones(len(targets), dtype=syn0.dtype)
    valid[1:] = (targets[1:] != centre).to(syn0.dtype)
    labels = torch.zeros(len(targets), dtype=syn0.dtype)
    labels[0] = 1.0
    rows = torch.tensor(ctx)
    inp, out = syn0[rows], syn1[targets]
    f = inp @ out.T
    g = (labels - torch.sigmoid(f)) * alpha * valid
    syn1.index_add_(0, targets, g.T @ inp)
    syn0.index_add_(0, rows, _lock(g @ out, rows, lockf))
    signed = torch.where(labels.bool(), -f, f)
    return float((F.softplus(signed.double()) * valid.double()).sum())


def _cbow_update(syn0, syn1, ctx: list[int], centre: int, negs, alpha: float, cbow_mean: bool, lockf=None) -> float:
    targets = torch.tensor([centre, *[int(n) for n in negs]])
    valid = torch.ones(len(targets), dtype=syn0.dtype)
    valid[1:] = (targets[1:] != centre).to(syn0.dtype)
    labels = torch.zeros(len(targets), dtype=syn0.dtype)
    labels[0] = 1.0
    rows = torch.tensor(ctx)
    h = syn0[rows].sum(0) / (len(ctx) if cbow_mean else 1)
    out = syn1[targets]
    f = out @ h
    g = (labels - torch.sigmoid(f)) * alpha * valid
    err = (g @ out) / (1 if cbow_mean else len(ctx))
    syn1.index_add_(0, targets, g[:, None] * h[None, :])
    syn0.index_add_(0, rows, _lock(err.expand(len(ctx), -1), rows, lockf).contiguous())
    signed = torch.where(labels.bool(), -f, f)
    return float((F.softplus(signed.double()) * valid.double()).sum())


def replay_chunk(syn0, syn1, plan: ChunkPlan, shrink, noise, *, mode: str, window: int, cbow_mean: bool = True,
                 shrink_windows: bool = True, lockf=None) -> float:
    """The kernel's arithmetic, centre after centre in slice order, in syn0's dtype (in place); lockf: [L] lock
    factors scaling each input row's updates, or None."""
    tokens, alphas = plan.tokens.tolist(), plan.alphas.tolist()
    loss = 0.0
    for lo, hi, sent_lo, sent_hi in plan.bounds.tolist():
        for i in range(lo, hi):
            b = int(shrink[i]) if shrink_windows else 0
            positions = [j for j in range(max(sent_lo, i - window + b), min(sent_hi, i + window + 1 - b)) if j != i]
            if not positions:
                continue
            centre, alpha = tokens[i], alphas[i]
            if mode == "sg_pair":
                for j in positions:
                    slot = j - (i - window) - (1 if j > i else 0)
                    loss += _sg_update(syn0, syn1, [tokens[j]], centre, noise[i, slot], alpha, lockf)
            elif mode == "sg_shared":
                loss += _sg_update(syn0, syn1, [tokens[j] for j in positions], centre, noise[i, 0], alpha, lockf)
            else:
                loss += _cbow_update(syn0, syn1, [tokens[j] for j in positions], centre, noise[i, 0], alpha,
                                     cbow_mean, lockf)
    return loss


def replay_oracle(syn0, syn1, plan: ChunkPlan, shrink, noise, *, mode: str, window: int, cbow_mean: bool = True,
                  lockf=None):
    """The float64 replay of a chunk from copies of (syn0, syn1) (the oracle), and the same replay in float32
    (which sets the error budget of the tolerance rule): (ref0, ref1, ref_loss, base0, base1)."""
    ref0, ref1 = syn0.double(), syn1.double()
    ref_loss = replay_chunk(ref0, ref1, plan, shrink, noise, mode=mode, window=window, cbow_mean=cbow_mean,
                            lockf=lockf)
    base0, base1 = syn0.clone(), syn1.clone()
    replay_chunk(base0, base1, plan, shrink, noise, mode=mode, window=window, cbow_mean=cbow_mean, lockf=lockf)
    return ref0, ref1, ref_loss, base0, base1


def replay_planned(syn0, syn1, plan: ChunkPlan, prob, alias, *, mode: str, window: int, negative: int, seed: int,
                   cbow_mean: bool = True, lockf=None):
    """replay_oracle of a planned chunk with the draws its seed gives (the numpy stream every kernel reproduces)."""
    shrink, noise = word2vec_draws_reference(plan.effective_words, prob, alias, mode=mode, window=window,
                                             negative=negative, seed=seed)
    return replay_oracle(syn0, syn1, plan, shrink, noise, mode=mode, window=window, cbow_mean=cbow_mean, lockf=lockf)


def lock_factors(vocab: int) -> torch.Tensor:
    """Per-word lock factors cycling 0, 1, 0.5 (frozen, trained, damped), float32 [V]."""
    return torch.tensor([0.0, 1.0, 0.5] * vocab)[:vocab].contiguous()


def check_lock_factors_kept(out0: torch.Tensor, syn0: torch.Tensor, lockf: torch.Tensor) -> None:
    """Rows whose factor is 0 are bit for bit as before; the others moved."""
    frozen = lockf[torch.arange(syn0.shape[0]) % lockf.numel()] == 0
    assert torch.equal(out0[frozen], syn0[frozen]), "a lock factor 0 must leave the row bit for bit"
    assert not torch.equal(out0[~frozen], syn0[~frozen])


def _noise_tables(vocab: int, unused: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Zipf-like noise over the first vocab - unused words; the last `unused` words are never drawn."""
    weights = np.arange(vocab, 0, -1, dtype=np.float64) ** 0.75
    if unused:
        weights[-unused:] = 0.0
    return alias_table(weights)


def _chunk(vocab: int, lengths: list[int], seed: int = 0, unused: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab - unused, sum(lengths)).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return tokens, offsets


def _tables(vocab: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(vocab, dim, generator=g) - 0.5) / 2, (torch.rand(vocab, dim, generator=g) - 0.5) / 2


# ---------------------------------------------------------------- the random stream


def test_numpy_philox_matches_the_published_test_vector():
    # Random123's known-answer test for Philox4x32-10: counter 0, key 0.
    out = philox4x32(0, np.array([0], dtype=np.uint64))
    assert [int(x[0]) for x in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@needs_triton
@pytest.mark.parametrize(("mode", "seed"), [("sg_shared", 1), ("sg_pair", 2**40 + 5)], ids=["shared-seed1",
                                                                                        "pair-seed-2^40"])
def test_triton_draws_match_the_numpy_stream(mode, seed):
    from genai_fast.kernels.word2vec import word2vec_draws

    prob, alias = _noise_tables(37)
    shrink, noise = word2vec_draws(12, torch.from_numpy(prob), torch.from_numpy(alias), mode=mode, window=3,
                                   negative=4, seed=seed)
    ref_shrink, ref_noise = word2vec_draws_reference(12, prob, alias, mode=mode, window=3, negative=4, seed=seed)
    assert np.array_equal(shrink.cpu().numpy(), ref_shrink)
    assert np.array_equal(noise.cpu().numpy(), ref_noise)
    assert 0 <= ref_shrink.min() and ref_shrink.max() < 3 and 0 <= ref_noise.min() and ref_noise.max() < 37


def test_noise_draws_follow_the_alias_distribution():
    weights = np.array([8.0, 4.0, 2.0, 1.0, 1.0, 0.0])
    prob, alias = alias_table(weights)
    _, noise = word2vec_draws_reference(4000, prob, alias, mode="sg_shared", window=5, negative=5, seed=9)
    freq = np.bincount(noise.reshape(-1), minlength=6) / noise.size
    assert np.abs(freq - weights / weights.sum()).max() < 0.01
    assert freq[5] == 0.0


# ---------------------------------------------------------------- compiled for a GPU, without one

_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from genai_fast.kernels import word2vec as w
sig = {"syn0_ptr": "*fp32", "syn1_ptr": "*fp32", "tokens_ptr": "*i32", "alphas_ptr": "*fp32", "bounds_ptr": "*i32",
       "prob_ptr": "*fp32", "alias_ptr": "*i32", "loss_ptr": "*fp64", "tree_syn1_ptr": "*fp32", "points_ptr": "*i32",
       "codes_ptr": "*u8", "lengths_ptr": "*i32", "depth": "i32", "lockf_ptr": "*fp32", "lockf_len": "i32",
       "V": "i32", "D": "i32", "seed": "i64", "window": "i32", "negative": "i32", "draw_stride": "i32"}
for mode in (0, 1, 2):
    for hs, ns in ((False, True), (True, False), (True, True)):  # negative sampling, hierarchical softmax, both
        consts = {"MODE": mode, "CBOW_MEAN": mode == 2, "SHRINK": True, "COMPUTE_LOSS": True, "HS": hs, "NS": ns,
                  "LOCKF": hs == ns, "BLOCK_C": 16, "BLOCK_K": 16, "BLOCK_D": 128, "BLOCK_L": 32}
        src = ASTSource(fn=w._word2vec_train_kernel, signature={**sig, **{k: "constexpr" for k in consts}},
                        constexprs=consts)
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert kernel.asm["cubin"], (mode, hs, ns)
print("compiled")
"""


@pytest.mark.skipif(triton_module()[0] is None, reason="needs Triton")
def test_triton_trainer_compiles_for_sm90_without_a_gpu():
    """The interpreter does not type-check like the compiler does: compile every mode for an H100
    (Triton's own ptxas, no driver needed) in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True, text=True, env=env,
                            timeout=300)
    if result.returncode != 0 and "ptxas" in result.stderr and "not found" in result.stderr.lower():
        pytest.skip("Triton's ptxas is not available")
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]


# ---------------------------------------------------------------- the chunk plan (torch, any device)


def test_plan_subsamples_compacts_and_slices_within_sentences():
    vocab = 20
    tokens, offsets = _chunk(vocab, [7, 0, 1, 40, 13])
    keep = torch.full((vocab,), 0.6)
    keep[3] = 1.0
    plan = plan_chunk(torch.from_numpy(tokens), torch.from_numpy(offsets), keep, 0.05, 0.01, seed=4,
                      slice_tokens=6)
    assert plan.raw_words == 61 and plan.effective_words == plan.tokens.numel()
    assert 0.4 * 61 < plan.effective_words < 0.85 * 61
    assert (torch.from_numpy(tokens) == 3).sum() == (plan.tokens == 3).sum(), "keep_prob 1 keeps every token"
    lo, hi, sent_lo, sent_hi = plan.bounds.long().unbind(1)
    assert bool(((hi - lo) <= 6).all() and (hi > lo).all()), "slices are non-empty and at most slice_tokens"
    assert bool(((sent_lo <= lo) & (hi <= sent_hi)).all()), "a slice stays inside its sentence"
    covered = torch.cat([torch.arange(a, b) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)])
    assert torch.equal(covered, torch.arange(plan.effective_words)), "every kept token is a centre once"
    assert bool((plan.alphas[1:] <= plan.alphas[:-1]).all()) and 0.01 <= float(plan.alphas.min())
    again = plan_chunk(torch.from_numpy(tokens), torch.from_numpy(offsets), keep, 0.05, 0.01, seed=4,
                       slice_tokens=6)
    assert torch.equal(again.tokens, plan.tokens) and torch.equal(again.bounds, plan.bounds)
    full = plan_chunk(torch.from_numpy(tokens), torch.from_numpy(offsets), None, 0.05, 0.05, seed=4)
    assert full.effective_words == 61 and torch.equal(full.tokens, torch.from_numpy(tokens))
    assert full.bounds.shape[0] == 4, "an empty sentence gets no slice"


# ---------------------------------------------------------------- the Triton kernel vs the replay

# (mode, cbow_mean, vocab, dim, sentence lengths, window, negative, slice_tokens)
REPLAY_CASES = [
    pytest.param("sg_shared", True, 23, 20, [9, 1, 0, 11], 2, 3, 4, id="sg-shared-d20-sliced"),
    pytest.param("sg_pair", True, 17, 9, [9, 6], 2, 2, 4, id="sg-pair-d9"),
    pytest.param("cbow", True, 23, 33, [9, 6], 3, 3, 64, id="cbow-mean-d33"),
    pytest.param("cbow", False, 11, 16, [8, 2], 2, 4, 3, id="cbow-sum-d16-tiny-vocab"),
]


@needs_triton
@pytest.mark.parametrize(("mode", "cbow_mean", "vocab", "dim", "lengths", "window", "negative", "slice_tokens"),
                         REPLAY_CASES)
def test_triton_chunk_matches_float64_replay(mode, cbow_mean, vocab, dim, lengths, window, negative, slice_tokens):
    from genai_fast.kernels.word2vec import word2vec_train_fwd

    tokens, offsets = _chunk(vocab, lengths, seed=vocab)
    prob, alias = _noise_tables(vocab)
    keep = torch.full((vocab,), 0.8)
    seed = 11
    plan = plan_chunk(torch.from_numpy(tokens), torch.from_numpy(offsets), keep, 0.2, 0.05, seed, slice_tokens)
    syn0, syn1 = _tables(vocab, dim)
    ref0, ref1, ref_loss, base0, base1 = replay_planned(syn0, syn1, plan, prob, alias, mode=mode, window=window,
                                                        negative=negative, seed=seed, cbow_mean=cbow_mean)
    out0, out1 = syn0.clone(), syn1.clone()
    with memory.poison_outputs():
        loss = word2vec_train_fwd(out0, out1, plan.tokens, plan.alphas, plan.bounds, torch.from_numpy(prob),
                                  torch.from_numpy(alias), mode=mode, window=window, negative=negative,
                                  cbow_mean=cbow_mean, shrink_windows=True, compute_loss=True, seed=seed)
    assert loss.dtype == torch.float64 and loss.shape == (plan.bounds.shape[0],)
    assert bool(torch.isfinite(loss).all()), "every program writes its loss slot"
    assert_matches_oracle(out0, ref0, base0, what=f"triton {mode} syn0")
    assert_matches_oracle(out1, ref1, base1, what=f"triton {mode} syn1neg")
    assert float(loss.sum()) == pytest.approx(ref_loss, rel=1e-5)
    assert not torch.equal(out0, syn0) and not torch.equal(out1, syn1)


@needs_triton
@pytest.mark.parametrize(("mode", "cbow_mean", "vocab", "dim", "lengths", "window", "negative", "slice_tokens"),
                         [REPLAY_CASES[0], REPLAY_CASES[1], REPLAY_CASES[3]])
def test_triton_chunk_with_lock_factors_matches_float64_replay(mode, cbow_mean, vocab, dim, lengths, window, negative,
                                                               slice_tokens):
    """LOCKF=True: each input row's updates scaled by its lock factor (0: the row is never written)."""
    from genai_fast.kernels.word2vec import word2vec_train_fwd

    tokens, offsets = _chunk(vocab, lengths, seed=vocab)
    prob, alias = _noise_tables(vocab)
    seed, lockf = 11, lock_factors(vocab)
    plan = plan_chunk(torch.from_numpy(tokens), torch.from_numpy(offsets), torch.full((vocab,), 0.8), 0.2, 0.05, seed,
                      slice_tokens)
    syn0, syn1 = _tables(vocab, dim)
    ref0, ref1, ref_loss, base0, base1 = replay_planned(syn0, syn1, plan, prob, alias, mode=mode, window=window,
                                                        negative=negative, seed=seed, cbow_mean=cbow_mean,
                                                        lockf=lockf)
    out0, out1 = syn0.clone(), syn1.clone()
    loss = word2vec_train_fwd(out0, out1, plan.tokens, plan.alphas, plan.bounds, torch.from_numpy(prob),
                              torch.from_numpy(alias), mode=mode, window=window, negative=negative,
                              cbow_mean=cbow_mean, shrink_windows=True, compute_loss=True, seed=seed, lockf=lockf)
    assert_matches_oracle(out0, ref0, base0, what=f"triton {mode} syn0 (lock factors)")
    assert_matches_oracle(out1, ref1, base1, what=f"triton {mode} syn1neg (lock factors)")
    assert float(loss.sum()) == pytest.approx(ref_loss, rel=1e-5)
    check_lock_factors_kept(out0, syn0, lockf)


# ---------------------------------------------------------------- the CUDA kernel, emulated on the CPU

def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    assert t.is_contiguous()
    return ctypes.c_void_p(t.data_ptr())


def _cuda_draw_stride(mode: str, window: int, negative: int) -> int:
    return 1 + (2 * window if mode == "sg_pair" else 1) * negative


@pytest.mark.parametrize(("mode", "window", "negative"), [("sg_shared", 3, 4), ("sg_pair", 3, 4), ("cbow", 17, 33)],
                         ids=["shared", "pair", "cbow-w17-n33"])
def test_cuda_draws_match_the_numpy_stream(cuda_emulator, mode, window, negative):
    prob, alias = _noise_tables(37)
    sets = 2 * window if mode == "sg_pair" else 1
    shrink = torch.empty(40, dtype=torch.int32)
    noise = torch.empty(40, sets, negative, dtype=torch.int32)
    seed = 2**40 + 5
    cuda_emulator.emulate_word2vec_draws(_ptr(shrink), _ptr(noise), _ptr(torch.from_numpy(prob)),
                                         _ptr(torch.from_numpy(alias)), 40, 37, seed, window,
                                         _cuda_draw_stride(mode, window, negative), sets, negative)
    ref_shrink, ref_noise = word2vec_draws_reference(40, prob, alias, mode=mode, window=window, negative=negative,
                                                     seed=seed)
    assert np.array_equal(shrink.numpy(), ref_shrink) and np.array_equal(noise.numpy(), ref_noise)


# (mode, cbow_mean, vocab, dim, sentence lengths, window, negative, slice_tokens, alpha): window 17 and
# negative 33 take the loops over more than 32 window slots and targets.
CUDA_REPLAY_CASES = [
    pytest.param("sg_shared", True, 50, 100, [40, 1, 0, 30], 5, 5, 7, 0.2, id="sg-shared-d100-sliced"),
    pytest.param("sg_pair", True, 17, 9, [9, 6], 2, 2, 4, 0.2, id="sg-pair-d9"),
    pytest.param("cbow", True, 23, 33, [19, 6], 3, 3, 64, 0.2, id="cbow-mean-d33"),
    pytest.param("cbow", False, 11, 16, [8, 2], 2, 4, 3, 0.2, id="cbow-sum-d16-tiny-vocab"),
    pytest.param("sg_shared", True, 30, 40, [45], 17, 33, 100, 0.01, id="sg-shared-w17-n33"),
]


def _emulate_against_replay(cuda_emulator, mode, cbow_mean, vocab, dim, lengths, window, negative, slice_tokens,
                            alpha, lockf: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The CUDA kernel on the warp emulator against the float64 replay of the same plan (lockf: lock factors for
    both; None: the kernel's null pointer, the unscaled path). -> (syn0 before, syn0 after)."""
    tokens, offsets = _chunk(vocab, lengths, seed=vocab)
    prob, alias = _noise_tables(vocab)
    seed = 11
    plan = plan_chunk(torch.from_numpy(tokens), torch.from_numpy(offsets), torch.full((vocab,), 0.8), alpha,
                      alpha / 4, seed, slice_tokens)
    syn0, syn1 = _tables(vocab, dim)
    ref0, ref1, ref_loss, base0, base1 = replay_planned(syn0, syn1, plan, prob, alias, mode=mode, window=window,
                                                        negative=negative, seed=seed, cbow_mean=cbow_mean,
                                                        **({} if lockf is None else {"lockf": lockf}))
    out0, out1 = syn0.clone(), syn1.clone()
    num_slices = plan.bounds.shape[0]
    loss = torch.full((num_slices,), float("nan"), dtype=torch.float64)
    null = ctypes.c_void_p(0)
    factors = (null, 0) if lockf is None else (_ptr(lockf), lockf.numel())
    cuda_emulator.emulate_word2vec_train(
        _ptr(out0), _ptr(out1), _ptr(plan.tokens), _ptr(plan.alphas), _ptr(plan.bounds),
        _ptr(torch.from_numpy(prob)), _ptr(torch.from_numpy(alias)), _ptr(loss), null, null, null, null, num_slices,
        vocab, dim, seed, window, negative, _cuda_draw_stride(mode, window, negative), MODE_CODES[mode],
        int(cbow_mean), 1, 1, 0, 0, *factors)
    assert bool(torch.isfinite(loss).all()), "every warp writes its loss slot"
    tag = "" if lockf is None else " (lock factors)"
    assert_matches_oracle(out0, ref0, base0, what=f"cuda {mode} syn0{tag}")
    assert_matches_oracle(out1, ref1, base1, what=f"cuda {mode} syn1neg{tag}")
    assert float(loss.sum()) == pytest.approx(ref_loss, rel=1e-5)
    return syn0, out0


@pytest.mark.parametrize(("mode", "cbow_mean", "vocab", "dim", "lengths", "window", "negative", "slice_tokens",
                          "alpha"), CUDA_REPLAY_CASES)
def test_cuda_kernel_emulated_matches_float64_replay(cuda_emulator, mode, cbow_mean, vocab, dim, lengths, window,
                                                     negative, slice_tokens, alpha):
    _emulate_against_replay(cuda_emulator, mode, cbow_mean, vocab, dim, lengths, window, negative, slice_tokens,
                            alpha)


@pytest.mark.parametrize(("mode", "cbow_mean", "vocab", "dim", "lengths", "window", "negative", "slice_tokens",
                          "alpha"), [CUDA_REPLAY_CASES[i] for i in (0, 1, 3)])
@pytest.mark.parametrize("cyclic", [False, True], ids=["per-word", "cyclic-3"])
def test_cuda_kernel_emulated_with_lock_factors_matches_float64_replay(cuda_emulator, cyclic, mode, cbow_mean, vocab,
                                                                       dim, lengths, window, negative, slice_tokens,
                                                                       alpha):
    """A non-null lockf: each input row's updates scaled by lockf[id % L] (0: never written)."""
    lockf = torch.tensor([0.5, 0.0, 1.0]) if cyclic else lock_factors(vocab)
    syn0, out0 = _emulate_against_replay(cuda_emulator, mode, cbow_mean, vocab, dim, lengths, window, negative,
                                         slice_tokens, alpha, lockf)
    check_lock_factors_kept(out0, syn0, lockf)


def test_gpu_launchers_reject_bad_lock_factors_before_any_launch():
    """Both GPU launchers check lockf (dtype, shape, layout, device) before touching the GPU or the tables (so
    this runs without one: the checks come before any CuPy or Triton call)."""
    from genai_fast.backends.cuda import word2vec as cuda_launcher

    vocab = 10
    syn0, syn1 = _tables(vocab, 8)
    plan = plan_chunk(torch.from_numpy(_chunk(vocab, [6, 4])[0]), torch.tensor([0, 6, 10]), None, 0.1, 0.1, 1)
    prob, alias = (torch.from_numpy(a) for a in _noise_tables(vocab))
    before0 = syn0.clone()
    bad = [(torch.ones(vocab, dtype=torch.float64), TypeError, "lockf: expected float32"),
           (torch.ones(vocab, 2), ValueError, "lockf: expected a 1-D array"),
           (torch.ones(0), ValueError, "lockf: expected a 1-D array of at least one"),
           (torch.ones(2 * vocab)[::2], ValueError, "lockf: expected a contiguous array"),
           (torch.ones(vocab, device="meta"), ValueError, "lockf: expected lock factors on the tables' device")]
    for lockf, error, match in bad:
        with pytest.raises(error, match=match):
            cuda_launcher.word2vec_train_fwd(syn0, syn1, plan.tokens, plan.alphas, plan.bounds, prob, alias,
                                             mode="sg_shared", window=2, negative=2, cbow_mean=True,
                                             shrink_windows=True, compute_loss=False, seed=1, lockf=lockf)
        if triton_module()[0] is not None:
            from genai_fast.kernels.word2vec import check_train_sizes

            with pytest.raises(error, match=match):
                check_train_sizes(syn0, syn1, plan.tokens, plan.alphas, plan.bounds, prob, alias, None, lockf)
    assert torch.equal(syn0, before0)


def test_cuda_launcher_constants_match_the_source():
    from genai_fast.backends.cuda import word2vec as launcher

    source = (Path(__file__).resolve().parent.parent / "csrc" / "cuda" / "word2vec.cu").read_text()
    assert f"#define W2V_WARPS {launcher.WARPS}" in source
    assert launcher.MODES == MODE_CODES


# ---------------------------------------------------------------- the public op, backend="triton"


@needs_triton
def test_triton_training_lowers_the_loss_and_leaves_unused_rows_alone():
    vocab, dim, unused = 12, 16, 2
    # Two "topics" that never share a sentence: words 0-4 and 5-9; words 10 and 11 never occur.
    rng = np.random.default_rng(3)
    sentences = [rng.permutation(5) + 5 * (s % 2) for s in range(6)]
    tokens = np.concatenate(sentences).astype(np.int32)
    offsets = np.arange(0, tokens.size + 1, 5, dtype=np.int64)
    prob, alias = _noise_tables(vocab, unused)
    syn0, syn1 = _tables(vocab, dim)
    syn0 *= 0.2
    syn1.zero_()
    start0, start1 = syn0.clone(), syn1.clone()
    losses = []
    for epoch in range(3):
        raw, effective, loss = word2vec_train_chunk(
            syn0, syn1, tokens, offsets, None, prob, alias, 0.3, 0.3, mode="sg_shared", window=2, negative=3,
            compute_loss=True, seed=epoch, backend="triton")
        assert raw == effective == tokens.size
        losses.append(loss)
    assert losses[2] < losses[0], f"the loss must fall across epochs: {losses}"
    assert torch.equal(syn0[-unused:], start0[-unused:]) and torch.equal(syn1[-unused:], start1[-unused:])
    assert bool(torch.isfinite(syn0).all() and torch.isfinite(syn1).all())
    unit = F.normalize(syn0[:10], dim=1)
    sim = unit @ unit.T
    same = torch.block_diag(torch.ones(5, 5), torch.ones(5, 5)).bool() & ~torch.eye(10, dtype=torch.bool)
    assert float(sim[same].mean()) > float(sim[~same & ~torch.eye(10, dtype=torch.bool)].mean())


def test_gpu_path_rejects_bad_input_before_any_kernel():
    vocab, dim = 10, 8
    tokens, offsets = _chunk(vocab, [6, 4])
    prob, alias = _noise_tables(vocab)
    syn0, syn1 = _tables(vocab, dim)
    before0, before1 = syn0.clone(), syn1.clone()
    kwargs = {"mode": "sg_shared", "window": 2, "negative": 2, "backend": "triton"}
    if triton_module()[0] is None or not triton_interpreter_enabled():
        pytest.skip("forcing the triton backend on CPU tensors needs TRITON_INTERPRET=1")
    bad = tokens.copy()
    bad[7] = vocab
    with pytest.raises(ValueError, match=r"tokens: id 10 is outside \[0, vocab_size=10\)"):
        word2vec_train_chunk(syn0, syn1, bad, offsets, None, prob, alias, 0.1, 0.1, **kwargs)
    with pytest.raises(ValueError, match="offsets"):
        word2vec_train_chunk(syn0, syn1, tokens, offsets + 1, None, prob, alias, 0.1, 0.1, **kwargs)
    unsorted = np.array([0, 8, 5, 10], dtype=np.int64)
    with pytest.raises(ValueError, match="non-decreasing"):
        word2vec_train_chunk(syn0, syn1, tokens, unsorted, None, prob, alias, 0.1, 0.1, **kwargs)
    bad_alias = alias.copy()
    bad_alias[2] = -3
    with pytest.raises(ValueError, match=r"alias_index: id -3"):
        word2vec_train_chunk(syn0, syn1, tokens, offsets, None, prob, bad_alias, 0.1, 0.1, **kwargs)
    with pytest.raises(ValueError, match="keep_prob: expected vocab_size=10"):
        word2vec_train_chunk(syn0, syn1, tokens, offsets, np.ones(9, np.float32), prob, alias, 0.1, 0.1, **kwargs)
    with pytest.raises(TypeError, match="tokens"):
        word2vec_train_chunk(syn0, syn1, tokens.astype(np.float32), offsets, None, prob, alias, 0.1, 0.1, **kwargs)
    with pytest.raises(ValueError, match="window"):
        word2vec_train_chunk(syn0, syn1, tokens, offsets, None, prob, alias, 0.1, 0.1, **{**kwargs, "window": 0})
    with pytest.raises(ValueError, match="syn1neg"):
        word2vec_train_chunk(syn0, syn1[:5], tokens, offsets, None, prob, alias, 0.1, 0.1, **kwargs)
    with pytest.raises(BackendNotSupportedError, match=r"not a torch\.Tensor"):
        word2vec_train_chunk(syn0.numpy(), syn1.numpy(), tokens, offsets, None, prob, alias, 0.1, 0.1, **kwargs)
    with pytest.raises(BackendNotSupportedError, match="dtype float64"):
        word2vec_train_chunk(syn0.double(), syn1.double(), tokens, offsets, None, prob, alias, 0.1, 0.1, **kwargs)
    assert torch.equal(syn0, before0) and torch.equal(syn1, before1), "rejected calls must not touch the tables"


def test_cpu_tensors_still_take_the_cpp_or_torch_path():
    """Automatic dispatch on CPU tables never picks the interpreter; tensors and numpy arrays both work."""
    vocab = 10
    tokens, offsets = _chunk(vocab, [6, 4])
    prob, alias = _noise_tables(vocab)
    syn0, syn1 = _tables(vocab, 8)
    raw, effective, _ = word2vec_train_chunk(syn0, syn1, tokens, offsets, None, prob, alias, 0.1, 0.1,
                                             mode="sg_shared", window=2, negative=2)
    from genai_fast.ops.word2vec_ops import WORD2VEC_TRAIN

    assert WORD2VEC_TRAIN.last_backend in ("cpp", "torch") and raw == effective == 10


# ---------------------------------------------------------------- Word2Vec's GPU path


def test_merge_chunks_concatenates_sentences_in_order():
    from genai_fast.word2vec.corpus import Chunk
    from genai_fast.word2vec.model import merge_chunks

    chunks = [Chunk(np.array([1, 2, 3], np.int32), np.array([0, 2, 3]), 4, 2),
              Chunk(np.array([4], np.int32), np.array([0, 1]), 1, 1),
              Chunk(np.array([5, 6], np.int32), np.array([0, 2]), 3, 1)]
    merged = list(merge_chunks(chunks, 4))
    assert len(merged) == 2
    assert merged[0].ids.tolist() == [1, 2, 3, 4] and merged[0].offsets.tolist() == [0, 2, 3, 4]
    assert (merged[0].raw_words, merged[0].sentences) == (5, 3)
    assert merged[1] is chunks[2]


def test_device_argument_on_a_cpu_machine():
    from genai_fast.word2vec import Word2Vec

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert Word2Vec(device="auto").device == "cpu"
    with pytest.raises(ValueError, match="device: 'cuda' was asked for but no CUDA GPU"):
        Word2Vec(device="cuda")


@needs_triton
def test_word2vec_gpu_path_trains_through_the_triton_kernel(monkeypatch):
    """Word2Vec's device="cuda" code path (tables copied in and back, merged chunks) with the tables on
    the CPU and the Triton kernel in the interpreter."""
    from genai_fast.ops.word2vec_ops import WORD2VEC_TRAIN
    from genai_fast.word2vec import Word2Vec

    if torch.cuda.is_available():
        pytest.skip("covered on the GPU by tests/test_gpu_word2vec.py")
    monkeypatch.setattr(Word2Vec, "_gpu_table_device", "cpu")
    monkeypatch.setenv("GENAI_FAST_BACKEND", "triton")
    sentences = [["a", "b", "c", "d", "e"], ["v", "w", "x", "y", "z"]] * 3
    model = Word2Vec(vector_size=8, window=2, negative=2, min_count=1, sample=0, sg=1, epochs=2, seed=3,
                     device="cpu", compute_loss=True)
    model.build_vocab(sentences)
    model.device = "cuda"
    start = model.wv.vectors.copy()
    trained, raw = model.train(sentences, total_examples=model.corpus_count, epochs=2)
    assert WORD2VEC_TRAIN.last_backend == "triton"
    assert trained == raw == 60
    assert isinstance(model.wv.vectors, np.ndarray) and model.wv.vectors.dtype == np.float32
    assert isinstance(model.syn1neg, np.ndarray) and model.syn1neg.any()
    assert not np.array_equal(model.wv.vectors, start) and np.isfinite(model.wv.vectors).all()
    assert len(model.epoch_losses) == 2 and all(loss > 0 for loss in model.epoch_losses)


def test_chunk_source_reads_once_and_keeps_the_device_copies(monkeypatch):
    """Epoch 0 reads, encodes and moves each chunk to the device once; later epochs reuse those copies. A
    corpus above the cache limit is read again each epoch (and moved again)."""
    from genai_fast.word2vec import model as w2v_model
    from genai_fast.word2vec.corpus import Chunk

    chunks = [Chunk(np.arange(n, dtype=np.int32), np.array([0, n], np.int64), n, 1) for n in (3, 4)]
    calls = {"read": 0, "moved": 0}

    def read():
        calls["read"] += 1
        return iter(chunks)

    def to_device(chunk):
        calls["moved"] += 1
        return Chunk(torch.from_numpy(chunk.ids), torch.from_numpy(chunk.offsets), chunk.raw_words, chunk.sentences)

    source = w2v_model._ChunkSource(read, to_device)
    first = list(source.epoch(0))
    again = list(source.epoch(1))
    assert calls == {"read": 1, "moved": 2}
    assert [c is d for c, d in zip(first, again, strict=True)] == [True, True]
    assert all(isinstance(c.ids, torch.Tensor) for c in again)

    monkeypatch.setattr(w2v_model, "CACHE_TOKEN_LIMIT", 5)
    calls.update(read=0, moved=0)
    source = w2v_model._ChunkSource(read, to_device)
    for epoch in range(2):
        assert [len(c.ids) for c in source.epoch(epoch)] == [3, 4]
    assert calls == {"read": 2, "moved": 4}


def test_prefetched_keeps_order_raises_producer_errors_and_stops_with_the_consumer():
    import threading
    import time

    from genai_fast.word2vec.corpus import prefetched

    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise OSError("corpus_file: unreadable block")

    got = []
    with pytest.raises(OSError, match="unreadable block"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1]

    produced = []

    def endless():
        for i in range(10**6):
            produced.append(i)
            yield i

    before = threading.active_count()
    stream = prefetched(endless(), depth=2)
    assert next(stream) == 0
    stream.close()  # the consumer stops early (Ctrl-C, an error in the training loop)
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() == before, "the producer thread kept running"
    assert len(produced) < 10, "the producer ran far ahead of a stopped consumer"


def test_interrupt_on_the_gpu_path_stops_the_prefetch_thread_and_keeps_the_model(monkeypatch):
    """Ctrl-C in the middle of a device="cuda" epoch (tables on the CPU, the Triton kernel in the
    interpreter): the corpus-reading thread stops, the model is usable and marked interrupted."""
    import threading
    import time

    from genai_fast.word2vec import Word2Vec
    from genai_fast.word2vec import model as w2v_model

    if torch.cuda.is_available():
        pytest.skip("the device path runs on the GPU there (tests/test_gpu_word2vec.py)")
    monkeypatch.setattr(Word2Vec, "_gpu_table_device", "cpu")
    monkeypatch.setenv("GENAI_FAST_BACKEND", "triton")
    monkeypatch.setattr(w2v_model, "GPU_CHUNK_TOKENS", 10)  # many small chunks: the reader is still running
    sentences = [["a", "b", "c", "d", "e"], ["v", "w", "x", "y", "z"]] * 15
    model = Word2Vec(vector_size=8, window=2, negative=2, min_count=1, sample=0, sg=1, seed=3, device="cpu")
    model.build_vocab(sentences)
    model.device = "cuda"
    encoder = model._get_encoder()
    encode = encoder.encode_sentences
    monkeypatch.setattr(encoder, "encode_sentences", lambda items: encode(items, chunk_tokens=10))
    calls = {"n": 0}
    real = Word2Vec._train_chunk

    def interrupting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            calls["reader"] = any(t.name == "genai_fast-prefetch" for t in threading.enumerate())
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Word2Vec, "_train_chunk", interrupting)
    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        model.train(sentences, total_examples=model.corpus_count, epochs=2)
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert calls["n"] == 3 and calls["reader"], "the corpus was not being read ahead by the prefetch thread"
    assert threading.active_count() == before, "the prefetch thread kept running after Ctrl-C"
    assert model.interrupted and isinstance(model.wv.vectors, np.ndarray) and np.isfinite(model.wv.vectors).all()
