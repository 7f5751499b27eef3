"""Diffusion samplers against the installed diffusers' schedulers: timesteps, init_noise_sigma,
scale_model_input and every step of whole loops; seeded noise; sample_loop and CFG sample() with a tiny
UNet2DConditionModel; from_config; bad input; and (on a GPU) no host syncs inside the loop."""

import copy
import inspect
import warnings

import numpy as np
import pytest
import torch

from genai_fast.diffusion import SAMPLER_NAMES, from_config, make_sampler, sample, sample_loop
from genai_fast.diffusion.samplers import OPTIONS

# diffusers' own Euler / DPM-Solver set_timesteps trip numpy 2's __array__(copy=) deprecation, and its KDPM2
# set_timesteps numpy's __array_wrap__ one (np.log of a torch tensor).
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")]

# Parity tolerance: max |ours - diffusers| <= RTOL * max(1, max |diffusers|) (fp32, whole loops).
RTOL = 1e-6
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SCHEDULES = {"linear": {"beta_schedule": "linear"}, "sd-scaled-linear": SD_BETAS,
             "cosine": {"beta_schedule": "squaredcos_cap_v2"}}
# Step counts: a divisor of 1000, a prime, and more than DPM-Solver's lower_order_final limit of 15.
STEPS = {"linspace": 10, "leading": 13, "trailing": 20}
# DPMSolverSinglestepScheduler has no timestep_spacing (it spaces as "linspace"): one spacing for it.
SPACED = [(name, spacing) for name in SAMPLER_NAMES for spacing in STEPS
          if spacing == "linspace" or "timestep_spacing" in OPTIONS[name]]


def _spacing(name, spacing):
    """The config keys of `spacing` that sampler `name` takes."""
    if "timestep_spacing" not in OPTIONS[name]:
        return {}
    return {"timestep_spacing": spacing, **({"steps_offset": 1} if spacing == "leading" else {})}


def _diffusers():
    return pytest.importorskip("diffusers")


# Config keys here that are step arguments in diffusers (DDIMScheduler.step's, LMSDiscreteScheduler.step's order).
STEP_ARGUMENTS = ("eta", "use_clipped_model_output", "order")


def _scheduler(name, **config):
    d = _diffusers()
    cls = {"ddpm": d.DDPMScheduler, "ddim": d.DDIMScheduler, "euler": d.EulerDiscreteScheduler,
           "euler_a": d.EulerAncestralDiscreteScheduler, "dpm++": d.DPMSolverMultistepScheduler,
           "pndm": d.PNDMScheduler, "unipc": d.UniPCMultistepScheduler, "lcm": d.LCMScheduler,
           "heun": d.HeunDiscreteScheduler, "lms": d.LMSDiscreteScheduler, "kdpm2": d.KDPM2DiscreteScheduler,
           "kdpm2_a": d.KDPM2AncestralDiscreteScheduler, "dpm++_single": d.DPMSolverSinglestepScheduler}[name]
    return cls(**{k: v for k, v in config.items() if k not in STEP_ARGUMENTS})


class FakeModel:
    """A fixed random linear map of x plus a timestep-dependent bias: x [B, C, H, W], t [B] -> [B, k*C, H, W]."""

    def __init__(self, channels=4, out_factor=1, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels * out_factor, channels, generator=g) * 0.4
        self.bias = torch.randn(channels * out_factor, generator=g)
        self.out_factor = out_factor

    def __call__(self, x, t):
        assert t.shape == (x.shape[0],)
        y = torch.einsum("oc,bchw->bohw", self.weight, x)
        y = y + torch.cos(t.float() / 300)[:, None, None, None] * self.bias[None, :, None, None]
        if self.out_factor == 2:  # learned variance: keep the variance channels in (0, 1)
            eps, var = y.chunk(2, dim=1)
            y = torch.cat([eps, torch.sigmoid(var)], dim=1)
        return y


def _close(ours, ref, what):
    scale = max(1.0, float(ref.abs().max()))
    err = float((ours.double() - ref.double()).abs().max())
    assert err <= RTOL * scale, f"{what}: max-abs {err:.3e} > {RTOL * scale:.3e}"


