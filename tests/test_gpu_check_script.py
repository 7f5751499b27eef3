"""bench/gpu_check.sh's step limits: each step's own limit is cut to what is left before DEADLINE_S, so the script
ends inside the run tool's call and a slow early step shortens the later ones (it cannot be run without a GPU;
its `limit` function is run alone here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.sh"


def _limit(requested: int, elapsed: int, deadline: int = 550) -> int:
    source = SCRIPT.read_text()
    function = re.search(r"^limit\(\) \{\n.*?^\}\n", source, re.S | re.M)
    assert function, "gpu_check.sh defines limit()"
    script = f"start=$(( $(date +%s) - {elapsed} ))\nDEADLINE_S={deadline}\n{function.group(0)}limit {requested}\n"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10, check=True)
    return int(result.stdout)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("requested, elapsed, expected", [
    (180, 0, 180),   # plenty of time: the step's own limit
    (180, 400, 140),  # cut to what is left (550 - 400 - 10 s of margin)
    (90, 525, 0),    # under 20 s left: skipped
    (0, 0, 0),       # a knob at 0 still skips the step
])
def test_step_limits_are_cut_to_the_deadline(requested, elapsed, expected):
    # One second of slack: the clock may tick between the two `date` calls.
    assert abs(_limit(requested, elapsed) - expected) <= 1


def test_every_timed_step_goes_through_limit():
    """No step calls `timeout` with its knob directly (which would ignore the deadline)."""
    source = SCRIPT.read_text()
    assert not re.search(r"timeout[^\n]*\$\{[A-Z0-9_]*TIMEOUT", source)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=10)
