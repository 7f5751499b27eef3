"""genai_fast.linear: the C++ decode kernel against the float64 reference (tolerance rule, NaN poisoning,
guard regions, strides), dispatch by row count, bad input, autograd, opcheck and torch.compile."""

import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS, BackendNotSupportedError
from genai_fast.ops.plans import EagerPlans
from genai_fast.testing import assert_matches_oracle

needs_cpp = pytest.mark.skipif(bool(backend_unavailable_reasons("cpp")),
                               reason="; ".join(backend_unavailable_reasons("cpp")) or "cpp available")

# (rows, K, N): one row, every row count the kernel specialises (1-8) and the two-pass 9-16, K not a
# multiple of 16 (scalar tail) or below 16, N not a multiple of the 4-row blocks, SmolLM2's shapes.
SHAPES = {
    "1x576x960": (1, 576, 960),
    "2x7x5": (2, 7, 5),
    "3x16x3": (3, 16, 3),
    "4x33x9": (4, 33, 9),
    "5x100x17": (5, 100, 17),
    "7x1x6": (7, 1, 6),
    "8x1536x576": (8, 1536, 576),
    "9x577x31": (9, 577, 31),
    "16x64x130": (16, 64, 130),
}


def _check(x, weight, bias, what):
    with memory.poison_outputs():
        out = genai_fast.linear(x, weight, bias, backend="cpp")
    assert out.shape == (*x.shape[:-1], weight.shape[0]) and out.dtype == torch.float32
    oracle = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    assert_matches_oracle(out, oracle, F.linear(x, weight, bias), what=what)
    return out


@needs_cpp
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("case", SHAPES.keys())
def test_cpp_matches_reference(case, bias):
    M, K, N = SHAPES[case]
    x, w = torch.randn(M, K), torch.randn(N, K)
    _check(x, w, torch.randn(N) if bias else None, f"linear[cpp] {case}")


@needs_cpp
def test_leading_dimensions_and_strides():
    w, b = torch.randn(12, 40), torch.randn(12)
    _check(torch.randn(3, 1, 40), w, b, "decode [B, 1, K]")
    _check(torch.randn(2, 2, 2, 40), w, b, "[2, 2, 2, K]")
    _check(torch.randn(40), w, b, "1-D x")
    _check(torch.randn(5, 64)[:, 10:50], w, b, "rows 64 apart")  # a slice of a wider buffer
    _check(torch.randn(40, 5).t(), w, b, "transposed x (copied to rows)")
    _check(torch.randn(1, 40).expand(3, 40), w, b, "expanded rows, stride 0 (copied)")


@needs_cpp
def test_no_out_of_bounds_reads():
    """x, weight and bias sit inside NaN guard regions: any read past them poisons the output."""
    M, K, N, pad = 6, 37, 11, 64

    def guarded(*shape):
        numel = torch.Size(shape).numel()
        storage = torch.full((numel + 2 * pad,), float("nan"))
        storage[pad:pad + numel] = torch.randn(numel)
        return storage[pad:pad + numel].view(shape)

    rows = torch.full((M, K + 5), float("nan"))  # NaN columns between the rows
    rows[:, :K] = torch.randn(M, K)
    out = _check(rows[:, :K], guarded(N, K), guarded(N), "guarded")
    assert torch.isfinite(out).all()


