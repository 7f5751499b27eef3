"""conv2d with a fused epilogue: each implementation against the float64 reference (Triton in the
interpreter), poisoning and guard regions, dispatch and the GPU race, bad input, autograd, custom op, compile."""

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS
from tests.conv2d_cases import LAYERS, Layer, check_backend, make_args, reference

conv_module = importlib.import_module("genai_fast.ops.conv2d")  # the attribute genai_fast.ops.conv2d is the op

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# The interpreter is slow: the Triton implementations get curated (layer, epilogue, layout, dtype) cases
# that together cover every layer and epilogue variant once, not their product.
TRITON_CASES = [
    ("1x1-2x20x5x7-to24", "all", "channels_last", "fp32"),
    ("3x3-pad1-odd-2x12x9x11-to20", "resnet-conv2", "channels_last", "fp16"),
    ("3x3-pad1-odd-2x12x9x11-to20", "sample-bias-silu-res", "contiguous", "fp32"),
    ("3x3-stride2-pad1-1x6x13x9-to10", "bias-silu", "channels_last", "fp32"),
    ("3x3-groups2-2x12x7x7-to8", "sample-bias", "channels_last", "fp16"),
    ("3x1-dil2-asym-pad-1x5x11x6-to3", "plain", "strided", "fp32"),
    ("3x3-nopad-c1-1x1x5x5-to1", "bias", "channels_last", "fp32"),
    ("1x1-stride2-c40-1x40x4x4-to17", "all", "channels_last", "fp16"),
    ("3x3-pad1-sd-like-2x64x8x8-to64", "all", "channels_last", "fp16"),
    ("1x1-many-tiles-1x8x24x24-to40", "sample-bias-silu-res", "channels_last", "fp32"),
]
EPILOGUE_CASES = [  # torch+triton: the conv is torch's, so the cases exercise the epilogue kernel
    ("3x3-pad1-odd-2x12x9x11-to20", "all", "channels_last", "fp32"),
    ("3x3-pad1-odd-2x12x9x11-to20", "sample-bias-silu-res", "contiguous", "fp16"),
    ("1x1-2x20x5x7-to24", "resnet-conv2", "channels_last", "fp16"),
    ("3x3-nopad-c1-1x1x5x5-to1", "bias-silu", "strided", "fp32"),
]


def _case_id(case):
    return "-".join(case)


def _require(backend):
    reasons = backend_unavailable_reasons(backend)
    if reasons:
        pytest.skip("; ".join(reasons))


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("case", TRITON_CASES, ids=_case_id)
def test_triton_implicit_gemm_matches_reference(case):
    _require("triton")
    layer, epilogue, layout, dtype = case
    check_backend("triton", make_args(LAYERS[layer], epilogue, DTYPES[dtype], layout, _device()))


@pytest.mark.parametrize("case", EPILOGUE_CASES, ids=_case_id)
def test_torch_conv_plus_triton_epilogue_matches_reference(case):
    _require("triton")
    layer, epilogue, layout, dtype = case
    check_backend("torch+triton", make_args(LAYERS[layer], epilogue, DTYPES[dtype], layout, _device()))


def test_triton_reads_channels_last_weights():
    _require("triton")
    args = make_args(LAYERS["3x3-pad1-odd-2x12x9x11-to20"], "all", torch.float32, "contiguous", _device(),
                     weight_layout="channels_last")
    out = check_backend("triton", args)
    assert out.is_contiguous(memory_format=torch.channels_last), "a channels_last weight makes the output NHWC"


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("epilogue", ["plain", "all", "sample-bias-silu-res", "resnet-conv2"])
@pytest.mark.parametrize("layer", ["3x3-pad1-odd-2x12x9x11-to20", "3x3-groups2-2x12x7x7-to8",
                                   "3x1-dil2-asym-pad-1x5x11x6-to3"])
