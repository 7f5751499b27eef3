"""Triton word2vec training (skip-gram and CBOW; negative sampling, hierarchical softmax or both): Hogwild
over sentence slices, one program each.

The host side (`genai_fast.ops.word2vec_ops.plan_chunk`) subsamples the chunk on the device, compacts
the kept tokens, gives each kept token its learning rate (linear in its raw position in the chunk)
and cuts sentences into slices of at most `slice_tokens` kept tokens. Program p walks the centres of
slice p in order; its windows read the whole sentence (neighbouring slices run concurrently on other
programs: Hogwild, as in word2vec.c and gensim).

Per centre, all in registers, then scattered with atomic adds (so duplicate ids accumulate, as
`index_add_` does in the reference):
- skip-gram, shared negatives (pWord2Vec): In [C, D] x Out [K+1, D]^T -> scores [C, K+1] (tl.dot),
  errors g, then g @ Out (input updates) and g^T @ In (output updates), both from the old rows;
- skip-gram, pair by pair (gensim's order): per context, its own negatives, scores as row sums;
- CBOW: h = mean (or sum) of the context rows predicts the centre.
Within one update the K+1 scores come from the rows as they were before it (the C++ kernel updates
a repeated negative row between its two scores; the difference is one of ordering, not of result).

Hierarchical softmax (HS) uses the same three updates with other output rows: the centre's Huffman path
(its inner-node rows of the tree's syn1, labels 1 - code, at most BLOCK_L of them). With both HS and
negatives, a centre's HS update (for every context) comes first, then its negative-sampling update from
the input rows as HS left them (the C++ kernel interleaves them context by context in pair mode).

Lock factors (gensim's vectors_lockf, LOCKF=True): every update of input row w is scaled by lockf[w % L]
before its atomic add, and a row whose factor is 0 is not written at all; output rows are never scaled.
Without them (LOCKF=False, the default) the scaling is compiled away.

Randomness is counter-based (Philox 4x32-10, Triton's `randint4x`): the draws of the centre at kept
index i use counters i * draw_stride + slot, so they do not depend on which program runs it or when.
slot 0: the window shrink b = (r0 * window) >> 32; slot 1 + s * K + k: the k-th negative of context
set s (s = 0 for shared/CBOW; the window position for pairs): idx = (r0 * V) >> 32, u = (r1 >> 8) /
2^24, noise = idx if u < alias_prob[idx] else alias_index[idx]. csrc/cuda/word2vec.cu draws the same
numbers, and `word2vec_draws_reference` (numpy) reproduces them for tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genai_fast.backends import memory

MODES = {"sg_pair": 0, "sg_shared": 1, "cbow": 2}


@triton.jit
def _noise_words(seed, counters, prob_ptr, alias_ptr, V):
    """Noise word ids for a block of int64 Philox counters (alias method)."""
    r0, r1, _, _ = tl.randint4x(seed, counters)
    idx = ((r0.to(tl.uint64) * tl.cast(V, tl.uint64)) >> 32).to(tl.int32)
    u = (r1 >> 8).to(tl.float32) * (1.0 / 16777216.0)
    prob = tl.load(prob_ptr + idx)
    alias = tl.load(alias_ptr + idx)
    return tl.where(u < prob, idx, alias)


@triton.jit
def _window_shrink(seed, counter, window):
    """The centre's window reduction b in [0, window) (counter: a one-element int64 block)."""
    r0, _, _, _ = tl.randint4x(seed, counter)
    return tl.sum(((r0.to(tl.uint64) * tl.cast(window, tl.uint64)) >> 32).to(tl.int32), axis=0)


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) without overflow."""
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _locked_rows(err, row_mask, ids, id_mask, lockf_ptr, lockf_len, LOCKF: tl.constexpr):
    """Input errors err [C, D] of syn0's rows `ids` [C] scaled by their lock factors (gensim's
    vectors_lockf[id % L]), and row_mask [C, D] without the rows whose factor is 0 (frozen rows are not
    written). Both as they are when LOCKF is off."""
    if LOCKF:
        factors = tl.load(lockf_ptr + ids % lockf_len, mask=id_mask, other=0.0)
        err = err * factors[:, None]
        row_mask = row_mask & (factors != 0.0)[:, None]
    return err, row_mask


@triton.jit
def _locked_row(err, d_mask, word, lockf_ptr, lockf_len, LOCKF: tl.constexpr):
    """_locked_rows for one input row `word`: err [D] scaled by its factor, d_mask [D] cleared when it is 0."""
    if LOCKF:
        factor = tl.load(lockf_ptr + word % lockf_len)
        err = err * factor
        nonzero = (tl.zeros_like(err) + factor) != 0.0  # a [D] block: the interpreter cannot AND a scalar
        d_mask = d_mask & nonzero
    return err, d_mask


@triton.jit
def _word2vec_train_kernel(
    syn0_ptr, syn1_ptr, tokens_ptr, alphas_ptr, bounds_ptr, prob_ptr, alias_ptr, loss_ptr,
    tree_syn1_ptr, points_ptr, codes_ptr, lengths_ptr, depth, lockf_ptr, lockf_len,
    V, D, seed, window, negative, draw_stride,
    MODE: tl.constexpr, CBOW_MEAN: tl.constexpr, SHRINK: tl.constexpr, COMPUTE_LOSS: tl.constexpr,
    HS: tl.constexpr, NS: tl.constexpr, LOCKF: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid = tl.program_id(0)
    slice_lo = tl.load(bounds_ptr + pid * 4)
    slice_hi = tl.load(bounds_ptr + pid * 4 + 1)
    sent_lo = tl.load(bounds_ptr + pid * 4 + 2)
    sent_hi = tl.load(bounds_ptr + pid * 4 + 3)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    offs_c = tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k <= negative
    labels = tl.where(offs_k == 0, 1.0, 0.0)
    zero_counter = tl.zeros([1], dtype=tl.int64)
    loss = tl.zeros([1], dtype=tl.float64)
    for i in range(slice_lo, slice_hi):
        centre = tl.load(tokens_ptr + i)
        alpha = tl.load(alphas_ptr + i)
        base = tl.cast(i, tl.int64) * draw_stride
        b = 0
        if SHRINK:
            b = _window_shrink(seed, zero_counter + base, window)
        j0 = tl.maximum(sent_lo, i - window + b)
        j1 = tl.minimum(sent_hi, i + window + 1 - b)
        # Window slot t covers position i - window + t, skipping the centre itself.
        pos_c = i - window + offs_c + (offs_c >= window).to(tl.int32)
        c_mask = (offs_c < 2 * window) & (pos_c >= j0) & (pos_c < j1)
        if HS:
            loss += _hs_updates(syn0_ptr, tree_syn1_ptr, tokens_ptr, points_ptr, codes_ptr, lengths_ptr, depth,
                                lockf_ptr, lockf_len, D, window, centre, alpha, i, j0, j1, pos_c, c_mask, offs_d,
                                d_mask, MODE, CBOW_MEAN, COMPUTE_LOSS, LOCKF, BLOCK_L)
            tl.debug_barrier()
        if NS:
            loss += _ns_updates(syn0_ptr, syn1_ptr, tokens_ptr, prob_ptr, alias_ptr, lockf_ptr, lockf_len, V, D, seed,
                                window, negative, centre, alpha, base, i, j0, j1, pos_c, c_mask, offs_k, k_mask,
                                labels, offs_d, d_mask, MODE, CBOW_MEAN, COMPUTE_LOSS, LOCKF)
        # The next centre reads rows this one wrote: make this program's atomics visible to all its threads.
        tl.debug_barrier()
    tl.store(loss_ptr + pid + tl.arange(0, 1), loss)


@triton.jit
def _ns_updates(syn0_ptr, syn1_ptr, tokens_ptr, prob_ptr, alias_ptr, lockf_ptr, lockf_len, V, D, seed, window,
                negative, centre, alpha, base, i, j0, j1, pos_c, c_mask, offs_k, k_mask, labels, offs_d, d_mask,
                MODE: tl.constexpr, CBOW_MEAN: tl.constexpr, COMPUTE_LOSS: tl.constexpr, LOCKF: tl.constexpr):
    """Negative sampling for one centre: the centre and its noise words are the output rows."""
    if MODE == 0:
        loss = _pair_updates(syn0_ptr, syn1_ptr, tokens_ptr, prob_ptr, alias_ptr, lockf_ptr, lockf_len, V, D, seed,
                             window, negative, centre, alpha, base, i, j0, j1, offs_k, k_mask, labels, offs_d, d_mask,
                             COMPUTE_LOSS, LOCKF)
    else:
        ctx = tl.load(tokens_ptr + pos_c, mask=c_mask, other=0)
        noise = _noise_words(seed, base + offs_k, prob_ptr, alias_ptr, V)
        targets = tl.where(offs_k == 0, centre, noise)
        valid_k = k_mask & ((offs_k == 0) | (targets != centre))
        row_mask_c = c_mask[:, None] & d_mask[None, :]
        row_mask_k = valid_k[:, None] & d_mask[None, :]
        in_ptrs = syn0_ptr + ctx.to(tl.int64)[:, None] * D + offs_d[None, :]
        out_ptrs = syn1_ptr + targets.to(tl.int64)[:, None] * D + offs_d[None, :]
        # Through L2 only (.cg): other SMs update these rows all the time; an L1 copy would go stale.
        inp = tl.load(in_ptrs, mask=row_mask_c, other=0.0, cache_modifier=".cg")
        out = tl.load(out_ptrs, mask=row_mask_k, other=0.0, cache_modifier=".cg")
        if MODE == 1:
            loss = _shared_update(inp, out, in_ptrs, out_ptrs, row_mask_c, row_mask_k, ctx, c_mask, valid_k, labels,
                                  alpha, lockf_ptr, lockf_len, COMPUTE_LOSS, LOCKF)
        else:
            loss = _cbow_update(inp, out, in_ptrs, out_ptrs, row_mask_c, row_mask_k, ctx, c_mask, valid_k, labels,
                                alpha, lockf_ptr, lockf_len, CBOW_MEAN, COMPUTE_LOSS, LOCKF)
    return loss


@triton.jit
def _hs_updates(syn0_ptr, syn1_ptr, tokens_ptr, points_ptr, codes_ptr, lengths_ptr, depth, lockf_ptr, lockf_len, D,
                window, centre, alpha, i, j0, j1, pos_c, c_mask, offs_d, d_mask, MODE: tl.constexpr,
                CBOW_MEAN: tl.constexpr, COMPUTE_LOSS: tl.constexpr, LOCKF: tl.constexpr, BLOCK_L: tl.constexpr):
    """Hierarchical softmax for one centre: its Huffman path's rows are the output rows, labels 1 - code."""
    offs_l = tl.arange(0, BLOCK_L)
    path_at = tl.cast(centre, tl.int64) * depth + offs_l
    l_mask = offs_l < tl.load(lengths_ptr + centre)
    nodes = tl.load(points_ptr + path_at, mask=l_mask, other=0)
    labels = 1.0 - tl.load(codes_ptr + path_at, mask=l_mask, other=0).to(tl.float32)
    node_ptrs = syn1_ptr + nodes.to(tl.int64)[:, None] * D + offs_d[None, :]
    row_mask_l = l_mask[:, None] & d_mask[None, :]
    loss = tl.zeros([1], dtype=tl.float64)
    if MODE == 0:
        loss += _pair_path_updates(syn0_ptr, tokens_ptr, lockf_ptr, lockf_len, node_ptrs, row_mask_l, l_mask, labels,
                                   alpha, D, window, i, j0, j1, offs_d, d_mask, COMPUTE_LOSS, LOCKF)
    else:
        ctx = tl.load(tokens_ptr + pos_c, mask=c_mask, other=0)
        in_ptrs = syn0_ptr + ctx.to(tl.int64)[:, None] * D + offs_d[None, :]
        row_mask_c = c_mask[:, None] & d_mask[None, :]
        inp = tl.load(in_ptrs, mask=row_mask_c, other=0.0, cache_modifier=".cg")
        node = tl.load(node_ptrs, mask=row_mask_l, other=0.0, cache_modifier=".cg")
        if MODE == 1:
            loss += _shared_update(inp, node, in_ptrs, node_ptrs, row_mask_c, row_mask_l, ctx, c_mask, l_mask, labels,
                                   alpha, lockf_ptr, lockf_len, COMPUTE_LOSS, LOCKF)
        else:
            loss += _cbow_update(inp, node, in_ptrs, node_ptrs, row_mask_c, row_mask_l, ctx, c_mask, l_mask, labels,
                                 alpha, lockf_ptr, lockf_len, CBOW_MEAN, COMPUTE_LOSS, LOCKF)
    return loss


