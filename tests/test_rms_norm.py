"""genai_fast.rms_norm: the C++ kernel against the float64 reference (tolerance rule, NaN poisoning, guard
regions, strides), HF's LlamaRMSNorm as the reference, dispatch, bad input, the entry point's size checks,
autograd, opcheck and torch.compile."""

import pytest
import torch

import genai_fast
from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS, BackendNotSupportedError
from genai_fast.testing import assert_matches_oracle

needs_cpp = pytest.mark.skipif(bool(backend_unavailable_reasons("cpp")),
                               reason="; ".join(backend_unavailable_reasons("cpp")) or "cpp available")
# (rows, D): one row, a decode batch at SmolLM2's width, D below 16 and not a multiple of 16 (scalar tail),
# a single value, many rows (threads).
SHAPES = {"1x576": (1, 576), "8x576": (8, 576), "3x7": (3, 7), "5x100": (5, 100), "1x1": (1, 1),
          "300x960": (300, 960)}


def _check(x, weight, eps, what, backend="cpp"):
    with memory.poison_outputs():
        out = genai_fast.rms_norm(x, weight, eps, backend=backend)
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    oracle = genai_fast.rms_norm_reference(x.double(), None if weight is None else weight.double(), eps)
    assert_matches_oracle(out, oracle, genai_fast.rms_norm_reference(x, weight, eps), what=what)
    return out


@needs_cpp
@pytest.mark.parametrize("weight", [True, False], ids=["weight", "no-weight"])
@pytest.mark.parametrize("case", SHAPES.keys())
def test_cpp_matches_reference(case, weight):
    R, D = SHAPES[case]
    x = torch.randn(R, D) * 3
    _check(x, torch.randn(D) if weight else None, 1e-5, f"rms_norm[cpp] {case}")


@needs_cpp
def test_leading_dimensions_strides_and_tiny_values():
    w = torch.randn(40)
    _check(torch.randn(2, 3, 40), w, 1e-6, "[2, 3, D]")
    _check(torch.randn(40), w, 1e-6, "1-D x")
    _check(torch.randn(5, 64)[:, 10:50], w, 1e-6, "rows 64 apart")
    _check(torch.randn(40, 5).t(), w, 1e-6, "transposed x (copied to rows)")
    _check(torch.randn(1, 40).expand(3, 40), w, 1e-6, "expanded rows, stride 0 (copied)")
    _check(torch.randn(4, 40) * 1e-4, w, 1e-6, "values where eps matters")
    out = _check(torch.zeros(2, 40), w, 1e-6, "zeros")
    assert torch.equal(out, torch.zeros(2, 40))


@needs_cpp
def test_no_out_of_bounds_reads():
    R, D, pad = 6, 37, 64
    rows = torch.full((R + 1, D + 5), float("nan"))  # NaN columns between the rows, a NaN row after
    rows[:R, :D] = torch.randn(R, D)
    storage = torch.full((D + 2 * pad,), float("nan"))
    storage[pad:pad + D] = torch.randn(D)
    out = _check(rows[:R, :D], storage[pad:pad + D], 1e-6, "guarded")
    assert torch.isfinite(out).all()


needs_triton = pytest.mark.skipif(bool(backend_unavailable_reasons("triton")),
                                  reason="; ".join(backend_unavailable_reasons("triton")) or "triton available")
TRITON_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@needs_triton
@pytest.mark.parametrize("dtype", TRITON_DTYPES.values(), ids=TRITON_DTYPES.keys())
@pytest.mark.parametrize("case", ["1x576", "3x7", "1x1", "5x100"])
def test_triton_matches_reference(case, dtype):
    """The Triton kernel (under the interpreter here) against float64: with and without a weight, and its
    rows read in place at a padded stride or copied from a transposed view; NaN rows stay in their row."""
    R, D = SHAPES[case]
    x = (torch.randn(R, D) * 3).to(dtype)
    w = torch.randn(D).to(dtype)
    _check(x, w, 1e-5, f"rms_norm[triton] {case} {dtype}", "triton")
    _check(x, None, 1e-5, f"rms_norm[triton] {case} {dtype} no weight", "triton")
    _check((torch.randn(R, D + 9) * 3).to(dtype)[:, 4:4 + D], w, 1e-6, f"{case} rows {D + 9} apart", "triton")
    _check(torch.randn(D, R).to(dtype).t(), w, 1e-6, f"{case} transposed", "triton")
    poisoned = x.clone()
    poisoned[0, 0] = float("nan")
    out = genai_fast.rms_norm(poisoned, w, 1e-5, backend="triton")
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1:]).all()


@needs_triton
def test_triton_keeps_hf_rounding_and_its_limits():
    """fp16: the normalised row is rounded to fp16 before the weight scales it, as HF's LlamaRMSNorm does;
    rows longer than the kernel's register tile fall back to torch under automatic dispatch."""
    from genai_fast.kernels.rms_norm import MAX_D

    x, w = torch.randn(4, 96).half(), torch.randn(96).half()
    hf = w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).half()
    ours = genai_fast.rms_norm(x, w, 1e-5, backend="triton")
    assert (ours.float() - hf.float()).abs().max() <= 2 * torch.finfo(torch.float16).eps * hf.float().abs().max()
    with pytest.raises(BackendNotSupportedError, match=f"exceed the kernel's {MAX_D}"):
        genai_fast.rms_norm(torch.randn(1, MAX_D + 1), backend="triton")
    assert genai_fast.rms_norm(torch.randn(0, 8), backend="triton").shape == (0, 8)


