"""The CUDA (NVRTC via CuPy) GroupNorm(+SiLU) backend against the float64 oracle, on a GPU; and its
launch plan's invariants, on any machine."""

import pytest
import torch

import genai_fast
from genai_fast.backends.availability import cupy_module
from genai_fast.backends.cuda.group_norm import THREADS, plan_group_norm
from genai_fast.ops.group_norm import group_norm_reference
from genai_fast.testing import error_stats
from tests.group_norm_cases import EPS, check_output, make_input

HAS_GPU = torch.cuda.is_available()
CUPY_MISSING = cupy_module()[1] if HAS_GPU else ""



def needs_cuda_backend(test):
    """Mark a test `gpu`, skipped without a CUDA GPU or without CuPy."""
    test = pytest.mark.skipif(bool(CUPY_MISSING), reason=f"needs CuPy: {CUPY_MISSING}")(test)
    test = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")(test)
    return pytest.mark.gpu(test)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# (shape, groups, layout)
CASES = {
    "1x320x64x64-g32": ((1, 320, 64, 64), 32, "contiguous"),
    "1x320x64x64-g32-channels_last": ((1, 320, 64, 64), 32, "channels_last"),
    "3d-2x32x7-g8": ((2, 32, 7), 8, "contiguous"),
    "3d-2x32x7-g8-channels_last": ((2, 32, 7), 8, "channels_last"),
    "1x4x1x1-g2": ((1, 4, 1, 1), 2, "contiguous"),
    "odd-3x6x13x17-g3": ((3, 6, 13, 17), 3, "contiguous"),
    "odd-3x6x13x17-g3-channels_last": ((3, 6, 13, 17), 3, "channels_last"),
    "2x1280x8x8-g32-channels_last": ((2, 1280, 8, 8), 32, "channels_last"),
    "1x64x97x89-g32-channels_last": ((1, 64, 97, 89), 32, "channels_last"),  # prime S, many chunks
    "1x1x5000-g1": ((1, 1, 5000), 1, "contiguous"),
}
VARIANTS = {"plain": (False, None), "affine-silu": (True, "silu")}



def check_cuda_backend(x, groups, affine, activation):
    out = check_output("cuda", x, groups, affine, activation)
    assert torch.isfinite(out).all(), "non-finite output (an element was not written?)"
    return out


@needs_cuda_backend
@pytest.mark.parametrize("variant", VARIANTS.keys())
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES.keys())
def test_cuda_group_norm_matches_oracle(case, dtype, variant):
    shape, groups, layout = CASES[case]
    affine, activation = VARIANTS[variant]
    check_cuda_backend(make_input(shape, layout, dtype, "cuda"), groups, affine, activation)


@needs_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("variant", ["affine", "silu"])
def test_cuda_group_norm_affine_or_silu_alone(dtype, variant):
    x = make_input((2, 64, 16, 16), "channels_last", dtype, "cuda")
    check_cuda_backend(x, 8, affine=variant == "affine", activation="silu" if variant == "silu" else None)


@needs_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layout", ["contiguous", "misaligned", "strided"])
def test_cuda_group_norm_scalar_and_copied_paths(layout, dtype):
    shape = (2, 48, 24, 24)
    x = make_input(shape, layout, dtype, "cuda", misaligned=layout == "misaligned")
    if layout == "misaligned":
        assert x.data_ptr() % 16 != 0
    check_cuda_backend(x, 16, affine=True, activation="silu")


@needs_cuda_backend
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=["fp32", "fp16", "bf16", "fp64"])
@pytest.mark.parametrize("strided", [False, True], ids=["dense", "strided"])
def test_cuda_group_norm_parameter_dtypes(param_dtype, strided):
    x = make_input((2, 64, 12, 12), "channels_last", torch.float32, "cuda")
    weight = torch.randn(128 if strided else 64, device="cuda", dtype=param_dtype)
    bias = torch.randn(128 if strided else 64, device="cuda", dtype=param_dtype)
    if strided:
        weight, bias = weight[::2], bias[::2]
    out = genai_fast.group_norm(x, 16, weight, bias, EPS, activation="silu", backend="cuda")
    oracle = group_norm_reference(x.double().cpu(), 16, weight.double().cpu(), bias.double().cpu(), EPS, "silu")
    got = error_stats(out, oracle)
    assert got.max_abs <= 1e-5 * float(oracle.abs().max()), f"{param_dtype} parameters: {got}"


@needs_cuda_backend
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_cuda_group_norm_is_deterministic(dtype, layout):
    x = make_input((1, 320, 64, 64), layout, dtype, "cuda")
    weight = torch.randn(320, device="cuda")
    bias = torch.randn(320, device="cuda")
    first = genai_fast.group_norm(x, 32, weight, bias, activation="silu", backend="cuda")
    second = genai_fast.group_norm(x, 32, weight, bias, activation="silu", backend="cuda")
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(first.view(bits), second.view(bits)), "two runs on the same input differ"