def _run_lockstep(name, config, num_steps, model=None, seed=7, shape=(2, 4, 8, 8)):
    """Run ours and diffusers side by side from the same noise and seed; compare every step."""
    model = model or FakeModel()
    ours, ref = make_sampler(name, **config), _scheduler(name, **config)
    ours.set_timesteps(num_steps)
    ref.set_timesteps(num_steps)
    assert ours.timesteps.dtype == ref.timesteps.dtype
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-7)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * ours.init_noise_sigma
    x_ref = x.clone()
    gen, gen_ref = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    step_kw = {"eta": config.get("eta", 0.0), "use_clipped_model_output": config.get("use_clipped_model_output",
                                                                                     False)} if name == "ddim" else {}
    if name == "lms":
        step_kw["order"] = config.get("order", 4)
    if "generator" in inspect.signature(ref.step).parameters:  # PNDM's step draws nothing and takes none
        step_kw["generator"] = gen_ref
    for i, t in enumerate(ref.timesteps):
        scaled, scaled_ref = ours.scale_model_input(x, ours.timesteps[i]), ref.scale_model_input(x_ref, t)
        _close(scaled, scaled_ref, f"scale_model_input at step {i}")
        batch = t.expand(shape[0])
        x = ours.step(model(scaled, batch), ours.timesteps[i], x, generator=gen)
        x_ref = ref.step(model(scaled_ref, batch), t, x_ref, **step_kw).prev_sample
        assert x.dtype == x_ref.dtype
        _close(x, x_ref, f"step {i} (t={float(t)})")
    assert torch.isfinite(x).all()
    return x


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("schedule", ["linear", "sd-scaled-linear"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name, spacing", SPACED, ids=[f"{n}-{s}" for n, s in SPACED])
def test_parity_with_diffusers(name, spacing, prediction, schedule):
    # steps_offset=1 with "leading", as Stable Diffusion's configs
    config = {**SCHEDULES[schedule], "prediction_type": prediction, **_spacing(name, spacing)}
    _run_lockstep(name, config, STEPS[spacing])


OPTION_CASES = {
    "ddpm-cosine": ("ddpm", {"beta_schedule": "squaredcos_cap_v2"}, 12),
    "ddpm-sigmoid": ("ddpm", {"beta_schedule": "sigmoid"}, 12),
    "ddpm-fixed-small-log": ("ddpm", {"variance_type": "fixed_small_log"}, 12),
    "ddpm-fixed-large": ("ddpm", {"variance_type": "fixed_large", "clip_sample": False}, 12),
    "ddpm-learned-range": ("ddpm", {"variance_type": "learned_range"}, 12),
    "ddpm-learned": ("ddpm", {"variance_type": "learned"}, 12),
    "ddpm-sample-pred": ("ddpm", {"prediction_type": "sample", "clip_sample_range": 2.0}, 12),
    "ddpm-thresholding": ("ddpm", {"thresholding": True, "sample_max_value": 2.0}, 12),
    "ddpm-zero-snr": ("ddpm", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                               "prediction_type": "v_prediction"}, 12),
    "ddpm-trained-betas-T100": ("ddpm", {"num_train_timesteps": 100,
                                         "trained_betas": np.linspace(1e-3, 0.05, 100).tolist()}, 100),
    "ddim-eta1": ("ddim", {"eta": 1.0}, 12),
    "ddim-eta-half-clipped-eps": ("ddim", {"eta": 0.5, "use_clipped_model_output": True}, 12),
    "ddim-no-alpha-one-no-clip": ("ddim", {"set_alpha_to_one": False, "clip_sample": False}, 12),
    "ddim-sample-pred": ("ddim", {"prediction_type": "sample"}, 12),
    "ddim-thresholding": ("ddim", {"thresholding": True}, 12),
    "ddim-zero-snr": ("ddim", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                               "prediction_type": "v_prediction", **SD_BETAS}, 12),
    "ddim-cosine-50": ("ddim", {"beta_schedule": "squaredcos_cap_v2"}, 50),
    "euler-karras": ("euler", {"use_karras_sigmas": True, **SD_BETAS}, 12),
    "euler-karras-range": ("euler", {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}, 12),
    "euler-exponential": ("euler", {"use_exponential_sigmas": True}, 12),
    "euler-final-sigma-min": ("euler", {"final_sigmas_type": "sigma_min"}, 12),
    "euler-log-linear": ("euler", {"interpolation_type": "log_linear"}, 12),
    "euler-continuous-v": ("euler", {"timestep_type": "continuous", "prediction_type": "v_prediction"}, 12),
    "euler-zero-snr": ("euler", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, 12),
    "euler-cosine-7": ("euler", {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample"}, 7),
    "euler-a-zero-snr": ("euler_a", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                                     "prediction_type": "v_prediction"}, 12),
    "euler-a-cosine-7": ("euler_a", {"beta_schedule": "squaredcos_cap_v2"}, 7),
    "unipc-karras": ("unipc", {"use_karras_sigmas": True, **SD_BETAS}, 12),
    "unipc-exponential-v": ("unipc", {"use_exponential_sigmas": True, "prediction_type": "v_prediction"}, 12),
    "unipc-order-1": ("unipc", {"solver_order": 1}, 12),
    "unipc-order-3-bh1": ("unipc", {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min",
                                    **SD_BETAS}, 20),
    "unipc-no-corrector-at-0-2": ("unipc", {"disable_corrector": [0, 2]}, 12),
    "unipc-no-lower-order-final": ("unipc", {"lower_order_final": False, "final_sigmas_type": "sigma_min"}, 8),
    "unipc-sample-thresholding": ("unipc", {"prediction_type": "sample", "thresholding": True}, 12),
    "unipc-zero-snr": ("unipc", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                                 "prediction_type": "v_prediction"}, 12),
    "unipc-sd-50": ("unipc", SD_BETAS, 50),
    "heun-karras-sd": ("heun", {"use_karras_sigmas": True, **SD_BETAS}, 12),
    "heun-exponential-clipped-sample": ("heun", {"use_exponential_sigmas": True, "prediction_type": "sample",
                                                 "clip_sample": True}, 9),
    "heun-1-step": ("heun", {}, 1),
    "lcm-4-steps": ("lcm", {}, 4),
    "lcm-1-step": ("lcm", {}, 1),
    "lcm-v-clipped-original-20": ("lcm", {"prediction_type": "v_prediction", "clip_sample": True,
                                          "original_inference_steps": 20}, 7),
    "lcm-alpha-final-scaling-5": ("lcm", {"set_alpha_to_one": False, "timestep_scaling": 5.0}, 8),
    "pndm-plms-sd": ("pndm", {"skip_prk_steps": True, "steps_offset": 1, **SD_BETAS}, 50),
    "pndm-plms-1-step": ("pndm", {"skip_prk_steps": True}, 1),
    "pndm-plms-2-steps-v": ("pndm", {"skip_prk_steps": True, "prediction_type": "v_prediction"}, 2),
    "pndm-alpha-one-cosine": ("pndm", {"set_alpha_to_one": True, "beta_schedule": "squaredcos_cap_v2"}, 4),
    "dpm-karras": ("dpm++", {"use_karras_sigmas": True, **SD_BETAS}, 12),
    "dpm-exponential": ("dpm++", {"use_exponential_sigmas": True}, 12),
    "dpm-lu-lambdas": ("dpm++", {"use_lu_lambdas": True}, 12),
    "dpm-final-sigma-min-20": ("dpm++", {"final_sigmas_type": "sigma_min"}, 20),
    "dpm-euler-at-final": ("dpm++", {"final_sigmas_type": "sigma_min", "euler_at_final": True}, 20),
    "dpm-no-lower-order-final": ("dpm++", {"final_sigmas_type": "sigma_min", "lower_order_final": False}, 12),
    "dpm-order-1": ("dpm++", {"solver_order": 1}, 12),
    "dpm-heun": ("dpm++", {"solver_type": "heun"}, 12),
    "dpm-thresholding-sample": ("dpm++", {"thresholding": True, "prediction_type": "sample"}, 12),
    "dpm-lambda-clipped-cosine": ("dpm++", {"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"}, 12),
    "dpm-zero-snr": ("dpm++", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                               "prediction_type": "v_prediction"}, 12),
    "dpm-50": ("dpm++", SD_BETAS, 50),
    "dpm-sde": ("dpm++", {"algorithm_type": "sde-dpmsolver++"}, 12),
    "dpm-sde-karras-v": ("dpm++", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True,
                                   "prediction_type": "v_prediction", **SD_BETAS}, 20),
    "dpm-sde-heun-sigma-min": ("dpm++", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun",
                                         "final_sigmas_type": "sigma_min"}, 20),
    "dpm-sde-order-1": ("dpm++", {"algorithm_type": "sde-dpmsolver++", "solver_order": 1}, 12),
}


