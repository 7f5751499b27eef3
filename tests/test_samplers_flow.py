"""The flow-matching samplers ("flow_euler", "flow_heun") against the installed diffusers'
FlowMatchEulerDiscreteScheduler and FlowMatchHeunDiscreteScheduler: the schedule under each option and every step of
whole loops, bit for bit in fp32 and fp16 (Heun's two calls per level included); scale_noise; a classifier-free-guided
loop through guided_step and sample_loop; the scheduler attributes; from_config; bad input. The SD3 and Flux
pipelines with these samplers are test_sampler_pipelines.py's; the GPU no-sync loop is test_samplers.py's."""

import numpy as np
import pytest
import torch

from genai_fast.diffusion import FLOW_SAMPLER_NAMES, from_config, make_sampler, sample_loop
from tests.test_samplers import FakeModel, _close

diffusers = pytest.importorskip("diffusers")

CLASSES = {"flow_euler": "FlowMatchEulerDiscreteScheduler", "flow_heun": "FlowMatchHeunDiscreteScheduler"}
DYNAMIC = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
           "max_image_seq_len": 4096, "shift": 3.0}  # Flux's scheduler config
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _scheduler(name, **config):
    return getattr(diffusers, CLASSES[name])(**config)


def _pair(name, config, steps, schedule):
    """Ours and diffusers' scheduler, both planned with set_timesteps(steps, **schedule) (steps None: left out)."""
    ours, ref = make_sampler(name, **config), _scheduler(name, **config)
    args = () if steps is None else (steps,)
    for s in (ours, ref):
        s.set_timesteps(*args, **schedule)
    return ours, ref


def _velocity(model, x, t):
    """FakeModel as a velocity model in x's dtype (its weights are fp32)."""
    return model(x.float(), t.expand(x.shape[0])).to(x.dtype)


def _equal(ours, ref, what):
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != {ref.dtype}"
    err = float((ours.double() - ref.double()).abs().max())
    assert torch.equal(ours, ref), f"{what}: max-abs {err:.3e} (expected bit-identical)"


def _lockstep(name, config, steps, schedule, dtype, seed=7, shape=(2, 4, 8, 8)):
    ours, ref = _pair(name, config, steps, schedule)
    assert ours.timesteps.dtype == ref.timesteps.dtype == torch.float32
    _equal(ours.timesteps, ref.timesteps, "timesteps")
    _equal(ours.sigmas, ref.sigmas, "sigmas")
    assert ours.num_inference_steps == ref.num_inference_steps
    assert ours.init_noise_sigma == 1.0 and ours.order == ref.order
    model = FakeModel()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    x_ref = x.clone()
    gen, gen_ref = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    for i, t in enumerate(ref.timesteps):
        assert torch.equal(ours.scale_model_input(x, ours.timesteps[i]), x)  # the identity (diffusers has none)
        x = ours.step(_velocity(model, x, t), ours.timesteps[i], x, generator=gen)
        x_ref = ref.step(_velocity(model, x_ref, t), t, x_ref, generator=gen_ref).prev_sample
        _equal(x, x_ref, f"step {i} (t={float(t)})")
    assert torch.isfinite(x).all()
    return ours, ref


# ---------------------------------------------------------------- parity

