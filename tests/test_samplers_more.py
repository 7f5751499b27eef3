"""The LMS, KDPM2, KDPM2 ancestral and DPM-Solver singlestep samplers against the installed diffusers' schedulers:
their config options step by step (the spacing x prediction x schedule matrix, seeded noise, guided loops, add_noise
and the GPU no-sync loop are test_samplers.py's tests over every sampler; the Stable Diffusion pipelines are
test_sampler_pipelines.py's), LMS's order argument and its exact coefficients, the KDPM2 call layout, the
singlestep order lists, the documented departures, from_config, and bad input."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from genai_fast.diffusion import from_config, make_sampler, sample_loop
from genai_fast.diffusion.samplers import lms_coefficients, singlestep_orders
from tests.test_samplers import SD_BETAS, FakeModel, _close, _run_lockstep, _scheduler

diffusers = pytest.importorskip("diffusers")

pytestmark = [
    # diffusers' own set_timesteps trip numpy 2's __array__(copy=) and __array_wrap__ deprecations.
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:algorithm_type `dpmsolver` is deprecated:FutureWarning"),
]

SINGLE_MIN = {"final_sigmas_type": "sigma_min"}

OPTION_CASES = {
    "lms-karras-sd": ("lms", {"use_karras_sigmas": True, **SD_BETAS}, 12),
    "lms-exponential-v": ("lms", {"use_exponential_sigmas": True, "prediction_type": "v_prediction"}, 12),
    "lms-order-1": ("lms", {"order": 1}, 12),
    "lms-order-2-trailing": ("lms", {"order": 2, "timestep_spacing": "trailing"}, 12),
    "lms-order-3-sd": ("lms", {"order": 3, **SD_BETAS}, 12),
    "lms-order-6": ("lms", {"order": 6}, 12),
    "lms-sample-cosine-9": ("lms", {"prediction_type": "sample", "beta_schedule": "squaredcos_cap_v2"}, 9),
    "lms-trained-betas-T100": ("lms", {"num_train_timesteps": 100,
                                       "trained_betas": np.linspace(1e-3, 0.05, 100).tolist()}, 100),
    "lms-1-step": ("lms", {}, 1),
    "lms-sd-50": ("lms", SD_BETAS, 50),
    "kdpm2-karras-sd": ("kdpm2", {"use_karras_sigmas": True, **SD_BETAS}, 12),
    "kdpm2-exponential-v": ("kdpm2", {"use_exponential_sigmas": True, "prediction_type": "v_prediction"}, 12),
    "kdpm2-cosine-7": ("kdpm2", {"beta_schedule": "squaredcos_cap_v2"}, 7),
    "kdpm2-1-step": ("kdpm2", {}, 1),
    "kdpm2-sd-30": ("kdpm2", SD_BETAS, 30),
    "kdpm2-a-karras-v": ("kdpm2_a", {"use_karras_sigmas": True, "prediction_type": "v_prediction", **SD_BETAS}, 12),
    "kdpm2-a-exponential": ("kdpm2_a", {"use_exponential_sigmas": True}, 12),
    "kdpm2-a-cosine-leading": ("kdpm2_a", {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "leading",
                                          "steps_offset": 1}, 9),
    "kdpm2-a-1-step": ("kdpm2_a", {}, 1),
    "kdpm2-a-2-steps": ("kdpm2_a", {}, 2),
    "single-order-1": ("dpm++_single", {"solver_order": 1}, 12),
    "single-order-2-odd": ("dpm++_single", {}, 13),
    "single-order-3": ("dpm++_single", {"solver_order": 3}, 12),
    "single-order-3-heun-14": ("dpm++_single", {"solver_order": 3, "solver_type": "heun"}, 14),
    "single-heun-v": ("dpm++_single", {"solver_type": "heun", "prediction_type": "v_prediction"}, 12),
    "single-bh2-runs-as-midpoint": ("dpm++_single", {"solver_type": "bh2"}, 12),
    "single-no-lower-order-final": ("dpm++_single", {"lower_order_final": False, **SINGLE_MIN}, 12),
    "single-order-3-no-lower-order-final": ("dpm++_single", {"solver_order": 3, "lower_order_final": False,
                                                             **SINGLE_MIN}, 12),
    "single-order-3-lower-order-final-16": ("dpm++_single", {"solver_order": 3, "lower_order_final": True,
                                                             **SINGLE_MIN}, 16),
    "single-karras-sd": ("dpm++_single", {"use_karras_sigmas": True, **SD_BETAS}, 12),
    "single-exponential-3": ("dpm++_single", {"use_exponential_sigmas": True, "solver_order": 3}, 12),
    "single-thresholding-sample": ("dpm++_single", {"thresholding": True, "prediction_type": "sample",
                                                    "sample_max_value": 2.0}, 12),
    "single-lambda-clipped-cosine": ("dpm++_single", {"lambda_min_clipped": -5.1,
                                                      "beta_schedule": "squaredcos_cap_v2"}, 12),
    "single-dpmsolver": ("dpm++_single", {"algorithm_type": "dpmsolver", **SINGLE_MIN}, 12),
    "single-dpmsolver-3-heun-v": ("dpm++_single", {"algorithm_type": "dpmsolver", "solver_order": 3,
                                                   "solver_type": "heun", "prediction_type": "v_prediction",
                                                   **SINGLE_MIN}, 12),
    "single-dpmsolver-3-sample": ("dpm++_single", {"algorithm_type": "dpmsolver", "solver_order": 3,
                                                   "prediction_type": "sample", **SINGLE_MIN, **SD_BETAS}, 11),
    "single-deis-runs-as-dpmsolver++": ("dpm++_single", {"algorithm_type": "deis", **SINGLE_MIN}, 12),
    "single-sde": ("dpm++_single", {"algorithm_type": "sde-dpmsolver++"}, 12),
    "single-sde-3-heun-karras": ("dpm++_single", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                                                  "solver_type": "heun", "use_karras_sigmas": True, **SD_BETAS}, 12),
    "single-sde-3-midpoint-v": ("dpm++_single", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                                                 "prediction_type": "v_prediction", **SINGLE_MIN}, 15),
    "single-sd-50": ("dpm++_single", SD_BETAS, 50),
}


@pytest.mark.parametrize("case", OPTION_CASES.keys())
def test_config_options_match_diffusers(case):
    name, config, steps = OPTION_CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers deprecates algorithm_type="dpmsolver"
        _run_lockstep(name, config, steps)


# ---------------------------------------------------------------- LMS


def test_lms_order_step_argument_matches_diffusers():
    """LMSDiscreteScheduler.step(order=k) per step, changing between steps: the derivatives kept and combined."""
    orders = [4, 2, 3, 1, 4, 4, 2, 3, 3, 1, 2, 4]
    model, ours, ref = FakeModel(), make_sampler("lms", **SD_BETAS), _scheduler("lms", **SD_BETAS)
    for s in (ours, ref):
        s.set_timesteps(len(orders))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * ours.init_noise_sigma
    x_ref = x.clone()
    for i, (t, order) in enumerate(zip(ref.timesteps, orders, strict=True)):
        x = ours.step(model(ours.scale_model_input(x, t), t.expand(2)), t, x, order=order)
        x_ref = ref.step(model(ref.scale_model_input(x_ref, t), t.expand(2)), t, x_ref, order=order).prev_sample
        _close(x, x_ref, f"step {i} (order {order})")


def test_lms_coefficients_are_the_exact_integrals():
    """Gauss-Legendre on the Lagrange basis equals scipy's adaptive quad at tight tolerance in float64; diffusers
    evaluates the integrand with float32 sigma tensors, so its coefficients agree to float32 precision."""
    integrate = pytest.importorskip("scipy.integrate")
    ref = _scheduler("lms", use_karras_sigmas=True, **SD_BETAS)
    ref.set_timesteps(25)
    sigmas = ref.sigmas.double().numpy()
    for i in (0, 1, 2, 3, 12, 23, 24):
        for order in range(1, min(i + 1, 4) + 1):
            ours = lms_coefficients(ref.sigmas, i, order)

            def basis(tau, j, order=order, i=i):
                return np.prod([(tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
                                for k in range(order) if k != j])

            exact = [integrate.quad(basis, sigmas[i], sigmas[i + 1], args=(j,), epsabs=0, epsrel=1e-13)[0]
                     for j in range(order)]
            np.testing.assert_allclose(ours, exact, rtol=1e-12, atol=1e-12 * np.abs(exact).max())
            theirs = [ref.get_lms_coefficient(order, i, j) for j in range(order)]
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * np.abs(theirs).max())
    assert lms_coefficients([3.0, 1.0], 0, 1).tolist() == [-2.0]  # order 1: the interval, Euler's step
    with pytest.raises(ValueError, match=r"^order: expected 1 <= order <= i \+ 1 = 1"):
        lms_coefficients([3.0, 2.0, 1.0], 0, 2)  # no level before the first


def test_lms_runs_without_scipy():
    """diffusers needs scipy for LMS; ours plans and steps with scipy unimportable."""
    code = ("import sys; sys.modules['scipy'] = None\n"
            "import torch\nfrom genai_fast.diffusion import make_sampler\n"
            "s = make_sampler('lms', use_karras_sigmas=True); s.set_timesteps(12)\n"
            "x = torch.ones(1, 4, 2, 2)\n"
            "for t in s.timesteps: x = s.step(0.1 * x, t, x)\n"
            "assert torch.isfinite(x).all(); print('planned and stepped')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "planned and stepped" in result.stdout


# ---------------------------------------------------------------- KDPM2


@pytest.mark.parametrize("name", ["kdpm2", "kdpm2_a"])
@pytest.mark.parametrize("config", [{}, {"use_karras_sigmas": True}], ids=["default", "karras"])
def test_kdpm2_calls_two_per_level_like_diffusers(name, config):
    """2N - 1 model calls for N levels (the last level takes one), order 2, N inference steps; timesteps of diffusers'
    dtype (float64 for Karras, as diffusers) and values; the step counter walks every call."""
    ours, ref = make_sampler(name, **config), _scheduler(name, **config)
    for s in (ours, ref):
        s.set_timesteps(6)
    assert ours.order == ref.order == 2 and ours.num_inference_steps == 6
    assert ours.num_steps == len(ours.timesteps) == len(ref.timesteps) == 11
    assert ours.timesteps.dtype == ref.timesteps.dtype == (torch.float64 if config else torch.float32)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    out = sample_loop(FakeModel(), ours, torch.randn(1, 4, 4, 4), 6, generator=torch.Generator().manual_seed(0),
                      progress=False)
    assert ours.step_index == 11 and torch.isfinite(out).all()


def test_kdpm2_ancestral_first_cosine_level_is_finite():
    """Documented departure: on the cosine schedule's first level (sigma ~2e4) diffusers' sigma_down rounds to 0, its
    midpoint timestep is NaN and so are its latents; ours takes sigma_down's exact value and stays finite, with
    diffusers' timesteps everywhere else."""
    config = {"beta_schedule": "squaredcos_cap_v2"}
    ours, ref = make_sampler("kdpm2_a", **config), _scheduler("kdpm2_a", **config)
    for s in (ours, ref):
        s.set_timesteps(10)
    nan = torch.isnan(ref.timesteps)
    assert nan.tolist() == [False, True] + [False] * 17
    torch.testing.assert_close(ours.timesteps[~nan], ref.timesteps[~nan], rtol=0, atol=0)
    assert ref.timesteps[0] > ours.timesteps[1] >= ref.timesteps[2]  # the midpoint lies between its levels
    model, noise = FakeModel(), torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    x, gen = noise * ref.init_noise_sigma, torch.Generator().manual_seed(1)
    for t in ref.timesteps:
        x = ref.step(model(ref.scale_model_input(x, t), t.expand(1)), t, x, generator=gen).prev_sample
    assert torch.isnan(x).all()
    out = sample_loop(model, ours, noise * ours.init_noise_sigma, 10, generator=torch.Generator().manual_seed(1),
                      progress=False)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- DPM-Solver singlestep


