"""Launchers for the C++ word2vec kernels (csrc/cpu/word2vec.cpp): tensors cross as (address, count) pairs.

The C++ side validates every size and id before touching memory; these launchers only make the
buffers contiguous CPU arrays of the right dtype (int32 ids, int64 offsets, float32 tables).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genai_fast.backends.cpp import extension, require_cpu

_INT32 = np.iinfo(np.int32)

MODE_CODES = {"sg_pair": 0, "sg_shared": 1, "cbow": 2}


def _numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU array or tensor (shares memory, so in-place updates reach it)."""
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _tree_args(tree: Any) -> tuple[dict[str, int], tuple[np.ndarray, ...]]:
    """The _C keyword arguments of a hierarchical-softmax tree (ops.word2vec_ops.HsTree), or none for None,
    and the arrays behind them, which the caller keeps alive until the call returns."""
    if tree is None:
        return {}, ()
    syn1 = _numpy(tree.syn1)
    if syn1.dtype != np.float32 or not syn1.flags.c_contiguous or not syn1.flags.writeable:
        raise ValueError(f"hs.syn1: expected a writeable C-contiguous float32 table (updated in place), got "
                         f"{syn1.dtype}")
    points = _int32_array("hs.points", _numpy(tree.points))
    codes = np.ascontiguousarray(_numpy(tree.codes), dtype=np.uint8)
    lengths = _int32_array("hs.lengths", _numpy(tree.lengths))
    kwargs = {"syn1": int(syn1.ctypes.data), "syn1_numel": syn1.size, "points": int(points.ctypes.data),
              "points_numel": points.size, "codes": int(codes.ctypes.data), "codes_numel": codes.size,
              "lengths": int(lengths.ctypes.data), "lengths_numel": lengths.size,
              "depth": int(points.shape[1]) if points.ndim == 2 else -1}
    return kwargs, (syn1, points, codes, lengths)


def _lockf_args(lockf: np.ndarray | torch.Tensor | None) -> tuple[dict[str, int], np.ndarray | None]:
    """The _C keyword arguments of gensim's lock factors ([L] float32, L >= 1, contiguous, on the CPU; checked
    here, before the kernel reads them), none for None (every factor 1: the kernel's unscaled path), and the
    array behind them, which the caller keeps alive until the call returns."""
    if lockf is None:
        return {}, None
    from genai_fast.ops.word2vec_ops import validate_lockf

    validate_lockf(lockf, torch.device("cpu"))
    factors = _numpy(lockf)
    return {"lockf": int(factors.ctypes.data), "lockf_numel": factors.size}, factors


def _int32_array(name: str, a: np.ndarray) -> np.ndarray:
    """a as a C-contiguous int32 array; ValueError when a value does not fit (a cast would wrap it around into
    another, valid-looking id)."""
    if a.dtype != np.int32 and a.size and (a.min() < _INT32.min or a.max() > _INT32.max):
        raise ValueError(f"{name}: expected values that fit in int32, got {a.min()} .. {a.max()}")
    return np.ascontiguousarray(a, dtype=np.int32)


def _ids(name: str, t: torch.Tensor) -> torch.Tensor:
    """t as a contiguous int32 CPU tensor; ValueError when an id does not fit in int32 (see _int32_array)."""
    if t.dtype != torch.int32 and t.numel() and (t.min() < _INT32.min or t.max() > _INT32.max):
        raise ValueError(f"{name}: expected ids that fit in int32, got {int(t.min())} .. {int(t.max())}")
    return t.detach().to(device="cpu", dtype=torch.int32).contiguous()


def _require_table(name: str, table: torch.Tensor) -> None:
    """An embedding table the kernel updates in place: a contiguous float32 [V, D] CPU tensor."""
    require_cpu(name, table, contiguous=True)
    if table.dim() != 2:
        raise ValueError(f"{name}: expected a [vocab, dim] table, got shape {tuple(table.shape)}")