@needs_cpp
def test_matches_hf_llama_rms_norm_and_rows_are_independent():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(96, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96))
    x = torch.randn(8, 96)
    ours = genai_fast.rms_norm(x, norm.weight.detach(), 1e-5, backend="cpp")
    torch.testing.assert_close(ours, norm(x).detach(), rtol=2e-6, atol=2e-6)
    # A row's result does not depend on the other rows (decode batches equal one-by-one generation).
    assert torch.equal(ours[3:4], genai_fast.rms_norm(x[3:4], norm.weight.detach(), 1e-5, backend="cpp"))
    assert transformers is not None


@needs_cpp
def test_dispatch_and_resolve(monkeypatch):
    from genai_fast.ops.rms_norm import resolve_rms_norm

    x, w = torch.randn(2, 16), torch.randn(16)
    genai_fast.rms_norm(x, w)
    assert OPS["rms_norm"].last_backend == "cpp"
    genai_fast.rms_norm(x.double(), w.double())
    assert OPS["rms_norm"].last_backend == "torch"
    with pytest.raises(BackendNotSupportedError, match="weight is not contiguous"):
        genai_fast.rms_norm(x, torch.randn(16, 2)[:, 0], backend="cpp")
    run = resolve_rms_norm()
    assert torch.equal(run(x, w, 1e-6), genai_fast.rms_norm(x, w))
    monkeypatch.setenv("GENAI_FAST_BACKEND", "torch")
    assert resolve_rms_norm() is None


def test_torch_backend_and_low_precision():
    x, w = torch.randn(3, 20), torch.randn(20)
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(genai_fast.rms_norm(x, w, backend="torch"), w * h)
    xh, wh = x.bfloat16(), w.bfloat16()
    torch.testing.assert_close(genai_fast.rms_norm(xh, wh), wh * h.bfloat16())


@pytest.mark.parametrize("args, error, message", [
    (lambda: (torch.randn(2, 5), torch.randn(4), 1e-6), ValueError, r"weight: expected shape \(5,\)"),
    (lambda: (torch.randn(2, 5), torch.randn(5).double(), 1e-6), TypeError, "weight: expected x's dtype"),
    (lambda: (torch.randn(2, 5), None, -1.0), ValueError, "eps: expected a number >= 0"),
    (lambda: (torch.randint(0, 3, (2, 5)), None, 1e-6), TypeError, "x: expected dtype"),
    (lambda: (torch.randn(2, 0), None, 1e-6), ValueError, "x: expected a tensor"),
    (lambda: ([1.0], None, 1e-6), TypeError, "x: expected a torch.Tensor"),
], ids=["weight-shape", "weight-dtype", "negative-eps", "int-x", "empty-d", "list"])
def test_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        genai_fast.rms_norm(*args())


@needs_cpp
def test_cpp_entry_point_validates_sizes():
    from genai_fast.backends.cpp import extension

    ext = extension()
    x, w, out = torch.randn(2, 8), torch.randn(8), torch.empty(2, 8)
    args = dict(x=x.data_ptr(), x_numel=16, x_row_stride=8, weight=w.data_ptr(), weight_numel=8,
                out=out.data_ptr(), out_numel=16, rows=2, D=8, eps=1e-6, num_threads=1)
    ext.rms_norm_forward(**args)
    torch.testing.assert_close(out, genai_fast.rms_norm_reference(x, w))
    for key, value, message in [("x_numel", 15, "x: buffer of 15"), ("weight_numel", 7, "weight: expected 8"),
                                ("out_numel", 17, "out: expected 16"), ("x_row_stride", 7, "row stride 7"),
                                ("rows", 0, "expected a non-empty"), ("eps", -1.0, "eps: expected >= 0")]:
        with pytest.raises(ValueError, match=message):
            ext.rms_norm_forward(**{**args, key: value})


@needs_cpp
def test_autograd_opcheck_and_compile():
    x = torch.randn(3, 24, requires_grad=True)
    w = torch.randn(24, requires_grad=True)
    genai_fast.rms_norm(x, w, 1e-5).square().sum().backward()
    grads = [x.grad.clone(), w.grad.clone()]
    x.grad = w.grad = None
    genai_fast.rms_norm_reference(x, w, 1e-5).square().sum().backward()
    torch.testing.assert_close(grads[0], x.grad)
    torch.testing.assert_close(grads[1], w.grad)
    xd = torch.randn(2, 1, 6, dtype=torch.float64, requires_grad=True)
    wd = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.genai_fast.rms_norm(a, b, 1e-5, ""), (xd, wd))
    torch.library.opcheck(torch.ops.genai_fast.rms_norm.default, (torch.randn(4, 24), torch.randn(24), 1e-5, ""))
    torch.library.opcheck(torch.ops.genai_fast.rms_norm.default, (torch.randn(2, 3, 24), None, 1e-5, ""))
    compiled = torch.compile(lambda a, b: genai_fast.rms_norm(a, b).relu(), fullgraph=True)
    a, b = torch.randn(4, 24), torch.randn(24)
    torch.testing.assert_close(compiled(a, b), genai_fast.rms_norm_reference(a, b).relu())
