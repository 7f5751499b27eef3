"""genai_fast.guided_update and Sampler.guided_step: the C++ and Triton (interpreter on CPU, the GPU in the
gpu-marked test) kernels against the float64 reference (tolerance rule, NaN poisoning, layouts, special
values), dispatch, bad input, the C++ entry point's checks, autograd, opcheck and torch.compile; then each
sampler's fused guided step against its own unfused step evaluated in float64."""

import math

import pytest
import torch

import genai_fast
from genai_fast import UpdateCoefficients
from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS
from genai_fast.diffusion import make_sampler
from genai_fast.diffusion import samplers as samplers_module
from genai_fast.testing import assert_matches_oracle

# Coefficients with every term on, and each sampler family's shape of them.
ALL_TERMS = UpdateCoefficients(14.7, -14.6, 0.93, 0.41, 0.2, -0.37, 0.05)
SHAPES = {"sd-latent": (2, 4, 16, 16), "odd": (3, 5, 7, 3), "one": (1, 1, 1, 1), "3d": (2, 3, 37),
          "tail": (1, 2, 9, 9)}


def _require(backend):
    reasons = backend_unavailable_reasons(backend)
    if reasons:
        pytest.skip("; ".join(reasons))


def _device(backend):
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _inputs(shape, guided=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = shape[0]
    x = torch.randn(shape, generator=g, dtype=dtype)
    model_output = torch.randn((2 * B if guided else B, *shape[1:]), generator=g, dtype=dtype)
    previous = torch.randn(shape, generator=g, dtype=dtype)
    noise = torch.randn(shape, generator=g, dtype=dtype)
    return x, model_output, previous, noise


def _check(backend, x, model_output, coefs, guidance, previous, noise, clip, what, device="cpu", out_dtype=None):
    on = [None if t is None else t.to(device) for t in (x, model_output, previous, noise)]
    with memory.poison_outputs():
        out, x0 = genai_fast.guided_update(on[0], on[1], coefs, guidance, on[2], on[3], clip, return_x0=True,
                                           out_dtype=out_dtype, backend=backend)
    assert OPS["guided_update"].last_backend == backend
    assert out.shape == x.shape and x0.shape == x.shape
    wide = [None if t is None else t.double() for t in (x, model_output, previous, noise)]
    oracle, oracle_x0 = genai_fast.guided_update_reference(*wide[:2], coefs, guidance, *wide[2:], clip)
    base, base_x0 = genai_fast.guided_update_reference(x, model_output, coefs, guidance, previous, noise, clip,
                                                       out_dtype)
    assert_matches_oracle(out.cpu(), oracle, base, what=f"{what}: out")
    assert_matches_oracle(x0.cpu(), oracle_x0, base_x0, what=f"{what}: x0")
    return out, x0


@pytest.mark.parametrize("case", SHAPES.keys())
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_kernels_match_reference(backend, case):
    _require(backend)
    x, model_output, previous, noise = _inputs(SHAPES[case])
    _check(backend, x, model_output, ALL_TERMS, 7.5, previous, noise, 1.0, f"{backend} {case}", _device(backend))
    # Unguided, no clamp, no history or noise (Euler's and DDIM's shapes of coefficients).
    x, model_output, _, _ = _inputs(SHAPES[case], guided=False, seed=1)
    _check(backend, x, model_output, UpdateCoefficients(0.0, 0.0, 1.0, 0.0, -0.8), None, None, None, None,
           f"{backend} {case} unguided", _device(backend))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_layouts_follow_model_output(backend):
    """A channels_last U-Net output with NCHW latents: the results take the output's layout; strided
    (non-dense) inputs are read right."""
    _require(backend)
    device = _device(backend)
    x, model_output, previous, noise = _inputs((2, 8, 5, 6))
    cl = model_output.contiguous(memory_format=torch.channels_last)
    out, x0 = _check(backend, x, cl, ALL_TERMS, 3.0, previous, noise, None, "channels_last output", device)
    assert out.is_contiguous(memory_format=torch.channels_last) and x0.is_contiguous(memory_format=torch.channels_last)
    wide = torch.randn(2, 8, 5, 12)[..., ::2]  # a non-dense x
    out, _ = _check(backend, wide, model_output, ALL_TERMS, 3.0, previous, noise, 2.0, "strided x", device)
    assert out.is_contiguous()


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_special_values_as_the_reference(backend):
    """NaN and infinities pass through as in the float64 reference: the clamp keeps NaN, a zero coefficient's
    term is left out rather than multiplied (0 * inf would be NaN)."""
    _require(backend)
    device = _device(backend)
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[0.5, nan, 1.0, -2.0, inf, 0.0]])
    model_output = torch.tensor([[1.0, 0.0, nan, 3.0, 0.0, -inf], [2.0, 1.0, 0.0, -1.0, 1.0, 0.0]])
    for coefs, clip in ((ALL_TERMS, 1.0), (UpdateCoefficients(1.0, -1.0, 1.0, 0.0, 0.5), None)):
        out, x0 = genai_fast.guided_update(x.to(device), model_output.to(device), coefs, 2.0,
                                           torch.zeros_like(x).to(device), torch.ones_like(x).to(device), clip,
                                           return_x0=True, backend=backend)
        want, want_x0 = genai_fast.guided_update_reference(x.double(), model_output.double(), coefs, 2.0,
                                                           torch.zeros_like(x).double(), torch.ones_like(x).double(),
                                                           clip)
        torch.testing.assert_close(out.cpu().double(), want, equal_nan=True, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(x0.cpu().double(), want_x0, equal_nan=True, rtol=1e-6, atol=1e-6)


def test_triton_half_types_and_mixed_dtypes():
    _require("triton")
    device = _device("triton")
    x, model_output, previous, noise = _inputs((2, 4, 6, 6))
    _check("triton", x.half(), model_output.half(), ALL_TERMS, 7.5, previous.half(), noise.half(), 1.0, "fp16",
           device)
    # fp32 latents with an fp16 model output, results in the model's dtype (as Euler and DPM-Solver++ cast).
    out, _ = _check("triton", x, model_output.half(), ALL_TERMS, 7.5, previous, noise.half(), None,
                    "fp32 x, fp16 output", device, out_dtype=torch.float16)
    assert out.dtype == torch.float16


def test_dispatch():
    x, model_output, previous, noise = _inputs((1, 4, 8, 8))
    cpp = not backend_unavailable_reasons("cpp")
    genai_fast.guided_update(x, model_output, ALL_TERMS, 2.0, previous, noise)
    assert OPS["guided_update"].last_backend == ("cpp" if cpp else "torch")
    genai_fast.guided_update(x.double(), model_output.double(), ALL_TERMS, 2.0, previous, noise)
    assert OPS["guided_update"].last_backend == "torch"
    genai_fast.guided_update(x, model_output.bfloat16(), ALL_TERMS, 2.0, previous, noise)
    assert OPS["guided_update"].last_backend == "torch"  # the C++ kernel takes fp32 only
    out, x0 = genai_fast.guided_update(x, model_output, ALL_TERMS, 2.0, previous, noise, out_dtype=torch.float16)
    assert out.dtype == torch.float16 and x0 is None
    assert OPS["guided_update"].last_backend == "torch"
    empty, _ = genai_fast.guided_update(torch.randn(0, 4), torch.randn(0, 4), ALL_TERMS, 2.0, torch.randn(0, 4),
                                        torch.randn(0, 4))
    assert empty.shape == (0, 4)


def _bad(**changes):
    x, model_output, previous, noise = _inputs((2, 3, 4, 4))
    kwargs = dict(x=x, model_output=model_output, coefficients=ALL_TERMS, guidance_scale=2.0, previous_x0=previous,
                  noise=noise)
    kwargs.update({k: (v(kwargs) if callable(v) else v) for k, v in changes.items()})
    return kwargs


@pytest.mark.parametrize("kwargs, error, message", [
    (_bad(x=[1.0]), TypeError, "x: expected a torch.Tensor"),
    (_bad(x=torch.ones(2, 3, 4, 4, dtype=torch.int64)), TypeError, "x: expected dtype"),
    (_bad(x=torch.tensor(1.0)), ValueError, "x: expected a tensor"),
    (_bad(model_output=lambda k: k["model_output"][:2]), ValueError, r"model_output: expected shape \(4, 3, 4, 4\)"),
    (_bad(guidance_scale=None), ValueError, r"model_output: expected shape \(2, 3, 4, 4\)"),
    (_bad(guidance_scale=math.nan), ValueError, "guidance_scale: expected a finite number"),
    (_bad(coefficients=(1.0, 2.0)), ValueError, "coefficients: expected UpdateCoefficients or 7 numbers"),
    (_bad(coefficients=ALL_TERMS._replace(m=math.inf)), ValueError, "coefficients.m: expected a finite number"),
    (_bad(previous_x0=None), ValueError, "previous_x0: required when coefficients.x0_change is non-zero"),
    (_bad(noise=None), ValueError, "noise: required when coefficients.noise is non-zero"),
    (_bad(noise=lambda k: k["noise"][:1]), ValueError, r"noise: expected shape \(2, 3, 4, 4\)"),
    (_bad(clip=-1.0), ValueError, "clip: expected a number >= 0"),
    (_bad(return_x0=1), TypeError, "return_x0: expected a bool"),
    (_bad(out_dtype=torch.int32), TypeError, "out_dtype: expected"),
    (_bad(backend="fast"), ValueError, "backend"),
], ids=["list-x", "int-x", "0d-x", "unguided-batch", "guided-batch", "nan-guidance", "short-coefficients",
        "inf-coefficient", "missing-previous", "missing-noise", "noise-shape", "negative-clip", "int-return-x0",
        "int-out-dtype", "unknown-backend"])
def test_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        genai_fast.guided_update(**kwargs)


def test_cpp_entry_point_validates_sizes():
    _require("cpp")
    from genai_fast.backends.cpp import extension

    n = 10
    x, mo, prev, noise, out, x0 = (torch.randn(k) for k in (n, 2 * n, n, n, n, n))
    args = dict(x=x.data_ptr(), x_numel=n, model_output=mo.data_ptr(), model_numel=2 * n, previous_x0=prev.data_ptr(),
                previous_numel=n, noise=noise.data_ptr(), noise_numel=n, out=out.data_ptr(), out_numel=n,
                x0_out=x0.data_ptr(), x0_numel=n, n=n, guided=True, guidance=2.0, coefficients=list(ALL_TERMS),
                clip=math.inf, num_threads=1)
    extension().guided_update_forward(**args)
    want, want_x0 = genai_fast.guided_update_reference(x, mo, ALL_TERMS, 2.0, prev, noise)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(x0, want_x0)
    for key, value, message in [("model_numel", n, "model_output: expected 20"), ("x_numel", n - 1, "x: expected 10"),
                                ("out_numel", n + 1, "out: expected 10"), ("previous_x0", 0, "previous_x0: expected"),
                                ("noise_numel", 3, "noise: expected"), ("x0_numel", 2, "x0_out: expected"),
                                ("n", 0, "at least one element"), ("clip", -1.0, "clip: expected"),
                                ("coefficients", [1.0], "coefficients: expected 7"),
                                ("num_threads", 0, "num_threads")]:
        with pytest.raises(ValueError, match=message):
            extension().guided_update_forward(**{**args, key: value})


def test_autograd_opcheck_and_compile():
    x, model_output, previous, noise = (t.requires_grad_() for t in _inputs((2, 3, 4, 4)))
    out, x0 = genai_fast.guided_update(x, model_output, ALL_TERMS, 2.0, previous, noise, 3.0, return_x0=True)
    (out.square().sum() + x0.sum()).backward()
    grads = [t.grad.clone() for t in (x, model_output, previous, noise)]
    for t in (x, model_output, previous, noise):
        t.grad = None
    ref, ref_x0 = genai_fast.guided_update_reference(x, model_output, ALL_TERMS, 2.0, previous, noise, 3.0)
    (ref.square().sum() + ref_x0.sum()).backward()
    for got, t in zip(grads, (x, model_output, previous, noise), strict=True):
        torch.testing.assert_close(got, t.grad)

    args = [t.detach() for t in _inputs((2, 3, 4, 4))]
    op_args = (*args, list(ALL_TERMS), True, 2.0, 3.0, True, torch.float32, "")
    torch.library.opcheck(torch.ops.genai_fast.guided_update.default, op_args)

    @torch.compile(fullgraph=True, backend="eager")
    def step(x, model_output, previous, noise):
        return genai_fast.guided_update(x, model_output, ALL_TERMS, 2.0, previous, noise)[0] * 2

    torch.testing.assert_close(step(*args), genai_fast.guided_update(*args[:2], ALL_TERMS, 2.0, *args[2:])[0] * 2)


# ---------------------------------------------------------------- samplers: fused vs unfused, float64 oracle

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
CONFIGS = {
    "ddpm-eps-clip": ("ddpm", {}),
    "ddpm-v-noclip-log": ("ddpm", {"prediction_type": "v_prediction", "clip_sample": False,
                                   "variance_type": "fixed_small_log"}),
    "ddpm-sample-large": ("ddpm", {"prediction_type": "sample", "variance_type": "fixed_large"}),
    "ddim-eps": ("ddim", SD),
    "ddim-eta1-v": ("ddim", {**SD, "eta": 1.0, "prediction_type": "v_prediction"}),
    "ddim-sample-clipped-output": ("ddim", {"prediction_type": "sample", "use_clipped_model_output": True,
                                            "clip_sample_range": 0.5}),
    "ddim-sample": ("ddim", {"prediction_type": "sample", "eta": 0.5}),
    "euler-eps": ("euler", SD),
    "euler-v-karras": ("euler", {**SD, "prediction_type": "v_prediction", "use_karras_sigmas": True}),
    "euler-sample": ("euler", {"prediction_type": "sample"}),
    "dpm-eps": ("dpm++", SD),
    "dpm-v-heun": ("dpm++", {**SD, "prediction_type": "v_prediction", "solver_type": "heun"}),
    "dpm-sample-order1": ("dpm++", {"prediction_type": "sample", "solver_order": 1}),
    # Not affine in the model output: guided_step combines, then steps.
    "ddpm-learned-range": ("ddpm", {"variance_type": "learned_range"}),
    "dpm-thresholding": ("dpm++", {**SD, "thresholding": True}),
}


@pytest.fixture
def fixed_noise(monkeypatch):
    """Every noise draw returns the same fp32 values (cast to the requested dtype), so that the float64
    oracle sees the fp32 run's noise; the draw order is checked by the whole-loop tests."""
    real = samplers_module.draw_noise

    def draw(shape, like, generator, dtype=None):
        noise = real(shape, like.float(), torch.Generator().manual_seed(11))
        return noise.to(dtype or like.dtype)

    monkeypatch.setattr(samplers_module, "draw_noise", draw)


@pytest.mark.parametrize("case", CONFIGS.keys())
def test_guided_step_matches_the_float64_step(case, fixed_noise):
    name, config = CONFIGS[case]
    learned = config.get("variance_type", "").startswith("learned")
    fused, baseline, oracle = (make_sampler(name, **config) for _ in range(3))
    steps = 5
    for s in (fused, baseline, oracle):
        s.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    guidance = 4.5
    for i in range(steps):
        t = fused.timesteps[i]
        x = torch.randn(2, 4, 6, 6, generator=g) * (fused.init_noise_sigma if i == 0 else 1.0)
        channels = 8 if learned else 4
        model_output = torch.randn(4, channels, 6, 6, generator=g)
        if learned:  # the variance channels are a fraction in [-1, 1]
            model_output[:, 4:] = model_output[:, 4:].tanh()
        out = fused.guided_step(model_output, t, x, guidance)
        uncond, cond = model_output.chunk(2)
        base = baseline.step(uncond + guidance * (cond - uncond), t, x)
        wide_u, wide_c = model_output.double().chunk(2)
        want = oracle.step(wide_u + guidance * (wide_c - wide_u), t, x.double())
        assert out.dtype == base.dtype and out.shape == base.shape
        assert_matches_oracle(out, want, base, what=f"{case} step {i}")
    assert fused.step_index == steps


def test_guided_step_draws_noise_as_step_does():
    """Same generator seed, same noise: the fused DDPM step and combine-then-step agree (the noise term is
    a large part of each step, so a different draw would show)."""
    fused, unfused = make_sampler("ddpm", clip_sample=False), make_sampler("ddpm", clip_sample=False)
    fused.set_timesteps(4)
    unfused.set_timesteps(4)
    x, model_output, _, _ = _inputs((2, 4, 8, 8))
    for t in fused.timesteps:
        a = fused.guided_step(model_output, t, x, 2.0, generator=torch.Generator().manual_seed(int(t)))
        uncond, cond = model_output.chunk(2)
        b = unfused.step(uncond + 2.0 * (cond - uncond), t, x, generator=torch.Generator().manual_seed(int(t)))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_guided_step_bad_input():
    sampler = make_sampler("euler")
    sampler.set_timesteps(4)
    t = sampler.timesteps[0]
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"model_output: expected the doubled batch \[2B, ...\] = \[4, ...\]"):
        sampler.guided_step(torch.randn(2, 4, 8, 8), t, x, 3.0)
    with pytest.raises(ValueError, match="guidance_scale: expected a finite number >= 0"):
        sampler.guided_step(torch.randn(4, 4, 8, 8), t, x, -1.0)
    with pytest.raises(ValueError, match=r"model_output: expected shape \(4, 4, 8, 8\)"):
        sampler.guided_step(torch.randn(4, 3, 8, 8), t, x, 3.0)
    assert sampler.step_index == 0