@pytest.mark.parametrize("case", OPTION_CASES.keys())
def test_config_options_match_diffusers(case):
    name, config, steps = OPTION_CASES[case]
    factor = 2 if str(config.get("variance_type", "")).startswith("learned") else 1
    _run_lockstep(name, config, steps, model=FakeModel(out_factor=factor))


@pytest.mark.parametrize("steps", [1, 2, 999, 1000])
@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_timesteps_at_extreme_step_counts(name, steps):
    for spacing in [s for n, s in SPACED if n == name]:
        config = {"timestep_spacing": spacing} if "timestep_spacing" in OPTIONS[name] else {}
        ours, ref = make_sampler(name, **config), _scheduler(name, **config)
        if name == "lcm" and steps > 50:  # picks from the 50-step distillation schedule: both refuse more
            with pytest.raises(ValueError):
                ref.set_timesteps(steps)
            with pytest.raises(ValueError, match=r"^num_steps: expected at most original_inference_steps=50 x"):
                ours.set_timesteps(steps)
            continue
        if name == "pndm" and steps < 4:
            # diffusers' Runge-Kutta start fails on fewer than 4 steps (a numpy broadcast error); ours says why.
            with pytest.raises(ValueError, match=r"^num_steps: PNDM's Runge-Kutta start needs at least 4 steps"):
                ours.set_timesteps(steps)
            ours, ref = (make_sampler(name, timestep_spacing=spacing, skip_prk_steps=True),
                         _scheduler(name, timestep_spacing=spacing, skip_prk_steps=True))
        ref.set_timesteps(steps)
        if name in ("dpm++", "unipc", "dpm++_single") and steps == 1000 and spacing != "trailing":
            # Repeated timesteps: diffusers' multistep update divides 0 by 0 there; ours refuses.
            with pytest.raises(ValueError, match=r"^num_steps: 1000 steps repeat a noise level"):
                ours.set_timesteps(steps)
            continue
        ours.set_timesteps(steps)
        torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)


def test_dpm_karras_with_repeated_timesteps_runs():
    """Karras sigmas on the cosine schedule round to repeated timesteps (998 four times for 12 steps):
    diffusers then starts at the second 998 and runs past its last sigma; ours steps the distinct sigmas."""
    config = {"use_karras_sigmas": True, "beta_schedule": "squaredcos_cap_v2"}
    ours, ref = make_sampler("dpm++", **config), _scheduler("dpm++", **config)
    ref.set_timesteps(12)
    ours.set_timesteps(12)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    assert len(torch.unique(ours.timesteps)) < 12
    out = sample_loop(FakeModel(), ours, torch.randn(1, 4, 4, 4), 12, progress=False)
    assert torch.isfinite(out).all()


def test_unipc_bh1_last_step_to_zero_noise_is_finite():
    """bh1's B(h) is -h, infinite on the last step to sigma 0: diffusers multiplies it by its zero first-order
    correction (inf * 0) and returns NaN latents; ours leaves the absent term out and lands on the predicted x0."""
    config = {"solver_type": "bh1", **SD_BETAS}
    ours, ref = make_sampler("unipc", **config), _scheduler("unipc", **config)
    ref.set_timesteps(6)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    model = FakeModel()
    for t in ref.timesteps:
        x = ref.step(model(x, t.expand(1)), t, x).prev_sample
    assert torch.isnan(x).all()
    out = sample_loop(model, ours, torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)), 6,
                      progress=False)
    assert torch.isfinite(out).all()


def test_trailing_drops_diffusers_stray_final_step():
    """For 61 of 1000 steps, diffusers' trailing spacing yields 62 timesteps ending at -1; ours yields 61."""
    ours, ref = make_sampler("ddim", timestep_spacing="trailing"), _scheduler("ddim", timestep_spacing="trailing")
    ours.set_timesteps(61)
    ref.set_timesteps(61)
    assert len(ours.timesteps) == 61 and int(ours.timesteps.min()) >= 0
    torch.testing.assert_close(ours.timesteps, ref.timesteps[:61], rtol=0, atol=0)


# ---------------------------------------------------------------- seeded noise


@pytest.mark.parametrize("config", [("ddpm", {}), ("ddpm", {"timestep_spacing": "trailing"}),
                                    ("ddim", {"eta": 1.0}), ("euler_a", {}),
                                    ("dpm++", {"algorithm_type": "sde-dpmsolver++"}), ("lcm", {}), ("kdpm2_a", {}),
                                    ("dpm++_single", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3})],
                         ids=["ddpm", "ddpm-trailing", "ddim-eta1", "euler-a", "dpm-sde", "lcm", "kdpm2-a",
                              "dpm-single-sde-3"])