@triton.jit
def _pair_path_updates(syn0_ptr, tokens_ptr, lockf_ptr, lockf_len, node_ptrs, row_mask_l, l_mask, labels, alpha, D,
                       window, i, j0, j1, offs_d, d_mask, COMPUTE_LOSS: tl.constexpr, LOCKF: tl.constexpr):
    """gensim's order: each context in turn walks the centre's path (the path rows reloaded each time)."""
    loss = tl.zeros([1], dtype=tl.float64)
    for t in range(0, 2 * window):
        j = i - window + t + tl.cast(t >= window, tl.int32)
        if (j >= j0) & (j < j1):
            word = tl.load(tokens_ptr + j)
            in_ptrs = syn0_ptr + tl.cast(word, tl.int64) * D + offs_d
            inp = tl.load(in_ptrs, mask=d_mask, other=0.0, cache_modifier=".cg")
            node = tl.load(node_ptrs, mask=row_mask_l, other=0.0, cache_modifier=".cg")
            scores = tl.sum(node * inp[None, :], axis=1)
            g = tl.where(l_mask, (labels - tl.sigmoid(scores)) * alpha, 0.0)
            err = tl.sum(g[:, None] * node, axis=0)
            tl.atomic_add(node_ptrs, g[:, None] * inp[None, :], mask=row_mask_l, sem="relaxed")
            err, in_mask = _locked_row(err, d_mask, word, lockf_ptr, lockf_len, LOCKF)
            tl.atomic_add(in_ptrs, err, mask=in_mask, sem="relaxed")
            if COMPUTE_LOSS:
                signed = tl.where(labels > 0.5, -scores, scores)
                loss += tl.sum(tl.where(l_mask, _softplus(signed), 0.0), axis=0).to(tl.float64)
            tl.debug_barrier()
    return loss