def test_singlestep_order_lists_match_diffusers():
    """singlestep_orders against DPMSolverSinglestepScheduler.order_list over step counts, orders and finals."""
    for steps in range(1, 26):
        for order in (1, 2, 3):
            for lower in (False, True):
                for final in ("zero", "sigma_min"):
                    ref = _scheduler("dpm++_single", solver_order=order, lower_order_final=lower,
                                     final_sigmas_type=final)
                    ref.set_timesteps(steps)
                    ours = make_sampler("dpm++_single", solver_order=order, lower_order_final=lower,
                                        final_sigmas_type=final)
                    ours.set_timesteps(steps)
                    want = singlestep_orders(steps, order, lower, final == "zero")
                    assert want == ref.order_list, (steps, order, lower, final)
                    assert list(ours._plan.order) == want


def test_singlestep_lower_order_final_is_per_plan():
    """Documented departure: with lower_order_final=False and an odd step count diffusers rewrites its config to
    lower_order_final=True, which then also lowers a later even plan's last step; ours keeps the config, so the later
    plan is that of a fresh scheduler."""
    config = {"lower_order_final": False, **SINGLE_MIN}
    ours, ref = make_sampler("dpm++_single", **config), _scheduler("dpm++_single", **config)
    for s in (ours, ref):
        s.set_timesteps(7)
    assert list(ours._plan.order) == ref.order_list == [1, 2, 1, 2, 1, 2, 1]
    for s in (ours, ref):
        s.set_timesteps(8)
    assert ref.config.lower_order_final is True and ours.config.lower_order_final is False
    assert ref.order_list == [1, 2, 1, 2, 1, 2, 1, 1]
    fresh = _scheduler("dpm++_single", **config)
    fresh.set_timesteps(8)
    assert list(ours._plan.order) == fresh.order_list == [1, 2, 1, 2, 1, 2, 1, 2]


