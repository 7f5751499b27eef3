"""genai_fast.gguf_linear and gguf_dequantize: the expansion of GGUF blocks is bitwise the gguf package's (torch
reference and C++ kernel), the C++ kernel against the float64 oracle (tolerance rule, NaN poisoning, guard
bytes, strides), dispatch, bad input, the entry point's size checks, autograd, opcheck and torch.compile; and the
fast GGUF tensor-table reader against the gguf package's."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS, BackendNotSupportedError
from genai_fast.ops.gguf_linear import BLOCK_FORMATS, gguf_dequantize
from genai_fast.testing import assert_matches_oracle

gguf = pytest.importorskip("gguf", reason="the gguf package is the oracle for the block formats")

needs_cpp = pytest.mark.skipif(bool(backend_unavailable_reasons("cpp")),
                               reason="; ".join(backend_unavailable_reasons("cpp")) or "cpp available")
TYPES = list(BLOCK_FORMATS)
# (rows, K, N): one row, the specialised row counts, the two-pass 9-16, one block per row, N not a multiple of
# the 4- and 2-row blocks, SmolLM2's shapes.
SHAPES = {
    "1x576x960": (1, 576, 960),
    "2x32x5": (2, 32, 5),
    "3x64x3": (3, 64, 3),
    "5x96x17": (5, 96, 17),
    "8x1536x67": (8, 1536, 67),
    "9x64x31": (9, 64, 31),
    "16x128x130": (16, 128, 130),
}


def random_blocks(N: int, K: int, block_type: str, seed: int = 0) -> torch.Tensor:
    """[N, K / 32 * block bytes] uint8 blocks: random quants, fp16 scales of either sign around 0.02 (a few
    subnormal), Q4_1 minimums around -0.1."""
    fmt, rng = BLOCK_FORMATS[block_type], np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(N, K // 32, fmt.block_bytes), dtype=np.uint8)
    scales = (rng.standard_normal((N, K // 32)) * 0.02).astype(np.float16)
    scales.flat[::7] = np.float16(3e-7)  # subnormal in fp16
    raw[..., 0:2] = scales.view(np.uint8).reshape(N, K // 32, 2)
    if block_type == "Q4_1":
        mins = (rng.standard_normal((N, K // 32)) * 0.05 - 0.1).astype(np.float16)
        raw[..., 2:4] = mins.view(np.uint8).reshape(N, K // 32, 2)
    return torch.from_numpy(raw.reshape(N, -1))


def _gguf_type(block_type):
    return getattr(gguf.GGMLQuantizationType, block_type)


@pytest.mark.parametrize("block_type", TYPES)
def test_dequantize_is_bitwise_the_gguf_package(block_type):
    blocks = random_blocks(37, 576, block_type)
    expected = gguf.quants.dequantize(blocks.numpy(), _gguf_type(block_type)).view(np.int32)
    assert np.array_equal(gguf_dequantize(blocks, block_type).numpy().view(np.int32), expected)
    if not backend_unavailable_reasons("cpp"):
        from genai_fast.backends.cpp.gguf_linear import gguf_dequantize_cpp

        with memory.poison_outputs():
            expanded = gguf_dequantize_cpp(blocks, BLOCK_FORMATS[block_type].code, 576, num_threads=2)
        assert np.array_equal(expanded.numpy().view(np.int32), expected)  # the kernel's own expansion


def _check(x, blocks, block_type, bias, what):
    with memory.poison_outputs():
        out = genai_fast.gguf_linear(x, blocks, block_type, bias, backend="cpp")
    assert out.shape == (*x.shape[:-1], blocks.shape[0]) and out.dtype == torch.float32
    w = gguf_dequantize(blocks, block_type)
    oracle = F.linear(x.double(), w.double(), None if bias is None else bias.double())
    assert_matches_oracle(out, oracle, F.linear(x, w, bias), what=what)
    return out


@needs_cpp
@pytest.mark.parametrize("block_type", TYPES)
@pytest.mark.parametrize("case", SHAPES.keys())
def test_cpp_matches_reference(case, block_type):
    M, K, N = SHAPES[case]
    bias = torch.randn(N) if M % 2 else None
    _check(torch.randn(M, K), random_blocks(N, K, block_type, seed=M), block_type, bias,
           f"gguf_linear[cpp] {block_type} {case}")


@needs_cpp
def test_leading_dimensions_and_strides():
    blocks, b = random_blocks(12, 64, "Q4_1"), torch.randn(12)
    _check(torch.randn(3, 1, 64), blocks, "Q4_1", b, "decode [B, 1, K]")
    _check(torch.randn(64), blocks, "Q4_1", b, "1-D x")
    _check(torch.randn(5, 100)[:, 10:74], blocks, "Q4_1", b, "rows 100 apart")
    _check(torch.randn(64, 5).t(), blocks, "Q4_1", b, "transposed x (copied to rows)")
    _check(torch.randn(1, 64).expand(3, 64), blocks, "Q4_1", b, "expanded rows, stride 0 (copied)")


@needs_cpp
@pytest.mark.parametrize("block_type", TYPES)
def test_no_out_of_bounds_reads(block_type):
    """Blocks sit between guard bytes 0xFF (an fp16 NaN scale, were a block read there), x and bias between NaNs
    and with NaN columns between x's rows: any read past them poisons the output."""
    M, K, N, pad = 6, 96, 11, 256
    blocks = random_blocks(N, K, block_type)
    storage = torch.full((blocks.numel() + 2 * pad,), 255, dtype=torch.uint8)
    storage[pad:pad + blocks.numel()] = blocks.flatten()
    guarded_blocks = storage[pad:pad + blocks.numel()].view(blocks.shape)
    bias_storage = torch.full((N + 2 * pad,), float("nan"))
    bias_storage[pad:pad + N] = torch.randn(N)
    rows = torch.full((M + 1, K + 5), float("nan"))
    rows[:M, :K] = torch.randn(M, K)
    out = _check(rows[:M, :K], guarded_blocks, block_type, bias_storage[pad:pad + N], "guarded")
    assert torch.isfinite(out).all()


