"""The GroupNorm kernels on groups whose values are (nearly) one repeated value: the Triton kernel
(kernels/group_norm.py, under the interpreter on a CPU machine), the CUDA kernel (csrc/cuda/group_norm.cu, run on
the CPU by tests/cuda_emulator/block_emulator.cpp with the launch plan of genai_fast/backends/cuda/group_norm.py)
and the C++ kernel (csrc/cpu/group_norm.cpp: its AVX-512 loops in process, the portable ones in subprocesses).

Such a group's variance is (almost) 0, so rstd is about 1 / sqrt(eps) (316 here) and any error in its mean, or in
x * scale + shift where shift = bias - mean * scale does not match the scale applied, comes out 316 times larger,
and the larger the mean the larger the error. The kernels must stay within the tolerance rule against the float64
reference, budgeted by torch's F.group_norm in the input dtype (as tests/test_cpp_hazards.py does for the C++
kernel, whose case list this reuses, with nearly constant groups, one element per group and fp16 added).

torch computes x * scale + shift too, so its own error here is a rounding of the shift, up to half an ulp of
|mean * scale|, smaller or larger by chance. The Triton kernel centres x on a mean carried finer than fp32 and is
far inside the rule, on several seeds; so is the C++ kernel, which centres x on its group's mean rounded to fp32
(its statistics carry the mean in double, in either layout; torch's channels-last CPU kernel is far less exact
than its contiguous one here, so the C++ channels-last fp32 runs are also budgeted by the contiguous one). The
CUDA kernel's apply pass takes two values per channel (an interface shared with the emulator), so it computes
x * scale + shift like torch, with the shift rounded once for the scale applied: within the rule on the fixed seed,
but on some seeds its shift's rounding exceeds twice torch's.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.testing import assert_matches_oracle
from tests.test_group_norm_cuda_emulated import emulated_group_norm

EPS = 1e-5
VALUES = [0.1, 3.7, 100.3, -1000.1]  # test_cpp_hazards.py::test_group_norm_zero_variance_groups's values
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
CPP_DTYPES = {**DTYPES, "bf16": torch.bfloat16}


def _group_of(value: float, noise: float, shape: tuple[int, ...] = (2, 16, 9, 11)) -> torch.Tensor:
    """randn of `shape` (4 groups of C / 4 channels) with sample 1's second group at `value`, plus randn * noise."""
    x = torch.randn(shape)
    channels = shape[1] // 4
    group = x[1, channels : 2 * channels]
    group.copy_(value + noise * torch.randn(group.shape))
    return x


def _one_element_groups(value: float) -> torch.Tensor:
    """[3, 8, 1, 1] for 8 groups: every group one element near `value`, so every variance is exactly 0."""
    return value + torch.randn(3, 8, 1, 1)


# id -> (input maker, groups)
CASES: dict[str, tuple[Callable[[], torch.Tensor], int]] = {
    **{f"constant-{v}": ((lambda v=v: _group_of(v, 0.0)), 4) for v in VALUES},
    "nearly-constant-3.7": (lambda: _group_of(3.7, 1e-6), 4),
    "nearly-constant-100.3": (lambda: _group_of(100.3, 1e-4), 4),
    "nearly-constant-minus-1000.1": (lambda: _group_of(-1000.1, 1e-3), 4),
    # S = 1200: the Triton stats pass merges several tiles per chunk and the finalize several chunks
    "constant-100.3-long-groups": (lambda: _group_of(100.3, 0.0, (2, 8, 24, 50)), 4),
    "one-element-100.3": (lambda: _one_element_groups(100.3), 8),
    "one-element-minus-1000.1": (lambda: _one_element_groups(-1000.1), 8),
}


# C++ only (the interpreter would be slow on it): channels-last groups of 1920 rows are 4 row chunks, whose
# statistics are merged across threads; 245K values run on two threads in either layout.
CPP_CASES = {**CASES, "nearly-constant-minus-1000.1-row-chunks": (lambda: _group_of(-1000.1, 1e-3, (2, 64, 48, 40)), 4)}


def _case(case: str, layout: str, dtype: torch.dtype):
    """(x, groups, weight, bias) of `case` in `layout` and `dtype`; weight and bias in x's dtype, as a model's are."""
    make, groups = CPP_CASES[case]
    x = make().to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    C = x.shape[1]
    return x, groups, torch.randn(C).to(dtype), torch.randn(C).to(dtype)


def _check(out: torch.Tensor, x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
           activation: str | None, what: str, budget_layout: torch.memory_format | None = None) -> None:
    """out against the float64 GroupNorm(+SiLU), budgeted by torch's F.group_norm in x's dtype on x laid out as
    `budget_layout` (x's own layout by default)."""
    assert out.shape == x.shape and out.dtype == x.dtype and out.stride() == x.stride()
    oracle = F.group_norm(x.double(), groups, weight.double(), bias.double(), EPS)
    budget_x = x if budget_layout is None else x.contiguous(memory_format=budget_layout)
    baseline = F.group_norm(budget_x, groups, weight, bias, EPS)
    if activation == "silu":
        oracle, baseline = F.silu(oracle), F.silu(baseline)
    assert_matches_oracle(out, oracle, baseline, what=what)


# (dtype, activation, seed): fp32 on several seeds (each draws other weights, and other noise in the nearly
# constant groups), the rest on the fixed one.
TRITON_RUNS = [("fp32", None, seed) for seed in range(1234, 1239)] + [
    ("fp32", "silu", 1234), ("fp16", None, 1234), ("fp16", "silu", 1234)]


