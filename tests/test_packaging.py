"""Packaging: the wheel's layout, and `import genai_fast` with optional pieces missing."""

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("triton", "cupy") or name == "genai_fast._C":
                raise ImportError(f"blocked {name} for the test")
    sys.meta_path.insert(0, Block())
""")


def test_import_without_triton_cupy_or_extension():
    code = BLOCKER + textwrap.dedent("""
        import torch, genai_fast
        rows = {r["backend"]: r for r in genai_fast.info()["ops"] if r["op"] == "group_norm"}
        assert not rows["triton"]["available"] and "triton" in rows["triton"]["reasons"][0]
        assert not rows["cpp"]["available"] and "_C" in rows["cpp"]["reasons"][0]
        assert rows["torch"]["available"]
        x = torch.randn(2, 4, 3, 3)
        y = genai_fast.group_norm(x, 2, activation="silu")
        assert genai_fast.backends.dispatch.OPS["group_norm"].last_backend == "torch"
        try:
            genai_fast.group_norm(x, 2, backend="cpp")
        except genai_fast.BackendNotSupportedError as exc:
            assert "_C" in str(exc)
        else:
            raise AssertionError("forcing an unavailable backend must raise")
        print("ok")
    """)
    env = {"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.slow
def test_wheel_layout(tmp_path):
    """kernels/ ships as genai_fast.kernels, bench/ as genai_fast.bench, CUDA sources as package data."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(REPO)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("genai_fast-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "genai_fast/kernels/group_norm.py" in names
    assert "genai_fast/bench/runner.py" in names
    assert "genai_fast/_cuda_src/group_norm.cu" in names
    assert any(n.startswith("genai_fast/_C.") and n.endswith(".so") for n in names)
    assert not any(n.startswith("kernels/") or n.startswith("bench/") for n in names), "top-level package leaked"