FLUX_SIGMAS = np.linspace(1.0, 1 / 8, 8)  # FluxPipeline's default sigmas for 8 steps
CASES = {  # name, config, steps (None: from the custom lists), set_timesteps' other arguments
    "euler-default-10": ("flow_euler", {}, 10, {}),
    "euler-sd3-shift3-28": ("flow_euler", {"shift": 3.0}, 28, {}),
    "euler-shift-half-7": ("flow_euler", {"shift": 0.5}, 7, {}),
    "euler-dynamic-mu-0.5": ("flow_euler", DYNAMIC, 9, {"mu": 0.5}),
    "euler-dynamic-mu-1.15": ("flow_euler", DYNAMIC, 9, {"mu": 1.15}),
    "euler-dynamic-mu-2.5": ("flow_euler", DYNAMIC, 9, {"mu": 2.5}),
    "euler-dynamic-linear-mu-1.3": ("flow_euler", {**DYNAMIC, "time_shift_type": "linear"}, 9, {"mu": 1.3}),
    "euler-flux-sigmas-dynamic": ("flow_euler", DYNAMIC, None, {"sigmas": FLUX_SIGMAS, "mu": 0.9}),
    "euler-flux-sigmas-linear-with-count": ("flow_euler", {**DYNAMIC, "time_shift_type": "linear"}, 8,
                                            {"sigmas": FLUX_SIGMAS.tolist(), "mu": 2.0}),
    "euler-custom-sigmas-shift3": ("flow_euler", {"shift": 3.0}, None, {"sigmas": [1.0, 0.8, 0.5, 0.3, 0.1]}),
    "euler-custom-timesteps-shift3": ("flow_euler", {"shift": 3.0}, None, {"timesteps": [1000.0, 750, 500, 125.5]}),
    "euler-sigmas-and-timesteps": ("flow_euler", {}, None, {"sigmas": [0.9, 0.6, 0.2], "timesteps": [900, 600, 200]}),
    "euler-shift-terminal": ("flow_euler", {"shift": 3.0, "shift_terminal": 0.02}, 12, {}),
    "euler-ltx-dynamic-terminal": ("flow_euler", {**DYNAMIC, "shift_terminal": 0.1}, 10, {"mu": 1.5}),
    "euler-karras-shift3": ("flow_euler", {"shift": 3.0, "use_karras_sigmas": True}, 12, {}),
    "euler-exponential-shift3": ("flow_euler", {"shift": 3.0, "use_exponential_sigmas": True}, 12, {}),
    "euler-karras-dynamic": ("flow_euler", {**DYNAMIC, "use_karras_sigmas": True}, 12, {"mu": 1.0}),
    "euler-invert": ("flow_euler", {"invert_sigmas": True, "shift": 2.0}, 9, {}),
    "euler-stochastic-shift3": ("flow_euler", {"shift": 3.0, "stochastic_sampling": True}, 10, {}),
    "euler-stochastic-dynamic": ("flow_euler", {**DYNAMIC, "stochastic_sampling": True}, 6, {"mu": 1.0}),
    "euler-1-step": ("flow_euler", {"shift": 3.0}, 1, {}),
    "euler-1000-steps": ("flow_euler", {"shift": 3.0}, 1000, {}),
    "euler-T100-250-steps": ("flow_euler", {"num_train_timesteps": 100, "shift": 2.0}, 250, {}),
    "heun-default-10": ("flow_heun", {}, 10, {}),
    "heun-shift3-8": ("flow_heun", {"shift": 3.0}, 8, {}),
    "heun-1-step": ("flow_heun", {"shift": 3.0}, 1, {}),
    "heun-2-steps": ("flow_heun", {}, 2, {}),
    "heun-T100-150-steps": ("flow_heun", {"num_train_timesteps": 100, "shift": 1.5}, 150, {}),
}


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES)
def test_lockstep_parity_with_diffusers(case, dtype):
    """Every planned timestep and sigma, and every step's latents, bit for bit (the arithmetic is diffusers': float64
    linspace levels, float32 steps cast to the model's dtype; stochastic_sampling's noise from the same seed)."""
    name, config, steps, schedule = CASES[case]
    ours, _ = _lockstep(name, config, steps, schedule, dtype)
    if name == "flow_heun":
        assert len(ours.timesteps) == 2 * steps - 1 and ours.num_inference_steps == steps


def test_heun_takes_two_calls_per_level_with_the_inner_levels_repeated():
    ours, _ = _pair("flow_heun", {"shift": 3.0}, 4, {})
    t = ours.timesteps
    assert len(t) == 7 and torch.equal(t[1], t[2]) and torch.equal(t[3], t[4]) and not torch.equal(t[0], t[1])
    assert ours.sigmas[-1] == 0 and len(ours.sigmas) == 8


def test_set_shift_matches_diffusers():
    ours, ref = make_sampler("flow_euler"), _scheduler("flow_euler")
    for s in (ours, ref):
        s.set_shift(3.0)
        s.set_timesteps(6)
    assert ours.shift == ref.shift == 3.0 and ours.config.shift == 1.0
    _equal(ours.sigmas, ref.sigmas, "sigmas")


def test_register_to_config_replans():
    ours = make_sampler("flow_euler")
    ours.register_to_config(shift=3.0)
    ours.set_timesteps(6)
    ref = _scheduler("flow_euler", shift=3.0)
    ref.set_timesteps(6)
    _equal(ours.timesteps, ref.timesteps, "timesteps")


