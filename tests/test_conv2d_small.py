"""conv2d on small, wide CPU images: the three routes (channels_last, NCHW, im2col + GEMM) against the float64
oracle, and the first-call timing that picks one (genai_fast/ops/conv2d_small.py)."""

import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.ops import conv2d_small
from tests.conv2d_cases import LAYERS, Layer, check_backend, make_args

ROUTE_LAYERS = {
    "3x3-pad1-sd-like-2x64x8x8-to64": LAYERS["3x3-pad1-sd-like-2x64x8x8-to64"],
    "3x3-stride2-pad1-1x6x13x9-to10": LAYERS["3x3-stride2-pad1-1x6x13x9-to10"],
    "3x3-pad1-odd-2x12x9x11-to20": LAYERS["3x3-pad1-odd-2x12x9x11-to20"],
    "3x2-asym-pad-1x7x6x10-to5": Layer(1, 7, 6, 10, 5, (3, 2), stride=(1, 2), padding=(2, 1)),
    "3x3-nopad-c1-1x1x5x5-to1": LAYERS["3x3-nopad-c1-1x1x5x5-to1"],
}


def _force(monkeypatch, route: str) -> list:
    """Every conv contested, and the timing replaced by one in which `route` is fastest; returns the timed keys."""
    calls = []
    timings = {name: 1.0 for name in conv2d_small.ROUTES}
    timings[route] = 0.5 if route != "channels_last" else 0.9
    monkeypatch.setattr(conv2d_small, "SMALL_IMAGE_MIN_MACS", 0)
    monkeypatch.setattr(conv2d_small, "_CHOICES", {})
    monkeypatch.setattr(conv2d_small, "_TIMINGS", {})
    monkeypatch.setattr(conv2d_small, "median_ms", lambda runs, repeats: calls.append(set(runs)) or timings)
    return calls


@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "strided"])
@pytest.mark.parametrize("epilogue", ["all", "sample-bias-silu-res", "plain"])
@pytest.mark.parametrize("route", conv2d_small.ROUTES)
@pytest.mark.parametrize("layer", ROUTE_LAYERS.keys())
def test_each_route_matches_reference(layer, route, epilogue, layout, weight_layout, monkeypatch):
    """Every route, inside the torch+inplace implementation (epilogues after it), on NaN-poisoned outputs:
    strides, padding, odd sizes, one channel, any layout of x and of the weight."""
    calls = _force(monkeypatch, route)
    args = make_args(ROUTE_LAYERS[layer], epilogue, torch.float32, layout, weight_layout=weight_layout)
    check_backend("torch+inplace", args)
    assert calls == [set(conv2d_small.ROUTES)]
    assert [row["chosen"] for row in conv2d_small.measured_routes()] == [route]


@pytest.mark.parametrize("timings, chosen", [({"channels_last": 2.0, "nchw": 1.0, "im2col": 1.5}, "nchw"),
                                             ({"channels_last": 2.0, "nchw": 1.5, "im2col": 1.0}, "im2col"),
                                             ({"channels_last": 1.0, "nchw": 0.97, "im2col": 3.0}, "channels_last")])
def test_first_call_times_the_routes_once_per_shape(timings, chosen, monkeypatch):
    """The first call at a shape key times all three; another route is kept only under 95% of channels_last's
    time; later calls reuse the choice, and a weight in another layout is another key."""
    calls = []
    monkeypatch.setattr(conv2d_small, "_CHOICES", {})
    monkeypatch.setattr(conv2d_small, "_TIMINGS", {})
    monkeypatch.setattr(conv2d_small, "median_ms", lambda runs, repeats: calls.append(set(runs)) or timings)
    x = torch.randn(2, 256, 8, 8).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(256, 256, 3, 3) / 48, torch.randn(256)
    for _ in range(3):
        assert conv2d_small.route(x, w, b, [1, 1], [1, 1], [1, 1], 1) == chosen
    assert len(calls) == 1
    w_cl = w.contiguous(memory_format=torch.channels_last)
    conv2d_small.route(x, w_cl, b, [1, 1], [1, 1], [1, 1], 1)
    assert len(calls) == 2
    with torch.inference_mode():
        torch.testing.assert_close(genai_fast.conv2d(x, w, b, padding=1), F.conv2d(x, w, b, padding=1),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("what", ["fp64", "bf16", "grad", "large-image", "1x1", "groups", "dilation", "little-work"])
def test_uncontested_convs_run_channels_last_untimed(what, monkeypatch):
    """Only fp32 CPU convs of at most 128 output pixels an image, 2^26 multiply-adds, no groups or dilation, and
    kernels larger than 1x1, outside autograd, are timed; the rest run as given."""
    monkeypatch.setattr(conv2d_small, "_CHOICES", {})
    monkeypatch.setattr(conv2d_small, "median_ms", lambda runs, repeats: pytest.fail("timed an uncontested conv"))
    dtype = {"fp64": torch.float64, "bf16": torch.bfloat16}.get(what, torch.float32)
    size = 16 if what == "large-image" else 8
    channels = 64 if what == "little-work" else 256
    x = torch.randn(2, channels, size, size, dtype=dtype, requires_grad=what == "grad")
    kernel = 1 if what == "1x1" else 3
    groups = 2 if what == "groups" else 1
    w = torch.randn(256, channels // groups, kernel, kernel, dtype=dtype)
    dilation = [2, 2] if what == "dilation" else [1, 1]
    assert conv2d_small.route(x, w, None, [1, 1], [1, 1], dilation, groups) == "channels_last"


def test_real_timing_runs_every_route():
    """Unreplaced, the race times the three routes on the call's own inputs and records milliseconds."""
    x = torch.randn(2, 256, 8, 8).contiguous(memory_format=torch.channels_last)
    w = torch.randn(320, 256, 3, 3) / 48  # 94M multiply-adds: above SMALL_IMAGE_MIN_MACS
    before = len(conv2d_small.measured_routes())
    name = conv2d_small.route(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    rows = conv2d_small.measured_routes()
    assert name in conv2d_small.ROUTES and len(rows) == before + 1 and rows[-1]["chosen"] == name
    assert set(rows[-1]["ms"]) == set(conv2d_small.ROUTES) and all(t > 0 for t in rows[-1]["ms"].values())
