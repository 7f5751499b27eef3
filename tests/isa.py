"""Runs a test script in a subprocess with GENAI_FAST_CPU_ISA capping the C++ kernels' instruction set, so that
the AVX2 and baseline code paths are exercised on an AVX-512 machine (the choice is made once per process)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_isa(script: str, isa: str) -> list[str]:
    """The words the script printed, run from the repository root with GENAI_FAST_CPU_ISA=isa; asserts that it
    exited cleanly (its stderr tail is the message otherwise)."""
    env = {**os.environ, "GENAI_FAST_CPU_ISA": isa, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()
