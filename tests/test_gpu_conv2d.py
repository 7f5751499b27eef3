"""conv2d on a GPU: the implicit-GEMM kernel ("triton") and cuDNN + Triton epilogue ("torch+triton") at
Stable-Diffusion-like shapes in fp16 and bf16 against the float64 reference, determinism, and the measured
automatic choice between the two.

Every case uses an epilogue with bias, SiLU and residual (per channel or per sample: the bias strides are
runtime arguments), so the autotuner compiles its configs once per dtype: the whole file stays within the
GPU check's time budget."""

import pytest
import torch

import genai_fast
from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS
from genai_fast.ops.conv2d import RACED, measured_choices
from tests.conv2d_cases import Layer, check_backend, make_args, reference

pytestmark = pytest.mark.gpu

SHAPES = {
    "sd-2x320x32x32-to320-3x3": Layer(2, 320, 32, 32, 320, (3, 3), padding=1),
    "sd-2x640x16x16-to640-3x3": Layer(2, 640, 16, 16, 640, (3, 3), padding=1),
    "sd-2x1280x8x8-to1280-3x3": Layer(2, 1280, 8, 8, 1280, (3, 3), padding=1),
    "sd-shortcut-2x320x16x16-to640-1x1": Layer(2, 320, 16, 16, 640, (1, 1)),
    "odd-2x40x13x17-to24-3x3-stride2": Layer(2, 40, 13, 17, 24, (3, 3), stride=2, padding=1),
}
CASES = [  # (shape, epilogue, dtype)
    ("sd-2x320x32x32-to320-3x3", "all", torch.float16),
    ("sd-2x640x16x16-to640-3x3", "sample-bias-silu-res", torch.float16),
    ("sd-2x1280x8x8-to1280-3x3", "all", torch.float16),
    ("sd-shortcut-2x320x16x16-to640-1x1", "all", torch.float16),
    ("odd-2x40x13x17-to24-3x3-stride2", "sample-bias-silu-res", torch.float16),
    ("sd-2x640x16x16-to640-3x3", "all", torch.bfloat16),
]
GPU_IMPLEMENTATIONS = ["triton", "torch+triton"]


def _require_triton():
    reasons = backend_unavailable_reasons("triton")
    if reasons:
        pytest.skip("; ".join(reasons))


def _case_id(case):
    shape, epilogue, dtype = case
    return f"{shape}-{epilogue}-{str(dtype).removeprefix('torch.')}"


@pytest.mark.parametrize("backend", GPU_IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_gpu_matches_reference(case, backend):
    _require_triton()
    shape, epilogue, dtype = case
    check_backend(backend, make_args(SHAPES[shape], epilogue, dtype, "channels_last", "cuda"))


def test_contiguous_input_and_channels_last_weight():
    _require_triton()
    args = make_args(SHAPES["odd-2x40x13x17-to24-3x3-stride2"], "all", torch.float16, "contiguous", "cuda",
                     weight_layout="channels_last")
    check_backend("triton", args)


def test_implicit_gemm_is_deterministic():
    _require_triton()
    args = make_args(SHAPES["sd-2x320x32x32-to320-3x3"], "all", torch.float16, "channels_last", "cuda")
    with memory.poison_outputs():
        first = genai_fast.conv2d(**args, backend="triton")
        second = genai_fast.conv2d(**args, backend="triton")
    assert torch.equal(first, second)


def test_auto_dispatch_races_both_and_caches_the_choice():
    """The two cuDNN-based implementations are raced once per shape; the implicit GEMM only runs when forced."""
    _require_triton()
    args = make_args(SHAPES["sd-2x1280x8x8-to1280-3x3"], "all", torch.float16, "channels_last", "cuda")
    before = len(measured_choices())
    genai_fast.conv2d(**args)
    chosen = OPS["conv2d"].last_backend
    assert chosen in RACED and "triton" not in RACED
    rows = measured_choices()
    assert len(rows) == before + 1 and set(rows[-1]["ms"]) == set(RACED)
    assert rows[-1]["chosen"] == chosen == min(rows[-1]["ms"], key=rows[-1]["ms"].get)
    genai_fast.conv2d(**args)  # cached: no new measurement
    assert len(measured_choices()) == before + 1 and OPS["conv2d"].last_backend == chosen


def test_gradients_through_triton_forward():
    _require_triton()
    args = make_args(SHAPES["odd-2x40x13x17-to24-3x3-stride2"], "sample-bias-silu-res", torch.float16,
                     "channels_last", "cuda")
    names = ("x", "weight", "bias", "residual")
    for k in names:
        args[k].requires_grad_()
    genai_fast.conv2d(**args, backend="triton").square().sum().backward()
    ours = [args[k].grad.clone() for k in names]
    for k in names:
        args[k].grad = None
    f64 = {k: args[k].detach().double().requires_grad_() for k in names}
    reference({**args, **f64}, float64_cpu=False).square().sum().backward()
    for k, got in zip(names, ours, strict=True):
        # fp16 forward and backward against float64: a loose comparison, relative to each gradient's size.
        torch.testing.assert_close(got.double(), f64[k].grad, rtol=2e-2, atol=2e-2 * float(f64[k].grad.abs().max()))
