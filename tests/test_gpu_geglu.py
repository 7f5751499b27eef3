"""GEGLU on a GPU: the Triton kernel at SD1.5's feed-forward shapes in every dtype, and automatic dispatch."""

import pytest
import torch

import genai_fast
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS
from tests.test_geglu import _check

pytestmark = pytest.mark.gpu

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# SD1.5's feed-forward widths at its four resolutions (tokens x 2H), and a ragged one.
SHAPES = {"4096x2560": (2, 4096, 2 * 1280), "256x10240": (2, 256, 2 * 5120), "odd-7x3x90": (7, 3, 90)}


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", SHAPES.keys())
def test_triton_on_gpu_matches_reference(case, dtype, approximate):
    reasons = backend_unavailable_reasons("triton")
    if reasons or not torch.cuda.is_available():
        pytest.skip("; ".join(reasons) or "no CUDA GPU")
    x = (torch.randn(SHAPES[case]) * 3).to(dtype)
    _check("triton", x, approximate, f"geglu[triton] {case} {dtype}", device="cuda")


def test_dispatch_picks_triton_on_gpu():
    if backend_unavailable_reasons("triton") or not torch.cuda.is_available():
        pytest.skip("needs Triton and a CUDA GPU")
    genai_fast.geglu(torch.randn(4, 64, device="cuda", dtype=torch.float16))
    assert OPS["geglu"].last_backend == "triton"