def test_torch_inplace_matches_reference(layer, epilogue, dtype):
    check_backend("torch+inplace", make_args(LAYERS[layer], epilogue, dtype))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_torch_inplace_layouts(layout):
    out = check_backend("torch+inplace", make_args(LAYERS["1x1-2x20x5x7-to24"], "all", torch.float32, layout))
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("epilogue", ["plain", "all", "sample-bias-silu-res", "resnet-conv2"])
@pytest.mark.parametrize("layer", ["1x1-2x20x5x7-to24", "1x1-many-tiles-1x8x24x24-to40"])
def test_torch_inplace_pointwise_gemm_matches_reference(layer, epilogue, dtype):
    """1x1 convs of channels_last CPU tensors run as one GEMM over the pixels: every epilogue, every dtype."""
    args = make_args(LAYERS[layer], epilogue, dtype, "channels_last")
    assert conv_module._is_pointwise_gemm(args["x"], args["weight"], [1, 1], [0, 0], [1, 1], 1)
    out = check_backend("torch+inplace", args)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_pointwise_gemm_only_where_it_is_faster():
    """Large 1x1 convs (SD's 1x320x64x64) stay on oneDNN, which is faster there; strided or padded ones too."""
    x = torch.empty(1, 320, 64, 64).to(memory_format=torch.channels_last)
    w = torch.empty(320, 320, 1, 1)
    assert not conv_module._is_pointwise_gemm(x, w, [1, 1], [0, 0], [1, 1], 1)
    small = torch.empty(2, 64, 8, 8).to(memory_format=torch.channels_last)
    assert conv_module._is_pointwise_gemm(small, w[:64, :64], [1, 1], [0, 0], [1, 1], 1)
    assert not conv_module._is_pointwise_gemm(small, w[:64, :64], [2, 2], [0, 0], [1, 1], 1)
    assert not conv_module._is_pointwise_gemm(small.contiguous(), w[:64, :64], [1, 1], [0, 0], [1, 1], 1)


@pytest.mark.parametrize("timings, gemm", [({"gemm": 1.0, "onednn": 2.0}, True),
                                          ({"gemm": 0.97, "onednn": 1.0}, False)])
