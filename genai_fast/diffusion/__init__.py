"""Diffusion sampling: samplers that match diffusers' schedulers, and sampling loops with CFG.

    from genai_fast.diffusion import make_sampler, sample
    sampler = make_sampler("dpm++", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sampler.set_timesteps(25)
    latents = torch.randn(1, 4, 64, 64, generator=g) * sampler.init_noise_sigma
    latents = sample(unet, sampler, latents, cond, 25, guidance_scale=7.5, negative_encoder_hidden_states=uncond)

Flow-matching models (SD3, Flux, ...) take make_sampler("flow_euler", shift=3.0) or "flow_heun" (FLOW_SAMPLER_NAMES):
the model predicts the velocity, and sampler.guided_step(out, t, x, g) runs classifier-free guidance and the update.
"""

from genai_fast.diffusion.cuda_graph import GraphedCall
from genai_fast.diffusion.samplers import (
    FLOW_SAMPLER_NAMES,
    SAMPLER_NAMES,
    DDIMSampler,
    DDPMSampler,
    DPMSolverPPSampler,
    DPMSolverSinglestepSampler,
    EulerAncestralSampler,
    EulerSampler,
    FlowEulerSampler,
    FlowHeunSampler,
    HeunSampler,
    KDPM2AncestralSampler,
    KDPM2Sampler,
    LCMSampler,
    LMSSampler,
    PNDMSampler,
    Sampler,
    UniPCSampler,
    from_config,
    make_sampler,
)
from genai_fast.diffusion.sampling import sample, sample_loop

__all__ = [
    "FLOW_SAMPLER_NAMES",
    "SAMPLER_NAMES",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPPSampler",
    "DPMSolverSinglestepSampler",
    "EulerAncestralSampler",
    "EulerSampler",
    "FlowEulerSampler",
    "FlowHeunSampler",
    "GraphedCall",
    "HeunSampler",
    "KDPM2AncestralSampler",
    "KDPM2Sampler",
    "LCMSampler",
    "LMSSampler",
    "PNDMSampler",
    "Sampler",
    "UniPCSampler",
    "from_config",
    "make_sampler",
    "sample",
    "sample_loop",
]
