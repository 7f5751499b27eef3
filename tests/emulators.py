"""Building the CUDA emulators of tests/cuda_emulator/ (CUDA kernel files compiled for the CPU with g++)."""

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

EMULATORS = Path(__file__).resolve().parent / "cuda_emulator"


def build_emulator(tmp_path_factory, source: str) -> ctypes.CDLL:
    """tests/cuda_emulator/<source> (which includes a csrc/cuda kernel file) built with g++ into a shared
    library and loaded; skips the test without g++."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ not on PATH")
    lib_path = tmp_path_factory.mktemp("emulator") / (Path(source).stem + ".so")
    cmd = [compiler, "-O1", "-std=c++20", "-shared", "-fPIC", "-pthread", "-o", str(lib_path),
           str(EMULATORS / source)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr[-3000:]}"
    return ctypes.CDLL(str(lib_path))