def test_pointwise_gemm_timed_in_between(timings, gemm, monkeypatch):
    """Between POINTWISE_ALWAYS_GEMM_MACS and POINTWISE_GEMM_MAX_MACS, where hosts disagree, the first fp32 conv in
    each bucket of pixel counts times both ways and the GEMM is kept only when clearly faster; half precision keeps
    the GEMM untimed."""
    calls = []
    monkeypatch.setattr(conv_module, "_POINTWISE_RACES", {})
    monkeypatch.setattr(conv_module, "_time_pointwise", lambda *sizes: calls.append(sizes) or timings)
    w = torch.randn(128, 128, 1, 1)
    for n in (2, 1):  # 2048 and 1024 pixels: two buckets
        x = torch.randn(n, 128, 32, 32).to(memory_format=torch.channels_last)
        assert conv_module._is_pointwise_gemm(x, w, [1, 1], [0, 0], [1, 1], 1) == gemm
        torch.testing.assert_close(genai_fast.conv2d(x, w), F.conv2d(x, w), rtol=1e-4, atol=1e-4)
    assert calls == [(2048, 128, 128), (1024, 128, 128)]
    half = torch.randn(2, 128, 32, 32, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    assert conv_module._is_pointwise_gemm(half, w.bfloat16(), [1, 1], [0, 0], [1, 1], 1) and len(calls) == 2


def test_pointwise_timing_runs_both():
    timings = conv_module._time_pointwise(256, 24, 40)
    assert set(timings) == {"gemm", "onednn"} and all(0 < t < 10_000 for t in timings.values())


WINOGRAD_LAYERS = {  # odd H and W (dropped edge outputs), C not a multiple of 16, one pixel, SD-like
    "odd-2x12x9x11-to20": Layer(2, 12, 9, 11, 20, (3, 3), padding=1),
    "sd-like-2x64x8x8-to64": Layer(2, 64, 8, 8, 64, (3, 3), padding=1),
    "one-pixel-1x3x1x1-to5": Layer(1, 3, 1, 1, 5, (3, 3), padding=1),
    "wide-1x33x4x6-to17": Layer(1, 33, 4, 6, 17, (3, 3), padding=1),
}


@pytest.mark.parametrize("epilogue", ["plain", "all", "sample-bias-silu-res", "resnet-conv2", "bias-silu"])
@pytest.mark.parametrize("layer", WINOGRAD_LAYERS.keys())
def test_cpp_winograd_matches_reference(layer, epilogue):
    _require("cpp")
    out = check_backend("cpp", make_args(WINOGRAD_LAYERS[layer], epilogue, torch.float32))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
def test_cpp_winograd_weights_at_any_strides_and_nonchannels_last_residual(weight_layout):
    _require("cpp")
    args = make_args(WINOGRAD_LAYERS["odd-2x12x9x11-to20"], "all", torch.float32, weight_layout=weight_layout)
    args["residual"] = args["residual"].contiguous()  # NCHW residual: converted by the launcher
    check_backend("cpp", args)


def test_cpp_winograd_gradients_match_reference():
    _require("cpp")
    args = make_args(WINOGRAD_LAYERS["wide-1x33x4x6-to17"], "sample-bias-silu-res", torch.float32)
    leaves = {k: args[k].detach().requires_grad_() for k in ("x", "weight", "bias", "residual")}
    genai_fast.conv2d(**{**args, **leaves}, backend="cpp").square().sum().backward()
    got = {k: t.grad.clone() for k, t in leaves.items()}
    for t in leaves.values():
        t.grad = None
    genai_fast.conv2d(**{**args, **leaves}, backend="torch").square().sum().backward()
    for k, t in leaves.items():
        torch.testing.assert_close(got[k], t.grad, rtol=1e-4, atol=1e-4, msg=k)


def test_cpp_winograd_says_what_it_cannot_run():
    _require("cpp")
    for layer, layout, message in [("3x3-stride2-pad1-1x6x13x9-to10", "channels_last", "stride 1, padding 1"),
                                   ("3x3-groups2-2x12x7x7-to8", "channels_last", "grouped"),
                                   ("1x1-2x20x5x7-to24", "channels_last", "3x3 kernels"),
                                   ("3x3-pad1-odd-2x12x9x11-to20", "contiguous", "dense channels_last")]:
        args = make_args(LAYERS[layer], "plain", torch.float32, layout)
        with pytest.raises(genai_fast.BackendNotSupportedError, match=message):
            genai_fast.conv2d(**args, backend="cpp")
    with pytest.raises(genai_fast.BackendNotSupportedError, match="dtype float16"):
        genai_fast.conv2d(**make_args(WINOGRAD_LAYERS["odd-2x12x9x11-to20"], "plain", torch.float16), backend="cpp")


def test_cpu_choice_takes_winograd_only_where_it_pays(monkeypatch):
    """Large 3x3 convs (SD1.5's) go to Winograd when timing finds it faster, small ones and few-tile ones to
    oneDNN untimed (the timer is replaced: nothing is run)."""
    timed = []
    monkeypatch.setattr(conv_module, "_CHOICES", {})
    monkeypatch.setattr(conv_module, "_TIMINGS", {})
    monkeypatch.setattr(conv_module, "_time_cpu_ms", lambda impls, args: timed.append(args[0].shape) or {
        "cpp": 1.0, "torch+inplace": 2.0})
    impls = {impl.backend: impl for impl in OPS["conv2d"].implementations}
    runnable = [impls[name] for name in ("cpp", "torch+inplace", "torch")]

    def choice(N, C, H, W, C_out, layout=torch.channels_last):
        x = torch.empty(N, C, H, W).to(memory_format=layout)
        w = torch.empty(C_out, C, 3, 3)
        call = conv_module._dispatch_inputs(x, w, None, None, [1, 1], [1, 1], [1, 1], 1, None, 1.0)
        return conv_module._choose(call, runnable).backend

    assert choice(1, 320, 64, 64, 320) == "cpp"
    assert choice(2, 1280, 16, 16, 1280) == "cpp"
    assert choice(2, 64, 16, 16, 64) == "torch+inplace"  # 2^24 multiply-adds
    assert choice(2, 640, 8, 8, 640) == "torch+inplace"  # 32 tiles
    assert choice(1, 320, 64, 64, 320, torch.contiguous_format) == "torch+inplace"
    assert timed == [(1, 320, 64, 64), (2, 1280, 16, 16)]
    assert choice(1, 320, 64, 64, 320) == "cpp" and len(timed) == 2  # timed once per shape key
    monkeypatch.setattr(conv_module, "_time_cpu_ms", lambda impls, args: {"cpp": 0.97, "torch+inplace": 1.0})
    assert choice(2, 320, 32, 32, 640) == "torch+inplace"  # not clearly faster: the direct convolution


@pytest.mark.skipif(bool(backend_unavailable_reasons("cpp")), reason="; ".join(backend_unavailable_reasons("cpp"))
                    or "cpp available")
def test_cpu_winograd_timing_runs_both():
    impls = {impl.backend: impl for impl in OPS["conv2d"].implementations}
    args = (torch.randn(1, 16, 12, 12).to(memory_format=torch.channels_last), torch.randn(16, 16, 3, 3), None, None,
            [1, 1], [1, 1], [1, 1], 1, None, 1.0)
    timings = conv_module._time_cpu_ms((impls["cpp"], impls["torch+inplace"]), args)
    assert set(timings) == {"cpp", "torch+inplace"} and all(0 < t < 10_000 for t in timings.values())


def test_cpp_winograd_entry_points_validate_sizes():
    _require("cpp")
    from genai_fast.backends.cpp import extension

    ext = extension()
    x, V = torch.randn(1, 3, 3, 2), torch.empty(16, 4, 2)  # N1 H3 W3 C2: 2x2 tiles
    ext.winograd_input_transform(x.data_ptr(), 18, V.data_ptr(), 128, 1, 3, 3, 2, 1)
    for changed, message in [((17, 128), "x: expected N\\*H\\*W\\*C=18"), ((18, 127), "V: expected 16\\*P\\*C=128")]:
        with pytest.raises(ValueError, match=message):
            ext.winograd_input_transform(x.data_ptr(), changed[0], V.data_ptr(), changed[1], 1, 3, 3, 2, 1)
    w, U = torch.randn(5, 2, 3, 3), torch.empty(16, 5, 2)
    with pytest.raises(ValueError, match="weight: its strides reach element"):
        ext.winograd_weight_transform(w.data_ptr(), 89, list(w.stride()), U.data_ptr(), 160, 2, 5, 1)
    with pytest.raises(ValueError, match="U: expected 16\\*C\\*C_out=160"):
        ext.winograd_weight_transform(w.data_ptr(), 90, list(w.stride()), U.data_ptr(), 150, 2, 5, 1)
    M, out = torch.empty(16, 4, 5), torch.empty(1, 3, 3, 5)
    ok = dict(M=M.data_ptr(), M_numel=320, bias=0, bias_numel=0, per_sample_bias=False, residual=0,
              residual_numel=0, out=out.data_ptr(), out_numel=45, N=1, H=3, W=3, C_out=5, silu=False,
              output_scale=1.0, num_threads=1)
    ext.winograd_output_transform(**ok)
    for key, value, message in [("M_numel", 319, "M: expected"), ("out_numel", 44, "out: expected"),
                                ("N", 0, "expected N, H, W, C, C_out >= 1")]:
        with pytest.raises(ValueError, match=message):
            ext.winograd_output_transform(**{**ok, key: value})
    with pytest.raises(ValueError, match="bias: expected 5 elements"):
        ext.winograd_output_transform(**{**ok, "bias": out.data_ptr(), "bias_numel": 4})


def test_cpp_winograd_workspace_is_per_thread_and_releasable():
    _require("cpp")
    import threading

    from genai_fast.backends.cpp import winograd

    args = make_args(WINOGRAD_LAYERS["sd-like-2x64x8x8-to64"], "all", torch.float32)
    results = {}

    def run(name):
        results[name] = genai_fast.conv2d(**args, backend="cpp")
        results[name + " workspace"] = winograd._WORKSPACE.__dict__.get("M")

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(results["t0"], results["t1"], rtol=0, atol=0)
    assert results["t0 workspace"] is not results["t1 workspace"]
    genai_fast.conv2d(**args, backend="cpp")
    assert "M" in winograd._WORKSPACE.__dict__
    winograd.release_workspace()
    assert "M" not in winograd._WORKSPACE.__dict__
    # Buffers first made under inference mode serve later calls outside it (and with autograd).
    with torch.inference_mode():
        genai_fast.conv2d(**args, backend="cpp")
    x = args["x"].clone().requires_grad_()
    genai_fast.conv2d(**{**args, "x": x}, backend="cpp").sum().backward()
    assert x.grad is not None


def test_reference_matches_conv2d_module():
    """The epilogue-free op is nn.Conv2d; the reference's epilogue is torch's own ops in the documented order."""
    module = torch.nn.Conv2d(6, 10, 3, stride=2, padding=1, groups=2)
    x = torch.randn(2, 6, 9, 8)
    torch.testing.assert_close(genai_fast.conv2d(x, module.weight, module.bias, 2, 1, 1, 2), module(x),
                               rtol=1e-5, atol=1e-5)
    residual = torch.randn(2, 10, 5, 4)
    expected = (F.silu(module(x)) + residual) * 0.25
    got = genai_fast.conv2d(x, module.weight, module.bias, 2, 1, 1, 2, activation="silu", residual=residual,
                            output_scale=0.25)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", [np.float64(0.5), np.float32(0.5), np.int64(2)], ids=["f64", "f32", "i64"])
def test_output_scale_takes_numpy_scalars(scale):
    """diffusers' skip blocks set output_scale_factor = np.sqrt(2.0): a NumPy scale is a number like any other."""
    x, weight, residual = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3), torch.randn(1, 4, 6, 6)
    expected = genai_fast.conv2d(x, weight, padding=1, residual=residual, output_scale=float(scale))
    got = genai_fast.conv2d(x, weight, padding=1, residual=residual, output_scale=scale)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["triton", "torch+triton"])
