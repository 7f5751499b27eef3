"""csrc/cuda/group_norm.cu's three kernels run on the CPU by tests/cuda_emulator/block_emulator.cpp (each block's
256 threads as std::threads, __syncthreads and warp shuffles through barriers), with the launch plan of
genai_fast/backends/cuda/group_norm.py: against the float64 oracle under the tolerance rule, outputs and
workspace poisoned with NaN first.

The cases cover both layouts, the vector and scalar paths (odd sizes, a misaligned input), many spatial chunks,
and apply grids whose stride divides nothing, so every branch of the apply pass's backward walk (the row,
channel and sample borrows) runs. The same kernels run on a GPU in tests/test_group_norm_cuda.py.
"""

import ctypes
import math

import pytest
import torch

from genai_fast.backends.cuda.group_norm import THREADS, plan_group_norm
from genai_fast.ops.group_norm import group_norm_reference
from genai_fast.ops.layout import as_ncs
from genai_fast.testing import assert_matches_oracle
from tests.group_norm_cases import EPS, make_input

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@pytest.fixture(scope="module")
def emulator(cuda_block_emulator):
    return cuda_block_emulator


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def emulated_group_norm(lib, x, groups, weight, bias, activation, sm_count, apply_blocks=None):
    """What group_norm_fwd launches, run by the emulator: x [N, C, *] on the CPU -> the output, x's layout."""
    view = as_ncs(x)
    xt, N, C, S = view.tensor, view.N, view.C, view.S
    aligned = xt.data_ptr() % 16 == 0
    plan = plan_group_norm(N, C, S, channels_last=view.channels_last, itemsize=x.element_size(), aligned=aligned,
                           sm_count=sm_count)
    out = torch.full_like(xt, math.nan)
    ws = torch.full((2 * N * plan.num_chunks * C + 2 * N * C,), math.nan, dtype=torch.float32)
    lib.emulate_group_norm(
        _ptr(xt), _ptr(out), _ptr(weight), 0, _ptr(bias), 0, _ptr(ws), N, C, S, groups, plan.num_chunks,
        plan.chunk_len, plan.block_c, plan.channel_blocks, apply_blocks or plan.apply_blocks,
        int(view.channels_last), DTYPE_CODES[x.dtype], int(plan.vec > 1), int(activation == "silu"), EPS)
    return view.restore(out), plan


CASES = {  # shape, groups, layout, sm_count, apply_blocks (None: the plan's)
    "2x32x7-g8": ((2, 32, 7), 8, "contiguous", 2, None),
    "2x32x7-g8-channels_last": ((2, 32, 7), 8, "channels_last", 2, None),
    "odd-3x6x13x17-g3": ((3, 6, 13, 17), 3, "contiguous", 1, 2),
    "odd-3x6x13x17-g3-channels_last": ((3, 6, 13, 17), 3, "channels_last", 1, 2),
    "2x64x12x12-g32-channels_last-stride-3-blocks": ((2, 64, 12, 12), 32, "channels_last", 1, 3),
    "2x40x16x16-g8-stride-3-blocks": ((2, 40, 16, 16), 8, "contiguous", 1, 3),
    "1x64x97x89-g32-channels_last-many-chunks": ((1, 64, 97, 89), 32, "channels_last", 1, None),
    "3x16x33x10-g4-many-chunks": ((3, 16, 33, 10), 4, "contiguous", 3, None),
}


@pytest.mark.parametrize("dtype", DTYPE_CODES.keys(), ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", CASES.keys())
def test_emulated_cuda_group_norm_matches_oracle(emulator, case, dtype):
    shape, groups, layout, sm_count, apply_blocks = CASES[case]
    x = make_input(shape, layout, dtype)
    C = shape[1]
    weight, bias = torch.randn(C), torch.randn(C)
    out, plan = emulated_group_norm(emulator, x, groups, weight, bias, "silu", sm_count, apply_blocks)
    vectors = x.numel() // plan.vec
    if apply_blocks is not None:  # the apply grid strides: each thread walks several vectors back
        assert vectors > 2 * apply_blocks * THREADS
    assert out.stride() == x.stride()
    oracle = group_norm_reference(x.double(), groups, weight.double(), bias.double(), EPS, "silu")
    assert_matches_oracle(out, oracle, group_norm_reference(x, groups, weight, bias, EPS, "silu"),
                          what=f"emulated cuda group_norm {case} (vec {plan.vec}, {plan.num_chunks} chunks)")


def test_emulated_scalar_path_on_a_misaligned_input_without_affine(emulator):
    """x one element into its storage: no 16-byte vectors (vec 0), and no weight or bias, no SiLU."""
    x = make_input((2, 16, 9, 9), "contiguous", torch.float16, misaligned=True)
    out, plan = emulated_group_norm(emulator, x, 4, None, None, None, sm_count=1, apply_blocks=1)
    assert plan.vec == 1
    oracle = group_norm_reference(x.double(), 4, None, None, EPS, None)
    assert_matches_oracle(out, oracle, group_norm_reference(x, 4, None, None, EPS, None), what="misaligned")
