"""Review checks of the NVRTC kernels (csrc/cuda/group_norm.cu, csrc/cuda/word2vec.cu) and their launchers.

On any machine:
- every launcher signature string agrees with the `extern "C"` parameter list it launches (CuPy and
  cuLaunchKernel read a mismatched argument as garbage, without an error);
- the word2vec launcher, with its driver calls replaced by the warp emulator (tests/cuda_emulator), trains a
  chunk like the float64 replay: its argument order, draw stride, mode codes and flags reach the kernel as the
  kernel expects; its shared-memory size covers every slot the kernel touches; above 48 KB it opts the kernel in
  first;
- GroupNorm launch shapes the other emulated tests do not reach (a channels-last block one vector wide, idle
  channel lanes, one channel per group, tails shorter than a vector) against the float64 oracle.

On a GPU (marked `gpu`): the same word2vec opt-in path and GroupNorm shapes on the device.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from genai_fast.backends import cuda as cuda_backend
from genai_fast.backends.availability import cupy_module
from genai_fast.backends.cuda import group_norm as gn_launcher
from genai_fast.backends.cuda import word2vec as w2v_launcher
from genai_fast.ops.group_norm import group_norm_reference
from genai_fast.ops.word2vec_ops import plan_chunk
from genai_fast.testing import assert_matches_oracle
from tests.group_norm_cases import EPS, check_output, make_input
from tests.test_group_norm_cuda_emulated import emulated_group_norm
from tests.test_group_norm_cuda_emulated import emulator as gn_emulator  # noqa: F401 (a fixture)
from tests.test_word2vec_gpu_hs import SEED as HS_SEED
from tests.test_word2vec_gpu_hs import WINDOW as HS_WINDOW
from tests.test_word2vec_gpu_hs import check_hs_chunk, hs_chunk
from tests.test_word2vec_gpu_kernels import _chunk, _noise_tables, _tables, replay_planned

CUDA_DIR = Path(__file__).resolve().parent.parent / "csrc" / "cuda"

# ---------------------------------------------------------------- launcher signatures vs kernel parameters

_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?'
                     r'(\w+(?:\s*##\s*\w+)?)\s*\(([^)]*)\)')


def _letter(parameter: str) -> str:
    """The Launcher signature letter of one C parameter declaration."""
    if "*" in parameter:
        return "p"
    words = parameter.replace("const", " ").split()[:-1]  # drop the parameter's name
    kind = " ".join(words)
    letters = {"i64": "q", "long long": "q", "int": "i", "float": "f", "double": "d"}
    if kind not in letters:
        raise AssertionError(f"unexpected kernel parameter type in {parameter!r}")
    return letters[kind]


def kernel_signatures(source: str, suffixes: tuple[str, ...] = ()) -> dict[str, str]:
    """{kernel name: signature letters} of the extern "C" kernels in a .cu file; names built with ##SUFFIX
    inside a macro are expanded for each of `suffixes`."""
    text = source.replace("\\\n", " ")
    found = {}
    for name, params in _KERNEL.findall(text):
        letters = "".join(_letter(p) for p in params.split(",") if p.strip())
        if "##" in name:
            stem = name.split("##")[0].strip()
            for suffix in suffixes:
                found[stem + suffix] = letters
        else:
            found[name] = letters
    return found


def test_group_norm_launcher_signatures_match_the_kernels():
    kernels = kernel_signatures((CUDA_DIR / "group_norm.cu").read_text(), ("f32", "f16", "bf16"))
    expected = {"group_norm_finalize": gn_launcher.FINALIZE_SIGNATURE}
    for suffix in ("f32", "f16", "bf16"):
        for layout in ("cf", "cl"):
            expected[f"group_norm_stats_{layout}_{suffix}"] = gn_launcher.STATS_SIGNATURE
            expected[f"group_norm_apply_{layout}_{suffix}"] = gn_launcher.APPLY_SIGNATURE
    assert kernels == expected


def test_word2vec_launcher_signatures_match_the_kernels():
    kernels = kernel_signatures((CUDA_DIR / "word2vec.cu").read_text())
    assert kernels == {"word2vec_train": w2v_launcher.TRAIN_SIGNATURE,
                       "word2vec_draws": w2v_launcher.DRAWS_SIGNATURE}


# ---------------------------------------------------------------- word2vec launcher -> warp emulator


class EmulatedLauncher:
    """Stands in for genai_fast.backends.cuda.Launcher: checks the launch shape and runs word2vec_train's
    arguments, exactly as the launcher packed them, through the warp emulator."""

    function = 0xF00D

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.launches: list[dict] = []

    def __call__(self, grid, block, args, stream, shared_mem=0):
        assert len(args) == len(w2v_launcher.TRAIN_SIGNATURE)
        num_slices = args[12]
        assert block == (32 * w2v_launcher.WARPS, 1, 1)
        assert grid == (-(-num_slices // w2v_launcher.WARPS), 1, 1)
        self.lib.emulate_word2vec_train(*args)
        used = 4 * self.lib.emulate_word2vec_shared_floats_used()
        self.launches.append({"shared_mem": shared_mem, "used": used})


@pytest.fixture
def w2v_emulated(cuda_emulator, monkeypatch):
    """word2vec_train_fwd with its device calls replaced: kernels run in the warp emulator on CPU tensors;
    cuFuncSetAttribute calls are recorded."""
    cuda_emulator.emulate_word2vec_shared_floats_used.restype = ctypes.c_longlong
    cuda_emulator.emulate_word2vec_shared_floats_used.argtypes = []
    launcher = EmulatedLauncher(cuda_emulator)
    attributes: list[tuple[int, int, int]] = []
    driver = types.SimpleNamespace(funcSetAttribute=lambda f, attr, value: attributes.append((f, attr, value)))
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(driver=driver))
    monkeypatch.setattr(cuda_backend, "cupy_module", lambda: (fake_cupy, ""))
    monkeypatch.setattr(w2v_launcher, "device_index", lambda device: 0)
    monkeypatch.setattr(w2v_launcher, "device_shared_limit", lambda index: w2v_launcher.MAX_OPTIN_SHARED_BYTES)
    monkeypatch.setattr(w2v_launcher, "load_launcher", lambda *a, **k: launcher)
    monkeypatch.setattr(w2v_launcher, "current_device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(w2v_launcher, "torch_stream_pointer", lambda index: 0)
    return types.SimpleNamespace(launcher=launcher, attributes=attributes)


def _check_shared_memory(w2v_emulated, shared: int) -> None:
    launch = w2v_emulated.launcher.launches[-1]
    assert launch["shared_mem"] == shared
    assert 0 < launch["used"] <= shared, f"the kernel used {launch['used']} bytes of shared memory, given {shared}"
    if shared > w2v_launcher.MAX_SHARED_BYTES:
        assert w2v_emulated.attributes == [(EmulatedLauncher.function,
                                            w2v_launcher.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared)]
    else:
        assert w2v_emulated.attributes == []


# (mode, cbow_mean, dim, window, negative): dim 200 with window 5 stages 55.7 KB per block (the opt-in path).
LAUNCHER_CASES = [
    pytest.param("sg_shared", True, 200, 5, 5, id="sg-shared-d200-optin"),
    pytest.param("sg_pair", True, 37, 3, 4, id="sg-pair-d37"),
    pytest.param("cbow", False, 24, 17, 33, id="cbow-sum-w17-n33"),
]


@pytest.mark.parametrize(("mode", "cbow_mean", "dim", "window", "negative"), LAUNCHER_CASES)
def test_word2vec_launcher_runs_the_kernel_like_the_replay(w2v_emulated, mode, cbow_mean, dim, window, negative):
    vocab, seed = 29, 2**33 + 7  # a seed above 2^32: both key words of the Philox stream matter
    tokens, offsets = _chunk(vocab, [23, 1, 17], seed=4)
    prob, alias = _noise_tables(vocab)
    plan = plan_chunk(torch.from_numpy(tokens), torch.from_numpy(offsets), torch.full((vocab,), 0.9), 0.2, 0.05,
                      seed, slice_tokens=5)
    assert plan.bounds.shape[0] >= w2v_launcher.WARPS  # every warp's staging area is used
    syn0, syn1 = _tables(vocab, dim)
    ref0, ref1, ref_loss, base0, base1 = replay_planned(syn0, syn1, plan, prob, alias, mode=mode, window=window,
                                                        negative=negative, seed=seed, cbow_mean=cbow_mean)
    out0, out1 = syn0.clone(), syn1.clone()
    loss = w2v_launcher.word2vec_train_fwd(
        out0, out1, plan.tokens, plan.alphas, plan.bounds, torch.from_numpy(prob), torch.from_numpy(alias),
        mode=mode, window=window, negative=negative, cbow_mean=cbow_mean, shrink_windows=True, compute_loss=True,
        seed=seed)
    assert_matches_oracle(out0, ref0, base0, what=f"launcher {mode} syn0")
    assert_matches_oracle(out1, ref1, base1, what=f"launcher {mode} syn1neg")
    assert float(loss.sum()) == pytest.approx(ref_loss, rel=1e-5)
    _check_shared_memory(w2v_emulated, w2v_launcher.WARPS * w2v_launcher.warp_area_bytes(mode, dim, window, negative))


@pytest.mark.parametrize(("mode", "cbow_mean", "dim", "negative"),
                         [("sg_pair", True, 16, 2), ("cbow", True, 33, 3)], ids=["pair-hs+neg", "cbow-hs+neg"])
def test_word2vec_launcher_passes_the_tree(w2v_emulated, mode, cbow_mean, dim, negative):
    case = hs_chunk(mode, cbow_mean, dim, negative)
    out = [t.clone() for t in case.tables]
    plan = case.plan
    window = HS_WINDOW
    loss = w2v_launcher.word2vec_train_fwd(
        out[0], out[1], plan.tokens, plan.alphas, plan.bounds, torch.from_numpy(case.prob),
        torch.from_numpy(case.alias), mode=mode, window=window, negative=negative, cbow_mean=cbow_mean,
        shrink_windows=True, compute_loss=True, seed=HS_SEED, tree=(out[2], *case.tree))
    check_hs_chunk(case, out, loss, negative, f"launcher {mode} hs")
    depth = case.tree[0].shape[1]
    _check_shared_memory(w2v_emulated,
                         w2v_launcher.WARPS * w2v_launcher.warp_area_bytes(mode, dim, window, negative, depth))


# ---------------------------------------------------------------- GroupNorm launch shapes, emulated

# shape, groups, layout: fp32/fp16 channels-last with C equal to the vector width (one thread column, a
# 256-row tree); C = 12 channels-last (fp32: a 16-channel block with its last vector idle); one channel per group
# with spatial tails; channels-first rows shorter than a vector.
GN_EDGE_CASES = {
    "2x4x5x7-g2-channels_last": ((2, 4, 5, 7), 2, "channels_last"),
    "2x8x5x7-g4-channels_last": ((2, 8, 5, 7), 4, "channels_last"),
    "2x12x3x5-g12-channels_last": ((2, 12, 3, 5), 12, "channels_last"),
    "3x6x3-g6": ((3, 6, 3), 6, "contiguous"),
    "2x16x4-g4": ((2, 16, 4), 4, "contiguous"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", GN_EDGE_CASES.keys())
def test_emulated_group_norm_edge_shapes(gn_emulator, case, dtype):  # noqa: F811 (the fixture)
    shape, groups, layout = GN_EDGE_CASES[case]
    x = make_input(shape, layout, dtype)
    C = shape[1]
    weight, bias = torch.randn(C), torch.randn(C)
    out, plan = emulated_group_norm(gn_emulator, x, groups, weight, bias, "silu", sm_count=1)
    assert out.stride() == x.stride()
    oracle = group_norm_reference(x.double(), groups, weight.double(), bias.double(), EPS, "silu")
    assert_matches_oracle(out, oracle, group_norm_reference(x, groups, weight, bias, EPS, "silu"),
                          what=f"emulated {case} (vec {plan.vec}, block_c {plan.block_c})")


# ---------------------------------------------------------------- the same on a GPU

CUPY_MISSING = cupy_module()[1] if torch.cuda.is_available() else "no CUDA GPU"


def needs_cuda_backend(test):
    """`gpu`-marked; skipped with the reason without a CUDA GPU or CuPy."""
    test = pytest.mark.skipif(bool(CUPY_MISSING), reason=f"needs a CUDA GPU and CuPy: {CUPY_MISSING}")(test)
    return pytest.mark.gpu(test)


@needs_cuda_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", GN_EDGE_CASES.keys())
def test_gpu_group_norm_edge_shapes(case, dtype):
    shape, groups, layout = GN_EDGE_CASES[case]
    out = check_output("cuda", make_input(shape, layout, dtype, "cuda"), groups, affine=True, activation="silu")
    assert bool(torch.isfinite(out).all())


@needs_cuda_backend
@pytest.mark.parametrize("mode", ["sg_shared", "cbow"])
def test_gpu_word2vec_opt_in_shared_memory(mode):
    """Above 48 KB of staging (dim 200, window 5: 55.7 KB per block) the launcher opts the kernel in. The one
    real slice goes to the block's last warp (three empty slices first), whose area ends at the top of the
    requested size; one warp alone is sequential, so the float64 replay is exact up to rounding."""
    vocab, dim, window, negative, seed = 60, 200, 5, 5, 21
    shared = w2v_launcher.WARPS * w2v_launcher.warp_area_bytes(mode, dim, window, negative)
    assert shared > w2v_launcher.MAX_SHARED_BYTES
    tokens, offsets = _chunk(vocab, [150], seed=1)
    prob, alias = _noise_tables(vocab)
    plan = plan_chunk(torch.from_numpy(tokens), torch.from_numpy(offsets), torch.full((vocab,), 0.9), 0.05, 0.01,
                      seed, slice_tokens=10**6)
    assert plan.bounds.shape[0] == 1
    syn0, syn1 = _tables(vocab, dim)
    ref0, ref1, ref_loss, base0, base1 = replay_planned(syn0, syn1, plan, prob, alias, mode=mode, window=window,
                                                        negative=negative, seed=seed)
    bounds = torch.cat([torch.zeros(w2v_launcher.WARPS - 1, 4, dtype=torch.int32), plan.bounds]).contiguous()
    out0, out1 = syn0.cuda(), syn1.cuda()
    loss = w2v_launcher.word2vec_train_fwd(
        out0, out1, plan.tokens.cuda(), plan.alphas.cuda(), bounds.cuda(), torch.from_numpy(prob).cuda(),
        torch.from_numpy(np.ascontiguousarray(alias)).cuda(), mode=mode, window=window, negative=negative,
        cbow_mean=True, shrink_windows=True, compute_loss=True, seed=seed)
    torch.cuda.synchronize()
    assert_matches_oracle(out0.cpu(), ref0, base0, what=f"cuda {mode} syn0 (opt-in)")
    assert_matches_oracle(out1.cpu(), ref1, base1, what=f"cuda {mode} syn1neg (opt-in)")
    assert loss[:-1].abs().sum().item() == 0.0  # the empty slices
    assert float(loss.sum()) == pytest.approx(ref_loss, rel=1e-4)
