"""The genai-fast command: info, bench (table, JSON schema, plot) and one-line user errors."""

import json
import subprocess
import sys

import pytest

from genai_fast.cli import main

ROW_KEYS = {"op", "backend", "reference", "shape", "dtype", "median_ms", "p20_ms", "p80_ms", "tflops", "gbps",
            "pct_of_peak", "speedup_vs_reference", "max_err"}
ENV_KEYS = {"gpu", "driver", "cuda", "torch", "triton", "cupy", "python", "cpu", "threads", "git_sha", "date",
            "peaks"}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "genai_fast.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_info_json_lists_ops_and_backends():
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    pairs = {(row["op"], row["backend"]) for row in data["ops"]}
    assert {("group_norm", b) for b in ("triton", "cuda", "cpp", "torch")} <= pairs
    assert all(row["available"] or row["reasons"] for row in data["ops"])


def test_info_table(capsys):
    assert main(["info"]) == 0
    assert "group_norm" in capsys.readouterr().out


def test_bench_quick_cpu_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run_cli("bench", "--device", "cpu", "--quick", "--no-progress", "--json", str(out), "--plot", str(png))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert ENV_KEYS <= set(data["env"])
    assert data["env"]["peaks"]["copy_gbps"] > 0 and data["env"]["peaks"]["matmul_tflops"] > 0
    assert data["rows"], "no benchmark rows"
    for row in data["rows"]:
        assert ROW_KEYS <= set(row)
        assert row["median_ms"] > 0 and row["speedup_vs_reference"] > 0
        assert row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
        assert row["max_err"] < 1e-1
    assert any(r["op"] == "group_norm" and r["backend"] == "cpp" for r in data["rows"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "speedup" in result.stdout
    table = result.stdout.splitlines()
    for row in data["rows"]:  # every printed row names the reference its speedup is against
        assert any(line.startswith(row["op"]) and row["shape"] in line and line.rstrip().endswith(row["reference"])
                   for line in table), row


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "--ops", "no_such_op"], "--ops: unknown op"),
        (["bench", "--json", "/no/such/folder/out.json"], "--json"),
        (["bench", "--quick", "--full"], "not allowed with"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("genai-fast: error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr


def test_debug_shows_traceback():
    result = run_cli("--debug", "bench", "--ops", "no_such_op")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_cuda_device_without_gpu_is_a_user_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run_cli("bench", "--device", "cuda")
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr and "Traceback" not in result.stderr
