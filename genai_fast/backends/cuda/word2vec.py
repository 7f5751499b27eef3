"""Launchers for the CUDA word2vec kernels (csrc/cuda/word2vec.cu), compiled by NVRTC via CuPy.

`word2vec_train_fwd` takes the chunk plan of `genai_fast.ops.word2vec_ops.plan_chunk` (the same as the
Triton launcher's) and runs one warp per slice, W2V_WARPS warps per block, each warp with its own
shared-memory staging area (context rows, target rows, errors, labels, ids). Wide rows, many contexts or
(with a Huffman tree, hierarchical softmax) long paths need more than the 48 KB a launch gets by default;
the launcher then opts the kernel in to more (up to MAX_OPTIN_SHARED_BYTES, which every GPU of compute
capability 8.0+ allows). The caller has validated ids, sizes and the tree;
this module checks only what the kernel itself needs (the staging area fits in shared memory).
"""

from __future__ import annotations

from typing import Any

import torch

from genai_fast.backends import memory
from genai_fast.backends.cuda import current_device, device_index, load_launcher, torch_stream_pointer

SOURCE = "word2vec.cu"
WARPS = 4  # warps per block (the .cu file's W2V_WARPS)
MAX_SHARED_BYTES = 48 * 1024  # dynamic shared memory without opting in to more
MAX_OPTIN_SHARED_BYTES = 96 * 1024  # what a kernel may opt in to on sm_80+ (A100: 163 KB, H100: 227 KB)
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
MODES = {"sg_pair": 0, "sg_shared": 1, "cbow": 2}
# p pointer, q long long, i int (see genai_fast.backends.cuda.Launcher)
TRAIN_SIGNATURE = "ppppppppppppqqiqiiqiiiiiipq"
DRAWS_SIGNATURE = "ppppqqqiqii"


def warp_area_bytes(mode: str, dim: int, window: int, negative: int, depth: int = 0) -> int:
    """Shared memory one warp stages per centre (the .cu file's WarpArea); depth: the Huffman paths' longest
    (0 without hierarchical softmax)."""
    max_ctx = 1 if mode == "sg_pair" else 2 * window
    slots = max(negative + 1, depth)
    return 4 * (max_ctx * dim + slots * dim + max_ctx * slots + dim + slots + max_ctx + slots)


def shared_memory_reasons(mode: str, dim: int, window: int, negative: int, depth: int = 0,
                          limit: int = MAX_OPTIN_SHARED_BYTES) -> list[str]:
    """Why the CUDA kernel cannot stage this configuration in `limit` bytes of shared memory per block (empty: it
    can). The dispatcher passes the device's own limit (device_shared_limit), so that a configuration too big for
    the GPU at hand goes to the Triton trainer instead of failing in the launcher."""
    need = WARPS * warp_area_bytes(mode, dim, window, negative, depth)
    if need > limit:
        return [f"a block's staging areas ({need} bytes for dim={dim}, window={window}, negative={negative}, "
                f"path depth={depth}) exceed {limit} bytes of shared memory"]
    return []


def _draw_stride(mode: str, window: int, negative: int) -> int:
    return 1 + (2 * window if mode == "sg_pair" else 1) * negative


