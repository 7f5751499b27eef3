"""genai_fast samplers as the scheduler of diffusers pipelines (`pipe.scheduler = sampler`): the same images as the
diffusers scheduler of the same config in DDPMPipeline, DDIMPipeline, Stable Diffusion's text-to-image and
img2img pipelines and (flow matching) SD3's text-to-image and img2img and Flux's pipelines, built from tiny random
components without text encoders (fp32 CPU, one seed); the scheduler attributes and call
conventions those pipelines use; the config as diffusers' from_config reads it."""

import copy
import inspect
import io
import pickle

import numpy as np
import pytest
import torch

from genai_fast.diffusion import from_config, make_sampler

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              # diffusers' own Euler / DPM-Solver set_timesteps trip numpy 2's __array__(copy=) deprecation.
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              # ... and its KDPM2 set_timesteps numpy's __array_wrap__ one (np.log of a torch tensor).
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
              # The Stable Diffusion pipelines' notice on a steps_offset != 1 config (the schedulers' default).
              pytest.mark.filterwarnings("ignore:The configuration file of this scheduler:FutureWarning")]

RTOL = 1e-6  # max |ours - diffusers| <= RTOL * max(1, max |diffusers|), as in test_samplers.py
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
DIFFUSERS_CLASSES = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
                     "euler_a": "EulerAncestralDiscreteScheduler", "dpm++": "DPMSolverMultistepScheduler",
                     "pndm": "PNDMScheduler", "unipc": "UniPCMultistepScheduler", "lcm": "LCMScheduler",
                     "heun": "HeunDiscreteScheduler", "lms": "LMSDiscreteScheduler", "kdpm2": "KDPM2DiscreteScheduler",
                     "kdpm2_a": "KDPM2AncestralDiscreteScheduler", "dpm++_single": "DPMSolverSinglestepScheduler"}
# DDIM's and LMS's step arguments in diffusers, config keys here
OUR_ONLY_KEYS = ("eta", "use_clipped_model_output", "order")


def _scheduler(name, **config):
    config = {k: v for k, v in config.items() if k not in OUR_ONLY_KEYS}
    return getattr(diffusers, DIFFUSERS_CLASSES[name])(**config)


def _close(ours, ref):
    ours, ref = torch.as_tensor(np.asarray(ours)), torch.as_tensor(np.asarray(ref))
    assert ours.shape == ref.shape
    scale = max(1.0, float(ref.abs().max()))
    err = float((ours.double() - ref.double()).abs().max())
    assert err <= RTOL * scale, f"max-abs {err:.3e} > {RTOL * scale:.3e}"