@triton.jit
def _shared_update(inp, out, in_ptrs, out_ptrs, row_mask_c, row_mask_k, ctx, c_mask, valid_k, labels, alpha, lockf_ptr,
                   lockf_len, COMPUTE_LOSS: tl.constexpr, LOCKF: tl.constexpr):
    """pWord2Vec: all contexts [C, D] against one target set [K+1, D] as three small matrix products."""
    scores = tl.dot(inp, tl.trans(out), input_precision="ieee")            # [C, K+1]
    pair_mask = c_mask[:, None] & valid_k[None, :]
    g = tl.where(pair_mask, (labels[None, :] - tl.sigmoid(scores)) * alpha, 0.0)
    in_err = tl.dot(g, out, input_precision="ieee")                       # [C, D], old outputs
    out_err = tl.dot(tl.trans(g), inp, input_precision="ieee")            # [K+1, D], old inputs
    tl.atomic_add(out_ptrs, out_err, mask=row_mask_k, sem="relaxed")
    in_err, row_mask_c = _locked_rows(in_err, row_mask_c, ctx, c_mask, lockf_ptr, lockf_len, LOCKF)
    tl.atomic_add(in_ptrs, in_err, mask=row_mask_c, sem="relaxed")
    loss = tl.zeros([1], dtype=tl.float64)
    if COMPUTE_LOSS:
        signed = tl.where(labels[None, :] > 0.5, -scores, scores)
        loss += tl.sum(tl.sum(tl.where(pair_mask, _softplus(signed), 0.0), axis=1), axis=0).to(tl.float64)
    return loss


