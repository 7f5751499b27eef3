"""Direct convolutions of small, wide images on a CPU: three ways to the same product, timed once per shape.

An SD-class U-Net's innermost level is an 8x8 image of 1280-2560 channels (batch 2 with classifier-free guidance):
a convolution there is 128 output pixels against tens of megabytes of weights. On the 2-core AVX-512 VM (session
23, fp32, 3x3 convs) oneDNN ran these at 75-80 GFLOP/s on channels_last tensors, which the diffusers patch keeps
end to end, against 135 on NCHW copies (what unpatched diffusers runs) and 150-160 as one GEMM over the patches
(im2col):

    2x1280x8x8 -> 1280:   channels_last 49.7 ms, NCHW 28.8, im2col + GEMM 24.8
    2x2560x8x8 -> 1280:   98.8, 61.4, 51.5
    2x1280x16x16 -> 1280, stride 2 (the downsampler): 53.6, 32.0, 25.9
    2x640x16x16 -> 640:   10.2, 9.9, 23.2 (from 256 output pixels an image the GEMM no longer pays)

Which route wins depends on the host's BLAS and oneDNN (they differed by 2x between two hosts of this VM type), so
fp32 convs with at most SMALL_IMAGE_MAX_PIXELS output pixels per image and at least SMALL_IMAGE_MIN_MACS
multiply-adds are timed all three ways on the first call at each shape (the call's own inputs), and the
channels_last route is left only for one under RACE_MARGIN of its time. Everything else runs channels_last as before.

The im2col route orders each patch as the weight's memory is ordered, so the weight is used as it is (a view) and
only the small image is copied.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from genai_fast.ops.timing import median_ms

SMALL_IMAGE_MAX_PIXELS = 128
SMALL_IMAGE_MIN_MACS = 1 << 26
RACE_MARGIN = 0.95
RACE_REPEATS = 3
ROUTES = ("channels_last", "nchw", "im2col")
_CHOICES: dict[tuple[Any, ...], str] = {}
_TIMINGS: dict[tuple[Any, ...], dict[str, Any]] = {}  # per key: each route's median ms and the choice


def direct_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
                padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    """F.conv2d(x, weight, bias, ...) for x [N, C_in, H, W] and weight [C_out, C_in / groups, kh, kw] (bias [C_out]
    or None), by the route `route` picks; the result [N, C_out, Ho, Wo] may be in either memory format."""
    name = route(x, weight, bias, stride, padding, dilation, groups)
    return _RUN[name](x, weight, bias, stride, padding, dilation, groups)


def route(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int], padding: list[int],
          dilation: list[int], groups: int) -> str:
    """The route for these arguments: "channels_last" (F.conv2d as given) unless a small, wide fp32 CPU image
    measured another one faster on its first call."""
    if not _contested(x, weight, stride, padding, dilation, groups):
        return "channels_last"
    key = (tuple(x.shape), tuple(x.stride()), tuple(weight.shape), tuple(weight.stride()), tuple(stride),
           tuple(padding), bias is not None, torch.get_num_threads())
    name = _CHOICES.get(key)
    if name is None:
        args = (x, weight, bias, stride, padding, dilation, groups)
        timings = median_ms({name: (lambda run=run: run(*args)) for name, run in _RUN.items()}, RACE_REPEATS)
        fastest = min(timings, key=timings.get)
        faster = timings[fastest] < RACE_MARGIN * timings["channels_last"]
        name = _CHOICES[key] = fastest if faster else "channels_last"
        _TIMINGS[key] = {"ms": timings, "chosen": name}
    return name


def measured_routes() -> list[dict[str, Any]]:
    """The timings so far: for each shape key, each route's median ms and the one chosen."""
    # A snapshot: another thread's first call of a new shape may add a record meanwhile.
    return [{"key": repr(key), **record} for key, record in list(_TIMINGS.items())]


def _contested(x: torch.Tensor, weight: torch.Tensor, stride: list[int], padding: list[int], dilation: list[int],
               groups: int) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or groups != 1 or dilation != [1, 1]:
        return False
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return False  # traced or differentiated: the plain call
    N, C, H, W = x.shape
    kh, kw = weight.shape[2], weight.shape[3]
    out_h = (H + 2 * padding[0] - kh) // stride[0] + 1
    out_w = (W + 2 * padding[1] - kw) // stride[1] + 1
    if kh * kw == 1 or out_h * out_w > SMALL_IMAGE_MAX_PIXELS:
        return False
    return N * out_h * out_w * C * kh * kw * weight.shape[0] >= SMALL_IMAGE_MIN_MACS


def _channels_last(x, weight, bias, stride, padding, dilation, groups):
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def _nchw(x, weight, bias, stride, padding, dilation, groups):
    return F.conv2d(x.contiguous(), weight.contiguous(), bias, stride, padding, dilation, groups)


def _im2col(x, weight, bias, stride, padding, dilation, groups):
    """One GEMM: patches [N*Ho*Wo, K] times weight^T, K ordered as the weight's memory (channel-major for a
    contiguous weight, channel-minor for a channels_last one) so that the weight is a view; channels_last result."""
    N, C = x.shape[:2]
    c_out, _, kh, kw = weight.shape
    pixels = F.pad(x.permute(0, 2, 3, 1), (0, 0, padding[1], padding[1], padding[0], padding[0]))
    patches = pixels.unfold(1, kh, stride[0]).unfold(2, kw, stride[1])  # [N, Ho, Wo, C, kh, kw]
    out_h, out_w = patches.shape[1], patches.shape[2]
    if weight.is_contiguous():
        w = weight.reshape(c_out, C * kh * kw)
    else:
        patches = patches.permute(0, 1, 2, 4, 5, 3)  # [N, Ho, Wo, kh, kw, C]
        w = weight.permute(0, 2, 3, 1).reshape(c_out, kh * kw * C)
    rows = patches.reshape(N * out_h * out_w, -1)
    y = torch.mm(rows, w.t()) if bias is None else torch.addmm(bias, rows, w.t())
    return y.view(N, out_h, out_w, c_out).permute(0, 3, 1, 2)


_RUN = {"channels_last": _channels_last, "nchw": _nchw, "im2col": _im2col}