def test_same_seed_same_samples_as_diffusers(config):
    name, cfg = config
    model = FakeModel()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    first = sample_loop(model, make_sampler(name, **cfg), noise, 15, torch.Generator().manual_seed(5), progress=False)
    again = sample_loop(model, make_sampler(name, **cfg), noise, 15, torch.Generator().manual_seed(5), progress=False)
    other = sample_loop(model, make_sampler(name, **cfg), noise, 15, torch.Generator().manual_seed(6), progress=False)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    ref = _scheduler(name, **cfg)
    ref.set_timesteps(15)
    x, gen = noise.clone(), torch.Generator().manual_seed(5)
    for t in ref.timesteps:
        out = model(ref.scale_model_input(x, t), t.expand(2))
        x = ref.step(out, t, x, generator=gen, **({"eta": 1.0} if name == "ddim" else {})).prev_sample
    _close(first, x, "final latents")


def test_generator_list_draws_per_batch_item_like_diffusers():
    model, noise = FakeModel(), torch.randn(3, 4, 8, 8)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    ours = sample_loop(model, make_sampler("ddpm"), noise, 8, gens, progress=False)
    ref, x = _scheduler("ddpm"), noise.clone()
    ref.set_timesteps(8)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    for t in ref.timesteps:
        x = ref.step(model(x, t.expand(3)), t, x, generator=gens).prev_sample
    _close(ours, x, "final latents")
    # Item 0 alone with generator seed 1 follows the same noise as item 0 of the batch.
    alone = sample_loop(model, make_sampler("ddpm"), noise[:1], 8, [torch.Generator().manual_seed(1)], progress=False)
    _close(alone, ours[:1], "item 0")


# ---------------------------------------------------------------- loops


@pytest.mark.parametrize("name", ["euler", "dpm++"])
def test_sample_loop_matches_diffusers_loop(name):
    model, calls = FakeModel(), []

    def model_fn(x, t):
        calls.append((tuple(x.shape), t.shape, t.dtype))
        return model(x, t)

    sampler = make_sampler(name, **SD_BETAS)
    sampler.set_timesteps(12)
    noise = torch.randn(2, 4, 8, 8) * sampler.init_noise_sigma
    ours = sample_loop(model_fn, sampler, noise, 12, progress=False)
    ref = _scheduler(name, **SD_BETAS)
    ref.set_timesteps(12)
    x = noise.clone()
    for t in ref.timesteps:
        x = ref.step(model(ref.scale_model_input(x, t), t.expand(2)), t, x).prev_sample
    _close(ours, x, "final latents")
    assert len(calls) == 12 and calls[0] == ((2, 4, 8, 8), (2,), ref.timesteps.dtype)


def test_sample_loop_grad_modes():
    """Without grad the loop runs in inference mode and still returns an ordinary tensor (usable by later
    autograd code) with the same values; with grad enabled gradients flow back to the latents."""
    model = FakeModel()
    noise = torch.randn(2, 4, 8, 8) * make_sampler("dpm++").init_noise_sigma
    seen_inference = []

    def model_fn(x, t):
        seen_inference.append(x.is_inference())
        return model(x, t)

    with torch.no_grad():
        quiet = sample_loop(model_fn, make_sampler("dpm++"), noise, 5, progress=False)
    assert all(seen_inference[1:]) and not quiet.is_inference()  # step 1 may see the caller's own tensor
    (quiet * torch.ones(1, requires_grad=True)).sum().backward()  # an inference tensor would raise here
    leaf = noise.clone().requires_grad_(True)
    recorded = sample_loop(model, make_sampler("dpm++"), leaf, 5, progress=False)
    torch.testing.assert_close(recorded.detach(), quiet, rtol=0, atol=0)
    recorded.sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_sample_cuda_graph_argument_checks(tiny_unet):
    x = torch.randn(1, 4, 8, 8)
    ctx = torch.randn(1, 5, 16)
    with pytest.raises(TypeError, match=r"^cuda_graph: expected True, False or 'auto'"):
        sample(tiny_unet, make_sampler("ddim"), x, ctx, 2, cuda_graph="yes")
    with torch.no_grad(), pytest.raises(ValueError, match=r"^cuda_graph: CUDA graphs need latents on a CUDA"):
        sample(tiny_unet, make_sampler("ddim"), x, ctx, 2, cuda_graph=True)
    from genai_fast.diffusion import GraphedCall

    with pytest.raises(ValueError, match="need every input on a CUDA device"):
        GraphedCall(lambda a: a + 1)(x)


def test_sample_cuda_graph_auto_runs_eagerly_on_a_cpu(tiny_unet, monkeypatch):
    """The default ("auto") captures nothing for CPU latents: no GraphedCall, the eager loop's result."""
    import genai_fast.diffusion.sampling as sampling

    made = []
    monkeypatch.setattr(sampling, "GraphedCall", lambda *a, **k: made.append(1))
    x, ctx, neg = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 32), torch.randn(1, 5, 32)
    with torch.no_grad():
        auto = sample(tiny_unet, make_sampler("dpm++"), x, ctx, 8, guidance_scale=2.0,
                      negative_encoder_hidden_states=neg, progress=False)
        eager = sample(tiny_unet, make_sampler("dpm++"), x, ctx, 8, guidance_scale=2.0,
                       negative_encoder_hidden_states=neg, progress=False, cuda_graph=False)
    assert not made
    torch.testing.assert_close(auto, eager, rtol=0, atol=0)


def test_graphed_call_with_fallback_warns_once_and_runs_eagerly():
    from genai_fast.diffusion import GraphedCall

    calls = []

    def fn(a):
        calls.append(1)
        return a * 2

    graphed = GraphedCall(fn, fallback=True)
    x = torch.randn(3)
    with pytest.warns(RuntimeWarning, match="capture was refused .*not a CUDA tensor.*running eagerly"):
        first = graphed(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = graphed(x + 1)
    torch.testing.assert_close(first, x * 2, rtol=0, atol=0)
    torch.testing.assert_close(second, (x + 1) * 2, rtol=0, atol=0)
    assert len(calls) == 2 and graphed.replays == 0 and "not a CUDA tensor" in graphed.failure


def test_sample_loop_progress_bar(capsys):
    sample_loop(FakeModel(), make_sampler("ddim"), torch.randn(1, 4, 4, 4), 3, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "it/s" in err


@pytest.fixture(scope="module")
def tiny_unet():
    d = _diffusers()
    torch.manual_seed(0)
    return d.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    ).eval()


def _diffusers_cfg_loop(unet, scheduler, x, cond, negative, steps, guidance, generator=None, step_kw=None):
    """What diffusers' StableDiffusionPipeline does per step, written out."""
    scheduler.set_timesteps(steps)
    context = torch.cat([negative, cond])
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([x] * 2), t)
        uncond, text = unet(model_in, t, encoder_hidden_states=context).sample.chunk(2)
        drawn = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        x = scheduler.step(uncond + guidance * (text - uncond), t, x, **drawn, **(step_kw or {})).prev_sample
    return x