@needs_cpp
def test_cpp_is_deterministic_and_thread_count_free():
    x, w = torch.randn(8, 576), torch.randn(3000, 576)
    first = genai_fast.linear(x, w, backend="cpp")
    assert torch.equal(first, genai_fast.linear(x, w, backend="cpp"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = genai_fast.linear(x, w, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, one)  # threads split output rows, never a sum


@needs_cpp
def test_rows_do_not_depend_on_the_blocks(tmp_path):
    """Each output row is the same sum whatever the row count (so a batch equals one-by-one decoding) and whatever
    the register blocking: AVX-512's wide blocks and the narrow ones of AVX2 hosts (GENAI_FAST_CPU_ISA=avx2 forces
    them) give the same bits."""
    from tests.isa import run_with_isa

    torch.manual_seed(0)
    x, w, b = torch.randn(16, 331), torch.randn(67, 331), torch.randn(67)
    outputs = [genai_fast.linear(x[:m], w, b, backend="cpp") for m in range(1, 17)]
    for m, out in enumerate(outputs, start=1):
        assert torch.equal(out, outputs[-1][:m]), m
    torch.save({"x": x, "w": w, "b": b, "out": outputs[-1]}, tmp_path / "case.pt")
    script = f"""
import torch, genai_fast
case = torch.load({str(tmp_path / "case.pt")!r})
print(all(torch.equal(genai_fast.linear(case["x"][:m], case["w"], case["b"], backend="cpp"), case["out"][:m])
          for m in range(1, 17)))
"""
    assert run_with_isa(script, "avx2") == ["True"]


@needs_cpp
def test_dispatch_by_rows_dtype_and_layout():
    w = torch.randn(8, 16)
    genai_fast.linear(torch.randn(16, 16), w)
    assert OPS["linear"].last_backend == "cpp"
    genai_fast.linear(torch.randn(17, 16), w)
    assert OPS["linear"].last_backend == "torch"
    genai_fast.linear(torch.randn(2, 16).double(), w.double())
    assert OPS["linear"].last_backend == "torch"
    with pytest.raises(BackendNotSupportedError, match="17 rows: the kernel takes 1 to 16"):
        genai_fast.linear(torch.randn(17, 16), w, backend="cpp")
    with pytest.raises(BackendNotSupportedError, match="weight is not contiguous"):
        genai_fast.linear(torch.randn(2, 16), torch.randn(16, 8).t(), backend="cpp")
    assert genai_fast.linear(torch.randn(0, 16), w).shape == (0, 8)  # no rows: torch's empty result


def test_torch_backend_and_low_precision():
    x, w, b = torch.randn(3, 20), torch.randn(6, 20), torch.randn(6)
    torch.testing.assert_close(genai_fast.linear(x, w, b, backend="torch"), F.linear(x, w, b))
    xh, wh = x.bfloat16(), w.bfloat16()
    torch.testing.assert_close(genai_fast.linear(xh, wh), F.linear(xh, wh))


@pytest.mark.parametrize("args, error, message", [
    (lambda: (torch.randn(2, 5), torch.randn(3, 4), None), ValueError, "weight: expected K=5 columns"),
    (lambda: (torch.randn(2, 5), torch.randn(3, 5, 1), None), ValueError, "weight: expected a 2-D"),
    (lambda: (torch.randn(2, 5), torch.randn(3, 5), torch.randn(4)), ValueError, r"bias: expected shape \(3,\)"),
    (lambda: (torch.randn(2, 5), torch.randn(3, 5).double(), None), TypeError, "weight: expected x's dtype"),
    (lambda: (torch.randint(0, 3, (2, 5)), torch.randn(3, 5), None), TypeError, "x: expected dtype"),
    (lambda: (torch.tensor(1.0), torch.randn(3, 1), None), ValueError, "x: expected at least 1 dimension"),
    (lambda: ([1.0], torch.randn(3, 1), None), TypeError, "x: expected a torch.Tensor"),
], ids=["k-mismatch", "weight-3d", "bias-shape", "dtype-mismatch", "int-x", "0-d", "list"])
def test_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        genai_fast.linear(*args())


@needs_cpp
def test_cpp_entry_point_validates_sizes():
    """The extension checks every size against the buffer extents before touching memory."""
    from genai_fast.backends.cpp import extension

    ext = extension()
    x, w, out = torch.randn(2, 8), torch.randn(4, 8), torch.empty(2, 4)
    args = dict(x=x.data_ptr(), x_numel=16, x_row_stride=8, weight=w.data_ptr(), weight_numel=32, bias=0,
                bias_numel=0, out=out.data_ptr(), out_numel=8, M=2, K=8, N=4, num_threads=1)
    ext.skinny_linear_forward(**args)
    torch.testing.assert_close(out, x @ w.t())
    for key, value, message in [("M", 17, "x: expected 1 to 16 rows"), ("x_numel", 15, "x: buffer of 15"),
                                ("weight_numel", 31, "weight: expected 32 elements"),
                                ("out_numel", 9, "out: expected 8 elements"), ("x_row_stride", 7, "row stride 7"),
                                ("bias", w.data_ptr(), "bias: expected 4 elements")]:
        with pytest.raises(ValueError, match=message):
            ext.skinny_linear_forward(**{**args, key: value})


@needs_cpp
def test_autograd_opcheck_and_compile():
    x = torch.randn(3, 24, requires_grad=True)
    w = torch.randn(10, 24, requires_grad=True)
    b = torch.randn(10, requires_grad=True)
    genai_fast.linear(x, w, b).square().sum().backward()
    grads = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    F.linear(x, w, b).square().sum().backward()
    for got, t in zip(grads, (x, w, b), strict=True):
        torch.testing.assert_close(got, t.grad)
    xd, wd, bd = (torch.randn(2, 1, 6, dtype=torch.float64, requires_grad=True), torch.randn(4, 6, dtype=torch.float64,
                  requires_grad=True), torch.randn(4, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda a, c, d: torch.ops.genai_fast.linear(a, c, d, ""), (xd, wd, bd))
    torch.library.opcheck(torch.ops.genai_fast.linear.default, (torch.randn(4, 24), torch.randn(10, 24),
                                                                torch.randn(10), ""))
    torch.library.opcheck(torch.ops.genai_fast.linear.default, (torch.randn(2, 3, 24), torch.randn(10, 24), None, ""))
    compiled = torch.compile(lambda a, c: genai_fast.linear(a, c).relu(), fullgraph=True)
    a, c = torch.randn(4, 24), torch.randn(10, 24)
    torch.testing.assert_close(compiled(a, c), F.linear(a, c).relu())


@needs_cpp
def test_resolve_linear_picks_once_and_binds_threads(monkeypatch):
    from genai_fast.ops.linear import resolve_linear

    w = torch.randn(40, 24)
    fn = resolve_linear(8, w)
    assert getattr(fn, "own_threads", False) and fn.num_threads == torch.get_num_threads()
    x = torch.randn(8, 24)
    _check(x, w, None, "resolved")  # the same kernel as the op
    torch.testing.assert_close(fn(x, w, None), genai_fast.linear(x, w))
    assert not getattr(resolve_linear(17, w), "own_threads", False)  # BLAS beyond 16 rows
    monkeypatch.setenv("GENAI_FAST_BACKEND", "torch")
    assert not getattr(resolve_linear(8, w), "own_threads", False)


@needs_cpp
def test_pool_under_concurrent_callers_and_many_regions():
    """Python threads calling the kernel at once (the GIL is released) take turns in the pool; back-to-back
    regions (as in decode) all complete with the right values."""
    import threading

    w = torch.randn(2000, 96)
    xs = [torch.randn(4, 96) for _ in range(4)]
    expected = [F.linear(x.double(), w.double()) for x in xs]
    errors = []

    def worker(i):
        for _ in range(50):
            out = genai_fast.linear(xs[i], w, backend="cpp")
            if (out.double() - expected[i]).abs().max() > 1e-3:
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a caller hung in the pool"
    assert not errors


@needs_cpp
@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc/self/maps")
def test_cpp_kernels_share_torchs_openmp_runtime():
    """The extension is built with OpenMP (setup.py, where the compiler has it) and the process holds one
    library of soname libgomp.so.1, the one the extension and torch both bind to, so the kernels' parallel
    regions run on torch's worker threads. (Wheels such as scikit-learn's bundle renamed copies, with
    sonames of their own, that nothing of ours binds to.)"""
    from genai_fast.backends.cpp import extension
    from genai_fast.backends.cpp.linear import skinny_linear_fwd

    ext = extension()
    assert ext.built_with_openmp, "the C++ extension was built without OpenMP (see setup.py)"
    skinny_linear_fwd(torch.randn(4, 64), torch.randn(3000, 64), None, num_threads=2)
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libgomp" in line}
    runtimes = {path for path in paths if path.rsplit("/", 1)[-1].startswith("libgomp.so.1")}
    assert len(runtimes) == 1, f"more than one libgomp.so.1 is loaded: {sorted(runtimes)}"


@needs_cpp
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_forked_child_gets_a_fresh_pool():
    """A child forked after the parent's pool started (DataLoader workers do this) must not wait for the
    parent's threads, which do not exist in the child. The child sends its result through a pipe."""
    import os
    import select

    import numpy as np

    from genai_fast.backends.cpp.linear import skinny_linear_fwd

    w, x = torch.randn(3000, 128), torch.randn(8, 128)
    expected = skinny_linear_fwd(x, w, None, num_threads=2)  # the parent's pool is running
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: two threads for the kernel, torch's OpenMP pool untouched (unsafe after fork)
        try:
            os.close(read_end)
            os.write(write_end, skinny_linear_fwd(x, w, None, num_threads=2).numpy().tobytes())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    deadline = 60.0
    while len(data) < expected.numel() * 4:
        ready, _, _ = select.select([read_end], [], [], deadline)
        if not ready:
            os.kill(pid, 9)
            pytest.fail("the forked child hung in the kernel's thread pool")
        chunk = os.read(read_end, 1 << 20)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    got = torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy()).view(expected.shape)
    assert torch.equal(got, expected)


# ---------------------------------------------------------------- oneDNN for larger products (CPU)


@pytest.mark.parametrize("shape, bias, layout", [((17, 7, 5), False, "contiguous"), ((3, 40, 33), True, "contiguous"),
                                                 ((2, 9, 70, 48), True, "transposed")],
                         ids=["17x7x5", "3x40x33-bias", "2x9x70x48-strided"])
def test_onednn_matches_reference(shape, bias, layout):
    """The oneDNN path (rows as a 1x1 convolution's pixels) against the float64 reference: leading dims, K not a
    multiple of 16, a bias, and rows that are not contiguous (copied first)."""
    *lead, K, N = shape
    x = torch.randn(*lead, K)
    if layout == "transposed":
        x = torch.randn(*lead[:-1], K, lead[-1]).transpose(-1, -2)
    w, b = torch.randn(N, K), torch.randn(N) if bias else None
    with memory.poison_outputs():
        out = genai_fast.linear(x, w, b, backend="torch+onednn")
    assert OPS["linear"].last_backend == "torch+onednn" and out.shape == (*lead, N) and out.is_contiguous()
    oracle = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert_matches_oracle(out, oracle, F.linear(x, w, b), what=f"linear[torch+onednn] {shape}")


def test_onednn_gradients_match_torch():
    x, w, b = (torch.randn(20, 24, requires_grad=True), torch.randn(10, 24, requires_grad=True),
               torch.randn(10, requires_grad=True))
    got = torch.autograd.grad(genai_fast.linear(x, w, b, backend="torch+onednn").square().sum(), (x, w, b))
    want = torch.autograd.grad(F.linear(x, w, b).square().sum(), (x, w, b))
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("timings, expected", [({"torch": 2.0, "torch+onednn": 1.0}, "torch+onednn"),
                                               ({"torch": 1.0, "torch+onednn": 0.97}, "torch")])
def test_onednn_taken_only_where_timing_finds_it_faster(timings, expected, monkeypatch):
    """From ONEDNN_MIN_MACS multiply-adds the first call in each bucket of row counts (rounded up to a power of
    two) times BLAS and oneDNN, and oneDNN runs only when clearly faster; smaller products are not timed."""
    import importlib

    linear_module = importlib.import_module("genai_fast.ops.linear")
    calls = []
    monkeypatch.setattr(linear_module, "_RACES", {})
    monkeypatch.setattr(linear_module, "_PLANS", EagerPlans(OPS["linear"]))  # no choice replayed from elsewhere
    monkeypatch.setattr(linear_module, "_time_both", lambda *sizes: calls.append(sizes) or timings)
    w = torch.randn(512, 256)
    for rows in (50, 64, 33):  # one bucket: 64 rows, each over 4M multiply-adds
        x = torch.randn(rows, 256)
        torch.testing.assert_close(genai_fast.linear(x, w), F.linear(x, w))
        assert OPS["linear"].last_backend == expected
    assert calls == [(64, 256, 512, False)]
    genai_fast.linear(torch.randn(20, 256), torch.randn(64, 256))  # 327K multiply-adds: BLAS, untimed
    assert OPS["linear"].last_backend == "torch" and len(calls) == 1


def test_onednn_timing_runs_both():
    import importlib

    timings = importlib.import_module("genai_fast.ops.linear")._time_both(64, 96, 80, True)
    assert set(timings) == {"torch", "torch+onednn"} and all(0 < t < 10_000 for t in timings.values())