def test_no_out_of_bounds_reads(backend):
    """x, weight and residual sit between NaN-filled guard regions: a read outside them (the padding
    border, the last tiles) would poison the output."""
    _require("triton")

    def guarded(shape, memory_format=torch.contiguous_format):
        t = torch.empty(shape, memory_format=memory_format)
        numel, pad = t.numel(), 512
        storage = torch.full((numel + 2 * pad,), float("nan"))
        storage[pad: pad + numel] = torch.randn(numel)
        return storage[pad: pad + numel].as_strided(t.shape, t.stride())

    cl = torch.channels_last
    x, w, r = guarded((2, 5, 7, 9), cl), guarded((6, 5, 3, 3)), guarded((2, 6, 4, 5), cl)
    out = genai_fast.conv2d(x, w, torch.randn(2, 6), 2, 1, activation="silu", residual=r, backend=backend)
    assert torch.isfinite(out).all()


def test_empty_batch():
    out = genai_fast.conv2d(torch.empty(0, 4, 5, 5), torch.randn(6, 4, 3, 3), padding=1)
    assert out.shape == (0, 6, 5, 5)


# ---------------------------------------------------------------- bad input


def _good_args():
    return dict(x=torch.randn(2, 8, 6, 6), weight=torch.randn(4, 4, 3, 3), bias=torch.randn(4), stride=1, padding=1,
                dilation=1, groups=2, activation="silu", residual=torch.randn(2, 4, 6, 6), output_scale=1.0,
                backend=None)