def _seed(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pixel_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


@pytest.fixture(scope="module")
def sd_components():
    """A tiny Stable Diffusion: 8x8 latents (a one-block VAE does not downsample), 32-wide text embeddings."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32,), latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                                  norm_num_groups=8, sample_size=8).eval()
    text_config = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                              num_hidden_layers=1, vocab_size=100, projection_dim=32)
    text_encoder = transformers.CLIPTextModel(text_config).eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": None, "safety_checker": None,
            "feature_extractor": None, "requires_safety_checker": False}


@pytest.fixture(scope="module")
def prompt():
    """Prompt embeddings passed directly (no tokenizer files): conditional and negative."""
    g = _seed(3)
    return {"prompt_embeds": torch.randn(1, 5, 32, generator=g),
            "negative_prompt_embeds": torch.randn(1, 5, 32, generator=g)}


def _sd_pipeline(cls, components, scheduler):
    pipe = cls(**components, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _both(pipe, ours, ref, **call):
    """pipe(**call) with the diffusers scheduler, then with ours set as pipe.scheduler (same seed)."""
    pipe.scheduler = ref
    expected = pipe(generator=_seed(), **call).images
    pipe.scheduler = ours
    got = pipe(generator=_seed(), **call).images
    return got, expected


# ---------------------------------------------------------------- unconditional pipelines


@pytest.mark.parametrize("config", [{}, {"variance_type": "fixed_large", "prediction_type": "v_prediction"},
                                    {"timestep_spacing": "trailing", "clip_sample": False}],
                         ids=["default", "v-fixed-large", "trailing"])
def test_ddpm_pipeline_with_a_sampler_gives_diffusers_images(pixel_unet, config):
    pipe = diffusers.DDPMPipeline(unet=pixel_unet, scheduler=_scheduler("ddpm", **config))
    pipe.set_progress_bar_config(disable=True)
    got, expected = _both(pipe, make_sampler("ddpm", **config), _scheduler("ddpm", **config),
                          batch_size=2, num_inference_steps=4, output_type="np")
    _close(got, expected)


@pytest.mark.parametrize("config,call", [
    ({}, {}),
    ({}, {"eta": 0.7, "use_clipped_model_output": True}),
    ({"eta": 0.5}, {}),  # the pipeline passes its own eta (0.0), which decides as in diffusers
    ({"prediction_type": "sample", "timestep_spacing": "linspace"}, {"eta": 1.0, "use_clipped_model_output": False}),
], ids=["deterministic", "eta-clipped", "pipeline-eta-wins", "sample-eta1"])
def test_ddim_pipeline_with_a_sampler_gives_diffusers_images(pixel_unet, config, call):
    pipe = diffusers.DDIMPipeline(unet=pixel_unet, scheduler=_scheduler("ddim", **config))
    pipe.set_progress_bar_config(disable=True)
    got, expected = _both(pipe, make_sampler("ddim", **config), _scheduler("ddim", **config),
                          batch_size=2, num_inference_steps=5, output_type="np", **call)
    _close(got, expected)


# ---------------------------------------------------------------- Stable Diffusion


SD_CASES = {
    "ddim": ("ddim", {**SD_BETAS, "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False}),
    "ddpm": ("ddpm", {**SD_BETAS, "steps_offset": 1, "clip_sample": False}),
    "euler": ("euler", SD_BETAS),
    "euler-karras-v": ("euler", {**SD_BETAS, "use_karras_sigmas": True, "prediction_type": "v_prediction"}),
    "euler_a": ("euler_a", SD_BETAS),
    "dpm++": ("dpm++", SD_BETAS),
    "pndm-sd15-default": ("pndm", {**SD_BETAS, "skip_prk_steps": True, "steps_offset": 1}),
    "unipc": ("unipc", SD_BETAS),
    "lcm": ("lcm", SD_BETAS),
    "heun-karras": ("heun", {**SD_BETAS, "use_karras_sigmas": True}),
    "dpm++-sde-karras": ("dpm++", {**SD_BETAS, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    "dpm++-trailing-sigma-min": ("dpm++", {**SD_BETAS, "timestep_spacing": "trailing",
                                           "final_sigmas_type": "sigma_min"}),
    "lms": ("lms", SD_BETAS),
    "lms-karras-v": ("lms", {**SD_BETAS, "use_karras_sigmas": True, "prediction_type": "v_prediction"}),
    "kdpm2": ("kdpm2", SD_BETAS),
    "kdpm2-karras": ("kdpm2", {**SD_BETAS, "use_karras_sigmas": True}),
    "kdpm2_a": ("kdpm2_a", SD_BETAS),
    "dpm++_single": ("dpm++_single", SD_BETAS),
    "dpm++_single-3-karras": ("dpm++_single", {**SD_BETAS, "solver_order": 3, "use_karras_sigmas": True}),
    "dpm++_single-sde-heun": ("dpm++_single", {**SD_BETAS, "algorithm_type": "sde-dpmsolver++",
                                               "solver_type": "heun"}),
}


@pytest.mark.parametrize("case", list(SD_CASES))
def test_stable_diffusion_pipeline_with_a_sampler_gives_diffusers_latents(sd_components, prompt, case):
    """from_config(pipe.scheduler.config, name=...), the diffusers way of switching schedulers; CFG on."""
    name, config = SD_CASES[case]
    ref = _scheduler(name, **config)
    pipe = _sd_pipeline(diffusers.StableDiffusionPipeline, sd_components, ref)
    ours = from_config(pipe.scheduler.config, name=name)
    got, expected = _both(pipe, ours, ref, num_inference_steps=5, guidance_scale=5.0, output_type="latent",
                          **prompt)
    _close(got, expected)


def test_stable_diffusion_ddim_eta_and_decoded_images(sd_components, prompt):
    """The pipeline's eta reaches DDIM's step (as prepare_extra_step_kwargs passes it), and the VAE decode."""
    config = {**SD_BETAS, "steps_offset": 1, "clip_sample": False}
    pipe = _sd_pipeline(diffusers.StableDiffusionPipeline, sd_components, _scheduler("ddim", **config))
    got, expected = _both(pipe, make_sampler("ddim", **config), _scheduler("ddim", **config), num_inference_steps=4,
                          guidance_scale=3.0, eta=0.8, output_type="np", **prompt)
    _close(got, expected)
    assert not np.allclose(got, pipe(generator=_seed(), num_inference_steps=4, guidance_scale=3.0, eta=0.0,
                                     output_type="np", **prompt).images)  # eta did change the images


def test_stable_diffusion_constructed_with_an_outdated_config_updates_the_sampler(sd_components, prompt):
    """StableDiffusionPipeline(scheduler=...) rewrites steps_offset=0 -> 1 and clip_sample=True -> False through
    scheduler._internal_dict; our sampler must then run with the updated config, as diffusers' DDIM does."""
    pipes = [_sd_pipeline(diffusers.StableDiffusionPipeline, sd_components, scheduler)
             for scheduler in (make_sampler("ddim", **SD_BETAS), _scheduler("ddim", **SD_BETAS))]
    ours = pipes[0].scheduler
    assert ours.config.steps_offset == 1 and ours.config.clip_sample is False
    call = {"num_inference_steps": 4, "guidance_scale": 5.0, "output_type": "latent", **prompt}
    got, expected = (pipe(generator=_seed(), **call).images for pipe in pipes)
    _close(got, expected)


@pytest.mark.parametrize("case", ["ddim", "ddpm", "euler", "euler_a", "dpm++", "pndm-sd15-default", "unipc",
                                  "heun-karras", "lms", "kdpm2", "kdpm2_a", "dpm++_single-3-karras"])
def test_img2img_with_a_sampler_gives_diffusers_latents(sd_components, prompt, case):
    """strength < 1: the pipeline noises the image with add_noise at timesteps[begin] after set_begin_index,
    then steps from there (DPM-Solver++'s first step from a begin index is first order)."""
    name, config = SD_CASES[case]
    # A scheduler of its own for the constructor, which would rewrite an outdated steps_offset in place.
    pipe = _sd_pipeline(diffusers.StableDiffusionImg2ImgPipeline, sd_components, _scheduler(name, **config))
    ref = _scheduler(name, **config)
    image = torch.rand(1, 3, 8, 8, generator=_seed(5))
    got, expected = _both(pipe, make_sampler(name, **config), ref, image=image, strength=0.6,
                          num_inference_steps=6, guidance_scale=4.0, output_type="latent", **prompt)
    _close(got, expected)


# ---------------------------------------------------------------- flow matching: SD3 and Flux


FLOW_CLASSES = {"flow_euler": "FlowMatchEulerDiscreteScheduler", "flow_heun": "FlowMatchHeunDiscreteScheduler"}
FLUX_CONFIG = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
               "base_image_seq_len": 256, "max_image_seq_len": 4096}