@needs_cpp
def test_cpp_is_deterministic_and_thread_count_free():
    x, blocks = torch.randn(8, 576), random_blocks(3000, 576, "Q4_1")
    first = genai_fast.gguf_linear(x, blocks, "Q4_1", backend="cpp")
    assert torch.equal(first, genai_fast.gguf_linear(x, blocks, "Q4_1", backend="cpp"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = genai_fast.gguf_linear(x, blocks, "Q4_1", backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, one)  # threads split output rows, never a sum


@needs_cpp
def test_dispatch_and_resolve(monkeypatch):
    from genai_fast.ops.gguf_linear import resolve_gguf_linear

    blocks = random_blocks(8, 64, "Q8_0")
    genai_fast.gguf_linear(torch.randn(16, 64), blocks, "Q8_0")
    assert OPS["gguf_linear"].last_backend == "cpp"
    out = genai_fast.gguf_linear(torch.randn(17, 64), blocks, "Q8_0")
    assert OPS["gguf_linear"].last_backend == "torch" and out.shape == (17, 8)
    genai_fast.gguf_linear(torch.randn(2, 64).double(), blocks, "Q8_0")
    assert OPS["gguf_linear"].last_backend == "torch"
    with pytest.raises(BackendNotSupportedError, match="17 rows: the kernel takes 1 to 16"):
        genai_fast.gguf_linear(torch.randn(17, 64), blocks, "Q8_0", backend="cpp")
    wide = random_blocks(8, 128, "Q8_0")
    with pytest.raises(BackendNotSupportedError, match="blocks are not contiguous"):
        genai_fast.gguf_linear(torch.randn(2, 64), wide[:, :68], "Q8_0", backend="cpp")
    run = resolve_gguf_linear(4)
    x = torch.randn(4, 64)
    assert run.own_threads and torch.equal(run(x, blocks, "Q8_0", None), genai_fast.gguf_linear(x, blocks, "Q8_0"))
    assert resolve_gguf_linear(17) is None  # the reference would expand the matrix every call
    monkeypatch.setenv("GENAI_FAST_BACKEND", "torch")
    assert resolve_gguf_linear(4) is None


def test_torch_backend_and_low_precision():
    blocks, b = random_blocks(6, 64, "Q4_0"), torch.randn(6)
    x = torch.randn(3, 64)
    w = gguf_dequantize(blocks, "Q4_0")
    torch.testing.assert_close(genai_fast.gguf_linear(x, blocks, "Q4_0", b, backend="torch"), F.linear(x, w, b))
    xh = x.bfloat16()
    torch.testing.assert_close(genai_fast.gguf_linear(xh, blocks, "Q4_0"), F.linear(xh, w.bfloat16()))


@pytest.mark.parametrize("args, error, message", [
    (lambda b: (torch.randn(2, 32), b, "Q5_K", None), ValueError, "block_type: expected one of Q4_0, Q4_1, Q8_0"),
    (lambda b: (torch.randn(2, 64), b, "Q4_1", None), ValueError, "blocks: expected 2 Q4_1 blocks of 20 bytes"),
    (lambda b: (torch.randn(2, 32), b[:, :19], "Q4_1", None), ValueError, "got 19 bytes"),
    (lambda b: (torch.randn(2, 32), b.float(), "Q4_1", None), ValueError, "blocks: expected a 2-D uint8 tensor"),
    (lambda b: (torch.randn(2, 32), b, "Q4_1", torch.randn(4)), ValueError, r"bias: expected shape \(3,\)"),
    (lambda b: (torch.randn(2, 32), b, "Q4_1", torch.randn(3).double()), TypeError, "bias: expected x's dtype"),
    (lambda b: (torch.randint(0, 3, (2, 32)), b, "Q4_1", None), TypeError, "x: expected dtype"),
    (lambda b: ([1.0], b, "Q4_1", None), TypeError, "x: expected a torch.Tensor"),
], ids=["unknown-type", "k-mismatch", "partial-block", "float-blocks", "bias-shape", "bias-dtype", "int-x", "list"])
def test_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        genai_fast.gguf_linear(*args(random_blocks(3, 32, "Q4_1")))


@needs_cpp
def test_cpp_entry_point_validates_sizes():
    """The extension checks every size against the buffer extents before touching memory."""
    from genai_fast.backends.cpp import extension

    ext = extension()
    x, blocks, out = torch.randn(2, 64), random_blocks(4, 64, "Q4_1"), torch.empty(2, 4)
    args = dict(x=x.data_ptr(), x_numel=128, x_row_stride=64, blocks=blocks.data_ptr(), blocks_bytes=160,
                block_type=1, bias=0, bias_numel=0, out=out.data_ptr(), out_numel=8, M=2, K=64, N=4, num_threads=1)
    ext.gguf_linear_forward(**args)
    torch.testing.assert_close(out, x @ gguf_dequantize(blocks, "Q4_1").t())
    for key, value, message in [("M", 17, "x: expected 1 to 16 rows"), ("x_numel", 127, "x: buffer of 127"),
                                ("blocks_bytes", 159, "blocks: expected 160 bytes"),
                                ("block_type", 0, "blocks: expected 144 bytes"),
                                ("block_type", 3, "block_type code: expected 0"),
                                ("K", 48, "K to be a multiple of 32"), ("out_numel", 9, "out: expected 8 elements"),
                                ("x_row_stride", 63, "row stride 63"), ("bias", x.data_ptr(), "bias: expected 4")]:
        with pytest.raises(ValueError, match=message):
            ext.gguf_linear_forward(**{**args, key: value})


@needs_cpp
def test_autograd_opcheck_and_compile():
    blocks, b = random_blocks(10, 64, "Q4_1"), torch.randn(10, requires_grad=True)
    w = gguf_dequantize(blocks, "Q4_1")
    x = torch.randn(3, 64, requires_grad=True)
    genai_fast.gguf_linear(x, blocks, "Q4_1", b).square().sum().backward()
    grads = [x.grad.clone(), b.grad.clone()]
    x.grad = b.grad = None
    F.linear(x, w, b).square().sum().backward()
    torch.testing.assert_close(grads[0], x.grad)
    torch.testing.assert_close(grads[1], b.grad)
    xd = torch.randn(2, 1, 64, dtype=torch.float64, requires_grad=True)
    bd = torch.randn(10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: torch.ops.genai_fast.gguf_linear(a, blocks, "Q4_1", c, ""), (xd, bd))
    torch.library.opcheck(torch.ops.genai_fast.gguf_linear.default, (torch.randn(4, 64), blocks, "Q4_1",
                                                                     torch.randn(10), ""))
    torch.library.opcheck(torch.ops.genai_fast.gguf_linear.default, (torch.randn(2, 3, 64), blocks, "Q4_1", None, ""))
    compiled = torch.compile(lambda a: genai_fast.gguf_linear(a, blocks, "Q4_1").relu(), fullgraph=True)
    a = torch.randn(4, 64)
    torch.testing.assert_close(compiled(a), F.linear(a, w).relu())


# ---------------------------------------------------------------- the GGUF tensor-table reader


def write_gguf(path, tensors: dict[str, tuple[torch.Tensor, str]], metadata_strings: int = 50) -> None:
    """A GGUF file with `tensors` (name -> (blocks [N, row bytes], block type)), a float tensor, and metadata of
    every kind the reader skips (a string array as long as a tokenizer's, numbers, a bool)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(metadata_strings)])
    writer.add_uint32("test.count", 7)
    writer.add_float32("test.eps", 1e-5)
    writer.add_bool("test.flag", True)
    writer.add_string("general.name", "test")
    writer.add_tensor("norm.weight", np.ones(64, dtype=np.float32))
    for name, (blocks, block_type) in tensors.items():
        writer.add_tensor(name, blocks.numpy(), raw_dtype=_gguf_type(block_type))  # shape in bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_reader_matches_the_gguf_package(tmp_path):
    from genai_fast.llm.gguf_file import read_block_tensors

    tensors = {f"t.{t}": (random_blocks(5 + i, 64 * (i + 1), t, seed=i), t) for i, t in enumerate(TYPES)}
    path = tmp_path / "m.gguf"
    write_gguf(path, tensors, metadata_strings=3000)
    found = {t.name: t for t in read_block_tensors(path)}
    assert set(found) == set(tensors)  # the fp32 tensor is skipped
    for name, (blocks, block_type) in tensors.items():
        assert found[name].block_type == block_type and np.array_equal(found[name].data, blocks.numpy())
    reference = {t.name: t for t in gguf.GGUFReader(path).tensors}
    for name, t in found.items():
        assert np.array_equal(t.data, reference[name].data)


def test_reader_rejects_truncated_and_foreign_files(tmp_path):
    from genai_fast.llm.gguf_file import read_block_tensors

    path = tmp_path / "m.gguf"
    write_gguf(path, {"w": (random_blocks(64, 64, "Q8_0"), "Q8_0")})
    data = path.read_bytes()
    for cut, message in [(len(data) - 100, "tensor w runs past the end"), (200, "truncated GGUF file"),
                         (10, "truncated GGUF file")]:
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ValueError, match=message):
            read_block_tensors(tmp_path / "cut.gguf")
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ValueError, match="not a GGUF v2/v3 file"):
        read_block_tensors(tmp_path / "x.gguf")


@needs_cpp
@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_other_instruction_set_builds(isa):
    """The AVX2 and baseline builds of the kernel (this machine runs the AVX-512 one), in a subprocess with
    GENAI_FAST_CPU_ISA capping the choice: bitwise expansion and the oracle, for every block type."""
    from tests.isa import run_with_isa

    script = """
import numpy as np, torch, gguf, genai_fast
from genai_fast.backends.cpp import extension
from genai_fast.backends.cpp.gguf_linear import gguf_dequantize_cpp
from genai_fast.ops.gguf_linear import BLOCK_FORMATS
from genai_fast.testing import assert_matches_oracle
from tests.test_gguf_linear import random_blocks
import torch.nn.functional as F
print(extension().gguf_linear_isa())
for t in BLOCK_FORMATS:
    blocks = random_blocks(37, 96, t)
    want = gguf.quants.dequantize(blocks.numpy(), getattr(gguf.GGMLQuantizationType, t)).view(np.int32)
    assert np.array_equal(gguf_dequantize_cpp(blocks, BLOCK_FORMATS[t].code, 96).numpy().view(np.int32), want), t
    for M in (1, 5, 9):
        x = torch.randn(M, 96)
        w = torch.from_numpy(want.view(np.float32))
        out = genai_fast.gguf_linear(x, blocks, t, backend="cpp")
        assert_matches_oracle(out, F.linear(x.double(), w.double()), F.linear(x, w), what=t)
print("ok")
"""
    ran, result = run_with_isa(script, isa)
    if ran != isa and isa == "avx2":
        pytest.skip("this CPU has no AVX2: the AVX2 build cannot run here")
    assert ran == isa and result == "ok"
