"""GroupNorm(+SiLU): every backend against the float64 reference, poisoning, bad input, autograd, compile."""

import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS
from tests.group_norm_cases import check_backend, check_output, make_input

# (shape, groups): size 1, odd and prime sizes, 3-D, one group, one channel per group, SD-like.
SHAPES = {
    "n1-c4-1x1": ((1, 4, 1, 1), 2),
    "odd-3x6x13x17-g3": ((3, 6, 13, 17), 3),
    "3d-2x32x7": ((2, 32, 7), 8),
    "prime-1x10x31x37-g5": ((1, 10, 31, 37), 5),
    "one-group-2x3x5x5": ((2, 3, 5, 5), 1),
    "group-per-channel-2x8x9": ((2, 8, 9), 8),
    "2d-4x6": ((4, 6), 2),
    "sd-1x320x16x16-g32": ((1, 320, 16, 16), 32),
}
# The interpreter is slow: Triton gets a few small shapes.
TRITON_SHAPES = ["n1-c4-1x1", "odd-3x6x13x17-g3", "3d-2x32x7", "group-per-channel-2x8x9"]
LAYOUTS = ["contiguous", "channels_last", "strided"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", SHAPES.keys())
def test_cpp_matches_reference(case, layout, dtype):
    if backend_unavailable_reasons("cpp"):
        pytest.skip("; ".join(backend_unavailable_reasons("cpp")))
    shape, groups = SHAPES[case]
    check_backend("cpp", shape, groups, layout, dtype)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("activation", [None, "silu"], ids=["plain", "silu"])
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_options(backend, activation, affine):
    check_backend(backend, (2, 12, 9, 11), 4, "channels_last", torch.float32, affine, activation)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", TRITON_SHAPES)
def test_triton_matches_reference(case, layout, dtype):
    reasons = backend_unavailable_reasons("triton")
    if reasons:
        pytest.skip("; ".join(reasons))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape, groups = SHAPES[case]
    check_backend("triton", shape, groups, layout, dtype, device=device)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_no_out_of_bounds_reads(backend):
    """The input sits between NaN-filled guard regions: reading outside it would poison the output."""
    if backend_unavailable_reasons(backend):
        pytest.skip("; ".join(backend_unavailable_reasons(backend)))
    shape, pad = (2, 6, 5, 7), 1000
    numel = torch.Size(shape).numel()
    storage = torch.full((numel + 2 * pad,), float("nan"))
    storage[pad : pad + numel] = torch.randn(numel)
    x = storage[pad : pad + numel].view(shape)
    out = genai_fast.group_norm(x, 3, activation="silu", backend=backend)
    assert torch.isfinite(out).all()
    xc = storage[pad : pad + numel].view(2, 5, 7, 6).permute(0, 3, 1, 2)  # channels_last view
    out = genai_fast.group_norm(xc, 3, activation="silu", backend=backend)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpp_large_output_streams_past_the_cache(layout):
    """Above 8 MB the fp32 output is written with non-temporal stores (aligned heads, prefetched next blocks)."""
    if backend_unavailable_reasons("cpp"):
        pytest.skip("; ".join(backend_unavailable_reasons("cpp")))
    check_backend("cpp", (1, 40, 241, 233), 8, layout, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpp_statistics_survive_a_large_mean(layout, dtype):
    """Values of mean 300 and spread 0.5: per-chunk two-pass moments merged by Chan's formula keep the
    variance, where a single pass of sums of squares in fp32 would cancel it away."""
    if backend_unavailable_reasons("cpp"):
        pytest.skip("; ".join(backend_unavailable_reasons("cpp")))
    x = make_input((2, 96, 37, 41), layout, torch.float64) * 0.2 + 300.0
    check_output("cpp", x.to(dtype), 4)


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_cpp_portable_loops(isa):
    """The portable element loops (this machine runs the AVX-512 ones), in a subprocess with GENAI_FAST_CPU_ISA
    capping the choice: fp16/bf16 converted through small buffers, row tails, every layout and dtype."""
    from tests.isa import run_with_isa

    if backend_unavailable_reasons("cpp"):
        pytest.skip("; ".join(backend_unavailable_reasons("cpp")))
    script = """
import torch
from tests.group_norm_cases import check_backend
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for layout in ("contiguous", "channels_last"):
        for shape, groups in (((3, 6, 13, 17), 3), ((1, 1040, 9, 7), 8), ((2, 40, 61, 67), 4)):
            check_backend("cpp", shape, groups, layout, dtype)
print("ok")
"""
    assert run_with_isa(script, isa) == ["ok"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpp_half_precision_equals_fp32_rounded_like_torch(layout, dtype):
    """fp16/bf16 values are widened exactly and the fp32 arithmetic is the same, so the output must be the fp32
    kernel's output on the widened input, rounded to nearest even as torch's .to(dtype) rounds: bit for bit."""
    if backend_unavailable_reasons("cpp"):
        pytest.skip("; ".join(backend_unavailable_reasons("cpp")))
    x = make_input((2, 64, 17, 19), layout, torch.float64) * 3
    x = x.to(dtype)
    weight, bias = torch.randn(64), torch.randn(64)
    got = genai_fast.group_norm(x, 8, weight, bias, activation="silu", backend="cpp")
    wide = genai_fast.group_norm(x.float(), 8, weight, bias, activation="silu", backend="cpp")
    assert torch.equal(got, wide.to(dtype))


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_cpp_portable_half_precision_equals_fp32_rounded(isa):
    """The bitwise rule above on the portable loops (what a CPU without AVX-512 runs): the fp32 sums must take the
    same pieces as the converted fp16/bf16 ones, or a group's mean rounds differently (seen on such a host)."""
    from tests.isa import run_with_isa

    if backend_unavailable_reasons("cpp"):
        pytest.skip("; ".join(backend_unavailable_reasons("cpp")))
    script = """
import torch, genai_fast
from tests.group_norm_cases import make_input
torch.manual_seed(0)
for dtype in (torch.float16, torch.bfloat16):
    for layout in ("contiguous", "channels_last"):
        x = (make_input((2, 64, 17, 19), layout, torch.float64) * 3).to(dtype)
        weight, bias = torch.randn(64), torch.randn(64)
        got = genai_fast.group_norm(x, 8, weight, bias, activation="silu", backend="cpp")
        wide = genai_fast.group_norm(x.float(), 8, weight, bias, activation="silu", backend="cpp")
        print(torch.equal(got, wide.to(dtype)))
"""
    assert run_with_isa(script, isa) == ["True"] * 4


def test_cpp_is_deterministic():
    if backend_unavailable_reasons("cpp"):
        pytest.skip("; ".join(backend_unavailable_reasons("cpp")))
    x = torch.randn(2, 64, 20, 20).to(memory_format=torch.channels_last)
    first = genai_fast.group_norm(x, 8, activation="silu", backend="cpp")
    second = genai_fast.group_norm(x, 8, activation="silu", backend="cpp")
    assert torch.equal(first, second)


def test_matches_torch_group_norm_module():
    x = torch.randn(2, 32, 8, 8)
    module = torch.nn.GroupNorm(8, 32)
    torch.nn.init.normal_(module.weight)
    torch.nn.init.normal_(module.bias)
    expected = F.silu(module(x))
    got = genai_fast.group_norm(x, 8, module.weight, module.bias, module.eps, activation="silu")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_empty_input():
    out = genai_fast.group_norm(torch.empty(0, 4, 3, 3), 2)
    assert out.shape == (0, 4, 3, 3)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(num_groups=5), ValueError, "num_groups"),
        (dict(num_groups=0), ValueError, "num_groups"),
        (dict(num_groups=2.0), TypeError, "num_groups"),
        (dict(x=torch.randn(8)), ValueError, "x"),
        (dict(x=torch.ones(2, 8, 3, dtype=torch.int64)), TypeError, "x"),
        (dict(x=[[1.0]]), TypeError, "x"),
        (dict(weight=torch.ones(7)), ValueError, "weight"),
        (dict(bias=torch.ones(8, 1)), ValueError, "bias"),
        (dict(weight=torch.ones(8, dtype=torch.int32)), TypeError, "weight"),
        (dict(activation="gelu"), ValueError, "activation"),
        (dict(backend="cudnn"), ValueError, "backend"),
        (dict(eps=-1.0), ValueError, "eps"),
        (dict(eps=float("nan")), ValueError, "eps"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_bad_input_names_the_argument(kwargs, error, name):
    args = dict(x=torch.randn(2, 8, 3), num_groups=2, weight=None, bias=None, eps=1e-5, activation=None,
                backend=None)
    args.update(kwargs)
    x, groups = args.pop("x"), args.pop("num_groups")
    with pytest.raises(error, match=rf"^{name}:"):
        genai_fast.group_norm(x, groups, **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for a second device")
def test_tensors_on_different_devices_raise():
    with pytest.raises(ValueError, match=r"^weight:"):
        genai_fast.group_norm(torch.randn(2, 8, 3), 2, torch.ones(8, device="cuda"))


def test_tensors_on_different_devices_raise_meta():
    # A meta-device weight stands in for "another device" on CPU-only machines.
    with pytest.raises(ValueError, match=r"^weight:.*device"):
        genai_fast.group_norm(torch.randn(2, 8, 3), 2, torch.ones(8, device="meta"))


# ---------------------------------------------------------------- dispatch


def test_auto_dispatch_on_cpu_prefers_cpp():
    genai_fast.group_norm(torch.randn(2, 8, 4, 4), 2)
    expected = "cpp" if not backend_unavailable_reasons("cpp") else "torch"
    assert OPS["group_norm"].last_backend == expected


def test_env_forces_reference(monkeypatch):
    monkeypatch.setenv("GENAI_FAST_BACKEND", "torch")
    genai_fast.group_norm(torch.randn(2, 8, 4, 4), 2)
    assert OPS["group_norm"].last_backend == "torch"


def test_env_rejects_unknown_backend(monkeypatch):
    monkeypatch.setenv("GENAI_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="GENAI_FAST_BACKEND"):
        genai_fast.group_norm(torch.randn(2, 8, 4, 4), 2)


def test_forced_backend_that_cannot_run_lists_reasons():
    with pytest.raises(genai_fast.BackendNotSupportedError, match=r"cuda.*(no CUDA GPU|device cpu)"):
        genai_fast.group_norm(torch.randn(2, 8, 4, 4), 2, backend="cuda")


def test_cpu_float64_runs_on_reference_and_cpp_declines_it():
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    genai_fast.group_norm(x, 2)
    assert OPS["group_norm"].last_backend == "torch"
    with pytest.raises(genai_fast.BackendNotSupportedError, match="dtype float64"):
        genai_fast.group_norm(x, 2, backend="cpp")


def test_info_lists_every_backend():
    rows = [r for r in genai_fast.info()["ops"] if r["op"] == "group_norm"]
    assert [r["backend"] for r in rows] == ["cuda", "triton", "cpp", "torch"]
    torch_row = rows[-1]
    assert torch_row["available"] and not torch_row["reasons"]
    for row in rows:
        assert row["available"] or row["reasons"], row


# ---------------------------------------------------------------- autograd, custom op, compile


def test_gradients_match_torch():
    x = torch.randn(2, 12, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, dtype=torch.float64, requires_grad=True)
    b = torch.randn(12, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 12, 5, 5, dtype=torch.float64)
    ours = torch.autograd.grad(genai_fast.group_norm(x, 3, w, b, activation="silu"), (x, w, b), grad)
    theirs = torch.autograd.grad(F.silu(F.group_norm(x, 3, w, b)), (x, w, b), grad)
    for got, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def test_gradcheck_without_affine():
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: genai_fast.group_norm(t, 2, activation="silu"), (x,))


def test_fp32_gradient_through_cpp_forward():
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    genai_fast.group_norm(x, 4, w, None, backend="cpp").square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    w2 = w.detach().clone().requires_grad_()
    F.group_norm(x2, 4, w2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(layout):
    x = make_input((2, 8, 5, 5), layout, torch.float32).requires_grad_()
    w = torch.randn(8, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    torch.library.opcheck(torch.ops.genai_fast.group_norm.default, (x, 4, w, b, 1e-5, "silu", ""))
    torch.library.opcheck(torch.ops.genai_fast.group_norm.default, (x, 4, None, None, 1e-5, "none", ""))


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, 8)

    def forward(self, x):
        h = genai_fast.group_norm(x, 4, self.norm.weight, self.norm.bias, activation="silu")
        return self.conv(h) + x


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compiler):
    torch._dynamo.reset()
    model = _Block()
    x = torch.randn(2, 8, 6, 6)
    expected = model(x)
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    torch.testing.assert_close(compiled(x), expected)
    compiled(x).sum().backward()
    assert model.norm.weight.grad is not None


def test_dispatch_modes_see_the_custom_op():
    """Eager calls skip the custom op only when nothing could observe it: a TorchDispatchMode does."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Recorder() as recorder:
        genai_fast.group_norm(torch.randn(2, 8, 3, 3), 4, activation="silu")
    assert any("genai_fast.group_norm" in op for op in recorder.ops), recorder.ops


def test_module_parameters_take_the_eager_path_only_without_grad():
    """nn.Parameter weights are plain tensors to the eager shortcut; with grad on they need the custom op."""
    from genai_fast.ops.eager import can_bypass_custom_op

    x, weight = torch.randn(2, 8, 3, 3), torch.nn.Parameter(torch.randn(8))
    assert not can_bypass_custom_op(x, weight)
    with torch.no_grad():
        assert can_bypass_custom_op(x, weight)
    weight.requires_grad_(False)
    assert can_bypass_custom_op(x, weight)