def word2vec_train_fwd(syn0: torch.Tensor, syn1neg: torch.Tensor, tokens: torch.Tensor, alphas: torch.Tensor,
                       bounds: torch.Tensor, alias_prob: torch.Tensor, alias_index: torch.Tensor, *, mode: str,
                       window: int, negative: int, cbow_mean: bool, shrink_windows: bool, compute_loss: bool,
                       seed: int, tree: Any = None, lockf: torch.Tensor | None = None) -> torch.Tensor:
    """One warp per slice; updates syn0/syn1neg [V, D] (CUDA, float32, contiguous) in place.

    tokens [N] int32, alphas [N] fp32, bounds [P, 4] int32 as in plan_chunk. tree: None, or hierarchical
    softmax's (syn1 [V, D] fp32 updated in place, points [V, L] int32, codes [V, L] uint8, lengths [V] int32),
    contiguous on syn0's device (device_tree). lockf: [L] float32 lock factors on syn0's device (gensim's
    vectors_lockf: syn0 row w's updates scaled by lockf[w % L]), or None (all 1: a null pointer, the unscaled
    adds). Returns loss per slice [P] fp64.
    """
    if lockf is not None:
        from genai_fast.ops.word2vec_ops import validate_lockf

        validate_lockf(lockf, syn0.device)
    vocab, dim = syn0.shape
    depth = 0 if tree is None else int(tree[1].shape[1])
    reasons = shared_memory_reasons(mode, dim, window, negative, depth)
    if reasons:
        raise ValueError("dim/window/negative: " + reasons[0])
    num_slices = bounds.shape[0]
    loss = memory.empty((num_slices,), dtype=torch.float64, device=syn0.device)  # every warp writes its slot
    if num_slices == 0:
        return loss
    index = device_index(syn0.device)
    shared = WARPS * warp_area_bytes(mode, dim, window, negative, depth)
    limit = device_shared_limit(index)
    if shared > limit:
        raise ValueError(f"dim/window/negative: a block's staging areas ({shared} bytes) exceed this GPU's "
                         f"{limit} bytes of shared memory per block")
    launcher = load_launcher(SOURCE, "word2vec_train", TRAIN_SIGNATURE, index)
    blocks = -(-num_slices // WARPS)
    tree_ptrs = (0, 0, 0, 0) if tree is None else tuple(t.data_ptr() for t in tree)
    args = (syn0.data_ptr(), syn1neg.data_ptr(), tokens.data_ptr(), alphas.data_ptr(), bounds.data_ptr(),
            alias_prob.data_ptr(), alias_index.data_ptr(), loss.data_ptr(), *tree_ptrs, num_slices, vocab, dim,
            int(seed) & (2**63 - 1), window, negative, _draw_stride(mode, window, negative), MODES[mode],
            int(bool(cbow_mean)), int(bool(shrink_windows)), int(bool(compute_loss)), depth, int(tree is not None),
            *((0, 0) if lockf is None else (lockf.data_ptr(), lockf.numel())))
    with current_device(index):
        if shared > MAX_SHARED_BYTES:
            _opt_in_shared_memory(launcher, shared)
        launcher((blocks, 1, 1), (32 * WARPS, 1, 1), args, torch_stream_pointer(index), shared_mem=shared)
    return loss


def device_shared_limit(index: int) -> int:
    """Dynamic shared memory a block of device `index` may opt in to: MAX_OPTIN_SHARED_BYTES, or less where the
    GPU has less (sm_75: 64 KB; the capability check admits compute capability 7.5 and up)."""
    props = torch.cuda.get_device_properties(index)
    return min(MAX_OPTIN_SHARED_BYTES, int(getattr(props, "shared_memory_per_block_optin", MAX_OPTIN_SHARED_BYTES)))


def _opt_in_shared_memory(launcher: Any, shared: int) -> None:
    """Let the kernel take `shared` bytes of dynamic shared memory (above the 48 KB default), once per size."""
    from genai_fast.backends.cuda import cupy

    granted = getattr(launcher, "granted_shared_bytes", MAX_SHARED_BYTES)
    if shared > granted:
        cupy().cuda.driver.funcSetAttribute(launcher.function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                            shared)
        launcher.granted_shared_bytes = shared


def word2vec_draws(num_centres: int, alias_prob: torch.Tensor, alias_index: torch.Tensor, *, mode: str,
                   window: int, negative: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's draws for kept indices 0..num_centres-1 (tests): shrink [N], noise [N, sets, K] int32."""
    sets = 2 * window if mode == "sg_pair" else 1
    device = alias_prob.device
    shrink = torch.empty(num_centres, dtype=torch.int32, device=device)
    noise = torch.empty(num_centres, sets, negative, dtype=torch.int32, device=device)
    if num_centres:
        index = device_index(device)
        launcher = load_launcher(SOURCE, "word2vec_draws", DRAWS_SIGNATURE, index)
        args = (shrink.data_ptr(), noise.data_ptr(), alias_prob.data_ptr(), alias_index.data_ptr(), num_centres,
                alias_prob.numel(), int(seed) & (2**63 - 1), window, _draw_stride(mode, window, negative), sets,
                negative)
        with current_device(index):
            launcher((-(-num_centres // 128), 1, 1), (128, 1, 1), args, torch_stream_pointer(index))
    return shrink, noise