def word2vec_step(syn0: torch.Tensor, syn1neg: torch.Tensor | None, centers: torch.Tensor, contexts: torch.Tensor,
                  negatives: torch.Tensor, alpha: float, mode: str, cbow_mean: bool, tree: Any = None,
                  lockf: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the updates of a batch in place (syn0, syn1neg: contiguous float32 [V, D]; syn1neg may be None
    with a hierarchical-softmax tree and no negatives; lockf: [L] float32 lock factors or None); returns loss
    [B] fp64."""
    _require_table("syn0", syn0)
    if syn1neg is not None:
        _require_table("syn1neg", syn1neg)
        if syn1neg.shape != syn0.shape:
            raise ValueError(f"syn1neg: expected syn0's shape {tuple(syn0.shape)}, got {tuple(syn1neg.shape)}")
    centers32, contexts32 = _ids("centers", centers), _ids("contexts", contexts)
    negatives32 = _ids("negatives", negatives)
    batch = centers32.numel()
    num_contexts = contexts32.shape[1] if contexts32.dim() == 2 else 0
    negative = negatives32.shape[-1] if negatives32.dim() >= 2 else 0
    loss = torch.zeros(batch, dtype=torch.float64)
    tree_kwargs, _keep_alive = _tree_args(tree)
    lockf_kwargs, _keep_factors = _lockf_args(lockf)
    syn1neg_addr, syn1neg_numel = (0, 0) if syn1neg is None else (syn1neg.data_ptr(), syn1neg.numel())
    extension().word2vec_step(
        syn0.data_ptr(), syn0.numel(), syn1neg_addr, syn1neg_numel, syn0.shape[0], syn0.shape[1],
        centers32.data_ptr(), centers32.numel(), contexts32.data_ptr(), contexts32.numel(),
        negatives32.data_ptr(), negatives32.numel(), batch, num_contexts, negative,
        loss.data_ptr(), loss.numel(), float(alpha), MODE_CODES[mode], bool(cbow_mean), **tree_kwargs,
        **lockf_kwargs,
    )
    return loss


def hs_step(syn0: torch.Tensor, centers: torch.Tensor, contexts: torch.Tensor, tree: Any, alpha: float,
            mode: str, cbow_mean: bool, lockf: torch.Tensor | None = None) -> torch.Tensor:
    """Hierarchical-softmax updates of a batch in place (mode and lockf as word2vec_step's); loss [B] fp64."""
    no_negatives = torch.zeros((*contexts.shape, 0) if mode == "sg_pair" else (centers.shape[0], 0),
                               dtype=torch.int32)
    return word2vec_step(syn0, None, centers, contexts, no_negatives, alpha, mode, cbow_mean, tree, lockf)


def word2vec_train(syn0: np.ndarray, syn1neg: np.ndarray, tokens: np.ndarray, offsets: np.ndarray,
                   keep_prob: np.ndarray | None, alias_prob: np.ndarray, alias_index: np.ndarray,
                   alpha_start: float, alpha_end: float, mode: str, window: int, negative: int, cbow_mean: bool,
                   shrink_windows: bool, compute_loss: bool, seed: int, workers: int,
                   tree: Any = None, lockf: np.ndarray | None = None) -> tuple[int, int, float]:
    """Train a chunk on `workers` Hogwild threads; numpy arrays (float32 tables, int32 ids, int64 offsets).
    tree: an ops.word2vec_ops.HsTree for hierarchical softmax, or None; lockf: [L] float32 lock factors
    (gensim's vectors_lockf), or None for all 1.

    Returns (raw_words, effective_words, loss_sum).
    """
    def addr(a: np.ndarray) -> int:
        return int(a.ctypes.data)

    for name, arr, dtype in (("syn0", syn0, np.float32), ("syn1neg", syn1neg, np.float32),
                             ("tokens", tokens, np.int32), ("offsets", offsets, np.int64),
                             ("alias_prob", alias_prob, np.float32), ("alias_index", alias_index, np.int32)):
        if arr.dtype != dtype or not arr.flags.c_contiguous:
            raise ValueError(f"{name}: expected a C-contiguous {np.dtype(dtype).name} array, got {arr.dtype}")
    if not (syn0.flags.writeable and syn1neg.flags.writeable):
        raise ValueError("syn0/syn1neg: expected writeable arrays")
    if keep_prob is not None and (keep_prob.dtype != np.float32 or not keep_prob.flags.c_contiguous):
        raise ValueError(f"keep_prob: expected a C-contiguous float32 array, got {keep_prob.dtype}")
    keep_addr, keep_numel = (0, 0) if keep_prob is None else (addr(keep_prob), keep_prob.size)
    tree_kwargs, _keep_alive = _tree_args(tree)
    lockf_kwargs, _keep_factors = _lockf_args(lockf)
    raw, effective, loss = extension().word2vec_train(
        addr(tokens), tokens.size, addr(offsets), offsets.size, addr(syn0), syn0.size, addr(syn1neg), syn1neg.size,
        syn0.shape[0], syn0.shape[1], keep_addr, keep_numel, addr(alias_prob), addr(alias_index), alias_prob.size,
        float(alpha_start), float(alpha_end), MODE_CODES[mode], int(window), int(negative), bool(cbow_mean),
        bool(shrink_windows), bool(compute_loss), int(seed) & 0xFFFFFFFFFFFFFFFF, int(workers), **tree_kwargs,
        **lockf_kwargs,
    )
    return int(raw), int(effective), float(loss)
