"""Word2vec negative-sampling (SGNS) update steps: public functions, references and backends.

Three ops through the dispatcher (DESIGN.md section 3):

- `sgns_step`: skip-gram updates of a batch of centre words, each with its contexts and negatives;
  `shared_negatives=True` is the pWord2Vec form (the window's contexts share one set of negatives and
  the update is two small matrix products), False is gensim's pair-by-pair order.
- `cbow_step`: CBOW updates (the mean or sum of the contexts predicts the centre).
- `word2vec_train_chunk`: trains a whole chunk of sentences (what `genai_fast.word2vec.Word2Vec`
  calls): subsampling, shrinking windows, noise sampling and learning-rate decay inside the kernel.

The step ops update `syn0` (input vectors, `wv.vectors`) and `syn1neg` (output vectors) in place and
return the per-row loss (float64). Their references are the test oracle of the kernels' arithmetic.
Backends: `cpp` (float32 contiguous CPU tables), then `torch` (any float dtype and device).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from genai_fast.backends.dispatch import Capability, define_op, validate_backend_name

SGNS_STEP = define_op("sgns_step")
CBOW_STEP = define_op("cbow_step")
WORD2VEC_TRAIN = define_op("word2vec_train_chunk")

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- public step ops


def sgns_step(
    syn0: torch.Tensor,
    syn1neg: torch.Tensor,
    centers: torch.Tensor,
    contexts: torch.Tensor,
    negatives: torch.Tensor,
    alpha: float,
    *,
    shared_negatives: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Skip-gram negative-sampling updates of B centre words, applied in row order, in place.

    Args:
        syn0: [V, D] input vectors (updated in place).
        syn1neg: [V, D] output vectors (updated in place).
        centers: [B] integer ids of the centre words (the positive targets).
        contexts: [B, C] integer ids of each centre's context words; -1 pads short windows.
        negatives: [B, K] noise ids shared by a row's contexts (shared_negatives=True), or [B, C, K]
            one set per (row, context) pair (shared_negatives=False). A negative equal to the centre
            is skipped.
        alpha: learning rate.
        shared_negatives: pWord2Vec batching (all scores from the current vectors, then the updates)
            versus gensim's sequential pair-by-pair order.
        backend: force "cpp" or "torch"; None picks the fastest that can run.

    Returns: [B] float64 loss per row: sum of -log sigmoid(score) over positive pairs and
    -log sigmoid(-score) over negative pairs.

    Equivalent PyTorch for one row with shared negatives (In = syn0[ctx], Out = syn1neg[[c] + neg])::

        f = In @ Out.T;  g = (labels - sigmoid(f)) * alpha
        syn0.index_add_(0, ctx, g @ Out);  syn1neg.index_add_(0, targets, g.T @ In)
    """
    mode = "sg_shared" if shared_negatives else "sg_pair"
    _validate_step(syn0, syn1neg, centers, contexts, negatives, alpha, mode, backend)
    if centers.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=syn0.device)
    impl = SGNS_STEP.select(_step_inputs(syn0, syn1neg), backend)
    return impl.run(syn0, syn1neg, centers, contexts, negatives, float(alpha), mode, True)


def cbow_step(
    syn0: torch.Tensor,
    syn1neg: torch.Tensor,
    centers: torch.Tensor,
    contexts: torch.Tensor,
    negatives: torch.Tensor,
    alpha: float,
    *,
    cbow_mean: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """CBOW negative-sampling updates of B centre words, applied in row order, in place.

    Args:
        syn0, syn1neg: [V, D] input and output vectors (updated in place).
        centers: [B] centre ids; contexts: [B, C] context ids (-1 pads); negatives: [B, K].
        alpha: learning rate.
        cbow_mean: h = mean of the context vectors (True) or their sum (False). gensim's rule: with a
            sum the input error is divided by the context count, with a mean it is not.
        backend: force "cpp" or "torch".

    Returns: [B] float64 loss per row (rows without contexts: 0, no update).

    Equivalent PyTorch for one row::

        h = syn0[ctx].mean(0);  for t, label in targets: f = h @ syn1neg[t]; g = (label - sigmoid(f)) * alpha
        e += g * syn1neg[t];  syn1neg[t] += g * h          (sequential over targets)
        syn0[ctx] += e
    """
    _validate_step(syn0, syn1neg, centers, contexts, negatives, alpha, "cbow", backend)
    if centers.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=syn0.device)
    impl = CBOW_STEP.select(_step_inputs(syn0, syn1neg), backend)
    return impl.run(syn0, syn1neg, centers, contexts, negatives, float(alpha), "cbow", bool(cbow_mean))


