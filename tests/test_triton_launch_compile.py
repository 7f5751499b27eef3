"""Every Triton launcher, on edge-case shapes, compiles for an H100 with the JIT's own specialisation.

The interpreter runs the kernels on the CPU without the compiler's specialisation of int arguments
equal to 1; tests/launch_compile_check.py replays the launches through triton.compile for sm_90 instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_launchers_compile_for_sm90_on_edge_case_shapes():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    command = [sys.executable, "-m", "tests.launch_compile_check", "--dtypes", "fp16"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    kernels = {r["kernel"] for r in records if "kernel" in r}
    # Every kernel of the five ops was reached (a launcher that silently stopped launching would pass).
    assert kernels >= {"_attn_fwd_kernel", "_attn_bwd_preprocess_kernel", "_attn_bwd_dkdv_kernel",
                       "_attn_bwd_dq_kernel", "_decode_split_kernel", "_decode_combine_kernel",
                       "_group_norm_stats_kernel", "_group_norm_finalize_kernel", "_group_norm_apply_kernel",
                       "_conv2d_fwd_kernel", "_conv2d_epilogue_kernel", "_geglu_fwd_kernel", "_word2vec_train_kernel",
                       "_word2vec_draws_kernel", "_moe_gate_up_kernel", "_moe_down_kernel"}, kernels
    # The size-1 cases really compiled with those sizes as constants (what the interpreter never does).
    assert any("Sq" in r["constants"] for r in records if r.get("kernel") == "_attn_fwd_kernel"), records
    assert any("S" in r["constants"] for r in records if r.get("kernel") == "_group_norm_stats_kernel"), records