# ---------------------------------------------------------------- scale_noise


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_euler_scale_noise_matches_diffusers(dtype):
    """Before set_timesteps (training timesteps), at planned timesteps (per item, and one for the batch), and after
    set_begin_index (the current step's level, whatever the timestep)."""
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(3, 4, 5, 5, generator=g, dtype=dtype), torch.randn(3, 4, 5, 5, generator=g, dtype=dtype)
    ours, ref = make_sampler("flow_euler", shift=3.0), _scheduler("flow_euler", shift=3.0)
    t = ref.timesteps[[0, 10, -1]]
    _equal(ours.scale_noise(x, t, noise), ref.scale_noise(x, t, noise), "before set_timesteps")
    for s in (ours, ref):
        s.set_timesteps(13)
    t = ref.timesteps[[0, 4, -1]]
    _equal(ours.scale_noise(x, t, noise), ref.scale_noise(x, t, noise), "planned timesteps")
    _equal(ours.add_noise(x, noise, t), ref.scale_noise(x, t, noise), "add_noise")
    _equal(ours.scale_noise(x, t[1], noise), ref.scale_noise(x, t[1].repeat(3), noise), "one timestep")
    for s in (ours, ref):
        s.set_begin_index(5)
    t = torch.tensor([1000.0] * 3)
    _equal(ours.scale_noise(x, t, noise), ref.scale_noise(x, t, noise), "after set_begin_index")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_heun_scale_noise_matches_diffusers_and_moves_the_step_index(dtype):
    """diffusers' Heun noises at one level (a float32 scalar) and, before its first step, starts stepping at that
    timestep's place: ours too, so the steps after it match."""
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(2, 4, 5, 5, generator=g, dtype=dtype), torch.randn(2, 4, 5, 5, generator=g, dtype=dtype)
    ours, ref = make_sampler("flow_heun", shift=3.0), _scheduler("flow_heun", shift=3.0)
    t = ref.timesteps[10:11]
    _equal(ours.scale_noise(x, t, noise), ref.scale_noise(x, t, noise), "before set_timesteps")
    for s in (ours, ref):
        s.set_timesteps(6)
    t = ref.timesteps[3:4]
    x, x_ref = ours.scale_noise(x, t.repeat(2), noise), ref.scale_noise(x, t, noise)
    _equal(x, x_ref, "planned timestep")
    assert ours.step_index == ref.step_index == 4  # a repeated timestep: its second place, as diffusers
    model = FakeModel()
    for t in ref.timesteps[4:]:
        x = ours.step(_velocity(model, x, t), t, x)
        x_ref = ref.step(_velocity(model, x_ref, t), t, x_ref).prev_sample
        _equal(x, x_ref, f"step at t={float(t)}")
    begun, ref = make_sampler("flow_heun"), _scheduler("flow_heun")
    for s in (begun, ref):
        s.set_timesteps(6)
        s.set_begin_index(2)
    t = torch.tensor([1000.0])
    _equal(begun.scale_noise(x, t, noise), ref.scale_noise(x, t, noise), "after set_begin_index")
    with pytest.raises(ValueError, match=r"^timestep: the 'flow_heun' sampler noises a batch to one level"):
        begun.scale_noise(x, begun.timesteps[[0, 1]], noise)


def test_scale_noise_is_the_flow_forward_process():
    """sigma noise + (1 - sigma) x at the planned level: x itself at sigma 0, the noise at sigma 1."""
    sampler = make_sampler("flow_euler")
    sampler.set_timesteps(4)
    x, noise = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    sigma = float(sampler.sigmas[1])
    torch.testing.assert_close(sampler.scale_noise(x, sampler.timesteps[1], noise), sigma * noise + (1 - sigma) * x)
    torch.testing.assert_close(sampler.scale_noise(x, sampler.timesteps[0], noise), noise)  # sigma_max = 1


# ---------------------------------------------------------------- loops


