"""genai_fast.geglu: the C++ and Triton (interpreter on CPU, the GPU in the gpu-marked test) kernels against
the float64 reference (tolerance rule, NaN poisoning, guard regions, strides, special values), diffusers'
GEGLU as the reference, dispatch, bad input, the C++ entry point's size checks, autograd, opcheck and
torch.compile."""

import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS
from genai_fast.testing import assert_matches_oracle

# (leading shape, H): a tiny U-Net's feed-forward, SD1.5's narrowest (4096 tokens x 1280), H not a
# multiple of 16 (vector tail), a single value, one row.
SHAPES = {"2x64-h256": ((2, 64), 256), "1x4096-h1280": ((1, 4096), 1280), "3x5-h45": ((3, 5), 45),
          "1-h1": ((1,), 1), "h40": ((), 40)}
APPROX = ["none", "tanh"]


def _require(backend):
    reasons = backend_unavailable_reasons(backend)
    if reasons:
        pytest.skip("; ".join(reasons))


def _check(backend, x, approximate, what, device="cpu"):
    with memory.poison_outputs():
        out = genai_fast.geglu(x.to(device), approximate, backend=backend)
    assert OPS["geglu"].last_backend == backend
    assert out.shape == (*x.shape[:-1], x.shape[-1] // 2) and out.dtype == x.dtype and out.is_contiguous()
    oracle = genai_fast.geglu_reference(x.double(), approximate)
    baseline = genai_fast.geglu_reference(x, approximate)
    assert_matches_oracle(out.cpu(), oracle, baseline, what=what)
    return out


@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("case", SHAPES.keys())
def test_cpp_matches_reference(case, approximate):
    _require("cpp")
    lead, H = SHAPES[case]
    # Gates over [-12, 12]: both erf regions, its saturation, and GELU's negative tail.
    _check("cpp", torch.randn(*lead, 2 * H) * 4, approximate, f"geglu[cpp] {case} {approximate}")


@pytest.mark.parametrize("approximate", APPROX)
def test_triton_matches_reference(approximate):
    _require("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for lead, H in ((2, 7), 40), ((3,), 1100), ((1,), 1):
        _check("triton", torch.randn(*lead, 2 * H) * 4, approximate, f"geglu[triton] H={H}", device)
    _check("triton", torch.randn(4, 96).half(), approximate, "geglu[triton] fp16", device)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_strided_rows_and_guard_regions(backend):
    """Rows read in place at their stride, NaN between and after them; transposed input is copied."""
    _require(backend)
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    R, H = 6, 37
    rows = torch.full((R + 1, 2 * H + 5), float("nan"))
    rows[:R, :2 * H] = torch.randn(R, 2 * H)
    rows = rows.to(device)
    out = _check(backend, rows[:R, :2 * H], "none", "guarded rows", device)
    assert torch.isfinite(out).all()
    _check(backend, torch.randn(2 * H, R).t(), "tanh", "transposed x", device)
    _check(backend, torch.randn(1, 2 * H).expand(3, 2 * H), "none", "expanded rows", device)


@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_special_values_as_torch(backend, approximate):
    """NaN, +-inf, zeros and huge gates give what the float64 reference gives (the vector erf must not hide
    them; torch's fp32 GELU itself gives NaN for an infinite gate, its float64 one infinity)."""
    _require(backend)
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    inf, nan = float("inf"), float("nan")
    gate = torch.tensor([nan, inf, -inf, 0.0, -0.0, 1e30, -1e30, 88.0, -88.0, 3.9, -3.9, 4.1, -4.1, 0.874, 0.876, 1.0,
                         -1e-30, 7.0])
    value = torch.linspace(-2, 2, gate.numel())
    x = torch.cat([value, gate]).to(device)
    out = genai_fast.geglu(x, approximate, backend=backend).cpu()
    want = genai_fast.geglu_reference(x.cpu().double(), approximate).float()
    torch.testing.assert_close(out, want, equal_nan=True, rtol=2e-6, atol=1e-6)


def test_matches_diffusers_geglu_and_torch_backend():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.models.activations import GEGLU

    module = GEGLU(24, 40)
    h = torch.randn(2, 9, 24)
    projected = module.proj(h).detach()
    torch.testing.assert_close(genai_fast.geglu(projected), module(h).detach(), rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(genai_fast.geglu(projected, backend="torch"), module(h).detach())
    assert diffusers is not None


@pytest.fixture
def fresh_choices(monkeypatch):
    """No race result or replayed plan from earlier tests; returns the geglu module."""
    import importlib

    from genai_fast.ops.plans import EagerPlans

    module = importlib.import_module("genai_fast.ops.geglu")
    monkeypatch.setattr(module, "_RACES", {})
    monkeypatch.setattr(module, "_PLANS", EagerPlans(OPS["geglu"]))
    return module


def test_dispatch(fresh_choices, monkeypatch):
    monkeypatch.setattr(fresh_choices, "_time_both", lambda *bucket: {"cpp": 1.0, "torch": 2.0})
    x = torch.randn(2, 16)
    genai_fast.geglu(x)
    assert OPS["geglu"].last_backend == ("torch" if backend_unavailable_reasons("cpp") else "cpp")
    genai_fast.geglu(x.double())
    assert OPS["geglu"].last_backend == "torch"
    genai_fast.geglu(x.bfloat16())
    assert OPS["geglu"].last_backend == "torch"  # no CPU kernel for half types: the reference
    assert genai_fast.geglu(torch.randn(0, 3, 8)).shape == (0, 3, 4)


@pytest.mark.skipif(bool(backend_unavailable_reasons("cpp")), reason="needs the C++ extension")
@pytest.mark.parametrize("timings, expected", [({"cpp": 1.0, "torch": 2.0}, "cpp"),
                                               ({"cpp": 1.0, "torch": 0.95}, "cpp"),
                                               ({"cpp": 1.0, "torch": 0.5}, "torch")])
def test_cpu_choice_is_timed_once_per_bucket(timings, expected, fresh_choices, monkeypatch):
    """On a CPU the C++ kernel runs unless torch's two ops were clearly faster (RACE_MARGIN) in a timing of both,
    once per bucket of row counts (rounded up to a power of two), H, approximation and thread count."""
    calls = []
    monkeypatch.setattr(fresh_choices, "_time_both", lambda *bucket: calls.append(bucket) or timings)
    for rows in (5, 8, 7):  # one bucket: 8 rows of H = 64
        x = torch.randn(rows, 128)
        torch.testing.assert_close(genai_fast.geglu(x), genai_fast.geglu_reference(x), rtol=2e-6, atol=2e-6)
        assert OPS["geglu"].last_backend == expected
    assert calls == [(8, 64, "none")]
    genai_fast.geglu(torch.randn(8, 128), "tanh")  # another approximation: timed apart
    assert calls[-1] == (8, 64, "tanh") and len(calls) == 2
    genai_fast.geglu(torch.randn(8, 128), backend="cpp")  # forcing skips the race
    assert OPS["geglu"].last_backend == "cpp" and len(calls) == 2


@pytest.mark.skipif(bool(backend_unavailable_reasons("cpp")), reason="needs the C++ extension")
def test_cpu_race_times_both():
    import importlib

    timings = importlib.import_module("genai_fast.ops.geglu")._time_both(4, 96, "none")
    assert set(timings) == {"cpp", "torch"} and all(0 < t < 10_000 for t in timings.values())


@pytest.mark.parametrize("args, error, message", [
    (lambda: (torch.randn(2, 5),), ValueError, r"x: expected a tensor \[\*, 2H\] with an even"),
    (lambda: (torch.randn(2, 0),), ValueError, "x: expected a tensor"),
    (lambda: (torch.randn(2, 4), "exact"), ValueError, "approximate: expected 'none' or 'tanh'"),
    (lambda: (torch.randint(0, 3, (2, 4)),), TypeError, "x: expected dtype"),
    (lambda: ([1.0, 2.0],), TypeError, "x: expected a torch.Tensor"),
    (lambda: (torch.randn(2, 4), "none", "cuda-please"), ValueError, "backend"),
], ids=["odd-width", "empty-width", "unknown-approximation", "int-x", "list", "unknown-backend"])
def test_bad_input(args, error, message):
    a = args()
    with pytest.raises(error, match=message):
        genai_fast.geglu(a[0], *a[1:2], **({"backend": a[2]} if len(a) > 2 else {}))


def test_cpp_entry_point_validates_sizes():
    _require("cpp")
    from genai_fast.backends.cpp import extension

    ext = extension()
    x, out = torch.randn(2, 8), torch.empty(2, 4)
    args = dict(x=x.data_ptr(), x_numel=16, x_row_stride=8, out=out.data_ptr(), out_numel=8, rows=2, H=4,
                tanh=False, num_threads=1)
    ext.geglu_forward(**args)
    torch.testing.assert_close(out, genai_fast.geglu_reference(x))
    for key, value, message in [("x_numel", 15, "x: buffer of 15"), ("out_numel", 9, "out: expected 8"),
                                ("x_row_stride", 7, "row stride 7 is below 2H=8"), ("rows", 0, "expected a non-empty"),
                                ("H", 0, "expected a non-empty"), ("num_threads", 0, "num_threads")]:
        with pytest.raises(ValueError, match=message):
            ext.geglu_forward(**{**args, key: value})


def test_autograd_opcheck_and_compile():
    x = torch.randn(3, 24, requires_grad=True)
    genai_fast.geglu(x).square().sum().backward()
    grad = x.grad.clone()
    x.grad = None
    genai_fast.geglu_reference(x).square().sum().backward()
    torch.testing.assert_close(grad, x.grad)
    xd = torch.randn(2, 1, 6, dtype=torch.float64, requires_grad=True)
    op = torch.ops.genai_fast.geglu
    for approximate in APPROX:
        assert torch.autograd.gradcheck(lambda a, approximate=approximate: op(a, approximate, ""), (xd,))
        torch.library.opcheck(torch.ops.genai_fast.geglu.default, (torch.randn(4, 24), approximate, ""))
    compiled = torch.compile(lambda a: genai_fast.geglu(a, "tanh").relu(), fullgraph=True)
    a = torch.randn(4, 24)
    torch.testing.assert_close(compiled(a), F.relu(genai_fast.geglu_reference(a, "tanh")))