@pytest.mark.parametrize(
    "change, error, name",
    [
        (dict(x=torch.randn(8, 6, 6)), ValueError, "x"),
        (dict(x=torch.ones(2, 8, 6, 6, dtype=torch.int64)), TypeError, "x"),
        (dict(x=[[1.0]]), TypeError, "x"),
        (dict(weight=torch.randn(4, 8, 3, 3)), ValueError, "weight"),  # C_in per group is 4 with groups=2
        (dict(weight=torch.randn(4, 4, 3)), ValueError, "weight"),
        (dict(weight=torch.randn(4, 4, 3, 3, dtype=torch.float64)), TypeError, "weight"),
        (dict(groups=3), ValueError, "groups"),
        (dict(groups=2.0), TypeError, "groups"),
        (dict(bias=torch.randn(5)), ValueError, "bias"),
        (dict(bias=torch.randn(3, 4)), ValueError, "bias"),
        (dict(bias=torch.randn(4, dtype=torch.float16)), TypeError, "bias"),
        (dict(residual=torch.randn(2, 4, 5, 5)), ValueError, "residual"),
        (dict(residual=torch.randn(2, 4, 6, 6).half()), TypeError, "residual"),
        (dict(activation="gelu"), ValueError, "activation"),
        (dict(stride=(1, 2, 3)), TypeError, "stride"),
        (dict(stride=0), ValueError, "stride"),
        (dict(padding=-1), ValueError, "padding"),
        (dict(dilation=(1, 0)), ValueError, "dilation"),
        (dict(padding=1.5), TypeError, "padding"),
        (dict(x=torch.randn(2, 8, 2, 2), padding=0, residual=None), ValueError, "x"),  # smaller than the kernel
        (dict(output_scale=float("inf")), ValueError, "output_scale"),
        (dict(backend="cudnn"), ValueError, "backend"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_names_the_argument(change, error, name):
    args = _good_args()
    args.update(change)
    with pytest.raises(error, match=rf"^{name}:"):
        genai_fast.conv2d(**args)


@pytest.mark.parametrize("name", ["weight", "bias", "residual"])
def test_tensors_on_another_device_raise(name):
    # A meta-device tensor stands in for "another device" on CPU-only machines.
    args = _good_args()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=rf"^{name}:.*device"):
        genai_fast.conv2d(**args)


# ---------------------------------------------------------------- dispatch


def test_auto_dispatch_on_cpu_uses_the_inplace_fast_path():
    genai_fast.conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3), torch.randn(4), activation="silu")
    assert OPS["conv2d"].last_backend == "torch+inplace"