class VelocityModel:
    """A conditioned velocity model: a fixed random linear map of x, a timestep-dependent bias and the conditioning
    [B, C] added per channel: x [B, C, H, W], t [B], cond [B, C] -> [B, C, H, W]."""

    def __init__(self, channels=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, channels, generator=g) * 0.4
        self.bias = torch.randn(channels, generator=g)

    def __call__(self, x, t, cond):
        y = torch.einsum("oc,bchw->bohw", self.weight.to(x.dtype), x)
        return y + (torch.cos(t / 300)[:, None] * self.bias + cond)[:, :, None, None].to(x.dtype)


GUIDED = {"euler-sd3": ("flow_euler", {"shift": 3.0}, {}),
          "euler-flux-dynamic": ("flow_euler", DYNAMIC, {"mu": 1.1}),
          "euler-stochastic": ("flow_euler", {"shift": 3.0, "stochastic_sampling": True}, {}),
          "heun": ("flow_heun", {"shift": 3.0}, {})}


@pytest.mark.parametrize("case", GUIDED)
def test_guided_loop_matches_diffusers(case):
    """Classifier-free guidance: ours through guided_step (flow Euler fuses guidance and update into one fp32 pass;
    flow Heun combines, then steps) against diffusers' combine-then-step loop, same noise and seed."""
    name, config, schedule = GUIDED[case]
    ours, ref = _pair(name, config, 8, schedule)
    model, g = VelocityModel(), torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    context = torch.cat([uncond, cond])
    x = torch.randn(2, 4, 8, 8, generator=g)
    x_ref = x.clone()
    gen, gen_ref = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for i, t in enumerate(ref.timesteps):
        out = model(torch.cat([x, x]), t.expand(4), context)
        x = ours.guided_step(out, ours.timesteps[i], x, 4.5, generator=gen)
        out_uncond, out_cond = model(torch.cat([x_ref, x_ref]), t.expand(4), context).chunk(2)
        x_ref = ref.step(out_uncond + 4.5 * (out_cond - out_uncond), t, x_ref, generator=gen_ref).prev_sample
        _close(x, x_ref, f"step {i}")
    if name == "flow_heun":  # not fused: the same operations as diffusers'
        _equal(x, x_ref, "final latents")


