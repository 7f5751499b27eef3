"""Shared conv2d test helpers: curated layer shapes, epilogue variants, random inputs, and one implementation
checked against the float64 oracle with the tolerance rule (DESIGN.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import genai_fast
from genai_fast.backends import memory
from genai_fast.ops.conv2d import conv2d_reference, output_memory_format, output_shape
from genai_fast.testing import assert_matches_oracle


@dataclass(frozen=True)
class Layer:
    """x [N, C_in, H, W] convolved to C_out channels by a kh x kw kernel."""

    N: int
    C_in: int
    H: int
    W: int
    C_out: int
    kernel: tuple[int, int]
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    dilation: int | tuple[int, int] = 1
    groups: int = 1


# Readable ids: 1x1 and 3x3, stride 2, padding, odd H and W, C not a multiple of 16, groups, dilation, size 1.
LAYERS = {
    "1x1-2x20x5x7-to24": Layer(2, 20, 5, 7, 24, (1, 1)),
    "3x3-pad1-odd-2x12x9x11-to20": Layer(2, 12, 9, 11, 20, (3, 3), padding=1),
    "3x3-stride2-pad1-1x6x13x9-to10": Layer(1, 6, 13, 9, 10, (3, 3), stride=2, padding=1),
    "3x3-groups2-2x12x7x7-to8": Layer(2, 12, 7, 7, 8, (3, 3), padding=1, groups=2),
    "3x1-dil2-asym-pad-1x5x11x6-to3": Layer(1, 5, 11, 6, 3, (3, 1), stride=(1, 2), padding=(2, 0), dilation=(2, 1)),
    "3x3-nopad-c1-1x1x5x5-to1": Layer(1, 1, 5, 5, 1, (3, 3)),
    "1x1-stride2-c40-1x40x4x4-to17": Layer(1, 40, 4, 4, 17, (1, 1), stride=2),
    "3x3-pad1-sd-like-2x64x8x8-to64": Layer(2, 64, 8, 8, 64, (3, 3), padding=1),
    # More row tiles than the kernel's GROUP_M band (8) and two column tiles: the tile-order swizzle.
    "1x1-many-tiles-1x8x24x24-to40": Layer(1, 8, 24, 24, 40, (1, 1)),
}

# Epilogue variants: bias "channel" [C_out] or "sample" [N, C_out] (a time embedding), SiLU, residual, scale.
EPILOGUES = {
    "plain": dict(bias=None, activation=None, residual=False, output_scale=1.0),
    "bias": dict(bias="channel", activation=None, residual=False, output_scale=1.0),
    "bias-silu": dict(bias="channel", activation="silu", residual=False, output_scale=1.0),
    "resnet-conv2": dict(bias="channel", activation=None, residual=True, output_scale=0.5),
    "all": dict(bias="channel", activation="silu", residual=True, output_scale=0.7),
    "sample-bias": dict(bias="sample", activation=None, residual=False, output_scale=1.0),
    "sample-bias-silu-res": dict(bias="sample", activation="silu", residual=True, output_scale=1.0),
}


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """t in "contiguous", "channels_last" or "strided" (a view with gaps along W) storage."""
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return torch.cat([t, t], dim=-1)[..., : t.shape[-1]]
    return t.contiguous()


def make_args(layer: Layer, epilogue: str, dtype: torch.dtype, layout: str = "channels_last", device: str = "cpu",
              weight_layout: str | None = None) -> dict:
    """Random keyword arguments of genai_fast.conv2d for `layer` with the `epilogue` variant."""
    spec = EPILOGUES[epilogue]
    kh, kw = layer.kernel
    x = torch.randn(layer.N, layer.C_in, layer.H, layer.W, dtype=torch.float64)
    weight = torch.randn(layer.C_out, layer.C_in // layer.groups, kh, kw, dtype=torch.float64)
    weight /= (layer.C_in // layer.groups * kh * kw) ** 0.5  # outputs of order 1, like an initialised layer
    bias = None
    if spec["bias"] == "channel":
        bias = torch.randn(layer.C_out, dtype=torch.float64)
    elif spec["bias"] == "sample":
        bias = torch.randn(layer.N, layer.C_out, dtype=torch.float64)
    stride, padding, dilation = layer.stride, layer.padding, layer.dilation
    residual = None
    if spec["residual"]:
        as_pair = [(v, v) if isinstance(v, int) else v for v in (stride, padding, dilation)]
        residual = torch.randn(output_shape(x, weight, *as_pair), dtype=torch.float64)

    def cast(t, how=layout):
        return None if t is None else to_layout(t.to(device=device, dtype=dtype), how)

    return dict(x=cast(x), weight=cast(weight, weight_layout or "contiguous"),
                bias=None if bias is None else bias.to(device=device, dtype=dtype), stride=stride, padding=padding,
                dilation=dilation, groups=layer.groups, activation=spec["activation"],
                residual=cast(residual), output_scale=spec["output_scale"])


def reference(args: dict, *, float64_cpu: bool) -> torch.Tensor:
    """conv2d_reference on args (cast to float64 on the CPU for the oracle, else in their own dtype)."""
    def prep(t):
        return t.detach().to(device="cpu", dtype=torch.float64) if float64_cpu and t is not None else t

    return conv2d_reference(prep(args["x"]), prep(args["weight"]), prep(args["bias"]), args["stride"],
                            args["padding"], args["dilation"], args["groups"], args["activation"],
                            prep(args["residual"]), args["output_scale"])


def check_backend(backend: str, args: dict) -> torch.Tensor:
    """Run genai_fast.conv2d with `backend` on NaN-poisoned buffers; assert shape, dtype, the layout the fake
    promises, and the tolerance rule against the float64 oracle. Returns the output."""
    with memory.poison_outputs():
        out = genai_fast.conv2d(**args, backend=backend)
    oracle = reference(args, float64_cpu=True)
    assert out.shape == oracle.shape and out.dtype == args["x"].dtype and out.device == args["x"].device
    memory_format = output_memory_format(args["x"], args["weight"])
    assert out.is_contiguous(memory_format=memory_format), f"output strides {out.stride()} are not {memory_format}"
    baseline = reference(args, float64_cpu=False)
    what = f"conv2d[{backend}] x strides {args['x'].stride()} weight strides {args['weight'].stride()}"
    assert_matches_oracle(out, oracle, baseline, what=what)
    return out