def _flow_vae(latent_channels):
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32,),
                                   latent_channels=latent_channels, down_block_types=("DownEncoderBlock2D",),
                                   up_block_types=("UpDecoderBlock2D",), norm_num_groups=8, sample_size=8,
                                   shift_factor=0.0609, scaling_factor=1.5035).eval()


@pytest.fixture(scope="module")
def sd3_components():
    """A tiny SD3 (8x8 latents) without text encoders: the prompts come as embeddings."""
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4).eval()
    none = dict.fromkeys(("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
                          "tokenizer_3"))
    return {"transformer": transformer, "vae": _flow_vae(4), **none}


@pytest.fixture(scope="module")
def sd3_prompt():
    g = _seed(3)
    return {"prompt_embeds": torch.randn(1, 6, 32, generator=g),
            "pooled_prompt_embeds": torch.randn(1, 64, generator=g),
            "negative_prompt_embeds": torch.randn(1, 6, 32, generator=g),
            "negative_pooled_prompt_embeds": torch.randn(1, 64, generator=g)}


def _both_seeded(pipe, ours, ref, **call):
    """_both, with the global RNG seeded too: SD3's pipelines pass no generator to step (stochastic_sampling)."""
    results = []
    for scheduler in (ref, ours):
        pipe.scheduler = scheduler
        torch.manual_seed(11)
        results.append(pipe(generator=_seed(), **call).images)
    return results[1], results[0]