@triton.jit
def _cbow_update(inp, out, in_ptrs, out_ptrs, row_mask_c, row_mask_k, ctx, c_mask, valid_k, labels, alpha, lockf_ptr,
                 lockf_len, CBOW_MEAN: tl.constexpr, COMPUTE_LOSS: tl.constexpr, LOCKF: tl.constexpr):
    """CBOW: h = sum (or mean) of the context rows; gensim's rule: a sum divides the input error by C."""
    count = tl.sum(c_mask.to(tl.float32), axis=0)
    inv_count = 1.0 / tl.maximum(count, 1.0)
    h = tl.sum(inp, axis=0)
    if CBOW_MEAN:
        h = h * inv_count
    scores = tl.sum(out * h[None, :], axis=1)                             # [K+1]
    live = valid_k & ((scores * 0.0 + count) > 0)  # a [K+1] block: the interpreter cannot AND a scalar
    g = tl.where(live, (labels - tl.sigmoid(scores)) * alpha, 0.0)
    err = tl.sum(g[:, None] * out, axis=0)                                # [D]
    if not CBOW_MEAN:
        err = err * inv_count
    tl.atomic_add(out_ptrs, g[:, None] * h[None, :], mask=row_mask_k, sem="relaxed")
    in_err, row_mask_c = _locked_rows(tl.zeros_like(inp) + err[None, :], row_mask_c, ctx, c_mask, lockf_ptr, lockf_len,
                                      LOCKF)
    tl.atomic_add(in_ptrs, in_err, mask=row_mask_c, sem="relaxed")
    loss = tl.zeros([1], dtype=tl.float64)
    if COMPUTE_LOSS:
        signed = tl.where(labels > 0.5, -scores, scores)
        loss += tl.sum(tl.where(live, _softplus(signed), 0.0), axis=0).to(tl.float64)
    return loss