# Guided loops fuse the guidance and the update (Sampler.guided_step), so they round differently from
# diffusers' op-by-op loop. Deterministic samplers are held to the tolerance rule against diffusers' loop
# on a float64 copy of the U-Net; stochastic ones draw their noise in the model's dtype, which a float64 run
# cannot share, so they are compared with diffusers' fp32 loop at GUIDED_RTOL: rounding-order differences
# grow through 6 U-Net calls to ~3e-5 here, while a wrong noise draw or coefficient moves the latents by O(1).
GUIDED_RTOL = 2e-4


@pytest.mark.parametrize("name", ["euler", "ddim", "dpm++", "ddim-eta1", "ddpm", "euler_a", "dpm++-sde", "pndm",
                                  "unipc", "lcm", "heun", "lms", "kdpm2", "kdpm2_a", "dpm++_single"])
def test_sample_with_guidance_matches_diffusers(tiny_unet, name):
    from genai_fast.testing import assert_matches_oracle

    sampler_name = name.removesuffix("-eta1").removesuffix("-sde")
    config = {**SD_BETAS, "eta": 1.0} if name == "ddim-eta1" else SD_BETAS
    if name == "dpm++-sde":
        config = {**SD_BETAS, "algorithm_type": "sde-dpmsolver++"}
    step_kw = {"eta": 1.0} if name == "ddim-eta1" else None
    cond, negative = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    sampler = make_sampler(sampler_name, **config)
    sampler.set_timesteps(6)
    noise = torch.randn(2, 4, 8, 8) * sampler.init_noise_sigma

    def reference(unet, dtype):
        return _diffusers_cfg_loop(unet, _scheduler(sampler_name, **config), noise.to(dtype), cond.to(dtype),
                                   negative.to(dtype), 6, 7.5, torch.Generator().manual_seed(3), step_kw)

    with torch.no_grad():
        ours = sample(tiny_unet, sampler, noise, cond, 6, guidance_scale=7.5, negative_encoder_hidden_states=negative,
                      generator=torch.Generator().manual_seed(3), progress=False)
        ref = reference(tiny_unet, torch.float32)
        if name in ("ddim-eta1", "ddpm", "euler_a", "dpm++-sde", "lcm", "kdpm2_a"):  # stochastic: no float64 oracle
            scale = max(1.0, float(ref.abs().max()))
            err = float((ours - ref).abs().max())
            assert err <= GUIDED_RTOL * scale, f"final latents: max-abs {err:.3e} > {GUIDED_RTOL * scale:.3e}"
        else:
            oracle = reference(copy.deepcopy(tiny_unet).double(), torch.float64)
            assert_matches_oracle(ours, oracle, ref, what=f"{name} guided loop")


class _CountingUNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet, self.batches = unet, []

    def forward(self, x, t, encoder_hidden_states):
        self.batches.append(x.shape[0])
        return self.unet(x, t, encoder_hidden_states=encoder_hidden_states)


def test_sample_without_guidance_is_one_conditional_pass(tiny_unet):
    cond, negative, noise = torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.randn(2, 4, 8, 8)
    counting = _CountingUNet(tiny_unet)
    with torch.no_grad():
        ours = sample(counting, make_sampler("dpm++"), noise, cond, 4, guidance_scale=1.0,
                      negative_encoder_hidden_states=negative, progress=False)
        ref = make_sampler("dpm++")
        ref_x = sample_loop(lambda x, t: tiny_unet(x, t, encoder_hidden_states=cond).sample, ref, noise, 4,
                            progress=False)
        with pytest.warns(UserWarning, match="guidance_scale"):
            sample(counting, make_sampler("dpm++"), noise, cond, 4, guidance_scale=5.0, progress=False)
    assert counting.batches == [2] * 8
    _close(ours, ref_x, "final latents")


