"""Benchmark entry "unet": diffusers U-Nets patched by genai_fast.integrations.diffusers vs diffusers as is.

quick (CPU): a tiny UNet2DConditionModel's (block_out_channels (32, 64), one resnet per block,
    cross_attention_dim 32, 16x16 latent) 20-step DPM-Solver++ sampling loop with classifier-free
    guidance (batch 2): `genai_fast.diffusion.sample` over the patched U-Net against diffusers'
    DPMSolverMultistepScheduler loop over the unpatched U-Net (same weights, noise and context). The
    oracle is that diffusers loop with the U-Net in float64.
full (CPU): also one step of a mid-size UNet2DConditionModel (SD's block layout at 128/256/256 channels,
    fp32, 32x32 latent, CFG batch 2, 77x256 context), patched vs unpatched; the oracle is the U-Net in
    float64.
full (GPU): one step of an SD1.5-shaped UNet2DConditionModel (random weights, fp16, 64x64 latent, CFG
    batch 2, 77x768 context): patched, and patched replayed from a CUDA graph (what `sample(...,
    cuda_graph=True)` runs), vs diffusers eager vs torch.compile(mode="max-autotune") of the unpatched
    U-Net. Compiling takes minutes, so that reference runs only with GENAI_FAST_BENCH_COMPILE=1
    (otherwise the runner lists it as skipped, with this reason); its compile time is never timed. The
    oracle is the unpatched U-Net in float32 on the GPU (a float64 SD-sized U-Net on the CPU would take
    longer than the whole benchmark budget).

The runner times an op's implementations; a U-Net is not an op of the package, so this module defines
the dispatcher entry "unet" with two implementations, "patched" (the patched U-Net) and "patched+graph"
(CUDA only), so that rows read backend=patched or patched+graph. FLOPs are counted once per case with
torch's FlopCounterMode; bytes are the U-Net's weights read once per call (a lower bound). Without
diffusers installed the entry has no cases.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from typing import Any

import torch
from genai_fast.bench.registry import BenchEntry, Case, Inputs, register

from genai_fast.backends.dispatch import BackendNotSupportedError, Capability, define_op

HAVE_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
COMPILE_ENV = "GENAI_FAST_BENCH_COMPILE"

UNET = define_op("unet")


@UNET.register("patched", Capability(devices=("cpu", "cuda"), dtypes=(torch.float32, torch.float16, torch.bfloat16),
                                     layouts=("channels_last",),
                                     features=("diffusers U-Net patched by genai_fast.integrations.diffusers",)),
               requires="torch")
def _run_patched(inputs: Inputs) -> torch.Tensor:
    return inputs["patched_call"]()


@UNET.register("patched+graph", Capability(devices=("cuda",), dtypes=(torch.float32, torch.float16, torch.bfloat16),
                                           layouts=("channels_last",),
                                           features=("the patched U-Net replayed from a CUDA graph "
                                                     "(genai_fast.diffusion.GraphedCall)",)),
               requires="torch")
def _run_graphed(inputs: Inputs) -> torch.Tensor:
    if "graphed_call" not in inputs:
        raise BackendNotSupportedError("unet: patched+graph is timed for the one-step GPU case only")
    return inputs["graphed_call"]()


# ---------------------------------------------------------------- cases

TINY = {"block_out_channels": (32, 64), "layers_per_block": 1, "sample_size": 16, "in_channels": 4,
        "out_channels": 4, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "cross_attention_dim": 32, "norm_num_groups": 32,
        "attention_head_dim": 8}
SD15 = {"sample_size": 64, "cross_attention_dim": 768}  # the rest are UNet2DConditionModel's defaults (SD1.x)
# A mid-size U-Net for the CPU: SD's block layout at 128/256/256 channels, a 32x32 latent.
MID = {"block_out_channels": (128, 256, 256), "layers_per_block": 1, "sample_size": 32, "in_channels": 4,
       "out_channels": 4, "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
       "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 256,
       "norm_num_groups": 32, "attention_head_dim": 8}
CONFIGS = {"tiny": TINY, "mid": MID, "sd15": SD15}


def _loop_case(steps: int) -> Case:
    return Case({"model": "tiny", "steps": steps, "batch": 1, "latent": 16, "context": (7, 32)}, torch.float32,
                f"tiny-cond 16x16 cfg {steps}-step loop")


def _step_case(dtype: torch.dtype) -> Case:
    return Case({"model": "sd15", "steps": 1, "batch": 2, "latent": 64, "context": (77, 768)}, dtype,
                "sd1.5 64x64 b2 77x768 step")


def _mid_step_case() -> Case:
    return Case({"model": "mid", "steps": 1, "batch": 2, "latent": 32, "context": (77, 256)}, torch.float32,
                "mid 128/256/256 32x32 b2 77x256 step")


PRESETS = {
    "quick": {"cpu": [_loop_case(20)]},
    "full": {"cpu": [_loop_case(20), _mid_step_case()], "cuda": [_step_case(torch.float16)]},
} if HAVE_DIFFUSERS else {}

GUIDANCE = 3.0
_FLOPS: dict[str, float] = {}
_BYTES: dict[str, float] = {}


# ---------------------------------------------------------------- inputs


def _build_unet(case: Case, device: torch.device) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    config = CONFIGS[case.params["model"]]
    with torch.device(device):
        unet = UNet2DConditionModel(**config)
    return unet.to(case.dtype).eval().requires_grad_(False)


def _scheduler() -> Any:
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def make_inputs(case: Case, device: torch.device) -> Inputs:
    from genai_fast.integrations.diffusers import patch

    eager = _build_unet(case, device)
    patched = copy.deepcopy(eager)
    patch(patched)
    p = case.params
    g = torch.Generator().manual_seed(1)
    size = (p["batch"], eager.config.in_channels, p["latent"], p["latent"])
    latents = torch.randn(size, generator=g).to(device=device, dtype=case.dtype)
    cond = torch.randn((p["batch"], *p["context"]), generator=g).to(device=device, dtype=case.dtype)
    uncond = torch.randn((p["batch"], *p["context"]), generator=g).to(device=device, dtype=case.dtype)
    inputs = {"case": case, "device": device, "dtype": case.dtype, "eager": eager, "latents": latents,
              "cond": cond, "uncond": uncond, "timestep": torch.tensor([999] * p["batch"], device=device)}
    if p["steps"] == 1:
        inputs["patched_call"] = lambda: _unet_step(patched, inputs)
        if device.type == "cuda":
            from genai_fast.diffusion import GraphedCall

            graphed = GraphedCall(lambda x, t: patched(x, t, encoder_hidden_states=inputs["cond"]).sample)
            inputs["graphed_call"] = lambda: _graphed_step(graphed, inputs)
    else:
        inputs["patched_call"] = lambda: _genai_fast_loop(patched, inputs)
    _count_work(case, eager, inputs)
    return inputs


def _count_work(case: Case, unet: torch.nn.Module, inputs: Inputs) -> None:
    """FLOPs of one U-Net call x calls per case (once per case), and the weights' bytes per call."""
    if case.label in _FLOPS:
        return
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _unet_step(unet, inputs, cfg_batch=case.params["steps"] > 1)
    calls = case.params["steps"]
    _FLOPS[case.label] = float(counter.get_total_flops()) * calls
    weights = sum(t.numel() * t.element_size() for t in unet.parameters())
    _BYTES[case.label] = float(weights) * calls