@triton.jit
def _pair_updates(syn0_ptr, syn1_ptr, tokens_ptr, prob_ptr, alias_ptr, lockf_ptr, lockf_len, V, D, seed, window,
                  negative, centre, alpha, base, i, j0, j1, offs_k, k_mask, labels, offs_d, d_mask,
                  COMPUTE_LOSS: tl.constexpr, LOCKF: tl.constexpr):
    """gensim's order: each context in turn with its own negatives (slot set t = the window slot)."""
    loss = tl.zeros([1], dtype=tl.float64)
    for t in range(0, 2 * window):
        j = i - window + t + tl.cast(t >= window, tl.int32)
        if (j >= j0) & (j < j1):
            word = tl.load(tokens_ptr + j)
            noise = _noise_words(seed, base + 1 + t * negative + (offs_k - 1), prob_ptr, alias_ptr, V)
            targets = tl.where(offs_k == 0, centre, noise)
            valid_k = k_mask & ((offs_k == 0) | (targets != centre))
            row_mask_k = valid_k[:, None] & d_mask[None, :]
            in_ptrs = syn0_ptr + tl.cast(word, tl.int64) * D + offs_d
            out_ptrs = syn1_ptr + targets.to(tl.int64)[:, None] * D + offs_d[None, :]
            inp = tl.load(in_ptrs, mask=d_mask, other=0.0, cache_modifier=".cg")
            out = tl.load(out_ptrs, mask=row_mask_k, other=0.0, cache_modifier=".cg")
            scores = tl.sum(out * inp[None, :], axis=1)
            g = tl.where(valid_k, (labels - tl.sigmoid(scores)) * alpha, 0.0)
            err = tl.sum(g[:, None] * out, axis=0)
            tl.atomic_add(out_ptrs, g[:, None] * inp[None, :], mask=row_mask_k, sem="relaxed")
            err, in_mask = _locked_row(err, d_mask, word, lockf_ptr, lockf_len, LOCKF)
            tl.atomic_add(in_ptrs, err, mask=in_mask, sem="relaxed")
            if COMPUTE_LOSS:
                signed = tl.where(offs_k == 0, -scores, scores)
                loss += tl.sum(tl.where(valid_k, _softplus(signed), 0.0), axis=0).to(tl.float64)
            tl.debug_barrier()
    return loss