def test_sample_half_precision_keeps_dtype(tiny_unet):
    unet = _CountingUNet(tiny_unet)
    latents = torch.randn(1, 4, 8, 8, dtype=torch.bfloat16)
    cond = torch.randn(1, 5, 32, dtype=torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = sample(unet, make_sampler("euler"), latents, cond, 2, guidance_scale=3.0,
                     negative_encoder_hidden_states=torch.zeros_like(cond), progress=False)
    assert out.dtype == torch.bfloat16 and out.shape == latents.shape and torch.isfinite(out.float()).all()
    assert unet.batches == [2, 2]


# ---------------------------------------------------------------- from_config


ADD_NOISE_CASES = [(name, config_name, config) for name in SAMPLER_NAMES for config_name, config in (
    ("default", {}),
    ("sd-trailing", {**SD_BETAS, "timestep_spacing": "trailing"}) if "timestep_spacing" in OPTIONS[name] else
    ("sd", SD_BETAS),
    ("karras", {"use_karras_sigmas": True}) if name in ("euler", "dpm++", "heun", "lms", "kdpm2", "kdpm2_a",
                                                        "dpm++_single") else
    ("plms", {"skip_prk_steps": True}) if name == "pndm" else  # PNDM has no zero-SNR option
    ("zero-snr", {"rescale_betas_zero_snr": True}))]


@pytest.mark.parametrize("name, config_name, config", ADD_NOISE_CASES, ids=[f"{n}-{c}" for n, c, _ in ADD_NOISE_CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_add_noise_matches_diffusers(name, config_name, config, dtype):
    """add_noise equals diffusers' bit for bit at planned timesteps (a planned timestep's sigma for Euler and
    DPM-Solver++) and, for the samplers whose diffusers schedule allows it, before set_timesteps."""
    ref, ours = _scheduler(name, **config), make_sampler(name, **config)
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(3, 4, 5, 5, generator=g, dtype=dtype), torch.randn(3, 4, 5, 5, generator=g, dtype=dtype)
    # diffusers' DPM-Solver and UniPC pair initial timesteps with reversed sigmas; a Karras schedule planned at
    # construction (Heun, LMS, KDPM2) holds no integer timestep or repeats them.
    if name not in ("dpm++", "unipc", "dpm++_single") and not config.get("use_karras_sigmas"):
        t = torch.tensor([999, 10, 500])
        assert torch.equal(ours.add_noise(x, noise, t), ref.add_noise(x, noise, t))
    ref.set_timesteps(13)
    ours.set_timesteps(13)
    t = ref.timesteps[[0, 4, -1]]
    assert torch.equal(ours.add_noise(x, noise, t), ref.add_noise(x, noise, t))
    one = ours.add_noise(x, noise, t[1])  # one timestep for the whole batch
    assert torch.equal(one, ref.add_noise(x, noise, t[1].repeat(3)))


def test_add_noise_is_the_training_forward_process():
    """Before set_timesteps every sampler noises to the training timestep's level: DDPM's sqrt(a) x + sqrt(1-a) n,
    Euler's x + sigma n and DPM-Solver++'s variance-preserving form of the same sigma, in float64."""
    x, noise, t = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64), torch.tensor([3, 700])
    a = make_sampler("ddpm").alphas_cumprod.double()[t][:, None]
    sigma = ((1 - a) / a) ** 0.5
    torch.testing.assert_close(make_sampler("ddpm").add_noise(x, noise, t), a**0.5 * x + (1 - a) ** 0.5 * noise)
    torch.testing.assert_close(make_sampler("euler").add_noise(x, noise, t), x + sigma * noise)
    torch.testing.assert_close(make_sampler("dpm++").add_noise(x, noise, t), a**0.5 * x + (1 - a) ** 0.5 * noise)


@pytest.mark.parametrize("name, timesteps, error, pattern", [
    ("ddpm", torch.tensor([1000, 0, 0]), ValueError, r"timesteps: expected values in \[0, 1000\)"),
    ("ddim", torch.tensor([-1, 0, 0]), ValueError, "timesteps: expected values"),
    ("ddpm", torch.tensor([1.5, 0, 0]), ValueError, "timesteps: expected integer"),
    ("ddpm", torch.tensor([1, 2]), ValueError, "timesteps: expected one timestep or one per batch item"),
    ("euler", torch.tensor([1000, 0, 0]), ValueError, "timesteps: expected values"),
])
def test_add_noise_bad_timesteps(name, timesteps, error, pattern):
    x = torch.randn(3, 2)
    with pytest.raises(error, match=pattern):
        make_sampler(name).add_noise(x, torch.randn_like(x), timesteps)


def test_add_noise_bad_tensors_and_unplanned_timestep():
    sampler, x = make_sampler("dpm++"), torch.randn(3, 2)
    with pytest.raises(ValueError, match="noise: expected original's shape"):
        sampler.add_noise(x, torch.randn(3, 3), torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="original: expected a floating-point tensor"):
        sampler.add_noise(torch.ones(3, 2, dtype=torch.int64), x, torch.tensor([1, 2, 3]))
    sampler.set_timesteps(10)
    with pytest.raises(ValueError, match="timesteps: 1 is not one of the planned timesteps"):
        sampler.add_noise(x, torch.randn_like(x), torch.tensor([1, 1, 1]))


def test_from_config_of_a_diffusers_scheduler():
    ref = _scheduler("ddim", prediction_type="v_prediction", timestep_spacing="trailing", **SD_BETAS)
    saved = {**ref.config, "_class_name": "DDIMScheduler", "_diffusers_version": "0.42.1"}
    for source in (ref, saved):
        ours = from_config(source)
        assert ours.name == "ddim"
        assert ours.config["prediction_type"] == "v_prediction" and ours.config["beta_schedule"] == "scaled_linear"
    ours = from_config(ref.config, name="ddim")
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)


def test_from_config_switches_scheduler_and_ignores_foreign_keys():
    """Stable Diffusion ships a PNDM config; converting it keeps the betas and drops PNDM-only keys."""
    d = _diffusers()
    pndm = d.PNDMScheduler(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **SD_BETAS)
    ours, ref = from_config(pndm.config, name="euler"), d.EulerDiscreteScheduler.from_config(pndm.config)
    ours.set_timesteps(9)
    ref.set_timesteps(9)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-7)
    assert from_config(pndm).name == "pndm"  # the scheduler's own class by default
    with pytest.raises(ValueError, match=r"^name: cannot tell"):
        from_config(pndm.config)  # a bare config does not say its class
    with pytest.raises(ValueError, match=r"^name: cannot tell"):
        from_config(d.DEISMultistepScheduler(**SD_BETAS))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("num_steps,error", [(0, ValueError), (-3, ValueError), (1001, ValueError),
                                             (2.5, TypeError), (True, TypeError)])
def test_bad_num_steps(num_steps, error):
    with pytest.raises(error, match=r"^num_steps: "):
        sample_loop(FakeModel(), make_sampler("ddim"), torch.randn(1, 4, 4, 4), num_steps, progress=False)
    with pytest.raises(error, match=r"^num_steps: "):
        make_sampler("euler").set_timesteps(num_steps)


def test_unknown_sampler_name_lists_known_ones():
    known = (r"'ddpm', 'ddim', 'euler', 'euler_a', 'dpm\+\+', 'pndm', 'unipc', 'lcm', 'heun', 'lms', 'kdpm2', "
             r"'kdpm2_a', 'dpm\+\+_single'")
    with pytest.raises(ValueError, match=r"^name: unknown sampler 'deis'.*" + known):
        make_sampler("deis")
    with pytest.raises(TypeError, match=r"^name: "):
        make_sampler(None)
    with pytest.raises(ValueError, match=r"^name: unknown sampler"):
        from_config({}, name="deis")


