"""Word2vec update steps (negative sampling and hierarchical softmax): public functions, references
and backends.

Four ops through the dispatcher (DESIGN.md section 3):

- `sgns_step`: skip-gram updates of a batch of centre words, each with its contexts and negatives;
  `shared_negatives=True` is the pWord2Vec form (the window's contexts share one set of negatives and
  the update is two small matrix products), False is gensim's pair-by-pair order.
- `cbow_step`: CBOW updates (the mean or sum of the contexts predicts the centre).
- `hs_step`: hierarchical-softmax updates (each centre is predicted by the binary choices along its
  Huffman path, `HsTree`): skip-gram (each context predicts the centre) or CBOW.
- `word2vec_train_chunk`: trains a whole chunk of sentences (what `genai_fast.word2vec.Word2Vec`
  calls): subsampling, shrinking windows, noise sampling and learning-rate decay inside the kernel.

The step ops update `syn0` (input vectors, `wv.vectors`) and `syn1neg` (output vectors) in place and
return the per-row loss (float64). Their references are the test oracle of the kernels' arithmetic.
Every op takes gensim's lock factors (`lockf`, `wv.vectors_lockf`): each update of input row w is scaled
by lockf[w % len(lockf)] (0 freezes the row, 1 trains it); output rows are never scaled. None, the
default, means every factor 1 and costs the kernels nothing.
Step backends: `cpp` (float32 contiguous CPU tables), then `torch` (any float dtype and device).

`word2vec_train_chunk` backends: `triton` and `cuda` for float32 CUDA tables (`plan_chunk` subsamples
and slices the chunk on the device, then kernels/word2vec.py or csrc/cuda/word2vec.cu train it,
Hogwild over sentence slices, with the same counter-based Philox draws, `word2vec_draws_reference`),
`cpp` (CPU, std::threads) and `torch` (CPU, slow fallback). Hierarchical softmax (`hs=HsTree(...)`) runs
on every backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from genai_fast.backends.dispatch import ANY_DEVICE, Capability, define_op, validate_backend_name

SGNS_STEP = define_op("sgns_step")
CBOW_STEP = define_op("cbow_step")
HS_STEP = define_op("hs_step")
WORD2VEC_TRAIN = define_op("word2vec_train_chunk")

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ArrayLike = np.ndarray | torch.Tensor


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
    lockf: torch.Tensor | None = None,
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
        lockf: [L] float32 lock factors on syn0's device (L >= 1): syn0 row w's update is scaled by
            lockf[w % L]; None: all 1.
        backend: force "cpp" or "torch"; None picks the fastest that can run.

    Returns: [B] float64 loss per row: sum of -log sigmoid(score) over positive pairs and
    -log sigmoid(-score) over negative pairs.

    Equivalent PyTorch for one row with shared negatives (In = syn0[ctx], Out = syn1neg[[c] + neg])::

        f = In @ Out.T;  g = (labels - sigmoid(f)) * alpha
        syn0.index_add_(0, ctx, g @ Out);  syn1neg.index_add_(0, targets, g.T @ In)
    """
    mode = "sg_shared" if shared_negatives else "sg_pair"
    _validate_step(syn0, syn1neg, centers, contexts, negatives, alpha, mode, backend)
    _validate_optional_lockf(lockf, syn0.device)
    if centers.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=syn0.device)
    impl = SGNS_STEP.select(_step_inputs(syn0, syn1neg), backend)
    return impl.run(syn0, syn1neg, centers, contexts, negatives, float(alpha), mode, True, lockf)


def cbow_step(
    syn0: torch.Tensor,
    syn1neg: torch.Tensor,
    centers: torch.Tensor,
    contexts: torch.Tensor,
    negatives: torch.Tensor,
    alpha: float,
    *,
    cbow_mean: bool = True,
    lockf: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """CBOW negative-sampling updates of B centre words, applied in row order, in place.

    Args:
        syn0, syn1neg: [V, D] input and output vectors (updated in place).
        centers: [B] centre ids; contexts: [B, C] context ids (-1 pads); negatives: [B, K].
        alpha: learning rate.
        cbow_mean: h = mean of the context vectors (True) or their sum (False). gensim's rule: with a
            sum the input error is divided by the context count, with a mean it is not.
        lockf: [L] float32 lock factors (see `sgns_step`): each context row's update is scaled by its own.
        backend: force "cpp" or "torch".

    Returns: [B] float64 loss per row (rows without contexts: 0, no update).

    Equivalent PyTorch for one row::

        h = syn0[ctx].mean(0);  for t, label in targets: f = h @ syn1neg[t]; g = (label - sigmoid(f)) * alpha
        e += g * syn1neg[t];  syn1neg[t] += g * h          (sequential over targets)
        syn0[ctx] += e
    """
    _validate_step(syn0, syn1neg, centers, contexts, negatives, alpha, "cbow", backend)
    _validate_optional_lockf(lockf, syn0.device)
    if centers.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=syn0.device)
    impl = CBOW_STEP.select(_step_inputs(syn0, syn1neg), backend)
    return impl.run(syn0, syn1neg, centers, contexts, negatives, float(alpha), "cbow", bool(cbow_mean), lockf)


class HsTree(NamedTuple):
    """Hierarchical softmax's tables (genai_fast.word2vec.huffman builds the tree).

    syn1: [V, D] output vectors of the inner nodes (rows 0..V-2 used), updated in place.
    points: [V, L] int32 inner-node ids on each word's path from the root, padded with 0.
    codes: [V, L] uint8 branch taken at each of those nodes (0 or 1); the label there is 1 - code.
    lengths: [V] int32 path length of each word (<= L).
    numpy arrays or CPU tensors (`hs_step` takes tensors, `word2vec_train_chunk` either).
    """

    syn1: Any
    points: Any
    codes: Any
    lengths: Any