def test_singlestep_from_a_begin_index_matches_diffusers():
    """img2img: the first steps from a begin index lower the order to the outputs seen, as diffusers."""
    config = {"solver_order": 3, **SD_BETAS}
    for begin in (1, 2, 4):
        ours, ref = make_sampler("dpm++_single", **config), _scheduler("dpm++_single", **config)
        for s in (ours, ref):
            s.set_timesteps(10)
            s.set_begin_index(begin)
        model = FakeModel()
        x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(begin))
        x_ref = x.clone()
        for i, t in enumerate(ref.timesteps[begin:]):
            x = ours.step(model(x, t.expand(1)), t, x)
            x_ref = ref.step(model(x_ref, t.expand(1)), t, x_ref).prev_sample
            _close(x, x_ref, f"begin {begin}, step {i}")


def test_singlestep_repeated_levels():
    """1000 steps repeat a timestep: a higher-order update would divide by the zero gap (diffusers: NaN) and is
    refused; first order steps across it as diffusers does."""
    with pytest.raises(ValueError, match=r"^num_steps: 1000 steps repeat a noise level .* DPM-Solver cannot"):
        make_sampler("dpm++_single").set_timesteps(1000)
    ours, ref = make_sampler("dpm++_single", solver_order=1), _scheduler("dpm++_single", solver_order=1)
    for s in (ours, ref):
        s.set_timesteps(1000)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    model, x = FakeModel(), torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    x_ref = x.clone()
    for t in ref.timesteps[:40]:
        x = ours.step(model(x, t.expand(1)), t, x)
        x_ref = ref.step(model(x_ref, t.expand(1)), t, x_ref).prev_sample
    _close(x, x_ref, "40 first-order steps")


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("name, config", [("lms", {}), ("kdpm2", {}), ("kdpm2_a", {}),
                                          ("dpm++_single", {"solver_order": 3}),
                                          ("dpm++_single", {"algorithm_type": "sde-dpmsolver++"})],
                         ids=["lms", "kdpm2", "kdpm2-a", "single-3", "single-sde"])
