"""genai_fast.diffusion's samplers at zero terminal SNR (rescale_betas_zero_snr):
the guided (CFG) step where an epsilon model's x0 divides by sqrt(alpha_bar) = 0, and DDIM with eta = 1,
whose first-step direction diffusers takes the square root of a rounded, sometimes negative, zero of."""

import numpy as np
import pytest
import torch

from genai_fast.diffusion import make_sampler

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
ZERO_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


def _linear_model(channels=4, seed=0):
    """A fixed random linear map of x plus a timestep-dependent bias: x [B, C, H, W], t [B] -> x's shape."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(channels, channels, generator=g) * 0.4
    bias = torch.randn(channels, generator=g)

    def model(x, t):
        y = torch.einsum("oc,bchw->bohw", weight, x)
        return y + torch.cos(t.float() / 300)[:, None, None, None] * bias[None, :, None, None]

    return model


def _guided_lockstep(name, config, num_steps, guidance=3.0):
    """Our guided_step against diffusers' step on the combined CFG output, from the same noise and seed."""
    model = _linear_model()
    ours = make_sampler(name, **config)
    ref = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler}[name](**config)
    ours.set_timesteps(num_steps)
    ref.set_timesteps(num_steps)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x_ref = x.clone()
    gen, gen_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in ref.timesteps:
        both = model(torch.cat([x, 0.9 * x]), t.expand(4))
        x = ours.guided_step(both, t, x, guidance, generator=gen)
        both_ref = model(torch.cat([x_ref, 0.9 * x_ref]), t.expand(4))
        uncond, cond = both_ref.chunk(2)
        x_ref = ref.step(uncond + guidance * (cond - uncond), t, x_ref, generator=gen_ref).prev_sample
    return x, x_ref


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_guided_step_at_zero_snr_with_an_epsilon_model_matches_diffusers(name):
    # The first trailing timestep has alpha_bar = 0: x0 is +-inf, which the default clip_sample clamps to
    # +-1, so diffusers' result is finite. The fused update used to raise ZeroDivisionError there.
    x, x_ref = _guided_lockstep(name, {**SD_BETAS, **ZERO_SNR}, 10)
    assert torch.isfinite(x_ref).all()
    scale = max(1.0, float(x_ref.abs().max()))
    assert float((x - x_ref).abs().max()) <= 1e-5 * scale


def test_guided_step_at_zero_snr_without_clipping_gives_diffusers_nan():
    # Unclipped, an epsilon model cannot sample from zero SNR: diffusers returns NaN/inf, and so must we
    # (the same as step()), rather than raise from inside the fused update.
    x, x_ref = _guided_lockstep("ddim", {**SD_BETAS, **ZERO_SNR, "clip_sample": False}, 10)
    assert not torch.isfinite(x_ref).all()
    assert not torch.isfinite(x).all()


# (schedule, num_steps) where diffusers' DDIMScheduler with eta = 1 returns NaN: zero terminal SNR (about half
# of all step counts), and the cosine schedule, whose last alpha_bar is ~1e-9.
ETA_ONE_CASES = {"zero-snr-25": ({**SD_BETAS, **ZERO_SNR}, 25), "zero-snr-50": ({**SD_BETAS, **ZERO_SNR}, 50),
                 "cosine-5": ({"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"}, 5)}


@pytest.mark.parametrize("case", ETA_ONE_CASES)
@pytest.mark.parametrize("guided", [False, True])
def test_ddim_eta_one_near_zero_snr_is_ddpm(case, guided):
    # DDIM with eta = 1 is DDPM's ancestral sampler: on a trailing schedule whose stride divides the
    # training steps both step to the same timesteps and draw the same noise, so diffusers' DDPMScheduler
    # is the reference.
    schedule, num_steps = ETA_ONE_CASES[case]
    config = {**schedule, "prediction_type": "v_prediction", "clip_sample": False}
    model = _linear_model()
    ours, ref = make_sampler("ddim", eta=1.0, **config), diffusers.DDPMScheduler(**config)
    ours.set_timesteps(num_steps)
    ref.set_timesteps(num_steps)
    assert torch.equal(ours.timesteps, ref.timesteps)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x_ref = x.clone()
    gen, gen_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in ref.timesteps:
        x_ref = ref.step(model(x_ref, t.expand(2)), t, x_ref, generator=gen_ref).prev_sample
        if guided:  # guidance 1 on equal halves: the fused pass of the same step
            both = model(torch.cat([x, x]), t.expand(4))
            x = ours.guided_step(both, t, x, 1.0, generator=gen)
        else:
            x = ours.step(model(x, t.expand(2)), t, x, generator=gen)
    assert torch.isfinite(x).all()
    scale = max(1.0, float(x_ref.abs().max()))
    assert float((x - x_ref).abs().max()) <= 1e-4 * scale


@pytest.mark.parametrize("scale", [np.float32(3.5), np.float16(3.5), np.int64(3)], ids=["f32", "f16", "i64"])
def test_guided_step_takes_a_numpy_guidance_scale(scale):
    # A NumPy scalar is a number to diffusers' pipelines (and to this package's config keys); the guided step
    # used to reject it with "guidance_scale: expected a number, got float32".
    model = _linear_model()
    results = []
    for guidance in (scale, float(scale)):
        sampler = make_sampler("dpm++", **SD_BETAS)
        sampler.set_timesteps(4)
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        for t in sampler.timesteps:
            x = sampler.guided_step(model(torch.cat([x, 0.9 * x]), t.expand(2)), t, x, guidance)
        results.append(x)
    assert torch.equal(results[0], results[1])


def test_guidance_scale_still_rejects_non_numbers():
    sampler = make_sampler("ddim")
    sampler.set_timesteps(2)
    x = torch.zeros(1, 4, 8, 8)
    for bad in (True, np.bool_(True), "7.5", torch.tensor(7.5), np.complex64(1)):
        with pytest.raises(TypeError, match="guidance_scale: expected a number"):
            sampler.guided_step(torch.zeros(2, 4, 8, 8), sampler.timesteps[0], x, bad)
