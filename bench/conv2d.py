"""Benchmark entry: conv2d with its epilogue fused, against torch's conv followed by the epilogue as separate
eager ops (what a diffusers ResnetBlock2D runs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from genai_fast.bench.registry import BenchEntry, Case, Inputs, register

import genai_fast
from genai_fast.ops.conv2d import conv2d_reference

# Epilogues as a ResnetBlock2D uses them: conv1 + time embedding (a per-sample bias), conv2 + bias + shortcut,
# a 1x1 shortcut conv with its bias; "silu" adds the activation to conv2's.
EPILOGUES = {
    "temb": dict(bias="sample", activation=None, residual=False),
    "bias+res": dict(bias="channel", activation=None, residual=True),
    "bias+silu+res": dict(bias="channel", activation="silu", residual=True),
    "bias": dict(bias="channel", activation=None, residual=False),
}


def _case(shape: tuple[int, int, int, int], c_out: int, kernel: int, epilogue: str, dtype: torch.dtype) -> Case:
    label = f"{'x'.join(map(str, shape))}->{c_out} k{kernel} {epilogue}"
    return Case({"shape": shape, "c_out": c_out, "kernel": kernel, "epilogue": epilogue}, dtype, label)


# Stable Diffusion 1.5 U-Net convolutions (CFG batch 2, 64x64 latent): 3x3 convs of each resolution, the 1x1
# shortcuts where the channel count changes.
SD_CASES = [
    ((2, 320, 64, 64), 320, 3, "bias+res"),
    ((2, 320, 64, 64), 320, 3, "temb"),
    ((2, 640, 32, 32), 640, 3, "bias+res"),
    ((2, 1280, 16, 16), 1280, 3, "temb"),
    ((2, 1280, 8, 8), 1280, 3, "bias+res"),
    ((2, 320, 32, 32), 640, 1, "bias"),
    ((2, 640, 16, 16), 1280, 1, "bias"),
]

PRESETS = {
    "quick": {
        "cpu": [_case((1, 64, 32, 32), 64, 3, "bias+res", torch.float32),
                _case((2, 128, 16, 16), 128, 3, "temb", torch.float32)],
        "cuda": [_case((2, 320, 64, 64), 320, 3, "bias+res", torch.float16)],
    },
    "full": {
        "cpu": [_case((2, 320, 32, 32), 320, 3, "bias+res", torch.float32),
                _case((2, 640, 16, 16), 640, 3, "temb", torch.float32),
                _case((2, 320, 32, 32), 640, 1, "bias", torch.float32),
                _case((2, 320, 32, 32), 320, 3, "bias+silu+res", torch.bfloat16)],
        # fp16 only, three epilogue variants: each (dtype, variant) compiles every autotuning config, and
        # the GPU check's benchmark budget is shared by all ops.
        "cuda": [_case(*c, torch.float16) for c in SD_CASES],
    },
}


def _output_hw(case: Case) -> tuple[int, int]:
    _, _, H, W = case.params["shape"]
    return H, W  # stride 1, "same" padding


def make_inputs(case: Case, device: torch.device) -> Inputs:
    N, C, H, W = case.params["shape"]
    c_out, k = case.params["c_out"], case.params["kernel"]
    spec = EPILOGUES[case.params["epilogue"]]
    cl = torch.channels_last
    x = torch.randn(N, C, H, W, device=device).to(case.dtype).contiguous(memory_format=cl)
    conv = torch.nn.Conv2d(C, c_out, k, padding=k // 2).to(device=device, dtype=case.dtype, memory_format=cl)
    bias = conv.bias.detach() if spec["bias"] == "channel" else None
    temb = torch.randn(N, c_out, device=device).to(case.dtype) if spec["bias"] == "sample" else None
    residual = torch.randn(N, c_out, H, W, device=device).to(case.dtype).contiguous(memory_format=cl) \
        if spec["residual"] else None
    return {"x": x, "weight": conv.weight.detach(), "bias": bias if temb is None else temb,
            "conv_bias": conv.bias.detach(), "padding": k // 2, "activation": spec["activation"],
            "residual": residual, "per_sample": temb is not None}


def run(inputs: Inputs, backend: str | None) -> torch.Tensor:
    bias = inputs["bias"]
    if inputs["per_sample"]:
        bias = inputs["conv_bias"][None] + bias  # conv1's bias and the time embedding, one [N, C_out] bias
    return genai_fast.conv2d(inputs["x"], inputs["weight"], bias, padding=inputs["padding"],
                             activation=inputs["activation"], residual=inputs["residual"], backend=backend)


def torch_conv_then_epilogue(inputs: Inputs) -> torch.Tensor:
    """What diffusers runs: the conv (with its bias), then each epilogue step as its own eager op."""
    with torch.no_grad():
        y = F.conv2d(inputs["x"], inputs["weight"], inputs["conv_bias"], padding=inputs["padding"])
        if inputs["per_sample"]:
            y = y + inputs["bias"][:, :, None, None]
        if inputs["activation"] == "silu":
            y = F.silu(y)
        if inputs["residual"] is not None:
            y = inputs["residual"] + y
        return y


def oracle(inputs: Inputs) -> torch.Tensor:
    def f64(t):
        return None if t is None else t.detach().to(device="cpu", dtype=torch.float64)

    bias = inputs["bias"]
    if inputs["per_sample"]:
        bias = inputs["conv_bias"][None] + bias
    return conv2d_reference(f64(inputs["x"]), f64(inputs["weight"]), f64(bias), 1, inputs["padding"],
                            activation=inputs["activation"], residual=f64(inputs["residual"]))


def flops(case: Case) -> float:
    N, C, _, _ = case.params["shape"]
    H, W = _output_hw(case)
    k = case.params["kernel"]
    return 2.0 * N * H * W * case.params["c_out"] * C * k * k


def bytes_moved(case: Case) -> float:
    """x, the weight and the bias (per channel, or per sample and channel: conv1's bias plus the time embedding)
    read once, the output written once, the residual read once."""
    N, C, H_in, W_in = case.params["shape"]
    H, W = _output_hw(case)
    c_out, k = case.params["c_out"], case.params["kernel"]
    element = torch.empty((), dtype=case.dtype).element_size()
    spec = EPILOGUES[case.params["epilogue"]]
    outputs = 2 if spec["residual"] else 1
    bias = {"channel": c_out, "sample": N * c_out, None: 0}[spec["bias"]]
    return element * (N * C * H_in * W_in + c_out * C * k * k + bias + outputs * N * c_out * H * W)


ENTRY = register(BenchEntry(
    op="conv2d",
    presets=PRESETS,
    make_inputs=make_inputs,
    run=run,
    references={"torch conv + separate epilogue (eager)": torch_conv_then_epilogue},
    oracle=oracle,
    flops=flops,
    bytes=bytes_moved,
    bound="compute",
))