@pytest.mark.parametrize("config,error,pattern", [
    ({"beta_schedul": "linear"}, TypeError, "^beta_schedul: not a config key of the 'ddim' sampler"),
    ({"beta_schedule": "quadratic"}, ValueError, "^beta_schedule: expected one of"),
    ({"beta_schedule": "sigmoid"}, NotImplementedError, "^beta_schedule='sigmoid' is not implemented"),
    ({"prediction_type": "noise"}, ValueError, "^prediction_type: expected one of"),
    ({"timestep_spacing": "uniform"}, ValueError, "^timestep_spacing: expected one of"),
    ({"num_train_timesteps": 0}, ValueError, "^num_train_timesteps: expected a value >= 1"),
    ({"num_train_timesteps": 10.0}, TypeError, "^num_train_timesteps: expected an int"),
    ({"eta": -0.1}, ValueError, "^eta: expected a value >= 0"),
    ({"clip_sample": "yes"}, TypeError, "^clip_sample: expected a bool"),
    ({"trained_betas": [0.1] * 10}, ValueError, "^trained_betas: expected num_train_timesteps=1000 values"),
    ({"trained_betas": [1.5] * 1000}, ValueError, "^trained_betas: every beta"),
])
def test_bad_config_values(config, error, pattern):
    with pytest.raises(error, match=pattern):
        make_sampler("ddim", **config)


@pytest.mark.parametrize("name,config,error,pattern", [
    ("unipc", {"disable_corrector": ["a"]}, TypeError, r"^disable_corrector: expected a list of step indices"),
    ("unipc", {"disable_corrector": [-1]}, TypeError, r"^disable_corrector: expected a list of step indices"),
    ("unipc", {"solver_order": 0}, ValueError, r"^solver_order: expected a value >= 1"),
    ("unipc", {"solver_p": object()}, ValueError, r"^solver_p: expected one of None"),
    ("lcm", {"original_inference_steps": 2000}, ValueError, r"^original_inference_steps: expected at most"),
    ("lcm", {"timestep_scaling": -1.0}, ValueError, r"^timestep_scaling: expected a value >= 0"),
    ("pndm", {"rescale_betas_zero_snr": True}, TypeError, r"^rescale_betas_zero_snr: not a config key"),
    ("heun", {"final_sigmas_type": "zero"}, TypeError, r"^final_sigmas_type: not a config key"),
])
def test_bad_config_values_of_the_newer_samplers(name, config, error, pattern):
    with pytest.raises(error, match=pattern):
        make_sampler(name, **config)


@pytest.mark.parametrize("kwargs", [{"original_inference_steps": 20}, {"strength": 0.5},
                                    {"original_inference_steps": 30, "strength": 0.4}], ids=str)
def test_lcm_set_timesteps_arguments_match_diffusers(kwargs):
    """LatentConsistencyModelPipeline passes original_inference_steps; its img2img pipeline also strength."""
    ours, ref = make_sampler("lcm"), _scheduler("lcm")
    ours.set_timesteps(4, **kwargs)
    ref.set_timesteps(4, **kwargs)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    x, out = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    for i, t in enumerate(ref.timesteps):
        want = ref.step(out, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        _close(ours.step(out, ours.timesteps[i], x, generator=torch.Generator().manual_seed(i)), want, f"step {i}")
    for bad in ({"original_inference_steps": 0}, {"original_inference_steps": 2.5}, {"strength": 0.0},
                {"strength": 1.5}):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))}: expected"):
            ours.set_timesteps(4, **bad)


@pytest.mark.parametrize("name,config,steps,pattern", [
    ("pndm", {}, 3, r"^num_steps: PNDM's Runge-Kutta start needs at least 4 steps"),
    ("lcm", {"original_inference_steps": 8}, 9, r"^num_steps: expected at most original_inference_steps=8 x"),
])
def test_bad_step_counts_of_the_newer_samplers(name, config, steps, pattern):
    sampler = make_sampler(name, **config)
    with pytest.raises(ValueError, match=pattern):
        sampler.set_timesteps(steps)
    sampler.set_timesteps(steps - 1 if name == "lcm" else steps + 1)  # the nearest good count plans


@pytest.mark.parametrize("name,config,key", [
    ("ddpm", {"variance_type": "fixed_large_log"}, "variance_type"),
    ("dpm++", {"solver_order": 3}, "solver_order"),
    ("dpm++", {"algorithm_type": "sde-dpmsolver"}, "algorithm_type"),
    ("dpm++", {"use_flow_sigmas": True}, "use_flow_sigmas"),
    ("euler", {"use_beta_sigmas": True}, "use_beta_sigmas"),
    ("euler", {"prediction_type": "flow_prediction"}, "prediction_type"),
    ("unipc", {"predict_x0": False}, "predict_x0"),
    ("unipc", {"use_flow_sigmas": True}, "use_flow_sigmas"),
    ("euler_a", {"prediction_type": "sample"}, "prediction_type"),
])
def test_unimplemented_options_name_the_key(name, config, key):
    with pytest.raises(NotImplementedError, match=rf"^{key}="):
        make_sampler(name, **config)


def test_conflicting_and_overflowing_schedules():
    with pytest.raises(ValueError, match=r"^use_karras_sigmas: at most one"):
        make_sampler("euler", use_karras_sigmas=True, use_exponential_sigmas=True)
    with pytest.raises(ValueError, match=r"^steps_offset: "):
        make_sampler("ddim", steps_offset=1).set_timesteps(1000)