def test_guided_step_fp16_keeps_dtype_and_follows_diffusers():
    """fp16 latents: the fused update runs in fp32 and rounds once, diffusers' fp16 combination rounds more; both
    stay within fp16 resolution of each other."""
    ours, ref = _pair("flow_euler", {"shift": 3.0}, 6, {})
    model, g = VelocityModel(), torch.Generator().manual_seed(1)
    context = torch.randn(4, 4, generator=g).half()
    x = torch.randn(2, 4, 8, 8, generator=g).half()
    x_ref = x.clone()
    for i, t in enumerate(ref.timesteps):
        x = ours.guided_step(model(torch.cat([x, x]), t.expand(4), context), ours.timesteps[i], x, 3.0)
        u, c = model(torch.cat([x_ref, x_ref]), t.expand(4), context).chunk(2)
        x_ref = ref.step(u + 3.0 * (c - u), t, x_ref).prev_sample
    assert x.dtype == torch.float16
    torch.testing.assert_close(x.float(), x_ref.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", FLOW_SAMPLER_NAMES)
def test_sample_loop_matches_diffusers_loop(name):
    model, steps = FakeModel(), 7
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    got = sample_loop(model, make_sampler(name, shift=3.0), latents, steps, progress=False)
    ref = _scheduler(name, shift=3.0)
    ref.set_timesteps(steps)
    x = latents
    for t in ref.timesteps:
        x = ref.step(model(x, t.expand(2)), t, x).prev_sample
    _equal(got, x, "final latents")


def test_sample_loop_passes_mu_to_a_dynamically_shifted_plan():
    """Flux-style dynamic shifting through sample_loop(mu=...): diffusers' loop after set_timesteps(n, mu=mu); a mu
    for a sampler that takes none is refused by its set_timesteps."""
    model, steps, mu = FakeModel(), 6, 1.15
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    config = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    got = sample_loop(model, make_sampler("flow_euler", **config), latents, steps, progress=False, mu=mu)
    ref = _scheduler("flow_euler", **config)
    ref.set_timesteps(steps, mu=mu)
    x = latents
    for t in ref.timesteps:
        x = ref.step(model(x, t.expand(2)), t, x).prev_sample
    _equal(got, x, "final latents")
    with pytest.raises(TypeError, match="mu"):
        sample_loop(model, make_sampler("euler"), latents, steps, progress=False, mu=mu)


# ---------------------------------------------------------------- scheduler interface


@pytest.mark.parametrize("name", FLOW_SAMPLER_NAMES)
def test_scheduler_attributes_and_step_conventions(name):
    ours, ref = make_sampler(name, shift=3.0), _scheduler(name, shift=3.0)
    assert ours.order == ref.order == (2 if name == "flow_heun" else 1) and len(ours) == len(ref) == 1000
    assert ours.num_inference_steps is None and ours.init_noise_sigma == 1.0
    _equal(ours.sigmas, ref.sigmas, "training sigmas")  # before set_timesteps: diffusers' attribute
    assert ours.config.shift == ref.config.shift == 3.0
    for s in (ours, ref):
        s.set_timesteps(3)
        s.set_begin_index(1)
    assert ours.num_inference_steps == ref.num_inference_steps == 3 and ours.begin_index == ref.begin_index == 1
    x, out = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    t = ours.timesteps
    got = [ours.step(out, t[1], x, return_dict=False), ours.step(out, t[2], x, return_dict=True)]
    want = [ref.step(out, t[1], x, return_dict=False)[0], ref.step(out, t[2], x).prev_sample]
    assert isinstance(got[0], tuple) and len(got[0]) == 1 and got[1][0] is got[1].prev_sample
    _equal(got[0][0], want[0], "return_dict=False")
    _equal(got[1].prev_sample, want[1], "return_dict=True")


def test_euler_ignores_churn_arguments_as_diffusers():
    """FlowMatchEulerDiscreteScheduler.step takes s_churn, s_tmin, s_tmax, s_noise and ignores them."""
    ours, ref = _pair("flow_euler", {}, 2, {})
    x, out = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    kwargs = {"s_churn": 1.0, "s_tmin": 0.0, "s_tmax": 10.0, "s_noise": 1.2}
    _equal(ours.step(out, ours.timesteps[0], x, **kwargs), ref.step(out, ref.timesteps[0], x, **kwargs).prev_sample,
           "step with churn arguments")


def test_from_config_of_flow_schedulers():
    """The scheduler object, its config with the class name (a saved scheduler_config.json), and foreign keys."""
    ref = _scheduler("flow_euler", **DYNAMIC)
    saved = {**ref.config, "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.42.1"}
    for source in (ref, saved):
        ours = from_config(source)
        assert ours.name == "flow_euler" and ours.config.use_dynamic_shifting and ours.config.max_shift == 1.15
    ours = from_config(ref)
    for s in (ours, ref):
        s.set_timesteps(5, mu=0.7)
    _equal(ours.sigmas, ref.sigmas, "sigmas")
    heun = from_config(_scheduler("flow_heun", shift=2.0))
    assert heun.name == "flow_heun" and heun.config.shift == 2.0
    # Flux's config carries keys the Heun scheduler lacks: dropped, as diffusers' from_config drops them.
    assert from_config(saved, name="flow_heun").config.shift == 3.0
    assert dict(diffusers.FlowMatchEulerDiscreteScheduler.from_config(ours.config).config) == dict(ref.config)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name,config,key", [
    ("flow_euler", {"use_beta_sigmas": True}, "use_beta_sigmas"),
])
def test_unimplemented_options_name_the_key(name, config, key):
    with pytest.raises(NotImplementedError, match=rf"^{key}="):
        make_sampler(name, **config)


def test_unimplemented_step_arguments_name_the_argument():
    euler, heun = make_sampler("flow_euler"), make_sampler("flow_heun")
    for s in (euler, heun):
        s.set_timesteps(2)
    x = torch.randn(1, 4, 4, 4)
    with pytest.raises(NotImplementedError, match=r"^per_token_timesteps is not implemented"):
        euler.step(x, euler.timesteps[0], x, per_token_timesteps=torch.ones(1, 16))
    with pytest.raises(NotImplementedError, match=r"^s_churn=0.5 is not implemented for the 'flow_heun'"):
        heun.step(x, heun.timesteps[0], x, s_churn=0.5)
    assert euler.step_index == heun.step_index == 0  # nothing stepped