def test_half_precision_steps_like_diffusers(name, config):
    """fp16 latents and model output: the result keeps fp16 and matches diffusers' fp16 loop bit for bit (LMS: to a
    few units in the last place, its weights being exact where diffusers' carry float32 rounding)."""
    config = {**SD_BETAS, **config}
    ours, ref = make_sampler(name, **config), _scheduler(name, **config)
    for s in (ours, ref):
        s.set_timesteps(8)
    model = FakeModel()
    x = (torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * ours.init_noise_sigma).half()
    x_ref, gen, gen_ref = x.clone(), torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    drawn = {"generator": gen_ref} if name in ("kdpm2_a", "dpm++_single") else {}
    for t in ref.timesteps:
        x = ours.step(model(ours.scale_model_input(x, t).float(), t.expand(1)).half(), t, x, generator=gen)
        out = model(ref.scale_model_input(x_ref, t).float(), t.expand(1)).half()
        x_ref = ref.step(out, t, x_ref, **drawn).prev_sample
    assert x.dtype == x_ref.dtype == torch.float16
    if name == "lms":
        assert float((x.float() - x_ref.float()).abs().max()) <= 2**-7 * float(x_ref.abs().max())
    else:
        torch.testing.assert_close(x, x_ref, rtol=0, atol=0)


