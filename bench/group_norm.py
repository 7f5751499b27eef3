"""Benchmark entry: GroupNorm + SiLU against torch's GroupNorm module followed by SiLU (eager)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from genai_fast.bench.registry import BenchEntry, Case, Inputs, register

import genai_fast
from genai_fast.ops.group_norm import group_norm_reference


def _case(shape: tuple[int, ...], groups: int, dtype: torch.dtype, layout: str) -> Case:
    dims = "x".join(map(str, shape))
    return Case({"shape": shape, "groups": groups, "layout": layout}, dtype, f"{dims} g{groups} {layout}")


def _cases(shapes, dtypes, layouts) -> list[Case]:
    return [_case(shape, groups, dtype, layout) for shape, groups in shapes for dtype in dtypes for layout in layouts]


# Stable Diffusion 1.5 U-Net GroupNorm shapes (CFG batch 2, 64x64 latent) and batch 1.
SD_SHAPES = [((2, 320, 64, 64), 32), ((2, 640, 32, 32), 32), ((2, 1280, 16, 16), 32), ((1, 320, 64, 64), 32),
             ((2, 1280, 8, 8), 32)]
# The SD1.5 decoder's widest GroupNorm inputs (skip connections concatenated), NHWC fp16 only.
SD_DECODER_SHAPES = [((2, 960, 64, 64), 32), ((2, 640, 64, 64), 32), ((2, 2560, 16, 16), 32)]
# The SD VAE decoder's GroupNorms at a 512x512 image (67 MB in fp16 each): large enough that bandwidth, not
# launch latency, sets the time, which issue 6's "85 % of measured bandwidth" target is about. First on a GPU.
VAE_SHAPES = [((1, 128, 512, 512), 32), ((1, 256, 256, 256), 32)]

PRESETS = {
    "quick": {
        "cpu": _cases([((2, 320, 64, 64), 32)], [torch.float32], ["contiguous", "channels_last"])
        + _cases([((1, 640, 32, 32), 32)], [torch.float32, torch.bfloat16], ["channels_last"]),
        "cuda": _cases([((2, 320, 64, 64), 32)], [torch.float16], ["channels_last", "contiguous"]),
    },
    "full": {
        "cpu": _cases(SD_SHAPES[:3], [torch.float32], ["contiguous", "channels_last"])
        + _cases(SD_SHAPES[:1], [torch.bfloat16, torch.float16], ["contiguous", "channels_last"]),
        "cuda": _cases(VAE_SHAPES, [torch.float16], ["channels_last"])
        + _cases(SD_SHAPES, [torch.float16], ["channels_last", "contiguous"])
        + _cases(SD_DECODER_SHAPES, [torch.float16], ["channels_last"])
        + _cases(SD_SHAPES[:1], [torch.bfloat16, torch.float32], ["channels_last"]),
    },
}


def make_inputs(case: Case, device: torch.device) -> Inputs:
    shape, groups = case.params["shape"], case.params["groups"]
    x = torch.randn(shape, device=device).to(case.dtype)
    if case.params["layout"] == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    C = shape[1]
    module = torch.nn.GroupNorm(groups, C).to(device=device, dtype=case.dtype)
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
    return {"x": x, "groups": groups, "weight": module.weight.detach(), "bias": module.bias.detach(),
            "module": module}


def run(inputs: Inputs, backend: str) -> torch.Tensor:
    return genai_fast.group_norm(inputs["x"], inputs["groups"], inputs["weight"], inputs["bias"],
                                 activation="silu", backend=backend)


def torch_groupnorm_silu(inputs: Inputs) -> torch.Tensor:
    with torch.no_grad():
        return F.silu(inputs["module"](inputs["x"]))


def oracle(inputs: Inputs) -> torch.Tensor:
    return group_norm_reference(inputs["x"].double().cpu(), inputs["groups"], inputs["weight"].double().cpu(),
                                inputs["bias"].double().cpu(), 1e-5, "silu")


def flops(case: Case) -> float:
    return 10.0 * math.prod(case.params["shape"])  # stats, normalise, affine, SiLU: ~10 per element


def bytes_moved(case: Case) -> float:
    element = torch.empty((), dtype=case.dtype).element_size()
    channels = case.params["shape"][1]  # the weight and the bias, in x's dtype (make_inputs)
    return (2.0 * math.prod(case.params["shape"]) + 2 * channels) * element  # read x once, write y once


ENTRY = register(BenchEntry(
    op="group_norm",
    presets=PRESETS,
    make_inputs=make_inputs,
    run=run,
    references={"torch GroupNorm+SiLU (eager)": torch_groupnorm_silu},
    oracle=oracle,
    flops=flops,
    bytes=bytes_moved,
    bound="memory",
))