# ---------------------------------------------------------------- the timed callables


@torch.no_grad()
def _unet_step(unet: torch.nn.Module, inputs: Inputs, cfg_batch: bool = False) -> torch.Tensor:
    """One U-Net call; cfg_batch doubles the batch as a guided sampling step does."""
    x, t, ctx = inputs["latents"], inputs["timestep"], inputs["cond"]
    if cfg_batch:
        x, t, ctx = torch.cat([x, x]), torch.cat([t, t]), torch.cat([inputs["uncond"], ctx])
    return unet(x, t, encoder_hidden_states=ctx).sample


@torch.no_grad()
def _graphed_step(graphed: Any, inputs: Inputs) -> torch.Tensor:
    return graphed(inputs["latents"], inputs["timestep"])


@torch.no_grad()
def _genai_fast_loop(unet: torch.nn.Module, inputs: Inputs) -> torch.Tensor:
    from genai_fast.diffusion import from_config, sample

    sampler = from_config(_scheduler())
    return sample(unet, sampler, inputs["latents"] * sampler.init_noise_sigma, inputs["cond"],
                  inputs["case"].params["steps"], guidance_scale=GUIDANCE,
                  negative_encoder_hidden_states=inputs["uncond"], progress=False)


@torch.no_grad()
def _diffusers_loop(unet: torch.nn.Module, inputs: Inputs, dtype: torch.dtype | None = None) -> torch.Tensor:
    """diffusers' own CFG loop (as its pipelines write it), with the U-Net and inputs in `dtype`."""
    scheduler = _scheduler()
    scheduler.set_timesteps(inputs["case"].params["steps"], device=inputs["device"])
    dtype = dtype or inputs["dtype"]
    x = inputs["latents"].to(dtype) * scheduler.init_noise_sigma
    context = torch.cat([inputs["uncond"], inputs["cond"]]).to(dtype)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([x, x]), t)
        uncond, cond = unet(model_input, t, encoder_hidden_states=context).sample.chunk(2)
        x = scheduler.step(uncond + GUIDANCE * (cond - uncond), t, x).prev_sample
    return x


