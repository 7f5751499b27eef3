"""GroupNorm on a GPU: the Triton kernel at SD shapes in all dtypes (the CUDA backend has its own file,
tests/test_group_norm_cuda.py), determinism and automatic dispatch for both GPU backends."""

import pytest
import torch

import genai_fast
from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from tests.group_norm_cases import check_backend

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ["triton", "cuda"]
SHAPES = {
    "sd-2x320x64x64": ((2, 320, 64, 64), 32),
    "sd-1x1280x8x8": ((1, 1280, 8, 8), 32),
    "odd-3x6x13x17-g3": ((3, 6, 13, 17), 3),
    "3d-2x32x7": ((2, 32, 7), 8),
    "n1-c4-1x1": ((1, 4, 1, 1), 2),
    "large-s-1x64x300x301": ((1, 64, 300, 301), 32),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _require(backend):
    reasons = backend_unavailable_reasons(backend)
    if reasons:
        pytest.skip("; ".join(reasons))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", SHAPES.keys())
def test_triton_on_gpu_matches_reference(case, layout, dtype):
    _require("triton")
    shape, groups = SHAPES[case]
    check_backend("triton", shape, groups, layout, dtype, device="cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backend_is_deterministic(backend):
    _require(backend)
    x = torch.randn(2, 320, 32, 32, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    with memory.poison_outputs():
        first = genai_fast.group_norm(x, 32, activation="silu", backend=backend)
        second = genai_fast.group_norm(x, 32, activation="silu", backend=backend)
    assert torch.equal(first, second)


def test_auto_dispatch_on_gpu_uses_a_kernel():
    genai_fast.group_norm(torch.randn(2, 64, 8, 8, device="cuda"), 8)
    assert genai_fast.backends.dispatch.OPS["group_norm"].last_backend in GPU_BACKENDS


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gpu_backward_matches_float64(layout, dtype):
    """The backward on CUDA tensors in every layout (fp32 runs through ATen's CUDA GroupNorm backward, which
    takes contiguous inputs only) against float64 autograd of torch's GroupNorm+SiLU on the same values."""
    _require("triton")
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 64, 9, 11, device="cuda").to(dtype).contiguous(memory_format=memory_format)
    w, b = torch.randn(64, device="cuda").to(dtype), torch.randn(64, device="cuda").to(dtype)
    grad = torch.randn(2, 64, 9, 11, device="cuda").to(dtype).contiguous(memory_format=memory_format)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ours = torch.autograd.grad(genai_fast.group_norm(*leaves[:1], 8, *leaves[1:], activation="silu"), leaves, grad)
    leaves64 = [t.double().requires_grad_() for t in (x, w, b)]
    ref = torch.autograd.grad(torch.nn.functional.silu(torch.nn.functional.group_norm(
        leaves64[0], 8, leaves64[1], leaves64[2])), leaves64, grad.double())
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    for name, got, want in zip(("x", "weight", "bias"), ours, ref, strict=True):
        assert got.dtype == dtype and torch.isfinite(got).all(), name
        err = (got.double() - want).norm() / want.norm()
        assert err < tol, f"d{name}: relative error {err:.2e}"