@triton.jit
def _word2vec_draws_kernel(shrink_ptr, noise_ptr, prob_ptr, alias_ptr, V, seed, window, draw_stride, num_sets,
                           negative, BLOCK_K: tl.constexpr):
    """Test helper: the draws of centre i (program i): its window shrink and num_sets x K noise words."""
    i = tl.program_id(0)
    base = i.to(tl.int64) * draw_stride
    b = _window_shrink(seed, tl.zeros([1], dtype=tl.int64) + base, window)
    tl.store(shrink_ptr + i + tl.arange(0, 1), tl.zeros([1], dtype=tl.int32) + b)
    offs_k = tl.arange(0, BLOCK_K)
    for s in range(0, num_sets):
        counters = base + 1 + s * negative + offs_k
        noise = _noise_words(seed, counters, prob_ptr, alias_ptr, V)
        out = noise_ptr + (i.to(tl.int64) * num_sets + s) * negative + offs_k
        tl.store(out, noise, mask=offs_k < negative)


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def block_sizes(dim: int, window: int, negative: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_K, BLOCK_D): powers of two >= 16 (tl.dot's smallest tile) covering 2*window
    contexts, negative + 1 targets and dim."""
    return max(16, _next_pow2(2 * window)), max(16, _next_pow2(negative + 1)), max(16, _next_pow2(dim))


def path_block(depth: int) -> int:
    """BLOCK_L: a power of two >= 16 covering the longest Huffman path."""
    return max(16, _next_pow2(depth))


def draw_stride(mode: str, window: int, negative: int) -> int:
    """Philox counters reserved per centre: the shrink draw, then one noise set (pairs: one per window slot)."""
    return 1 + (2 * window if mode == "sg_pair" else 1) * negative


def check_train_sizes(syn0: torch.Tensor, syn1neg: torch.Tensor, tokens: torch.Tensor, alphas: torch.Tensor,
                      bounds: torch.Tensor, alias_prob: torch.Tensor, alias_index: torch.Tensor,
                      tree: tuple[torch.Tensor, ...] | None, lockf: torch.Tensor | None = None) -> None:
    """The shapes, dtypes and layouts the kernels index (ValueError naming the argument; TypeError for lockf's
    dtype). The values (ids below vocab_size, bounds inside tokens, path lengths) are word2vec_ops' to check:
    reading them here would cost a device sync per chunk."""
    if lockf is not None:
        from genai_fast.ops.word2vec_ops import validate_lockf

        validate_lockf(lockf, syn0.device)
    if syn0.dim() != 2 or not syn0.is_contiguous() or syn0.dtype != torch.float32:
        raise ValueError(f"syn0: expected a contiguous float32 [V, D] table, got {tuple(syn0.shape)} {syn0.dtype}")
    vocab, dim = syn0.shape
    kept, slices = tokens.numel(), bounds.shape[0] if bounds.dim() else -1
    expected = {"syn1neg": ((vocab, dim), (torch.float32,)), "tokens": ((kept,), (torch.int32,)),
                "alphas": ((kept,), (torch.float32,)), "bounds": ((slices, 4), (torch.int32,)),
                "alias_prob": ((vocab,), (torch.float32,)), "alias_index": ((vocab,), (torch.int32,))}
    tensors = {"syn1neg": syn1neg, "tokens": tokens, "alphas": alphas, "bounds": bounds, "alias_prob": alias_prob,
               "alias_index": alias_index}
    if tree is not None:
        depth = tree[1].shape[1] if tree[1].dim() == 2 else -1
        expected.update({"tree.syn1": ((vocab, dim), (torch.float32,)), "tree.points": ((vocab, depth), (torch.int32,)),
                         "tree.codes": ((vocab, depth), (torch.uint8,)), "tree.lengths": ((vocab,), (torch.int32,))})
        tensors.update(zip(("tree.syn1", "tree.points", "tree.codes", "tree.lengths"), tree, strict=True))
    for name, t in tensors.items():
        shape, dtypes = expected[name]
        if tuple(t.shape) != shape or t.dtype not in dtypes or not t.is_contiguous() or t.device != syn0.device:
            raise ValueError(f"{name}: expected a contiguous {dtypes[0]} tensor of shape {shape} on syn0's device "
                             f"{syn0.device}, got {tuple(t.shape)} {t.dtype} on {t.device}")


def word2vec_train_fwd(syn0: torch.Tensor, syn1neg: torch.Tensor, tokens: torch.Tensor, alphas: torch.Tensor,
                       bounds: torch.Tensor, alias_prob: torch.Tensor, alias_index: torch.Tensor, *, mode: str,
                       window: int, negative: int, cbow_mean: bool, shrink_windows: bool, compute_loss: bool,
                       seed: int, tree: tuple[torch.Tensor, ...] | None = None,
                       lockf: torch.Tensor | None = None) -> torch.Tensor:
    """Launch one program per slice; updates syn0/syn1neg [V, D] in place; returns loss per slice [P] fp64.

    tokens [N] int32 kept ids; alphas [N] fp32 per-token learning rate; bounds [P, 4] int32 (slice lo,
    hi, sentence lo, hi, indices into tokens). tree: hierarchical softmax's (syn1 [V, D] fp32, updated in
    place; points [V, L] int32; codes [V, L] uint8; lengths [V] int32) on the tables' device, or None;
    negative 0 needs it. lockf: [L] float32 lock factors on the tables' device (gensim's vectors_lockf; syn0 row
    w's updates scaled by lockf[w % L]), or None (all 1: the kernel compiled without the scaling). The caller
    (word2vec_ops) has validated ids and sizes.
    """
    check_train_sizes(syn0, syn1neg, tokens, alphas, bounds, alias_prob, alias_index, tree, lockf)
    num_slices = bounds.shape[0]
    loss = memory.empty((num_slices,), dtype=torch.float64, device=syn0.device)  # every program writes its slot
    if num_slices == 0:
        return loss
    vocab, dim = syn0.shape
    block_c, block_k, block_d = block_sizes(dim, window, negative)
    # Without a tree its pointers are never read (HS=False); syn0 stands in for them.
    tree_syn1, points, codes, lengths = tree if tree is not None else (syn0, alphas, alphas, alphas)
    depth = points.shape[1] if tree is not None else 0
    # Without factors their pointer is never read (LOCKF=False): alphas stands in for it, with a fixed length so
    # that the default path compiles once (Triton specialises integer arguments on their value modulo 16).
    lockf_table, lockf_len = (lockf, lockf.numel()) if lockf is not None else (alphas, 1)
    _word2vec_train_kernel[(num_slices,)](
        syn0, syn1neg, tokens, alphas, bounds, alias_prob, alias_index, loss,
        tree_syn1, points, codes, lengths, depth, lockf_table, lockf_len,
        vocab, dim, seed, window, negative, draw_stride(mode, window, negative),
        MODE=MODES[mode], CBOW_MEAN=bool(cbow_mean), SHRINK=bool(shrink_windows), COMPUTE_LOSS=bool(compute_loss),
        HS=tree is not None, NS=negative > 0, LOCKF=lockf is not None,
        BLOCK_C=block_c, BLOCK_K=block_k, BLOCK_D=block_d, BLOCK_L=path_block(depth),
        num_warps=2 if dim <= 64 else (4 if dim <= 256 else 8),
    )
    return loss


def word2vec_draws(num_centres: int, alias_prob: torch.Tensor, alias_index: torch.Tensor, *, mode: str,
                   window: int, negative: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's random draws for kept indices 0..num_centres-1: shrink [N] int32 and noise
    [N, sets, K] int32 (sets = 2*window for sg_pair, else 1). For tests of the RNG stream."""
    sets = 2 * window if mode == "sg_pair" else 1
    device = alias_prob.device
    shrink = torch.empty(num_centres, dtype=torch.int32, device=device)
    noise = torch.empty(num_centres, sets, negative, dtype=torch.int32, device=device)
    if num_centres:
        _word2vec_draws_kernel[(num_centres,)](
            shrink, noise, alias_prob, alias_index, alias_prob.numel(), seed, window,
            draw_stride(mode, window, negative), sets, negative, BLOCK_K=max(16, _next_pow2(negative)))
    return shrink, noise
