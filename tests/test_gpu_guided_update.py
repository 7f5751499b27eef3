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
    """Each sampler's fused guided_step on fp16 CUDA tensors against the unfused combine-then-step in float64
    from the same x: the fused step computes in fp32, so it is off by the fp16 rounding of its result only.
    (An fp16 unfused step is no oracle: at Euler's sigmas its own fp16 rounding is larger than that.)"""
    _require_gpu()
    fused, exact = make_sampler(name), make_sampler(name)
    for s in (fused, exact):
        s.set_timesteps(6, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 4, 32, 32, device="cuda", generator=g, dtype=torch.float16)
    for t in fused.timesteps:
        model_output = torch.randn(4, 4, 32, 32, device="cuda", generator=g, dtype=torch.float16)
        uncond, cond = model_output.double().chunk(2)
        expected = exact.step(uncond + 5.0 * (cond - uncond), t, x.double())
        x = fused.guided_step(model_output, t, x, 5.0)
        assert x.dtype == torch.float16 and torch.isfinite(x).all()
        scale = expected.abs().max().item()
        worst = (x.double() - expected).abs().max().item()
        assert worst <= 2.0 ** -10 * scale, f"t={t.item()}: max error {worst:.3g} at magnitude {scale:.3g}"


class _FakeUNet:
    """unet(x, t, encoder_hidden_states=ctx) -> a [B, C, H, W] output that depends on x, t and the context."""

    def __init__(self, device):
        g = torch.Generator().manual_seed(0)
        self.weight = (torch.randn(4, 4, generator=g) * 0.4).to(device)

    def __call__(self, x, t, encoder_hidden_states):
        y = torch.einsum("oc,bchw->bohw", self.weight, x)
        shift = encoder_hidden_states.mean(dim=(1, 2)) + torch.cos(t.float() / 300)
        return y + shift[:, None, None, None]


@pytest.mark.parametrize("name,config", [("ddpm", {}), ("ddim", {"eta": 1.0}), ("dpm++", {})])
def test_guided_gpu_loop_has_no_host_syncs(name, config):
    """sample() with guidance on CUDA: CUDA's sync debug mode raises on any synchronising call inside the
    loop (the fused steps included); the deterministic sampler agrees with the same loop on the CPU."""
    _require_gpu()
    from genai_fast.diffusion import sample

    cond, negative = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    cpu = sample(_FakeUNet("cpu"), make_sampler(name, **config), torch.ones(2, 4, 16, 16), cond, 8,
                 guidance_scale=4.0, negative_encoder_hidden_states=negative,
                 generator=torch.Generator().manual_seed(0), progress=False)
    fake = _FakeUNet("cuda")

    def unet(x, t, encoder_hidden_states):
        torch.cuda.set_sync_debug_mode("error")
        return fake(x, t, encoder_hidden_states)

    try:
        out = sample(unet, make_sampler(name, **config), torch.ones(2, 4, 16, 16, device="cuda"), cond.cuda(), 8,
                     guidance_scale=4.0, negative_encoder_hidden_states=negative.cuda(),
                     generator=torch.Generator("cuda").manual_seed(0), progress=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda" and torch.isfinite(out).all()
    if name == "dpm++":
        torch.testing.assert_close(out.cpu(), cpu, rtol=1e-4, atol=1e-4)
