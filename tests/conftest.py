"""Test setup: Triton's interpreter on CPU-only machines, and the `gpu` marker's skip."""

import ctypes
import os

import pytest
import torch

from tests.emulators import build_emulator

# Must be set before triton is imported anywhere: on a CPU machine Triton kernels then run in the
# interpreter (forced with backend="triton"); on a GPU machine they compile for the GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_GPU = torch.cuda.is_available()

# Under pytest-xdist (bench/gpu_check.sh runs the GPU tests on 8 workers) each worker's torch would start one
# CPU thread per core for the float64 oracles: 8x oversubscribed. Share the cores out instead.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny models: they gain nothing from two, and on a busy 2-core machine
    a two-thread OpenMP region waits for a descheduled worker (test_text2image.py ran 175 s with 2, 11 s with 1).
    Used as `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(scope="session")
def cuda_block_emulator(tmp_path_factory):
    """csrc/cuda/group_norm.cu built for the CPU with the block emulator: the CUDA GroupNorm's tests
    (test_group_norm_cuda_emulated.py, test_group_norm_constant_groups.py) run its three kernels on the CPU."""
    lib = build_emulator(tmp_path_factory, "block_emulator.cpp")
    p, q, i = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int
    lib.emulate_group_norm.argtypes = [p, p, p, i, p, i, p] + [q] * 9 + [i, i, i, i, ctypes.c_double]
    return lib


@pytest.fixture(scope="session")
def cuda_emulator(tmp_path_factory):
    """csrc/cuda/word2vec.cu built for the CPU with the warp emulator (32 threads per warp): the CUDA
    trainer's tests (test_word2vec_gpu_kernels.py, test_word2vec_gpu_hs.py) run it on the CPU."""
    lib = build_emulator(tmp_path_factory, "warp_emulator.cpp")
    p, q, i = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int
    lib.emulate_word2vec_train.argtypes = [p] * 12 + [q, q, i, q, i, i, q, i, i, i, i, i, i, p, q]
    lib.emulate_word2vec_draws.argtypes = [p] * 4 + [q, q, q, i, q, i, i]
    return lib