# ---------------------------------------------------------------- references


def _softplus64(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x.to(torch.float64))


def word2vec_step_reference(
    syn0: torch.Tensor,
    syn1neg: torch.Tensor,
    centers: torch.Tensor,
    contexts: torch.Tensor,
    negatives: torch.Tensor,
    alpha: float,
    mode: str,
    cbow_mean: bool = True,
) -> torch.Tensor:
    """Plain PyTorch updates of a batch (in place, computed in syn0's dtype): the oracle and fallback.

    mode: "sg_shared", "sg_pair" or "cbow"; shapes as in `sgns_step` / `cbow_step`. Returns loss [B] fp64.
    """
    batch = centers.shape[0]
    losses = torch.zeros(batch, dtype=torch.float64)
    centers_l = centers.tolist()
    for r in range(batch):
        row_ctx = contexts[r]
        ctx = row_ctx[row_ctx >= 0].to(torch.long).to(syn0.device)
        center = centers_l[r]
        if mode == "sg_pair":
            loss = 0.0
            for c in range(contexts.shape[1]):
                word = int(row_ctx[c])
                if word < 0:
                    continue
                negs = [int(n) for n in negatives[r, c]]
                loss += _pair_update(syn0, syn1neg, word, center, negs, alpha)
            losses[r] = loss
            continue
        negs = [int(n) for n in negatives[r]]
        if mode == "sg_shared":
            losses[r] = _shared_update(syn0, syn1neg, ctx, center, negs, alpha)
        else:
            losses[r] = _cbow_update(syn0, syn1neg, ctx, center, negs, alpha, cbow_mean)
    return losses


def _pair_update(syn0: torch.Tensor, syn1neg: torch.Tensor, word: int, center: int, negs: list[int],
                 alpha: float) -> float:
    inp = syn0[word]
    err = torch.zeros_like(inp)
    loss = 0.0
    for k, target in enumerate([center, *negs]):
        if k > 0 and target == center:
            continue
        label = 1.0 if k == 0 else 0.0
        out = syn1neg[target]
        f = torch.dot(inp, out)
        g = (label - torch.sigmoid(f)) * alpha
        loss += float(_softplus64(-f if k == 0 else f))
        err += g * out
        syn1neg[target] = out + g * inp
    syn0[word] = syn0[word] + err
    return loss


def _shared_update(syn0: torch.Tensor, syn1neg: torch.Tensor, ctx: torch.Tensor, center: int, negs: list[int],
                   alpha: float) -> float:
    if ctx.numel() == 0:
        return 0.0
    targets = torch.tensor([center, *negs], dtype=torch.long, device=syn0.device)
    valid = torch.ones(len(targets), dtype=syn0.dtype, device=syn0.device)
    valid[1:] = (targets[1:] != center).to(syn0.dtype)
    labels = torch.zeros(len(targets), dtype=syn0.dtype, device=syn0.device)
    labels[0] = 1.0
    inp, out = syn0[ctx], syn1neg[targets]
    f = inp @ out.T                                       # [C, K+1] scores from the current vectors
    g = (labels - torch.sigmoid(f)) * alpha * valid       # [C, K+1]
    signed = torch.where(labels.bool(), -f, f)
    loss = float((_softplus64(signed) * valid.to(torch.float64)).sum())
    syn0_err = g @ out                                    # [C, D]
    syn1neg.index_add_(0, targets, g.T @ inp)
    syn0.index_add_(0, ctx, syn0_err)
    return loss


def _cbow_update(syn0: torch.Tensor, syn1neg: torch.Tensor, ctx: torch.Tensor, center: int, negs: list[int],
                 alpha: float, cbow_mean: bool) -> float:
    count = ctx.numel()
    if count == 0:
        return 0.0
    h = syn0[ctx].sum(0)
    if cbow_mean:
        h = h / count
    err = torch.zeros_like(h)
    loss = 0.0
    for k, target in enumerate([center, *negs]):
        if k > 0 and target == center:
            continue
        label = 1.0 if k == 0 else 0.0
        out = syn1neg[target]
        f = torch.dot(h, out)
        g = (label - torch.sigmoid(f)) * alpha
        loss += float(_softplus64(-f if k == 0 else f))
        err += g * out
        syn1neg[target] = out + g * h
    if not cbow_mean:
        err = err / count
    syn0.index_add_(0, ctx, err.expand(count, -1).contiguous())
    return loss