# ---------------------------------------------------------------- from_config


@pytest.mark.parametrize("name, cls, config", [
    ("lms", "LMSDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1}),
    ("kdpm2", "KDPM2DiscreteScheduler", {"prediction_type": "v_prediction", "use_exponential_sigmas": True}),
    ("kdpm2_a", "KDPM2AncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("dpm++_single", "DPMSolverSinglestepScheduler", {"solver_order": 3, "use_karras_sigmas": True,
                                                      "algorithm_type": "sde-dpmsolver++"}),
])
def test_from_config_of_the_diffusers_schedulers(name, cls, config):
    ref = getattr(diffusers, cls)(**SD_BETAS, **config)
    saved = {**ref.config, "_class_name": cls, "_diffusers_version": "0.42.1"}
    for source in (ref, saved):
        ours = from_config(source)
        assert ours.name == name and all(ours.config[k] == v for k, v in config.items())
        ours.set_timesteps(9)
        ref.set_timesteps(9)
        torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    # Stable Diffusion's PNDM config switched to each: the betas carry, PNDM's own keys do not.
    pndm = diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **SD_BETAS)
    ours, ref = from_config(pndm.config, name=name), getattr(diffusers, cls).from_config(pndm.config)
    for s in (ours, ref):
        s.set_timesteps(9)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-7)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name,config,key", [
    ("lms", {"use_beta_sigmas": True}, "use_beta_sigmas"),
    ("lms", {"prediction_type": "flow_prediction"}, "prediction_type"),
    ("kdpm2", {"prediction_type": "sample"}, "prediction_type"),  # diffusers' step raises NotImplementedError too
    ("kdpm2_a", {"prediction_type": "sample"}, "prediction_type"),
    ("kdpm2", {"use_beta_sigmas": True}, "use_beta_sigmas"),
    ("kdpm2_a", {"beta_schedule": "sigmoid"}, "beta_schedule"),
    ("dpm++_single", {"use_beta_sigmas": True}, "use_beta_sigmas"),
    ("dpm++_single", {"use_flow_sigmas": True}, "use_flow_sigmas"),
    ("dpm++_single", {"variance_type": "learned_range"}, "variance_type"),
    ("dpm++_single", {"prediction_type": "flow_prediction"}, "prediction_type"),
    ("dpm++_single", {"algorithm_type": "dpmsolver", "thresholding": True, **SINGLE_MIN}, "thresholding"),
])
def test_unimplemented_options_name_the_key(name, config, key):
    with pytest.raises(NotImplementedError, match=rf"^{key}="):
        make_sampler(name, **config)


