"""The guided sampler update on a GPU: the Triton kernel at SD latent sizes in every dtype (and an fp16 model
output with fp32 latents), automatic dispatch, and a guided sampling loop's fused steps against the unfused
ones on the GPU."""

import pytest
import torch

import genai_fast
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS
from genai_fast.diffusion import make_sampler
from tests.test_guided_update import ALL_TERMS, _check, _inputs

pytestmark = pytest.mark.gpu

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SHAPES = {"sd15-b1": (1, 4, 64, 64), "sdxl-b4": (4, 4, 128, 128), "odd": (3, 5, 7, 9)}


def _require_gpu():
    reasons = backend_unavailable_reasons("triton")
    if reasons or not torch.cuda.is_available():
        pytest.skip("; ".join(reasons) or "no CUDA GPU")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", SHAPES.keys())
def test_triton_on_gpu_matches_reference(case, dtype):
    _require_gpu()
    x, model_output, previous, noise = (t.to(dtype) for t in _inputs(SHAPES[case]))
    _check("triton", x, model_output.contiguous(memory_format=torch.channels_last), ALL_TERMS, 7.5, previous, noise,
           1.0, f"guided_update[triton] {case} {dtype}", device="cuda")


def test_mixed_dtypes_and_dispatch_on_gpu():
    _require_gpu()
    x, model_output, previous, noise = _inputs((2, 4, 32, 32))
    _check("triton", x, model_output.half(), ALL_TERMS, 7.5, previous, noise.half(), None, "fp32 x, fp16 output",
           device="cuda", out_dtype=torch.float16)
    genai_fast.guided_update(x.cuda(), model_output.cuda(), ALL_TERMS, 7.5, previous.cuda(), noise.cuda())
    assert OPS["guided_update"].last_backend == "triton"


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm++"])
def test_fused_guided_steps_on_gpu(name):
    """Each sampler's guided_step on CUDA tensors against combine-then-step on the same tensors."""
    _require_gpu()
    fused, unfused = make_sampler(name), make_sampler(name)
    for s in (fused, unfused):
        s.set_timesteps(6, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 4, 32, 32, device="cuda", generator=g, dtype=torch.float16)
    y = x.clone()
    for t in fused.timesteps:
        model_output = torch.randn(4, 4, 32, 32, device="cuda", generator=g, dtype=torch.float16)
        x = fused.guided_step(model_output, t, x, 5.0)
        uncond, cond = model_output.chunk(2)
        y = unfused.step(uncond + 5.0 * (cond - uncond), t, y)
        torch.testing.assert_close(x.float(), y.float(), rtol=2e-2, atol=2e-2)