# ---------------------------------------------------------------- validation


def _is_int_tensor(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _validate_step(syn0: Any, syn1neg: Any, centers: Any, contexts: Any, negatives: Any, alpha: Any, mode: str,
                   backend: Any) -> None:
    for name, t in (("syn0", syn0), ("syn1neg", syn1neg)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: expected a floating tensor, got {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"{name}: expected shape [V, D], got {tuple(t.shape)}")
    if syn1neg.shape != syn0.shape or syn1neg.dtype != syn0.dtype or syn1neg.device != syn0.device:
        raise ValueError(f"syn1neg: expected syn0's shape {tuple(syn0.shape)}, dtype {syn0.dtype} and device "
                         f"{syn0.device}, got {tuple(syn1neg.shape)}, {syn1neg.dtype}, {syn1neg.device}")
    vocab = syn0.shape[0]
    for name, t, dims in (("centers", centers, 1), ("contexts", contexts, 2),
                          ("negatives", negatives, 3 if mode == "sg_pair" else 2)):
        if not _is_int_tensor(t):
            raise TypeError(f"{name}: expected an integer torch.Tensor, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.dim() != dims:
            raise ValueError(f"{name}: expected {dims} dimensions, got shape {tuple(t.shape)}")
    batch = centers.shape[0]
    if contexts.shape[0] != batch:
        raise ValueError(f"contexts: expected [B={batch}, C], got {tuple(contexts.shape)}")
    expect = (batch, contexts.shape[1]) if mode == "sg_pair" else (batch,)
    if tuple(negatives.shape[:-1]) != expect:
        want = "[B, C, K]" if mode == "sg_pair" else "[B, K]"
        raise ValueError(f"negatives: expected {want} with leading dims {expect}, got {tuple(negatives.shape)}")
    for name, t, low in (("centers", centers, 0), ("contexts", contexts, -1), ("negatives", negatives, 0)):
        if t.numel() and (int(t.min()) < low or int(t.max()) >= vocab):
            bad = t[(t < low) | (t >= vocab)][0]
            raise ValueError(f"{name}: id {int(bad)} is outside [{low}, vocab_size={vocab})")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha: expected a finite number, got {alpha!r}")
    validate_backend_name(backend)


def _step_inputs(syn0: torch.Tensor, syn1neg: torch.Tensor) -> dict[str, Any]:
    return {"device": syn0.device, "dtype": syn0.dtype, "syn0": syn0, "syn1neg": syn1neg}


def _cpp_step_check(inputs: dict[str, Any]) -> list[str]:
    reasons = []
    for name in ("syn0", "syn1neg"):
        if not inputs[name].is_contiguous():
            reasons.append(f"{name} is not contiguous (the tables are updated in place)")
    return reasons


# ---------------------------------------------------------------- step backends


_CPP_STEP = Capability(devices=("cpu",), dtypes=(torch.float32,),
                       features=("vectorised dot/axpy (AVX-512/AVX2 clones)", "GIL released"))
_TORCH_STEP = Capability(devices=("cpu", "cuda"), dtypes=FLOAT_DTYPES, layouts=("any",), features=("reference",))


@SGNS_STEP.register("cpp", _CPP_STEP, check=_cpp_step_check)
def _sgns_step_cpp(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean):
    from genai_fast.backends.cpp.word2vec import word2vec_step

    return word2vec_step(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean)


@SGNS_STEP.register("torch", _TORCH_STEP)
def _sgns_step_torch(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean):
    return word2vec_step_reference(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean)


@CBOW_STEP.register("cpp", _CPP_STEP, check=_cpp_step_check)
def _cbow_step_cpp(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean):
    from genai_fast.backends.cpp.word2vec import word2vec_step

    return word2vec_step(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean)


@CBOW_STEP.register("torch", _TORCH_STEP)
def _cbow_step_torch(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean):
    return word2vec_step_reference(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean)


# ---------------------------------------------------------------- chunk training


def word2vec_train_chunk(
    syn0: np.ndarray,
    syn1neg: np.ndarray,
    tokens: np.ndarray,
    offsets: np.ndarray,
    keep_prob: np.ndarray | None,
    alias_prob: np.ndarray,
    alias_index: np.ndarray,
    alpha_start: float,
    alpha_end: float,
    *,
    mode: str,
    window: int,
    negative: int,
    cbow_mean: bool = True,
    shrink_windows: bool = True,
    compute_loss: bool = False,
    seed: int = 1,
    workers: int = 1,
    backend: str | None = None,
) -> tuple[int, int, float]:
    """Train on a chunk of sentences, updating syn0 and syn1neg in place (Hogwild over `workers` threads).

    Args:
        syn0, syn1neg: [V, D] float32 C-contiguous numpy arrays.
        tokens: [N] int32 vocabulary ids of the chunk's kept words, sentence after sentence.
        offsets: [S + 1] int64 sentence starts in `tokens` (offsets[0] = 0, offsets[-1] = N).
        keep_prob: [V] float32 probability of keeping each word (gensim's subsampling), or None.
        alias_prob, alias_index: [V] float32 / int32 alias-method table of the noise distribution.
        alpha_start, alpha_end: learning rate at the chunk's first and last token (linear in between).
        mode: "sg_shared", "sg_pair" or "cbow"; window, negative: as in gensim.
        seed: the chunk's random seed; workers=1 and a seed give bit-identical results.

    Returns: (raw words read, words kept by subsampling, loss sum in float64 (0 unless compute_loss)).
    """
    if mode not in ("sg_shared", "sg_pair", "cbow"):
        raise ValueError(f"mode: expected 'sg_shared', 'sg_pair' or 'cbow', got {mode!r}")
    validate_backend_name(backend)
    inputs = {"device": torch.device("cpu"), "dtype": torch.float32}
    impl = WORD2VEC_TRAIN.select(inputs, backend)
    return impl.run(syn0, syn1neg, tokens, offsets, keep_prob, alias_prob, alias_index, alpha_start, alpha_end,
                    mode, window, negative, cbow_mean, shrink_windows, compute_loss, seed, workers)


@WORD2VEC_TRAIN.register(
    "cpp",
    Capability(devices=("cpu",), dtypes=(torch.float32,),
               features=("Hogwild std::threads", "pWord2Vec shared negatives", "alias-method noise sampling")),
)
def _train_chunk_cpp(syn0, syn1neg, tokens, offsets, keep_prob, alias_prob, alias_index, alpha_start, alpha_end,
                     mode, window, negative, cbow_mean, shrink_windows, compute_loss, seed, workers):
    from genai_fast.backends.cpp.word2vec import word2vec_train

    return word2vec_train(syn0, syn1neg, tokens, offsets, keep_prob, alias_prob, alias_index, alpha_start,
                          alpha_end, mode, window, negative, cbow_mean, shrink_windows, compute_loss, seed, workers)


@WORD2VEC_TRAIN.register(
    "torch", Capability(devices=("cpu",), dtypes=(torch.float32,), features=("reference (one thread, slow)",))
)
def _train_chunk_torch(syn0, syn1neg, tokens, offsets, keep_prob, alias_prob, alias_index, alpha_start, alpha_end,
                       mode, window, negative, cbow_mean, shrink_windows, compute_loss, seed, workers):
    """The same algorithm in Python over the step reference: correct but slow (a fallback, not a path)."""
    vocab = syn0.shape[0]
    for name, ids in (("tokens", tokens), ("alias_index", alias_index)):
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"{name}: ids outside [0, vocab_size={vocab})")
    rng = np.random.default_rng(seed)
    s0, s1 = torch.from_numpy(syn0), torch.from_numpy(syn1neg)
    total = max(1, len(tokens))
    raw = effective = 0
    loss = 0.0
    for s in range(len(offsets) - 1):
        lo, hi = int(offsets[s]), int(offsets[s + 1])
        words = tokens[lo:hi]
        raw += len(words)
        if keep_prob is not None:
            words = words[rng.random(len(words)) < keep_prob[words]]
        effective += len(words)
        n = len(words)
        for i in range(n):
            alpha = alpha_start + (alpha_end - alpha_start) * (lo + (hi - lo) * i / max(n, 1)) / total
            b = int(rng.integers(window)) if shrink_windows else 0
            ctx = [int(words[j]) for j in range(max(0, i - window + b), min(n, i + window + 1 - b)) if j != i]
            if not ctx:
                continue
            shape = (1, len(ctx), negative) if mode == "sg_pair" else (1, negative)
            u = rng.random(int(np.prod(shape)))
            idx = rng.integers(vocab, size=u.size)
            negs = np.where(u < alias_prob[idx], idx, alias_index[idx]).reshape(shape)
            loss += float(word2vec_step_reference(
                s0, s1, torch.tensor([int(words[i])]), torch.tensor([ctx]), torch.from_numpy(negs), alpha, mode,
                cbow_mean).sum())
    return raw, effective, (loss if compute_loss else 0.0)