def test_env_forces_reference(monkeypatch):
    monkeypatch.setenv("GENAI_FAST_BACKEND", "torch")
    genai_fast.conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3))
    assert OPS["conv2d"].last_backend == "torch"


@pytest.mark.parametrize("backend", ["torch", "torch+inplace", "triton", "torch+triton"])
def test_forcing_each_implementation_runs_it(backend):
    _require("triton" if "triton" in backend else "torch")
    args = make_args(LAYERS["3x3-nopad-c1-1x1x5x5-to1"], "plain", torch.float32, device=_device())
    genai_fast.conv2d(**args, backend=backend)
    assert OPS["conv2d"].last_backend == backend


def test_forced_backend_without_implementation_lists_it():
    with pytest.raises(genai_fast.BackendNotSupportedError, match="no 'cuda' implementation"):
        genai_fast.conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3), backend="cuda")


def test_float64_declined_by_kernels_with_reason():
    x, w = torch.randn(1, 4, 5, 5, dtype=torch.float64), torch.randn(4, 4, 3, 3, dtype=torch.float64)
    genai_fast.conv2d(x, w)
    assert OPS["conv2d"].last_backend == "torch+inplace"
    if not backend_unavailable_reasons("triton"):
        with pytest.raises(genai_fast.BackendNotSupportedError, match="dtype float64"):
            genai_fast.conv2d(x, w, backend="triton")


def test_info_lists_every_implementation():
    rows = [r for r in genai_fast.info()["ops"] if r["op"] == "conv2d"]
    assert [r["backend"] for r in rows] == ["triton", "torch+triton", "cpp", "torch+inplace", "torch"]
    assert [r["requires"] for r in rows] == ["triton", "triton", "cpp", "torch", "torch"]
    assert rows[-1]["available"] and rows[-2]["available"]
    for row in rows:
        assert row["available"] or row["reasons"], row


def test_gpu_race_times_both_once_and_keeps_the_faster(monkeypatch):
    """The choice between the two cuDNN paths, with the timer replaced (no GPU needed): the faster one wins,
    the timing happens once per shape key, other keys are timed afresh, and the implicit GEMM is never raced
    or chosen while something else can run."""
    timed = []
    speeds = {"torch+inplace": 2.0, "torch+triton": 1.0}

    def fake_time(impl, args):
        timed.append(impl.backend)
        return speeds[impl.backend]

    monkeypatch.setattr(conv_module, "_time_ms", fake_time)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(conv_module, "_CHOICES", {})
    monkeypatch.setattr(conv_module, "_TIMINGS", {})
    impls = {impl.backend: impl for impl in OPS["conv2d"].implementations}
    runnable = [impls[name] for name in ("triton", "torch+triton", "torch+inplace", "torch")]
    args = make_args(LAYERS["1x1-2x20x5x7-to24"], "all", torch.float32)
    call = conv_module._dispatch_inputs(*[args[k] for k in ("x", "weight", "bias", "residual")], [1, 1], [0, 0],
                                        [1, 1], 1, "silu", 0.7)
    call["device"] = torch.device("cuda")
    assert conv_module._choose(call, runnable).backend == "torch+triton"
    assert conv_module._choose(call, runnable).backend == "torch+triton"
    assert sorted(timed) == ["torch+inplace", "torch+triton"]
    speeds["torch+inplace"] = 0.5
    other = dict(call, args=(call["args"][0][:1], *call["args"][1:]))  # another batch size: a new key
    assert conv_module._choose(other, runnable).backend == "torch+inplace"
    assert len(timed) == 4
    assert {row["chosen"] for row in conv_module.measured_choices()} == {"torch+inplace", "torch+triton"}
    # With one cuDNN path runnable, it runs untimed rather than the implicit GEMM listed before it.
    assert conv_module._choose(call, [runnable[0], runnable[2], runnable[3]]).backend == "torch+inplace"
    # Without both GPU implementations runnable (a CPU tensor), priority order decides and nothing is timed.
    call["device"] = torch.device("cpu")
    assert conv_module._choose(call, runnable[2:]).backend == "torch+inplace"
    assert len(timed) == 4