def test_bad_latents_and_context(tiny_unet):
    cond = torch.randn(2, 5, 32)
    cases = [
        (torch.randn(2, 4, 8), cond, ValueError, "^latents: expected 4 dimensions"),
        (torch.randn(2, 4, 8, 8, 1), cond, ValueError, "^latents: expected 4 dimensions"),
        (torch.zeros(2, 4, 8, 8, dtype=torch.int64), cond, TypeError, "^latents: expected a floating-point"),
        ("noise", cond, TypeError, "^latents: expected a torch.Tensor"),
        (torch.randn(3, 4, 8, 8), cond, ValueError, "^latents: batch size 3 does not match"),
        (torch.randn(2, 4, 8, 8), torch.randn(2, 32), ValueError, "^encoder_hidden_states: expected 3 dimensions"),
    ]
    for latents, context, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            sample(tiny_unet, make_sampler("ddim"), latents, context, 4, progress=False)
    with pytest.raises(ValueError, match=r"^negative_encoder_hidden_states: expected"):
        sample(tiny_unet, make_sampler("ddim"), torch.randn(2, 4, 8, 8), cond, 4, 5.0, torch.randn(2, 6, 32),
               progress=False)
    with pytest.raises(ValueError, match=r"^latents: "):
        sample_loop(FakeModel(), make_sampler("ddim"), torch.randn(4), 4, progress=False)


@pytest.mark.parametrize("guidance,error", [(-1.0, ValueError), (float("nan"), ValueError), ("7", TypeError)])
def test_bad_guidance_scale(tiny_unet, guidance, error):
    with pytest.raises(error, match=r"^guidance_scale: "):
        sample(tiny_unet, make_sampler("euler"), torch.randn(1, 4, 8, 8), torch.randn(1, 5, 32), 4, guidance,
               torch.randn(1, 5, 32), progress=False)


def test_bad_loop_arguments():
    x = torch.randn(1, 4, 4, 4)
    with pytest.raises(TypeError, match=r"^sampler: "):
        sample_loop(FakeModel(), _scheduler("ddim"), x, 4, progress=False)
    with pytest.raises(TypeError, match=r"^model_fn: "):
        sample_loop(None, make_sampler("ddim"), x, 4, progress=False)
    with pytest.raises(TypeError, match=r"^generator: "):
        sample_loop(FakeModel(), make_sampler("ddpm"), x, 4, generator=5, progress=False)
    with pytest.raises(ValueError, match=r"^generator: a list"):
        sample_loop(FakeModel(), make_sampler("ddpm"), x, 4, generator=[torch.Generator()] * 2, progress=False)


def test_step_misuse():
    sampler, x = make_sampler("euler"), torch.randn(1, 4, 4, 4)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sampler.step(x, 0, x)
    sampler.set_timesteps(1)
    with pytest.raises(ValueError, match=r"^model_output: expected shape"):
        sampler.step(torch.randn(1, 3, 4, 4), sampler.timesteps[0], x)
    sampler.step(x, sampler.timesteps[0], x)
    with pytest.raises(RuntimeError, match="all 1 steps have run"):
        sampler.step(x, sampler.timesteps[0], x)
    ddim = make_sampler("ddim")
    ddim.set_timesteps(4)
    with pytest.raises(ValueError, match=r"^t: expected the current timestep 750 \(step 0 of 4"):
        ddim.step(x, 0, x)  # an enumerate() index instead of the timestep
    with pytest.raises(ValueError, match=r"^t: expected the current timestep 750"):
        ddim.step(x, ddim.timesteps[1], x)
    ddim.step(x, 750, x)
    ddim.step(x, ddim.timesteps[1:2].expand(1), x)
    learned = make_sampler("ddpm", variance_type="learned_range")
    learned.set_timesteps(2)
    with pytest.raises(ValueError, match=r"^model_output: expected shape \(1, 8, 4, 4\)"):
        learned.step(x, learned.timesteps[0], x)


# ---------------------------------------------------------------- GPU: no host syncs


@pytest.mark.gpu
@pytest.mark.parametrize("name,config", [("ddpm", {}), ("ddim", {"eta": 1.0}), ("euler", {"use_karras_sigmas": True}),
                                         ("euler_a", {}), ("dpm++", {}),
                                         ("dpm++", {"algorithm_type": "sde-dpmsolver++"}),
                                         ("unipc", {"solver_order": 3}), ("pndm", {}), ("lcm", {}), ("heun", {}),
                                         ("lms", {}), ("kdpm2", {"use_karras_sigmas": True}), ("kdpm2_a", {}),
                                         ("dpm++_single", {"solver_order": 3}),
                                         ("dpm++_single", {"algorithm_type": "sde-dpmsolver++"}),
                                         ("flow_euler", {"shift": 3.0, "shift_terminal": 0.05}),
                                         ("flow_euler", {"stochastic_sampling": True}), ("flow_heun", {"shift": 3.0})],
                         ids=["ddpm", "ddim-eta1", "euler-karras", "euler-a", "dpm++", "dpm-sde", "unipc-3", "pndm",
                              "lcm", "heun", "lms", "kdpm2-karras", "kdpm2-a", "dpm-single-3", "dpm-single-sde",
                              "flow-euler", "flow-euler-stochastic", "flow-heun"])
def test_gpu_loop_has_no_host_syncs(name, config):
    """CUDA sync debug mode raises on any synchronising call from the first model call to the end of
    the loop (set_timesteps before it may copy the planned rows to the GPU)."""
    model = FakeModel()
    cpu_result = sample_loop(model, make_sampler(name, **config), torch.ones(2, 4, 16, 16), 10,
                             generator=torch.Generator().manual_seed(0), progress=False)
    model.weight, model.bias = model.weight.cuda(), model.bias.cuda()

    def model_fn(x, t):
        torch.cuda.set_sync_debug_mode("error")
        return model(x, t)

    try:
        out = sample_loop(model_fn, make_sampler(name, **config), torch.ones(2, 4, 16, 16, device="cuda"), 10,
                          generator=torch.Generator("cuda").manual_seed(0), progress=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda" and torch.isfinite(out).all()
    # Deterministic: the GPU loop agrees with the CPU one (the stochastic ones draw from a CUDA generator there).
    stochastic = name in ("ddpm", "euler_a", "lcm", "kdpm2_a") or config.get("eta") or "sde" in config.get(
        "algorithm_type", "") or config.get("stochastic_sampling")
    if not stochastic:
        torch.testing.assert_close(out.cpu(), cpu_result, rtol=1e-4, atol=1e-4)