SD3_CASES = {
    "flow_euler-shift3": ("flow_euler", {"shift": 3.0}),
    "flow_euler-karras": ("flow_euler", {"shift": 3.0, "use_karras_sigmas": True}),
    "flow_euler-dynamic": ("flow_euler", FLUX_CONFIG),  # the pipeline derives mu from the image size
    "flow_euler-stochastic": ("flow_euler", {"shift": 3.0, "stochastic_sampling": True}),
    "flow_heun-shift3": ("flow_heun", {"shift": 3.0}),
}


@pytest.mark.parametrize("case", list(SD3_CASES))
def test_sd3_pipeline_with_a_flow_sampler_gives_diffusers_latents(sd3_components, sd3_prompt, case):
    """StableDiffusion3Pipeline, CFG on, from_config(pipe.scheduler): bit for bit the diffusers scheduler's latents."""
    name, config = SD3_CASES[case]
    ref = getattr(diffusers, FLOW_CLASSES[name])(**config)
    pipe = diffusers.StableDiffusion3Pipeline(**sd3_components, scheduler=ref)
    pipe.set_progress_bar_config(disable=True)
    got, expected = _both_seeded(pipe, from_config(ref), ref, num_inference_steps=5, guidance_scale=5.0, height=8,
                                 width=8, output_type="latent", **sd3_prompt)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", list(FLOW_CLASSES))
def test_sd3_img2img_with_a_flow_sampler_gives_diffusers_latents(sd3_components, sd3_prompt, name):
    """strength < 1: set_begin_index, then scale_noise of the encoded image at the first kept timestep."""
    ref = getattr(diffusers, FLOW_CLASSES[name])(shift=3.0)
    pipe = diffusers.StableDiffusion3Img2ImgPipeline(**sd3_components, scheduler=ref)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 8, 8, generator=_seed(5))
    got, expected = _both_seeded(pipe, make_sampler(name, shift=3.0), ref, image=image, strength=0.6,
                                 num_inference_steps=6, guidance_scale=4.0, output_type="latent", **sd3_prompt)
    assert torch.equal(got, expected)


