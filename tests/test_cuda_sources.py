"""Every csrc/cuda/*.cu compiles with nvcc for sm_80 and sm_90a (DESIGN.md section 4), and the loader
finds the sources. Runs on a CPU machine when nvcc is on PATH; the GPU run compiles them with NVRTC."""

import contextlib
import ctypes
import shutil
import subprocess
import types
from pathlib import Path

import pytest

from genai_fast.backends import cuda as cuda_backend

CUDA_DIR = Path(__file__).resolve().parent.parent / "csrc" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
ARCHES = {
    "sm_80": ["-arch=sm_80"],
    "sm_90a": ["-gencode=arch=compute_90a,code=sm_90a"],
}


@pytest.mark.parametrize("arch", ARCHES.keys())
@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_cuda_source_compiles_with_nvcc(source, arch, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH")
    cubin = tmp_path / f"{source.stem}.{arch}.cubin"
    cmd = [nvcc, "-c", "-std=c++17", *ARCHES[arch], "--cubin", "-o", str(cubin), str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    assert cubin.is_file() and cubin.stat().st_size > 0


def test_loader_finds_every_source():
    assert SOURCES, f"no .cu files under {CUDA_DIR}"
    for source in SOURCES:
        assert cuda_backend.source_path(source.name).read_bytes() == source.read_bytes()


def test_loader_rejects_paths_and_names_missing_sources():
    with pytest.raises(ValueError, match="file name"):
        cuda_backend.source_path("../cpu/group_norm.cpp")
    with pytest.raises(FileNotFoundError, match=r"no_such_kernel\.cu"):
        cuda_backend.source_path("no_such_kernel.cu")


def test_loader_without_cupy_raises_a_clear_error(monkeypatch):
    monkeypatch.setattr(cuda_backend, "cupy_module", lambda: (None, "cupy is not importable (test)"))
    with pytest.raises(RuntimeError, match=r"needs CuPy.*cupy is not importable"):
        cuda_backend.load_kernel("group_norm.cu", "group_norm_finalize", device=0)


def test_launcher_packs_arguments_by_signature(monkeypatch):
    """The direct launcher's parameter buffer, read back the way cuLaunchKernel reads it (no GPU)."""
    seen = {}
    c_types = {"p": ctypes.c_uint64, "q": ctypes.c_int64, "i": ctypes.c_int32, "f": ctypes.c_float,
               "d": ctypes.c_double}
    signature = "pqifdp"

    def launch_kernel(function, gx, gy, gz, bx, by, bz, shared_mem, stream, params, extra):
        pointers = (ctypes.c_void_p * len(signature)).from_address(params)
        seen["args"] = [c_types[c].from_address(pointers[i]).value for i, c in enumerate(signature)]
        seen["launch"] = (function, gx, gy, gz, bx, by, bz, shared_mem, stream, extra)

    fake_cuda = types.SimpleNamespace(Device=lambda index: contextlib.nullcontext(),
                                      driver=types.SimpleNamespace(launchKernel=launch_kernel))
    monkeypatch.setattr(cuda_backend, "cupy_module", lambda: (types.SimpleNamespace(cuda=fake_cuda), ""))
    raw = types.SimpleNamespace(kernel=types.SimpleNamespace(ptr=0xF00D))
    launcher = cuda_backend.Launcher(raw, 0, signature)
    for args in [(2**64 - 16, -(2**40), -7, 1.5, 1e-5, 0), (16, 3, 2**31 - 1, -0.25, -2.0, 2**48)]:
        launcher((5, 6, 1), (256, 1, 1), args, stream=1234)
        assert seen["args"] == list(args)
        assert seen["launch"] == (0xF00D, 5, 6, 1, 256, 1, 1, 0, 1234, 0)
    with pytest.raises(ValueError, match="signature"):
        cuda_backend.Launcher(raw, 0, "px")