def run(inputs: Inputs, backend: str | None) -> torch.Tensor:
    impl = UNET.select({"device": inputs["device"], "dtype": inputs["dtype"]}, backend)
    return impl.run(inputs)


def diffusers_eager(inputs: Inputs) -> torch.Tensor:
    if inputs["case"].params["steps"] == 1:
        return _unet_step(inputs["eager"], inputs)
    return _diffusers_loop(inputs["eager"], inputs)


def torch_compile_max_autotune(inputs: Inputs) -> torch.Tensor:
    """The unpatched U-Net under torch.compile(mode="max-autotune"), compiled on the first call."""
    if inputs["case"].params["steps"] != 1:
        raise NotImplementedError("torch.compile reference: timed for the one-step GPU case only")
    if os.environ.get(COMPILE_ENV) != "1":
        raise NotImplementedError(f"torch.compile max-autotune: compiling an SD-sized U-Net takes minutes; "
                                  f"set {COMPILE_ENV}=1 to include it")
    if "compiled" not in inputs:
        inputs["compiled"] = torch.compile(inputs["eager"], mode="max-autotune")
    return _unet_step(inputs["compiled"], inputs)


def oracle(inputs: Inputs) -> torch.Tensor:
    if inputs["case"].params["steps"] == 1:
        dtype = torch.float64 if inputs["device"].type == "cpu" else torch.float32
        return _unet_step(copy.deepcopy(inputs["eager"]).to(dtype), {**inputs, **_as(inputs, dtype)})
    model = copy.deepcopy(inputs["eager"]).double()
    return _diffusers_loop(model, inputs, dtype=torch.float64)


def _as(inputs: Inputs, dtype: torch.dtype) -> Inputs:
    return {k: inputs[k].to(dtype) for k in ("latents", "cond", "uncond")}


def flops(case: Case) -> float:
    return _FLOPS.get(case.label, 0.0)


def bytes_moved(case: Case) -> float:
    return _BYTES.get(case.label, 0.0)


ENTRY = register(BenchEntry(
    op="unet",
    presets=PRESETS,
    make_inputs=make_inputs,
    run=run,
    references={"diffusers eager (scheduler loop / unpatched U-Net)": diffusers_eager,
                "torch.compile max-autotune (unpatched U-Net)": torch_compile_max_autotune},
    oracle=oracle,
    flops=flops,
    bytes=bytes_moved,
    bound="compute",
))