def test_flux_pipeline_with_flow_euler_gives_diffusers_latents():
    """FluxPipeline: dynamic shifting with the pipeline's mu and its custom sigmas linspace(1, 1/N, N)."""
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()
    ref = diffusers.FlowMatchEulerDiscreteScheduler(**FLUX_CONFIG)
    pipe = diffusers.FluxPipeline(transformer=transformer, scheduler=ref, vae=_flow_vae(1), text_encoder=None,
                                  tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    g = _seed(3)
    call = {"prompt_embeds": torch.randn(1, 6, 32, generator=g),
            "pooled_prompt_embeds": torch.randn(1, 32, generator=g),
            "num_inference_steps": 4, "height": 16, "width": 16, "max_sequence_length": 6, "output_type": "latent"}
    got, expected = _both(pipe, from_config(ref.config, name="flow_euler"), ref, **call)
    assert torch.equal(got, expected)


# ---------------------------------------------------------------- the scheduler interface, piece by piece


@pytest.mark.parametrize("name", list(DIFFUSERS_CLASSES))
def test_scheduler_attributes_match_diffusers(name):
    ours, ref = make_sampler(name, **SD_BETAS), _scheduler(name, **SD_BETAS)
    # diffusers' Heun, LMS and KDPM2 plan num_train_timesteps steps in their constructors; the others (and ours) none.
    assert ours.num_inference_steps is None
    assert ref.num_inference_steps == (1000 if name in ("heun", "lms", "kdpm2", "kdpm2_a") else None)
    assert ours.order == ref.order and len(ours) == len(ref) == 1000
    assert ours.config.num_train_timesteps == ref.config.num_train_timesteps
    assert ours.config.beta_schedule == ref.config.beta_schedule == "scaled_linear"
    for s in (ours, ref):
        s.set_timesteps(7)
    assert ours.num_inference_steps == ref.num_inference_steps == 7
    if hasattr(ref, "begin_index"):
        assert ours.begin_index is None and ref.begin_index is None
        ours.set_begin_index(3)
        ref.set_begin_index(3)
        assert ours.begin_index == ref.begin_index == 3
        ours.set_timesteps(7)  # a new plan drops the begin index, as diffusers
        assert ours.begin_index is None


@pytest.mark.parametrize("name", list(DIFFUSERS_CLASSES))
@pytest.mark.filterwarnings("ignore:The `scale_model_input` function should be called:UserWarning")  # diffusers' LMS
def test_step_return_conventions(name):
    """return_dict=False -> (prev_sample,), True -> .prev_sample / [0], default: a tensor with .prev_sample."""
    x, out = torch.randn(2, 4, 4, 4, generator=_seed(1)), torch.randn(2, 4, 4, 4, generator=_seed(2))
    config = {**SD_BETAS, "skip_prk_steps": True} if name == "pndm" else SD_BETAS  # PNDM's Runge-Kutta: >= 4 steps
    ref = _scheduler(name, **config)
    # Three model calls: PLMS makes one more, Heun and KDPM2 2 steps - 1.
    steps = 2 if name in ("pndm", "heun", "kdpm2", "kdpm2_a") else 3
    ref.set_timesteps(steps)
    takes_generator = "generator" in inspect.signature(ref.step).parameters
    expected = [ref.step(out, t, x, return_dict=False, **({"generator": _seed(9)} if takes_generator else {}))[0]
                for t in ref.timesteps]
    ours = make_sampler(name, **config)
    ours.set_timesteps(steps)
    t = ours.timesteps
    got = [ours.step(out, t[0], x, generator=_seed(9), return_dict=False),
           ours.step(out, t[1], x, generator=_seed(9), return_dict=True),
           ours.step(out, t[2], x, generator=_seed(9))]
    # LCM also returns its clean estimate, as diffusers' LCMScheduler: (prev_sample, denoised) / .denoised.
    assert isinstance(got[0], tuple) and len(got[0]) == (2 if name == "lcm" else 1)
    assert got[1][0] is got[1].prev_sample
    assert isinstance(got[2], torch.Tensor) and type(got[2].prev_sample) is torch.Tensor
    for ours_out, ref_out in zip((got[0][0], got[1].prev_sample, got[2]), expected, strict=True):
        _close(ours_out, ref_out)


def test_lcm_step_returns_the_clean_estimate_as_diffusers():
    """LatentConsistencyModelPipeline unpacks `latents, denoised = scheduler.step(..., return_dict=False)`."""
    x, out = torch.randn(2, 4, 4, 4, generator=_seed(1)), torch.randn(2, 4, 4, 4, generator=_seed(2))
    ref, ours = _scheduler("lcm"), make_sampler("lcm")
    for s in (ref, ours):
        s.set_timesteps(4)
    for i, t in enumerate(ref.timesteps):
        want = ref.step(out, t, x, generator=_seed(i), return_dict=True)
        got_prev, got_denoised = ours.step(out, ours.timesteps[i], x, generator=_seed(i), return_dict=False)
        _close(got_prev, want.prev_sample)
        _close(got_denoised, want.denoised)
    assert ours.denoised is got_denoised
    torch.testing.assert_close(got_prev, got_denoised, rtol=0, atol=0)  # the last step adds no noise


def test_default_step_result_is_an_ordinary_tensor_to_use_and_save():
    sampler, x = make_sampler("ddim"), torch.randn(1, 4, 4, 4)
    sampler.set_timesteps(2)
    y = sampler.step(x, sampler.timesteps[0], x)
    assert type(y * 2) is torch.Tensor and type(y.clone()) is torch.Tensor
    assert type(copy.deepcopy(y)) is torch.Tensor and torch.equal(copy.deepcopy(y), y)
    buffer = io.BytesIO()
    torch.save({"latents": y}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["latents"]  # a subclass would be refused here
    assert type(loaded) is torch.Tensor and torch.equal(loaded, y)


def test_custom_timesteps_and_sigmas_are_refused_by_name(sd_components, prompt):
    """retrieve_timesteps checks set_timesteps' signature: no silent fallback to the sampler's own schedule."""
    pipe = _sd_pipeline(diffusers.StableDiffusionPipeline, sd_components,
                        make_sampler("euler", **SD_BETAS, steps_offset=1))
    for key, values in (("timesteps", [999, 500, 1]), ("sigmas", [14.6, 3.0, 0.5])):
        with pytest.raises(ValueError, match=f"does not support custom {key[:-1]}"):
            pipe(**{key: values}, num_inference_steps=3, output_type="latent", **prompt)


def test_add_noise_after_set_begin_index_uses_the_current_step():
    """diffusers' Euler / DPM-Solver++ ignore the timestep values once a begin index is set (img2img)."""
    x, noise = torch.randn(2, 4, 4, 4, generator=_seed(1)), torch.randn(2, 4, 4, 4, generator=_seed(2))
    for name in ("euler", "dpm++"):
        ours, ref = make_sampler(name, **SD_BETAS), _scheduler(name, **SD_BETAS)
        for s in (ours, ref):
            s.set_timesteps(6)
            s.set_begin_index(2)
        t = torch.tensor([999, 999])  # not the begin timestep: the begin index decides
        _close(ours.add_noise(x, noise, t), ref.add_noise(x, noise, t))


# ---------------------------------------------------------------- the config


def test_config_reads_as_attributes_and_is_read_only():
    sampler = make_sampler("ddim", eta=0.3)
    assert sampler.config.eta == sampler.config["eta"] == 0.3
    with pytest.raises(AttributeError, match="'nope' is not a sampler config key"):
        _ = sampler.config.nope
    for change in (lambda c: c.__setitem__("eta", 1.0), lambda c: setattr(c, "eta", 1.0),
                   lambda c: c.update(eta=1.0), lambda c: c.pop("eta")):
        with pytest.raises(TypeError, match="config is read-only"):
            change(sampler.config)
    assert sampler.config.eta == 0.3
    clone = copy.deepcopy(sampler)
    assert clone.config == sampler.config and pickle.loads(pickle.dumps(sampler.config)) == sampler.config


def test_diffusers_from_config_of_a_sampler_config_matches_its_own():
    """SomeScheduler.from_config(pipe.scheduler.config) gives the same scheduler whether pipe.scheduler is a
    sampler or the matching diffusers scheduler: keys left at their defaults do not carry to another class."""
    config = {**SD_BETAS, "prediction_type": "v_prediction"}
    ours, ref = make_sampler("ddim", **config), _scheduler("ddim", **config)
    for cls in (diffusers.DDIMScheduler, diffusers.EulerDiscreteScheduler, diffusers.DPMSolverMultistepScheduler):
        a, b = cls.from_config(ours.config), cls.from_config(ref.config)
        assert {k: v for k, v in a.config.items() if not k.startswith("_")} == \
            {k: v for k, v in b.config.items() if not k.startswith("_")}, cls.__name__
    for name in ("ddim", "euler", "dpm++"):  # ours too, and from the sampler itself
        a, b, c = from_config(ours.config, name=name), from_config(ref.config, name=name), from_config(ours)
        assert dict(a.config) == dict(b.config) and c.name == "ddim" and dict(c.config) == dict(ours.config)


def test_register_to_config_replans_like_diffusers():
    ours, ref = make_sampler("dpm++", **SD_BETAS), _scheduler("dpm++", **SD_BETAS)
    for s in (ours, ref):
        s.register_to_config(timestep_spacing="trailing", steps_offset=1)
        s.set_timesteps(6)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert ours.config.timestep_spacing == "trailing" and "timestep_spacing" not in ours.config._use_default_values
    with pytest.raises(TypeError, match=r"^spacing: not a config key"):
        ours.register_to_config(spacing="trailing")
    with pytest.raises(ValueError, match=r"^timestep_spacing: expected one of"):
        ours.register_to_config(timestep_spacing="uniform")


# ---------------------------------------------------------------- bad input


def test_bad_step_arguments_name_the_argument_and_do_not_step():
    ddim, x = make_sampler("ddim"), torch.randn(1, 4, 4, 4)
    ddim.set_timesteps(3)
    t = ddim.timesteps[0]
    for kwargs, error, pattern in [({"eta": -0.5}, ValueError, "^eta: expected a value >= 0"),
                                   ({"eta": "0.5"}, TypeError, "^eta: expected a number"),
                                   ({"use_clipped_model_output": 1}, TypeError, "^use_clipped_model_output: "),
                                   ({"return_dict": "yes"}, TypeError, "^return_dict: expected a bool or None")]:
        with pytest.raises(error, match=pattern):
            ddim.step(x, t, x, **kwargs)
    assert ddim.step_index == 0
    euler = make_sampler("euler")
    with pytest.raises(TypeError, match="eta"):  # only DDIM takes eta, as only DDIMScheduler.step does
        euler.step(x, 0, x, eta=0.0)


def test_bad_begin_index():
    sampler = make_sampler("euler")
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sampler.set_begin_index(0)
    sampler.set_timesteps(4)
    with pytest.raises(ValueError, match=r"^begin_index: expected 0 <= begin_index <= 4"):
        sampler.set_begin_index(5)
    with pytest.raises(TypeError, match=r"^begin_index: expected an int"):
        sampler.set_begin_index(1.0)
    sampler.set_begin_index(4)  # nothing left to run
    with pytest.raises(RuntimeError, match="all 4 steps have run"):
        sampler.step(torch.zeros(1, 4, 2, 2), sampler.timesteps[-1], torch.zeros(1, 4, 2, 2))


def test_step_result_takes_the_ops_plain_eager_path():
    """The default step result is a tensor subclass that acts plain: genai_fast's ops must not send it down their
    custom-op path (tens of microseconds a call) as they do real subclasses."""
    from genai_fast.ops.eager import is_plain_eager

    sampler = make_sampler("euler")
    sampler.set_timesteps(4)
    x = torch.randn(1, 4, 8, 8)
    result = sampler.step(torch.randn_like(x), sampler.timesteps[0], x)
    assert type(result) is not torch.Tensor and is_plain_eager(result)

    class Observed(torch.Tensor):  # overrides nothing, yet keeps torch function handling: not plain
        pass

    assert not is_plain_eager(x.as_subclass(Observed))