# ---------------------------------------------------------------- autograd, custom op, compile


@pytest.mark.parametrize("epilogue", ["all", "sample-bias-silu-res", "resnet-conv2", "plain"])
def test_gradients_match_reference_autograd(epilogue):
    args = make_args(LAYERS["3x3-groups2-2x12x7x7-to8"], epilogue, torch.float64)
    names = [k for k in ("x", "weight", "bias", "residual") if args[k] is not None]
    for k in names:
        args[k].requires_grad_()
    out = genai_fast.conv2d(**args)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, [args[k] for k in names], grad)
    theirs = torch.autograd.grad(reference(args, float64_cpu=False), [args[k] for k in names], grad)
    for name, got, expected in zip(names, ours, theirs, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"d{n}: {m}")


def test_gradcheck():
    args = make_args(LAYERS["3x1-dil2-asym-pad-1x5x11x6-to3"], "sample-bias-silu-res", torch.float64)
    tensors = [args.pop(k).requires_grad_() for k in ("x", "weight", "bias", "residual")]

    def fn(x, weight, bias, residual):
        return genai_fast.conv2d(x, weight, bias, residual=residual, **args)

    assert torch.autograd.gradcheck(fn, tensors, fast_mode=True)


def test_fp32_gradient_through_triton_forward():
    _require("triton")
    args = make_args(LAYERS["1x1-2x20x5x7-to24"], "all", torch.float32, device=_device())
    for k in ("x", "weight", "bias", "residual"):
        args[k].requires_grad_()
    genai_fast.conv2d(**args, backend="triton").square().sum().backward()
    ours = [args[k].grad for k in ("x", "weight", "bias", "residual")]
    for k in ("x", "weight", "bias", "residual"):
        args[k].grad = None
    reference(args, float64_cpu=False).square().sum().backward()
    for k, got in zip(("x", "weight", "bias", "residual"), ours, strict=True):
        torch.testing.assert_close(got, args[k].grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("epilogue, layout, backend", [("all", "channels_last", ""), ("sample-bias", "contiguous", ""),
                                                       ("plain", "channels_last", ""),
                                                       ("sample-bias-silu-res", "channels_last", "triton")])
def test_opcheck(epilogue, layout, backend):
    if backend:
        _require(backend)
    args = make_args(LAYERS["3x3-groups2-2x12x7x7-to8"], epilogue, torch.float32, layout, _device())
    for k in ("x", "weight", "bias", "residual"):
        if args[k] is not None:
            args[k].requires_grad_()
    pair = [[v, v] if isinstance(v, int) else list(v) for v in (args["stride"], args["padding"], args["dilation"])]
    torch.library.opcheck(torch.ops.genai_fast.conv2d.default,
                          (args["x"], args["weight"], args["bias"], args["residual"], *pair, args["groups"],
                           args["activation"] or "none", args["output_scale"], backend))


class _ResnetTail(torch.nn.Module):
    """conv1 + time embedding, then conv2 + shortcut / output_scale_factor, as in a ResnetBlock2D."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x, temb):
        h = genai_fast.conv2d(x, self.conv1.weight, self.conv1.bias[None] + temb, padding=1, activation="silu")
        return genai_fast.conv2d(h, self.conv2.weight, self.conv2.bias, padding=1, residual=x, output_scale=0.5)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compiler):
    torch._dynamo.reset()
    model = _ResnetTail()
    x, temb = torch.randn(2, 8, 6, 6), torch.randn(2, 8)
    expected = model(x, temb)
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    torch.testing.assert_close(compiled(x, temb), expected)
    if compiler == "aot_eager":  # the backward graph through the custom op's autograd
        compiled(x, temb).sum().backward()
        assert model.conv1.weight.grad is not None and model.conv2.bias.grad is not None


def test_dispatch_modes_see_the_custom_op():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x, weight = torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3)
    genai_fast.conv2d(x, weight, activation="silu")  # a plan recorded outside the mode is not replayed inside
    with Recorder() as recorder:
        genai_fast.conv2d(x, weight, activation="silu")
    assert any("genai_fast.conv2d" in op for op in recorder.ops), recorder.ops


# ---------------------------------------------------------------- replayed call plans


@pytest.mark.parametrize("bad, error, match", [
    ({"groups": True}, TypeError, "^groups:"), ({"output_scale": True}, ValueError, "^output_scale:"),
    ({"stride": (True, True)}, TypeError, "^stride:"), ({"activation": "gelu"}, ValueError, "^activation:"),
    ({"output_scale": float("inf")}, ValueError, "^output_scale:"), ({"backend": "bogus"}, ValueError, "^backend:"),
], ids=["groups-bool", "scale-bool", "stride-bools", "activation", "scale-inf", "backend"])
def test_replayed_plan_still_rejects_bad_arguments(bad, error, match):
    """A call plan is keyed on scalar types as well as values (True == 1), so a signature that passed the checks
    never lets an argument the checks reject through."""
    x, weight, bias = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3), torch.randn(4)
    good = {"stride": (1, 1), "groups": 1, "output_scale": 1.0, "activation": None, "backend": None}
    for _ in range(2):
        genai_fast.conv2d(x, weight, bias, **good)
    with pytest.raises(error, match=match):
        genai_fast.conv2d(x, weight, bias, **{**good, **bad})


def test_replayed_plans_follow_layout_backend_variable_and_gradients(monkeypatch):
    """Replayed calls equal the checked first call; a new layout (same shapes) is a new plan with its own output
    layout; GENAI_FAST_BACKEND set later takes effect; inputs that require grad later get gradients."""
    x, weight, bias = torch.randn(2, 8, 9, 9), torch.randn(8, 8, 3, 3), torch.randn(8)
    first = genai_fast.conv2d(x, weight, bias, padding=1, activation="silu")
    assert torch.equal(genai_fast.conv2d(x, weight, bias, padding=1, activation="silu"), first)
    assert OPS["conv2d"].last_backend == "torch+inplace"
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out_cl = genai_fast.conv2d(x_cl, weight, bias, padding=1, activation="silu")
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, first)
    monkeypatch.setenv("GENAI_FAST_BACKEND", "torch")
    genai_fast.conv2d(x, weight, bias, padding=1, activation="silu")
    assert OPS["conv2d"].last_backend == "torch"
    monkeypatch.delenv("GENAI_FAST_BACKEND")
    leaves = (x.clone().requires_grad_(), weight.clone().requires_grad_())
    got = torch.autograd.grad(genai_fast.conv2d(*leaves, bias, padding=1, activation="silu").sum(), leaves)
    want = torch.autograd.grad(genai_fast.conv2d_reference(*leaves, bias, padding=1, activation="silu").sum(),
                               leaves)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_call_plans_stay_bounded(monkeypatch):
    from genai_fast.ops.plans import PlanTable

    monkeypatch.setattr(conv_module, "_PLANS", PlanTable(max_plans=2))
    for n in range(1, 6):
        genai_fast.conv2d(torch.randn(n, 2, 4, 4), torch.randn(2, 2, 1, 1))
        assert len(conv_module._PLANS) <= 2


def test_kernels_compile_for_sm90_without_a_gpu():
    """The implicit-GEMM kernel (first GPU config, full epilogue) and the epilogue kernel compile for sm_90
    in fp16: what only a lent GPU would otherwise reveal (the interpreter accepts more than the compiler).
    `python -m tests.conv2d_compile_check` checks every config, dtype and sm_80 (minutes)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "tests.conv2d_compile_check", "--dtypes", "fp16", "--archs", "90",
               "--max-configs", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