@pytest.mark.parametrize("name,config,error,pattern", [
    ("flow_euler", {"shift": 0.0}, ValueError, r"^shift: expected a value > 0"),
    ("flow_euler", {"shift": -1.0}, ValueError, r"^shift: expected a value >= 0"),
    ("flow_heun", {"shift": "3"}, TypeError, r"^shift: expected a number"),
    ("flow_euler", {"shift_terminal": 1.0}, ValueError, r"^shift_terminal: expected a value in \[0, 1\)"),
    ("flow_euler", {"time_shift_type": "cosine"}, ValueError, r"^time_shift_type: expected one of"),
    ("flow_euler", {"use_karras_sigmas": True, "use_exponential_sigmas": True}, ValueError,
     r"^use_karras_sigmas: at most one"),
    ("flow_euler", {"beta_schedule": "linear"}, TypeError, r"^beta_schedule: not a config key of the 'flow_euler'"),
    ("flow_heun", {"use_dynamic_shifting": True}, TypeError, r"^use_dynamic_shifting: not a config key"),
    ("flow_euler", {"num_train_timesteps": 0}, ValueError, r"^num_train_timesteps: expected a value >= 1"),
])
def test_bad_config_values(name, config, error, pattern):
    with pytest.raises(error, match=pattern):
        make_sampler(name, **config)


@pytest.mark.parametrize("config,args,kwargs,error,pattern", [
    (DYNAMIC, (4,), {}, ValueError, r"^mu: required with use_dynamic_shifting=True"),
    (DYNAMIC, (4,), {"mu": float("nan")}, ValueError, r"^mu: expected a finite number"),
    ({}, (), {}, ValueError, r"^num_inference_steps: pass a step count, sigmas or timesteps"),
    ({}, (0,), {}, ValueError, r"^num_inference_steps: expected an int >= 1"),
    ({}, (2.5,), {}, TypeError, r"^num_inference_steps: expected an int"),
    ({}, (3,), {"sigmas": [1.0, 0.5]}, ValueError, r"^num_inference_steps: expected the length of sigmas"),
    ({}, (), {"sigmas": [1.0, 0.5], "timesteps": [1000.0]}, ValueError, r"^sigmas: expected timesteps' length 1"),
    ({}, (), {"sigmas": [[1.0, 0.5]]}, ValueError, r"^sigmas: expected a non-empty 1-D sequence"),
    ({}, (), {"sigmas": []}, ValueError, r"^sigmas: expected a non-empty 1-D sequence"),
    ({}, (), {"timesteps": [1000.0, float("inf")]}, ValueError, r"^timesteps: expected finite values"),
    ({}, (), {"sigmas": ["a"]}, TypeError, r"^sigmas: expected a sequence of numbers"),
    ({"shift_terminal": 0.1}, (1,), {}, ValueError, r"^shift_terminal: the last planned sigma is 1"),
])
def test_bad_set_timesteps_arguments(config, args, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        make_sampler("flow_euler", **config).set_timesteps(*args, **kwargs)


def test_bad_step_and_scale_noise_arguments():
    sampler, x = make_sampler("flow_euler"), torch.randn(2, 4, 4, 4)
    sampler.set_timesteps(4)
    for t in (0, torch.tensor(1000)):  # an enumerate() index, an integer tensor: refused as diffusers refuses them
        with pytest.raises(ValueError, match=r"^t: an integer timestep"):
            sampler.step(x, t, x)
    with pytest.raises(ValueError, match=r"^t: expected the current timestep 1000 \(step 0 of 4"):
        sampler.step(x, sampler.timesteps[1], x)
    with pytest.raises(ValueError, match=r"^timesteps: 5 is not one of the planned timesteps"):
        sampler.scale_noise(x, torch.tensor([5.0]), x)
    with pytest.raises(ValueError, match=r"^noise: expected sample's shape"):
        sampler.scale_noise(x, sampler.timesteps[0], torch.randn(2, 4, 4, 5))
    with pytest.raises(ValueError, match=r"^timestep: expected one timestep or one per batch item"):
        sampler.scale_noise(x, sampler.timesteps[:3], x)
    with pytest.raises(ValueError, match=r"^shift: expected a finite number > 0"):
        sampler.set_shift(0.0)
    heun = make_sampler("flow_heun")
    with pytest.raises(TypeError, match="sigmas"):  # diffusers' Heun takes a step count only
        heun.set_timesteps(sigmas=[1.0, 0.5])