@pytest.mark.skipif(bool(backend_unavailable_reasons("triton")),
                    reason="; ".join(backend_unavailable_reasons("triton")) or "triton available")
@pytest.mark.parametrize("dtype_name, activation, seed", TRITON_RUNS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES.keys())
def test_triton_group_norm_constant_groups(case, layout, dtype_name, activation, seed):
    torch.manual_seed(seed)
    x, groups, weight, bias = _case(case, layout, DTYPES[dtype_name])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with memory.poison_outputs():
        out = genai_fast.group_norm(x.to(device), groups, weight.to(device), bias.to(device), eps=EPS,
                                    activation=activation, backend="triton")
    _check(out.cpu(), x, groups, weight, bias, activation, f"group_norm[triton] {case} {layout}")


@pytest.fixture(scope="module")
def emulator(cuda_block_emulator):
    return cuda_block_emulator


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES.keys())
def test_emulated_cuda_group_norm_constant_groups(emulator, case, layout, dtype, activation):
    x, groups, weight, bias = _case(case, layout, dtype)
    # the emulator reads fp32 weight and bias; sm_count 2 splits the long groups into several chunks
    out, plan = emulated_group_norm(emulator, x, groups, weight.float(), bias.float(), activation, sm_count=2)
    _check(out, x, groups, weight, bias, activation,
           f"emulated cuda group_norm {case} {layout} (vec {plan.vec}, {plan.num_chunks} chunks)")


# Each seed draws other weights and other noise in the nearly constant groups; seed 1235 is one where the shift
# bias - mean * scale, rounded at |mean * scale|'s ulp, had 15 times torch's error.
CPP_SEEDS = range(1234, 1239)


def _run_cpp(case: str, layout: str, dtype_name: str, activation: str | None, seed: int) -> None:
    torch.manual_seed(seed)
    x, groups, weight, bias = _case(case, layout, CPP_DTYPES[dtype_name])
    with memory.poison_outputs():
        out = genai_fast.group_norm(x, groups, weight, bias, eps=EPS, activation=activation, backend="cpp")
    _check(out, x, groups, weight, bias, activation, f"group_norm[cpp] {case} {layout} {activation} seed {seed}")


requires_cpp = pytest.mark.skipif(bool(backend_unavailable_reasons("cpp")),
                                  reason="; ".join(backend_unavailable_reasons("cpp")) or "cpp available")


@requires_cpp
@pytest.mark.parametrize("seed", CPP_SEEDS)
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("dtype_name", CPP_DTYPES.keys())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CPP_CASES.keys())
def test_cpp_group_norm_constant_groups(case, layout, dtype_name, activation, seed):
    """The loops this machine picks (AVX-512 where it has it)."""
    _run_cpp(case, layout, dtype_name, activation, seed)


def _run_cpp_channels_last_fp32(case: str, activation: str | None, seed: int) -> None:
    """The fp32 channels-last kernel, budgeted by torch's contiguous fp32 GroupNorm: torch's channels-last CPU
    kernel is some 300 times less exact on these groups, so a budget taken from it would hide an fp32-rounded mean
    (half an ulp of 1000 is 3e-5, which rstd ~ 316 makes 1e-2)."""
    torch.manual_seed(seed)
    x, groups, weight, bias = _case(case, "channels_last", torch.float32)
    with memory.poison_outputs():
        out = genai_fast.group_norm(x, groups, weight, bias, eps=EPS, activation=activation, backend="cpp")
    _check(out, x, groups, weight, bias, activation, f"group_norm[cpp] {case} channels_last {activation} seed {seed}",
           budget_layout=torch.contiguous_format)


@requires_cpp
@pytest.mark.parametrize("seed", CPP_SEEDS)
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("case", CPP_CASES.keys())
def test_cpp_channels_last_constant_groups_vs_contiguous_torch(case, activation, seed):
    """The channels-last statistics carry the group mean as finely as the channels-first ones do."""
    _run_cpp_channels_last_fp32(case, activation, seed)


@requires_cpp
def test_cpp_portable_channels_last_constant_groups_vs_contiguous_torch():
    """The same through the portable (AVX2) loops, in a subprocess."""
    from tests.isa import run_with_isa

    script = """
from tests.test_group_norm_constant_groups import CPP_CASES, CPP_SEEDS, _run_cpp_channels_last_fp32
for case in CPP_CASES:
    for activation in (None, "silu"):
        for seed in CPP_SEEDS:
            _run_cpp_channels_last_fp32(case, activation, seed)
print("ok")
"""
    assert run_with_isa(script, "avx2") == ["ok"]


@requires_cpp
@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_cpp_portable_loops_constant_groups(isa):
    """The same runs through the portable loops, in a subprocess with GENAI_FAST_CPU_ISA capping the choice."""
    from tests.isa import run_with_isa

    script = """
from tests.test_group_norm_constant_groups import CPP_CASES, CPP_DTYPES, CPP_SEEDS, _run_cpp
for case in CPP_CASES:
    for layout in ("contiguous", "channels_last"):
        for dtype_name in CPP_DTYPES:
            for activation in (None, "silu"):
                for seed in CPP_SEEDS:
                    _run_cpp(case, layout, dtype_name, activation, seed)
print("ok")
"""
    assert run_with_isa(script, isa) == ["ok"]