@pytest.mark.parametrize("name,config,error,pattern", [
    ("lms", {"order": 0}, ValueError, r"^order: expected a value >= 1"),
    ("lms", {"order": 2.0}, TypeError, r"^order: expected an int"),
    ("lms", {"rescale_betas_zero_snr": True}, TypeError, r"^rescale_betas_zero_snr: not a config key of the 'lms'"),
    ("kdpm2", {"final_sigmas_type": "zero"}, TypeError, r"^final_sigmas_type: not a config key"),
    ("kdpm2_a", {"use_karras_sigmas": True, "use_exponential_sigmas": True}, ValueError, r"^use_karras_sigmas: at"),
    ("dpm++_single", {"timestep_spacing": "trailing"}, TypeError, r"^timestep_spacing: not a config key"),
    ("dpm++_single", {"solver_type": "bh3"}, ValueError, r"^solver_type: expected one of"),
])
def test_bad_config_values(name, config, error, pattern):
    with pytest.raises(error, match=pattern):
        make_sampler(name, **config)


@pytest.mark.parametrize("config, pattern", [
    ({"algorithm_type": "dpmsolver"}, r"^final_sigmas_type: 'zero' is not supported"),
    ({"algorithm_type": "deis"}, r"^final_sigmas_type: 'zero' is not supported"),
    ({"solver_order": 4}, r"^solver_order: expected one of 1, 2, 3"),
    ({"algorithm_type": "sde-dpmsolver"}, r"^algorithm_type: expected one of"),
], ids=["dpmsolver-zero", "deis-zero", "order-4", "sde-dpmsolver"])
def test_singlestep_refuses_what_diffusers_refuses(config, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_sampler("dpm++_single", **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises((ValueError, NotImplementedError)):
            _scheduler("dpm++_single", **config)


def test_bad_lms_order_argument_does_not_step():
    sampler, x = make_sampler("lms"), torch.randn(1, 4, 4, 4)
    sampler.set_timesteps(3)
    t = sampler.timesteps[0]
    for order, error in ((0, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match=r"^order: "):
            sampler.step(x, t, x, order=order)
    assert sampler.step_index == 0
    with pytest.raises(TypeError, match="order"):  # only LMS takes it, as only LMSDiscreteScheduler.step does
        make_sampler("kdpm2").step(x, t, x, order=2)


@pytest.mark.parametrize("name", ["lms", "kdpm2", "kdpm2_a", "dpm++_single"])
def test_step_misuse(name):
    sampler, x = make_sampler(name), torch.randn(1, 4, 4, 4)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sampler.step(x, 0, x)
    sampler.set_timesteps(2)
    with pytest.raises(ValueError, match=r"^model_output: expected shape"):
        sampler.step(torch.randn(1, 3, 4, 4), sampler.timesteps[0], x)
    with pytest.raises(ValueError, match=r"^t: expected the current timestep"):
        sampler.step(x, sampler.timesteps[1], x)
    for t in sampler.timesteps:
        sampler.step(x, t, x)
    with pytest.raises(RuntimeError, match=f"all {len(sampler.timesteps)} steps have run"):
        sampler.step(x, sampler.timesteps[-1], x)