def hs_step(
    syn0: torch.Tensor,
    centers: torch.Tensor,
    contexts: torch.Tensor,
    tree: HsTree,
    alpha: float,
    *,
    mode: str = "sg_shared",
    cbow_mean: bool = True,
    lockf: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Hierarchical-softmax updates of B centre words, applied in row order, in place.

    Args:
        syn0: [V, D] input vectors (updated in place).
        centers: [B] integer ids of the words to predict.
        contexts: [B, C] integer ids of each centre's context words; -1 pads short windows.
        tree: HsTree of torch tensors; tree.syn1 [V, D] (same dtype and device as syn0) is updated in place.
        alpha: learning rate.
        mode: "sg_shared": skip-gram with the row's contexts scored against the centre's path nodes at
            once (all scores from the current vectors, then the updates: two small matrix products, as
            `sgns_step` with shared negatives); "sg_pair": each context in turn walks the path (gensim's
            order); "cbow": the mean (cbow_mean) or sum of the contexts predicts the centre (with a sum
            the input error is divided by the context count, gensim's rule).
        lockf: [L] float32 lock factors (see `sgns_step`).
        backend: force "cpp" or "torch".

    Returns: [B] float64 loss per row: sum over the path nodes of -log sigmoid(+-score) (+ where the
    code is 0).

    Equivalent PyTorch for one skip-gram pair (input x = syn0[context], path nodes n_b with codes c_b)::

        for b: f = x @ syn1[n_b];  g = (1 - c_b - sigmoid(f)) * alpha;  e += g * syn1[n_b];  syn1[n_b] += g * x
        syn0[context] += e
    """
    if mode not in ("sg_shared", "sg_pair", "cbow"):
        raise ValueError(f"mode: expected 'sg_shared', 'sg_pair' or 'cbow', got {mode!r}")
    _validate_hs_step(syn0, centers, contexts, tree, alpha, backend)
    _validate_optional_lockf(lockf, syn0.device)
    if centers.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=syn0.device)
    inputs = {"device": syn0.device, "dtype": syn0.dtype, "syn0": syn0, "syn1neg": tree.syn1}
    impl = HS_STEP.select(inputs, backend)
    return impl.run(syn0, centers, contexts, tree, float(alpha), mode, bool(cbow_mean), lockf)


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
    lockf: ArrayLike | None = None,
) -> torch.Tensor:
    """Plain PyTorch updates of a batch (in place, computed in syn0's dtype): the oracle and fallback.

    mode: "sg_shared", "sg_pair" or "cbow"; shapes as in `sgns_step` / `cbow_step`; lockf: [L] lock
    factors or None (all 1). Returns loss [B] fp64.
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
                loss += _pair_update(syn0, syn1neg, word, center, negs, alpha, lockf)
            losses[r] = loss
            continue
        negs = [int(n) for n in negatives[r]]
        if mode == "sg_shared":
            losses[r] = _shared_update(syn0, syn1neg, ctx, center, negs, alpha, lockf)
        else:
            losses[r] = _cbow_update(syn0, syn1neg, ctx, center, negs, alpha, cbow_mean, lockf)
    return losses


def _negative_targets(center: int, negs: list[int]) -> tuple[list[int], list[float]]:
    """Rows and labels of negative sampling: the centre (1), then the negatives (0) other than the centre."""
    rows = [center, *(n for n in negs if n != center)]
    return rows, [1.0] + [0.0] * (len(rows) - 1)


def _sequential_rows(x: torch.Tensor, table: torch.Tensor, rows: list[int], labels: list[float],
                     alpha: float) -> tuple[torch.Tensor, float]:
    """x predicts table's rows one after another (each row sees the table as the previous ones left it):
    the negative-sampling targets or a Huffman path. Updates the rows; returns (x's error, the loss)."""
    err = torch.zeros_like(x)
    loss = 0.0
    for row, label in zip(rows, labels, strict=True):
        out = table[row]
        f = torch.dot(x, out)
        g = (label - torch.sigmoid(f)) * alpha
        loss += float(_softplus64(-f if label == 1.0 else f))
        err += g * out
        table[row] = out + g * x
    return err, loss


def _locked(err: torch.Tensor, rows: torch.Tensor | list[int], lockf: ArrayLike | None) -> torch.Tensor:
    """Input errors err [n, D] of syn0's rows `rows` [n] scaled by their lock factors lockf[row % L] (gensim's
    vectors_lockf); err itself without factors."""
    if lockf is None:
        return err
    factors = torch.as_tensor(lockf).to(device=err.device, dtype=err.dtype)
    rows = torch.as_tensor(rows, dtype=torch.long, device=err.device)
    return err * factors[rows % factors.numel()][:, None]


def _pair_update(syn0: torch.Tensor, syn1neg: torch.Tensor, word: int, center: int, negs: list[int],
                 alpha: float, lockf: ArrayLike | None = None) -> float:
    err, loss = _sequential_rows(syn0[word], syn1neg, *_negative_targets(center, negs), alpha)
    syn0[word] = syn0[word] + _locked(err[None], [word], lockf)[0]
    return loss


def _shared_update(syn0: torch.Tensor, syn1neg: torch.Tensor, ctx: torch.Tensor, center: int, negs: list[int],
                   alpha: float, lockf: ArrayLike | None = None) -> float:
    targets = torch.tensor([center, *negs], dtype=torch.long, device=syn0.device)
    valid = torch.ones(len(targets), dtype=syn0.dtype, device=syn0.device)
    valid[1:] = (targets[1:] != center).to(syn0.dtype)
    labels = torch.zeros(len(targets), dtype=syn0.dtype, device=syn0.device)
    labels[0] = 1.0
    return _shared_rows_update(syn0, syn1neg, ctx, targets, labels, valid, alpha, lockf)


def _shared_rows_update(syn0: torch.Tensor, table: torch.Tensor, ctx: torch.Tensor, rows: torch.Tensor,
                        labels: torch.Tensor, valid: torch.Tensor, alpha: float,
                        lockf: ArrayLike | None = None) -> float:
    """All contexts against the same output rows (labels [K], valid [K] 0/1): scores from the current
    vectors, then both updates (pWord2Vec's two small matrix products)."""
    if ctx.numel() == 0:
        return 0.0
    inp, out = syn0[ctx], table[rows]
    f = inp @ out.T                                       # [C, K] scores from the current vectors
    g = (labels - torch.sigmoid(f)) * alpha * valid       # [C, K]
    signed = torch.where(labels.bool(), -f, f)
    loss = float((_softplus64(signed) * valid.to(torch.float64)).sum())
    syn0_err = g @ out                                    # [C, D]
    table.index_add_(0, rows, g.T @ inp)
    syn0.index_add_(0, ctx, _locked(syn0_err, ctx, lockf))
    return loss


def _cbow_update(syn0: torch.Tensor, syn1neg: torch.Tensor, ctx: torch.Tensor, center: int, negs: list[int],
                 alpha: float, cbow_mean: bool, lockf: ArrayLike | None = None) -> float:
    return _cbow_rows_update(syn0, syn1neg, ctx, *_negative_targets(center, negs), alpha, cbow_mean, lockf)


def _cbow_rows_update(syn0: torch.Tensor, table: torch.Tensor, ctx: torch.Tensor, rows: list[int],
                      labels: list[float], alpha: float, cbow_mean: bool, lockf: ArrayLike | None = None) -> float:
    """CBOW: h = mean (or sum) of the contexts predicts table's rows in turn; gensim's rule: with a sum the
    input error is divided by the context count."""
    count = ctx.numel()
    if count == 0:
        return 0.0
    h = syn0[ctx].sum(0)
    if cbow_mean:
        h = h / count
    err, loss = _sequential_rows(h, table, rows, labels, alpha)
    if not cbow_mean:
        err = err / count
    syn0.index_add_(0, ctx, _locked(err.expand(count, -1), ctx, lockf).contiguous())
    return loss


def hs_step_reference(syn0: torch.Tensor, centers: torch.Tensor, contexts: torch.Tensor, tree: HsTree,
                      alpha: float, mode: str, cbow_mean: bool = True, lockf: ArrayLike | None = None
                      ) -> torch.Tensor:
    """Plain PyTorch hierarchical-softmax updates (in place, in syn0's dtype): the oracle and fallback.
    Shapes as in `hs_step`; lockf: [L] lock factors or None (all 1). Returns loss [B] float64."""
    losses = torch.zeros(centers.shape[0], dtype=torch.float64)
    for r, center in enumerate(centers.tolist()):
        row = contexts[r]
        ctx = row[row >= 0].to(torch.long).to(syn0.device)
        length = int(tree.lengths[center])
        nodes = tree.points[center, :length].to(torch.long).to(syn0.device)
        labels = 1.0 - tree.codes[center, :length].to(syn0.dtype).to(syn0.device)
        if mode == "cbow":
            losses[r] = _cbow_rows_update(syn0, tree.syn1, ctx, nodes.tolist(), labels.tolist(), alpha, cbow_mean,
                                          lockf)
        elif mode == "sg_shared":
            losses[r] = _shared_rows_update(syn0, tree.syn1, ctx, nodes, labels, torch.ones_like(labels), alpha,
                                            lockf)
        else:
            losses[r] = sum(_hs_path_update(syn0, tree.syn1, int(c), nodes, labels, alpha, lockf)
                            for c in ctx.tolist())
    return losses


def _hs_path_update(syn0: torch.Tensor, syn1: torch.Tensor, word: int, nodes: torch.Tensor, labels: torch.Tensor,
                    alpha: float, lockf: ArrayLike | None = None) -> float:
    err, loss = _sequential_rows(syn0[word].clone(), syn1, nodes.tolist(), labels.tolist(), alpha)
    syn0[word] += _locked(err[None], [word], lockf)[0]
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
    _check_ids_alpha_backend(vocab, (("centers", centers, 0), ("contexts", contexts, -1),
                                     ("negatives", negatives, 0)), alpha, backend)


def validate_tree(tree: Any, vocab: int, dim: int) -> None:
    """Shapes, dtypes and ranges of an HsTree (numpy arrays or tensors) for a [vocab, dim] model."""
    if not isinstance(tree, HsTree):
        raise TypeError(f"hs: expected an HsTree(syn1, points, codes, lengths), got {type(tree).__name__}")
    syn1, points, codes, lengths = (torch.as_tensor(t) if isinstance(t, np.ndarray) else t for t in tree)
    for name, t in (("syn1", syn1), ("points", points), ("codes", codes), ("lengths", lengths)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"hs.{name}: expected a numpy array or torch.Tensor, got {type(t).__name__}")
    if tuple(syn1.shape) != (vocab, dim) or not syn1.is_floating_point():
        raise ValueError(f"hs.syn1: expected a floating [V={vocab}, D={dim}] table, got {tuple(syn1.shape)} "
                         f"{syn1.dtype}")
    for name, t in (("points", points), ("codes", codes), ("lengths", lengths)):
        if not _is_int_tensor(t):
            raise TypeError(f"hs.{name}: expected integers, got {t.dtype}")
    if points.dim() != 2 or points.shape[0] != vocab or tuple(codes.shape) != tuple(points.shape):
        raise ValueError(f"hs.points/hs.codes: expected two [V={vocab}, L] tables, got {tuple(points.shape)} and "
                         f"{tuple(codes.shape)}")
    if tuple(lengths.shape) != (vocab,):
        raise ValueError(f"hs.lengths: expected [V={vocab}], got {tuple(lengths.shape)}")
    depth = points.shape[1]
    for name, t, low, high in (("lengths", lengths, 0, depth + 1), ("points", points, 0, max(vocab - 1, 1)),
                               ("codes", codes, 0, 2)):
        if t.numel() and (int(t.min()) < low or int(t.max()) >= high):
            bad = t[(t < low) | (t >= high)][0]
            raise ValueError(f"hs.{name}: value {int(bad)} is outside [{low}, {high})")


def _validate_hs_step(syn0: Any, centers: Any, contexts: Any, tree: Any, alpha: Any, backend: Any) -> None:
    if not isinstance(syn0, torch.Tensor) or syn0.dtype not in FLOAT_DTYPES or syn0.dim() != 2:
        raise TypeError(f"syn0: expected a floating [V, D] torch.Tensor, got "
                        f"{tuple(syn0.shape) if isinstance(syn0, torch.Tensor) else type(syn0).__name__}")
    validate_tree(tree, syn0.shape[0], syn0.shape[1])
    for name, t in tree._asdict().items():
        if not isinstance(t, torch.Tensor) or t.device != syn0.device:
            raise TypeError(f"tree.{name}: expected a torch.Tensor on syn0's device {syn0.device}")
    if tree.syn1.dtype != syn0.dtype:
        raise ValueError(f"tree.syn1: expected syn0's dtype {syn0.dtype}, got {tree.syn1.dtype}")
    vocab = syn0.shape[0]
    for name, t, dims in (("centers", centers, 1), ("contexts", contexts, 2)):
        if not _is_int_tensor(t):
            raise TypeError(f"{name}: expected an integer torch.Tensor, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.dim() != dims:
            raise ValueError(f"{name}: expected {dims} dimensions, got shape {tuple(t.shape)}")
    if contexts.shape[0] != centers.shape[0]:
        raise ValueError(f"contexts: expected [B={centers.shape[0]}, C], got {tuple(contexts.shape)}")
    _check_ids_alpha_backend(vocab, (("centers", centers, 0), ("contexts", contexts, -1)), alpha, backend)


def _check_ids_alpha_backend(vocab: int, ids: tuple[tuple[str, torch.Tensor, int], ...], alpha: Any,
                             backend: Any) -> None:
    """The checks every step op ends with: each (name, ids, lowest allowed id) within [low, vocab), a finite
    alpha, a known backend name."""
    for name, t, low in ids:
        if t.numel() and (int(t.min()) < low or int(t.max()) >= vocab):
            bad = t[(t < low) | (t >= vocab)][0]
            raise ValueError(f"{name}: id {int(bad)} is outside [{low}, vocab_size={vocab})")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha: expected a finite number, got {alpha!r}")
    validate_backend_name(backend)


def validate_lockf(lockf: Any, device: torch.device) -> None:
    """gensim's lock factors checked before any kernel reads them: a 1-D contiguous float32 numpy array (a CPU
    array) or torch.Tensor of at least one factor, on the tables' `device`. TypeError or ValueError naming lockf."""
    if isinstance(lockf, np.ndarray):
        is_float32, where, contiguous = lockf.dtype == np.float32, torch.device("cpu"), lockf.flags.c_contiguous
    elif isinstance(lockf, torch.Tensor):
        is_float32, where, contiguous = lockf.dtype == torch.float32, lockf.device, lockf.is_contiguous()
    else:
        raise TypeError(f"lockf: expected a float32 numpy array or torch.Tensor of lock factors, got "
                        f"{type(lockf).__name__}")
    if not is_float32:
        raise TypeError(f"lockf: expected float32 lock factors (gensim's REAL), got {lockf.dtype}")
    if lockf.ndim != 1 or lockf.shape[0] < 1:
        raise ValueError(f"lockf: expected a 1-D array of at least one lock factor, got shape {tuple(lockf.shape)}")
    if not contiguous:
        raise ValueError("lockf: expected a contiguous array (the kernels index it directly), got a strided view")
    if where != device:
        raise ValueError(f"lockf: expected lock factors on the tables' device {device}, got {where}")


def _validate_optional_lockf(lockf: Any, device: torch.device) -> None:
    if lockf is not None:
        validate_lockf(lockf, device)


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
_TORCH_STEP = Capability(devices=ANY_DEVICE, dtypes=FLOAT_DTYPES, layouts=("any",), features=("reference",))


@SGNS_STEP.register("cpp", _CPP_STEP, check=_cpp_step_check)
def _sgns_step_cpp(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean, lockf):
    from genai_fast.backends.cpp.word2vec import word2vec_step

    return word2vec_step(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean, lockf=lockf)


@SGNS_STEP.register("torch", _TORCH_STEP)
def _sgns_step_torch(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean, lockf):
    return word2vec_step_reference(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean, lockf)


@CBOW_STEP.register("cpp", _CPP_STEP, check=_cpp_step_check)
def _cbow_step_cpp(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean, lockf):
    from genai_fast.backends.cpp.word2vec import word2vec_step

    return word2vec_step(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean, lockf=lockf)


@CBOW_STEP.register("torch", _TORCH_STEP)
def _cbow_step_torch(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean, lockf):
    return word2vec_step_reference(syn0, syn1neg, centers, contexts, negatives, alpha, mode, cbow_mean, lockf)


@HS_STEP.register("cpp", _CPP_STEP, check=_cpp_step_check)
def _hs_step_cpp(syn0, centers, contexts, tree, alpha, mode, cbow_mean, lockf):
    from genai_fast.backends.cpp.word2vec import hs_step

    return hs_step(syn0, centers, contexts, tree, alpha, mode, cbow_mean, lockf)


@HS_STEP.register("torch", _TORCH_STEP)
def _hs_step_torch(syn0, centers, contexts, tree, alpha, mode, cbow_mean, lockf):
    return hs_step_reference(syn0, centers, contexts, tree, alpha, mode, cbow_mean, lockf)


# ---------------------------------------------------------------- chunk training


def word2vec_train_chunk(
    syn0: ArrayLike,
    syn1neg: ArrayLike,
    tokens: ArrayLike,
    offsets: ArrayLike,
    keep_prob: ArrayLike | None,
    alias_prob: ArrayLike,
    alias_index: ArrayLike,
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
    hs: HsTree | None = None,
    lockf: ArrayLike | None = None,
    backend: str | None = None,
) -> tuple[int, int, float]:
    """Train on a chunk of sentences, updating syn0 and syn1neg (and hs.syn1) in place (Hogwild).

    Args:
        syn0, syn1neg: [V, D] float32 C-contiguous tables: numpy arrays or CPU tensors (cpp, torch
            backends), or CUDA tensors (triton, cuda backends; CPU tensors too for a forced triton under
            TRITON_INTERPRET=1).
        tokens: [N] int32 vocabulary ids of the chunk's words, sentence after sentence.
        offsets: [S + 1] int64 sentence starts in `tokens` (offsets[0] = 0, offsets[-1] = N).
        keep_prob: [V] float32 probability of keeping each word (gensim's subsampling), or None.
        alias_prob, alias_index: [V] float32 / int32 alias-method table of the noise distribution.
        alpha_start, alpha_end: learning rate at the chunk's first and last token (linear in between).
        mode: "sg_shared", "sg_pair" or "cbow"; window, negative: as in gensim (negative 0 needs hs).
        hs: hierarchical softmax's tree and syn1 (HsTree; numpy arrays or tensors on the tables' device; not
            on the `cuda` backend): each centre gets the hierarchical-softmax update first, then the
            negative-sampling one (when negative > 0), as gensim does with hs=1 and negative > 0.
        lockf: gensim's lock factors (wv.vectors_lockf), [L] float32 (L >= 1) on the tables' device (a numpy
            array counts as the CPU): every update of syn0's row w is scaled by lockf[w % L] (0 freezes it);
            syn1neg and hs.syn1 are not affected. None (the default): all 1, at no cost.
        seed: the chunk's random seed; on the CPU workers=1 and a seed give bit-identical results. On a
            GPU a seed fixes every random draw, but concurrent float updates race (Hogwild), so results
            agree statistically, not bit for bit. `workers` is the CPU thread count (ignored on a GPU).

    Returns: (raw words read, words kept by subsampling, loss sum in float64 (0 unless compute_loss)).
    """
    if mode not in ("sg_shared", "sg_pair", "cbow"):
        raise ValueError(f"mode: expected 'sg_shared', 'sg_pair' or 'cbow', got {mode!r}")
    validate_backend_name(backend)
    for name, table in (("syn0", syn0), ("syn1neg", syn1neg)):
        if not isinstance(table, (np.ndarray, torch.Tensor)):
            raise TypeError(f"{name}: expected a numpy array or torch.Tensor, got {type(table).__name__}")
    if isinstance(syn0, torch.Tensor) != isinstance(syn1neg, torch.Tensor):
        raise TypeError(f"syn1neg: expected the same kind as syn0 ({type(syn0).__name__}), got "
                        f"{type(syn1neg).__name__}")
    if isinstance(syn0, torch.Tensor) and (syn1neg.shape != syn0.shape or syn1neg.device != syn0.device
                                           or syn1neg.dtype != syn0.dtype or syn0.dim() != 2):
        raise ValueError(f"syn1neg: expected syn0's [V, D] shape {tuple(syn0.shape)}, dtype {syn0.dtype} and device "
                         f"{syn0.device}, got {tuple(syn1neg.shape)}, {syn1neg.dtype}, {syn1neg.device}")
    if isinstance(negative, bool) or not isinstance(negative, (int, np.integer)) or negative < (0 if hs else 1):
        raise ValueError(f"negative: expected an int >= {0 if hs else 1}"
                         f"{'' if hs else ' (0 needs hierarchical softmax, hs=)'}, got {negative!r}")
    if hs is not None:
        validate_tree(hs, syn0.shape[0], syn0.shape[1] if syn0.ndim == 2 else -1)
    device = syn0.device if isinstance(syn0, torch.Tensor) else torch.device("cpu")
    _validate_optional_lockf(lockf, device)
    dtype = syn0.dtype if isinstance(syn0, torch.Tensor) else torch.float32
    inputs = {"device": device, "dtype": dtype, "syn0": syn0, "syn1neg": syn1neg, "mode": mode, "window": window,
              "negative": negative, "hs": hs is not None, "hs_depth": 0 if hs is None else int(hs.points.shape[1])}
    impl = WORD2VEC_TRAIN.select(inputs, backend)
    return impl.run(syn0, syn1neg, tokens, offsets, keep_prob, alias_prob, alias_index, alpha_start, alpha_end,
                    mode, window, negative, cbow_mean, shrink_windows, compute_loss, seed, workers, hs, lockf)


# ---- GPU chunk plan: subsampling, compaction, learning rates and slices, as torch ops on the device


@dataclass
class ChunkPlan:
    """A chunk ready for a GPU kernel (all tensors on the tables' device).

    tokens [N_kept] int32 kept ids; alphas [N_kept] fp32 learning rate of each kept token (linear in its
    raw position in the chunk); bounds [P, 4] int32: slice lo, slice hi, sentence lo, sentence hi
    (indices into tokens); raw_words and effective_words: counts before and after subsampling.
    """

    tokens: torch.Tensor
    alphas: torch.Tensor
    bounds: torch.Tensor
    raw_words: int
    effective_words: int


SLICE_PROGRAMS_PER_SM = 32  # slices aimed at per SM when the slice length is automatic
# A small chunk gets fewer, longer slices rather than thousands of programs racing on the same rows
# (Hogwild staleness grows with the number of concurrent updates of a row).
MIN_SLICE_TOKENS = 128
MAX_SLICE_TOKENS = 4096


def subsample_mask(tokens: torch.Tensor, keep_prob: torch.Tensor | None, seed: int) -> torch.Tensor:
    """Which tokens [N] subsampling keeps: u < keep_prob[token], u from torch's generator of the
    tokens' device seeded with `seed` (so one seed gives the same mask on the same device)."""
    if keep_prob is None:
        return torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
    gen = torch.Generator(device=tokens.device)
    gen.manual_seed(int(seed) & (2**63 - 1))
    u = torch.rand(tokens.shape, generator=gen, device=tokens.device)
    return u < keep_prob[tokens.long()]


def auto_slice_tokens(kept: int, device: torch.device) -> int:
    """Slice length that gives each SM about SLICE_PROGRAMS_PER_SM programs (Hogwild parallelism)."""
    if device.type != "cuda":
        return MAX_SLICE_TOKENS
    from genai_fast.backends.availability import multiprocessor_count

    target = multiprocessor_count(device) * SLICE_PROGRAMS_PER_SM
    return int(min(MAX_SLICE_TOKENS, max(MIN_SLICE_TOKENS, -(-kept // target))))


def plan_chunk(tokens: torch.Tensor, offsets: torch.Tensor, keep_prob: torch.Tensor | None, alpha_start: float,
               alpha_end: float, seed: int, slice_tokens: int | None = None) -> ChunkPlan:
    """Subsample and cut a chunk into slices (tokens [N] int32, offsets [S + 1] int64, on one device).

    Windows are formed over the kept tokens of a sentence, as in word2vec.c and gensim.
    """
    device = tokens.device
    raw = tokens.numel()
    keep = subsample_mask(tokens, keep_prob, seed)
    kept_at = keep.nonzero().squeeze(1)
    kept = int(kept_at.numel())
    alphas = (alpha_start + (alpha_end - alpha_start) * (kept_at.to(torch.float64) / max(raw, 1))).float()
    kept_before = torch.zeros(raw + 1, dtype=torch.int64, device=device)
    torch.cumsum(keep, 0, out=kept_before[1:])
    starts = kept_before[offsets]                       # [S + 1] sentence starts among kept tokens
    lengths = starts[1:] - starts[:-1]
    size = slice_tokens if slice_tokens is not None else auto_slice_tokens(kept, device)
    if size < 1:
        raise ValueError(f"slice_tokens: expected >= 1, got {size}")
    per_sentence = (lengths + size - 1) // size
    sentence = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), per_sentence)
    first = torch.cumsum(per_sentence, 0) - per_sentence
    within = torch.arange(sentence.numel(), device=device) - first[sentence]
    sent_lo, sent_hi = starts[sentence], starts[sentence + 1]
    lo = sent_lo + within * size
    hi = torch.minimum(lo + size, sent_hi)
    bounds = torch.stack([lo, hi, sent_lo, sent_hi], dim=1).to(torch.int32).contiguous()
    return ChunkPlan(tokens[kept_at].contiguous(), alphas, bounds, raw, kept)


def _as_device_tensor(name: str, value: ArrayLike, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a numpy array or torch.Tensor, got {type(value).__name__}")
    if value.dim() != 1:
        raise ValueError(f"{name}: expected one dimension, got shape {tuple(value.shape)}")
    if value.is_floating_point() != dtype.is_floating_point:
        raise TypeError(f"{name}: expected {'a floating' if dtype.is_floating_point else 'an integer'} array, "
                        f"got {value.dtype}")
    return value.to(device=device, dtype=dtype, non_blocking=True).contiguous()


def _first_outside(name: str, ids: torch.Tensor, vocab: int) -> None:
    if ids.numel():
        low, high = torch.aminmax(ids)
        if int(low) < 0 or int(high) >= vocab:
            bad = ids[(ids < 0) | (ids >= vocab)][0]
            raise ValueError(f"{name}: id {int(bad)} is outside [0, vocab_size={vocab})")


def prepare_gpu_chunk(syn0: torch.Tensor, syn1neg: torch.Tensor, tokens: ArrayLike, offsets: ArrayLike,
                      keep_prob: ArrayLike | None, alias_prob: ArrayLike, alias_index: ArrayLike,
                      window: int, negative: int, hs: bool = False) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor | None, torch.Tensor,
                                                                             torch.Tensor]:
    """Validate a chunk for a GPU kernel and move it to the tables' device (ids checked before any
    kernel touches memory). Returns tokens int32, offsets int64, keep_prob, alias_prob, alias_index."""
    vocab, _ = syn0.shape
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 1000:
        raise ValueError(f"window: expected an int in 1..1000, got {window!r}")
    low = 0 if hs else 1  # negative 0: hierarchical softmax alone
    if isinstance(negative, bool) or not isinstance(negative, int) or not low <= negative <= 1000:
        raise ValueError(f"negative: expected an int in {low}..1000, got {negative!r}")
    device = syn0.device
    tok = _as_device_tensor("tokens", tokens, torch.int32, device)
    if tok.numel() >= 2**31:
        raise ValueError(f"tokens: expected fewer than 2^31 tokens per chunk, got {tok.numel()}")
    off = _as_device_tensor("offsets", offsets, torch.int64, device)
    if off.numel() < 1 or int(off[0]) != 0 or int(off[-1]) != tok.numel():
        raise ValueError(f"offsets: expected offsets[0] = 0 and offsets[-1] = {tok.numel()} (the token count), "
                         f"got {off[:1].tolist()} ... {off[-1:].tolist()}")
    if off.numel() > 1 and bool((off[1:] < off[:-1]).any()):
        raise ValueError("offsets: expected non-decreasing values")
    _first_outside("tokens", tok, vocab)
    keep = None if keep_prob is None else _as_device_tensor("keep_prob", keep_prob, torch.float32, device)
    prob = _as_device_tensor("alias_prob", alias_prob, torch.float32, device)
    alias = _as_device_tensor("alias_index", alias_index, torch.int32, device)
    for name, t in (("keep_prob", keep), ("alias_prob", prob), ("alias_index", alias)):
        if t is not None and t.numel() != vocab:
            raise ValueError(f"{name}: expected vocab_size={vocab} elements, got {t.numel()}")
    _first_outside("alias_index", alias, vocab)
    return tok, off, keep, prob, alias


def _gpu_train_check(inputs: dict[str, Any]) -> list[str]:
    reasons = []
    syn0, syn1 = inputs["syn0"], inputs["syn1neg"]
    for name, t in (("syn0", syn0), ("syn1neg", syn1)):
        if not isinstance(t, torch.Tensor):
            reasons.append(f"{name} is a {type(t).__name__}, not a torch.Tensor on the kernel's device")
        elif t.dim() != 2 or not t.is_contiguous():
            reasons.append(f"{name} is not a contiguous [V, D] tensor (the tables are updated in place)")
    if not reasons and (syn1.shape != syn0.shape or syn1.device != syn0.device or syn1.dtype != syn0.dtype):
        reasons.append(f"syn1neg {tuple(syn1.shape)} {syn1.dtype} {syn1.device} does not match syn0 "
                       f"{tuple(syn0.shape)} {syn0.dtype} {syn0.device}")
    return reasons


def _train_chunk_gpu(launch: Any, syn0, syn1neg, tokens, offsets, keep_prob, alias_prob, alias_index, alpha_start,
                     alpha_end, mode, window, negative, cbow_mean, shrink_windows, compute_loss, seed, hs=None,
                     lockf=None, slice_tokens: int | None = None) -> tuple[int, int, float]:
    tok, off, keep, prob, alias = prepare_gpu_chunk(syn0, syn1neg, tokens, offsets, keep_prob, alias_prob,
                                                    alias_index, window, negative, hs is not None)
    seed = int(seed) & (2**63 - 1)
    plan = plan_chunk(tok, off, keep, float(alpha_start), float(alpha_end), seed, slice_tokens)
    tree = {} if hs is None else {"tree": device_tree(hs, syn0)}
    if isinstance(lockf, np.ndarray):  # validated: on the CPU, so the tables are too (the interpreter's case)
        lockf = torch.from_numpy(lockf)
    loss = launch(syn0, syn1neg, plan.tokens, plan.alphas, plan.bounds, prob, alias, mode=mode, window=window,
                  negative=negative, cbow_mean=cbow_mean, shrink_windows=shrink_windows,
                  compute_loss=compute_loss, seed=seed, lockf=lockf, **tree)
    return plan.raw_words, plan.effective_words, float(loss.sum()) if compute_loss else 0.0


def device_tree(hs: HsTree, syn0: torch.Tensor) -> HsTree:
    """The tree as contiguous tensors on syn0's device (syn1 must already be there: it is updated in place)."""
    syn1 = torch.from_numpy(hs.syn1) if isinstance(hs.syn1, np.ndarray) else hs.syn1
    if syn1.device != syn0.device or syn1.dtype != torch.float32 or not syn1.is_contiguous():
        raise ValueError(f"hs.syn1: expected a contiguous float32 table on syn0's device {syn0.device} (it is "
                         f"updated in place), got {syn1.dtype} on {syn1.device}")

    def table(a: ArrayLike, dtype: torch.dtype) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
        return t.to(device=syn0.device, dtype=dtype).contiguous()

    return HsTree(syn1, table(hs.points, torch.int32), table(hs.codes, torch.uint8), table(hs.lengths, torch.int32))


def _cuda_train_check(inputs: dict[str, Any]) -> list[str]:
    reasons = _gpu_train_check(inputs)
    syn0 = inputs["syn0"]
    if not reasons and isinstance(inputs["window"], int) and isinstance(inputs["negative"], int):
        from genai_fast.backends.cuda.word2vec import (
            MAX_OPTIN_SHARED_BYTES,
            device_shared_limit,
            shared_memory_reasons,
        )

        limit = MAX_OPTIN_SHARED_BYTES  # the device's own where it has one (tables elsewhere are refused above)
        if syn0.device.type == "cuda":
            limit = device_shared_limit(syn0.device.index if syn0.device.index is not None
                                        else torch.cuda.current_device())
        reasons += shared_memory_reasons(inputs["mode"], syn0.shape[1], inputs["window"], inputs["negative"],
                                         inputs.get("hs_depth", 0), limit)
    return reasons


# CUDA before Triton: on an H200 the CUDA trainer ran a 2.1M-token skip-gram chunk in 33 ms, Triton in 70 ms,
# and trained the Debian corpus at 26.6M words/s against 12.6M (bench/results/nvidia-h200-20261128.md).
# Compute capability 7.5 and up: CUDA 13's NVRTC no longer compiles for Volta (sm_70/72), whose GPUs get Triton.
@WORD2VEC_TRAIN.register(
    "cuda",
    Capability(devices=("cuda",), dtypes=(torch.float32,), min_compute_capability=(7, 5),
               features=("Hogwild over sentence slices", "a warp per slice", "pWord2Vec shared negatives",
                         "counter-based Philox draws (same stream as triton)", "NVRTC via CuPy")),
    check=_cuda_train_check,
)
def _train_chunk_cuda(syn0, syn1neg, tokens, offsets, keep_prob, alias_prob, alias_index, alpha_start, alpha_end,
                      mode, window, negative, cbow_mean, shrink_windows, compute_loss, seed, workers, hs, lockf):
    from genai_fast.backends.cuda.word2vec import word2vec_train_fwd

    return _train_chunk_gpu(word2vec_train_fwd, syn0, syn1neg, tokens, offsets, keep_prob, alias_prob, alias_index,
                            alpha_start, alpha_end, mode, window, negative, cbow_mean, shrink_windows, compute_loss,
                            seed, hs, lockf)


@WORD2VEC_TRAIN.register(
    "triton",
    Capability(devices=("cuda", "cpu"), dtypes=(torch.float32,),
               features=("Hogwild over sentence slices", "pWord2Vec shared negatives (tl.dot)",
                         "counter-based Philox draws", "alias-method noise sampling")),
    check=_gpu_train_check,
)
def _train_chunk_triton(syn0, syn1neg, tokens, offsets, keep_prob, alias_prob, alias_index, alpha_start, alpha_end,
                        mode, window, negative, cbow_mean, shrink_windows, compute_loss, seed, workers, hs, lockf):
    from genai_fast.kernels.word2vec import word2vec_train_fwd

    return _train_chunk_gpu(word2vec_train_fwd, syn0, syn1neg, tokens, offsets, keep_prob, alias_prob, alias_index,
                            alpha_start, alpha_end, mode, window, negative, cbow_mean, shrink_windows, compute_loss,
                            seed, hs, lockf)


def _as_numpy_table(name: str, table: ArrayLike) -> np.ndarray:
    if isinstance(table, torch.Tensor):
        if table.device.type != "cpu":
            raise ValueError(f"{name}: the CPU backends need CPU tables, got a tensor on {table.device}")
        return table.detach().numpy()  # shares memory: in-place updates reach the tensor
    return table


def _as_numpy(value: ArrayLike | None) -> np.ndarray | None:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


@WORD2VEC_TRAIN.register(
    "cpp",
    Capability(devices=("cpu",), dtypes=(torch.float32,),
               features=("Hogwild std::threads", "pWord2Vec shared negatives", "alias-method noise sampling")),
)
def _train_chunk_cpp(syn0, syn1neg, tokens, offsets, keep_prob, alias_prob, alias_index, alpha_start, alpha_end,
                     mode, window, negative, cbow_mean, shrink_windows, compute_loss, seed, workers, hs, lockf):
    from genai_fast.backends.cpp.word2vec import word2vec_train

    return word2vec_train(_as_numpy_table("syn0", syn0), _as_numpy_table("syn1neg", syn1neg), _as_numpy(tokens),
                          _as_numpy(offsets), _as_numpy(keep_prob), _as_numpy(alias_prob), _as_numpy(alias_index),
                          alpha_start, alpha_end, mode, window, negative, cbow_mean, shrink_windows, compute_loss,
                          seed, workers, hs, _as_numpy(lockf))


@WORD2VEC_TRAIN.register(
    "torch", Capability(devices=("cpu",), dtypes=(torch.float32,), features=("reference (one thread, slow)",))
)
def _train_chunk_torch(syn0, syn1neg, tokens, offsets, keep_prob, alias_prob, alias_index, alpha_start, alpha_end,
                       mode, window, negative, cbow_mean, shrink_windows, compute_loss, seed, workers, hs, lockf):
    """The same algorithm in Python over the step references: correct but slow (a fallback, not a path)."""
    syn0, syn1neg = _as_numpy_table("syn0", syn0), _as_numpy_table("syn1neg", syn1neg)
    tokens, offsets, keep_prob = _as_numpy(tokens), _as_numpy(offsets), _as_numpy(keep_prob)
    alias_prob, alias_index = _as_numpy(alias_prob), _as_numpy(alias_index)
    vocab = syn0.shape[0]
    for name, ids in (("tokens", tokens), ("alias_index", alias_index)):
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"{name}: ids outside [0, vocab_size={vocab})")
    rng = np.random.default_rng(seed)
    tables = (torch.from_numpy(syn0), torch.from_numpy(syn1neg),
              None if hs is None else HsTree(*(torch.as_tensor(_as_numpy(t)) for t in hs)))
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
            loss += _reference_centre(tables, int(words[i]), ctx, torch.from_numpy(negs), alpha, mode, cbow_mean,
                                      lockf)
    return raw, effective, (loss if compute_loss else 0.0)


def _reference_centre(tables: tuple[torch.Tensor, torch.Tensor, HsTree | None], centre: int, ctx: list[int],
                      negs: torch.Tensor, alpha: float, mode: str, cbow_mean: bool,
                      lockf: ArrayLike | None = None) -> float:
    """One centre's updates in the C++ trainer's order: hierarchical softmax first, then negative sampling
    (skip-gram pair by pair: each context's hs update, then its negatives)."""
    syn0, syn1neg, tree = tables
    centers = torch.tensor([centre])
    pairs = [([c], negs[:, j:j + 1]) for j, c in enumerate(ctx)] if mode == "sg_pair" else [(ctx, negs)]
    loss = 0.0
    for words, row_negs in pairs:
        contexts = torch.tensor([words])
        if tree is not None:
            loss += float(hs_step_reference(syn0, centers, contexts, tree, alpha, mode, cbow_mean, lockf).sum())
        if row_negs.shape[-1] > 0:
            loss += float(word2vec_step_reference(syn0, syn1neg, centers, contexts, row_negs, alpha, mode,
                                                  cbow_mean, lockf).sum())
    return loss


# ---- the GPU kernels' random stream, in numpy (the tests' oracle for the draws)

_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32(seed: int, counters: np.ndarray, rounds: int = 10) -> tuple[np.ndarray, ...]:
    """Philox 4x32 of 64-bit counters [n] (c0 = low, c1 = high 32 bits, c2 = c3 = 0) under key = seed:
    the numbers Triton's `tl.randint4x(seed, counters)` and csrc/cuda/word2vec.cu produce (uint32 x 4)."""
    counters = np.asarray(counters, dtype=np.uint64)
    c0, c1 = counters & _MASK32, counters >> np.uint64(32)
    c2 = c3 = np.zeros_like(c0)
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64((seed >> 32) & 0xFFFFFFFF)
    a, b = np.uint64(_PHILOX_ROUND_A), np.uint64(_PHILOX_ROUND_B)
    for _ in range(rounds):
        p0, p2 = a * c0, b * c2  # exact 64-bit products of 32-bit values
        c0, c1, c2, c3 = (p2 >> np.uint64(32)) ^ c1 ^ k0, p2 & _MASK32, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _MASK32
        k0, k1 = (k0 + np.uint64(_PHILOX_KEY_A)) & _MASK32, (k1 + np.uint64(_PHILOX_KEY_B)) & _MASK32
    return c0, c1, c2, c3


def word2vec_draws_reference(num_centres: int, alias_prob: np.ndarray, alias_index: np.ndarray, *, mode: str,
                             window: int, negative: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The GPU kernels' draws for kept indices 0..num_centres-1 (see kernels/word2vec.py):
    window shrink [N] int32 and noise words [N, sets, K] int32 (sets = 2*window for sg_pair, else 1)."""
    sets = 2 * window if mode == "sg_pair" else 1
    stride = 1 + sets * negative
    base = np.arange(num_centres, dtype=np.uint64) * np.uint64(stride)
    r0, _, _, _ = philox4x32(seed, base)
    shrink = ((r0 * np.uint64(window)) >> np.uint64(32)).astype(np.int32)
    slots = base[:, None] + np.uint64(1) + np.arange(sets * negative, dtype=np.uint64)[None, :]
    r0, r1, _, _ = philox4x32(seed, slots.reshape(-1))
    vocab = len(alias_prob)
    idx = ((r0 * np.uint64(vocab)) >> np.uint64(32)).astype(np.int64)
    u = (r1 >> np.uint64(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    noise = np.where(u < alias_prob[idx], idx, alias_index[idx]).astype(np.int32)
    return shrink, noise.reshape(num_centres, sets, negative)