@needs_cuda_backend
def test_cuda_group_norm_runs_on_the_current_stream():
    x = make_input((2, 64, 32, 32), "channels_last", torch.float16, "cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = genai_fast.group_norm(x, 8, activation="silu", backend="cuda")
        expected = group_norm_reference(x, 8, activation="silu")
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert (out.float() - expected.float()).abs().max() < 2e-2


@needs_cuda_backend
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_group_norm_beyond_2_31_elements(layout):
    """64-bit indexing: more than 2**31 elements (4.3 GB of fp16), checked group by group against
    torch in fp32 on the GPU (the float64 CPU oracle would take minutes here)."""
    C, G = (32, 32) if layout == "contiguous" else (64, 32)
    S = 2**31 // C + 3  # odd: the contiguous case takes the scalar path
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs 24 GiB of GPU memory")
    if layout == "contiguous":
        x = torch.randn(1, C, S, device="cuda", dtype=torch.float16)
    else:
        x = torch.randn(1, S, C, device="cuda", dtype=torch.float16).transpose(1, 2)
    assert x.numel() > 2**31
    out = genai_fast.group_norm(x, G, activation="silu", backend="cuda")
    assert out.stride() == x.stride()
    Cg = C // G
    worst = 0.0
    for g in range(G):
        xg = x[0, g * Cg:(g + 1) * Cg].float()
        mean, var = xg.mean(), xg.var(unbiased=False)
        ref = torch.nn.functional.silu((xg - mean) * torch.rsqrt(var + EPS))
        diff = (out[0, g * Cg:(g + 1) * Cg].float() - ref).abs().max().item()
        worst = max(worst, diff / max(1.0, ref.abs().max().item()))
    del x, out
    torch.cuda.empty_cache()
    assert worst < 2e-3, f"max-abs error relative to max |ref|: {worst:.3e}"


@needs_cuda_backend
def test_generic_and_direct_launch_paths_agree():
    """The loader's two launch paths (CuPy RawKernel call with typed scalars, direct cuLaunchKernel)."""
    from genai_fast.backends import cuda as cb

    N, C, S = 2, 4, 24
    x = torch.randn(N, C, S, device="cuda")
    scale = torch.randn(N * C, device="cuda")
    shift = torch.randn(N * C, device="cuda")
    expected = x * scale.view(N, C, 1) + shift.view(N, C, 1)
    y1, y2 = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
    raw = cb.load_kernel("group_norm.cu", "group_norm_apply_cf_f32", x.device)
    cb.launch(raw, (1,), (THREADS,), (cb.ptr(x), cb.ptr(y1), cb.ptr(scale), cb.ptr(shift), cb.i64(x.numel()),
                                       cb.i64(C), cb.i64(S), cb.i32(0), cb.i32(1)), device=x.device)
    direct = cb.load_launcher("group_norm.cu", "group_norm_apply_cf_f32", "ppppqqqii", x.device)
    with cb.current_device(direct.index):
        direct((2, 1, 1), (THREADS, 1, 1), (x.data_ptr(), y2.data_ptr(), scale.data_ptr(), shift.data_ptr(),
                                            x.numel(), C, S, 0, 0), cb.torch_stream_pointer(direct.index))
    torch.cuda.synchronize()
    torch.testing.assert_close(y1, expected)
    torch.testing.assert_close(y2, expected)
    assert direct.blocks_per_sm(THREADS) >= 1


# ---------------------------------------------------------------- launch plan (pure Python, any machine)

PLAN_SHAPES = [(1, 320, 4096), (2, 32, 7), (1, 4, 1), (3, 6, 221), (2, 1280, 64), (1, 1, 20000), (64, 3, 5),
               (1, 4096, 1), (1, 96, 130), (7, 24, 1 << 22)]


@pytest.mark.parametrize("itemsize", [4, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["channels_first", "channels_last"])
@pytest.mark.parametrize("shape", PLAN_SHAPES, ids=["x".join(map(str, s)) for s in PLAN_SHAPES])
def test_launch_plan_invariants(shape, channels_last, itemsize):
    N, C, S = shape
    for aligned in (True, False):
        for sm_count in (1, 132):
            p = plan_group_norm(N, C, S, channels_last=channels_last, itemsize=itemsize, aligned=aligned,
                                sm_count=sm_count)
            inner = C if channels_last else S
            assert p.vec in (1, 16 // itemsize)
            if p.vec > 1:
                assert aligned and inner % p.vec == 0
            # chunks tile [0, S) with none empty
            assert p.chunk_len >= 1 and (p.num_chunks - 1) * p.chunk_len < S <= p.num_chunks * p.chunk_len
            assert p.channel_blocks * p.block_c >= C > (p.channel_blocks - 1) * p.block_c
            if channels_last:
                threads_c = p.block_c // p.vec
                assert p.block_c % p.vec == 0 and threads_c & (threads_c - 1) == 0 and THREADS % threads_c == 0
            else:
                assert p.chunk_len % p.vec == 0 and p.block_c == THREADS // 32
            assert p.apply_blocks >= 1 and N * p.num_chunks < 2**31 and p.channel_blocks <= 65535
