"""The environment block of a benchmark JSON: versions, hardware, git revision, measured peaks."""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from genai_fast.bench.timing import time_fn

from genai_fast.backends import availability


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            name, _, value = line.partition(":")
            fields[name.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_description() -> str:
    """The CPU's model name with its family and model numbers (see _cpu_name)."""
    return _cpu_name(_cpuinfo())


def _cpu_name(info: dict[str, str]) -> str:
    """The model name with the family and model numbers: clouds name several generations "AMD EPYC", whose
    vector units differ (Zen 4 splits AVX-512 in two halves, Zen 5 does not), and the CPU kernels' speed
    against torch's with them."""
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']}, model {info['model']})"
    return name


CPU0_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


def last_level_cache_bytes(caches: Path = CPU0_CACHES, default: int = 32 << 20) -> int:
    """The size of the CPU's highest cache level, as Linux reports it for CPU 0 (default where it does not)."""
    best_level, size = 0, default
    for index in sorted(caches.glob("index*")):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
        if level > best_level and number.isdigit():
            best_level, size = level, int(number) * unit
    return size


def _git_sha() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)
        return out.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def measure_peaks(device: torch.device, quick: bool) -> dict[str, float]:
    """Measured ceilings: copy bandwidth (bytes read + written per second) and matmul rate.

    GPU: a 1 GiB device-to-device copy and a bf16 8192^3 matmul. CPU: a 256 MiB copy and an fp32
    2048^3 matmul (on torch's threads). Random data, never zeros.
    """
    if device.type == "cuda":
        copy_bytes, matmul_n, matmul_dtype = 1 << 30, 8192, torch.bfloat16
    else:
        copy_bytes, matmul_n, matmul_dtype = (64 << 20) if quick else (256 << 20), 2048, torch.float32
    src = torch.randn(copy_bytes // 4, device=device)
    dst = torch.empty_like(src)
    # A peak is the best the machine does: the fast end of the samples (p20), which noise from other
    # processes on a shared machine cannot pull up the way it pulls up a median.
    copy_ms = time_fn(lambda: dst.copy_(src), device, quick).p20_ms
    a = torch.randn(matmul_n, matmul_n, device=device).to(matmul_dtype)
    b = torch.randn(matmul_n, matmul_n, device=device).to(matmul_dtype)
    matmul_ms = time_fn(lambda: a @ b, device, quick).p20_ms
    peaks = {
        "copy_gbps": 2 * copy_bytes / copy_ms / 1e6,
        "matmul_tflops": 2 * matmul_n**3 / matmul_ms / 1e9,
        "matmul_dtype": str(matmul_dtype).removeprefix("torch."),
    }
    if device.type == "cpu":
        # torch's BLAS is not always the CPU's fastest GEMM: on some hosts oneDNN's (a 1x1 convolution over the
        # rows) runs twice its rate, and the peak is the best either reaches. Both are recorded.
        pixels = a.reshape(1, matmul_n, 1, matmul_n).permute(0, 3, 1, 2)
        weight = b.t().contiguous().reshape(matmul_n, matmul_n, 1, 1)
        onednn_ms = time_fn(lambda: torch.nn.functional.conv2d(pixels, weight), device, quick).p20_ms
        peaks["matmul_tflops_blas"] = peaks["matmul_tflops"]
        peaks["matmul_tflops_onednn"] = 2 * matmul_n**3 / onednn_ms / 1e9
        peaks["matmul_tflops"] = max(peaks["matmul_tflops_blas"], peaks["matmul_tflops_onednn"])
    return peaks


def environment(device: torch.device, peaks: dict[str, Any]) -> dict[str, Any]:
    versions = availability.versions()
    return {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "driver": _driver_version() if device.type == "cuda" else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": versions["triton"],
        "cupy": versions["cupy"],
        "python": sys.version.split()[0],
        "cpu": cpu_description(),
        "cpu_last_level_cache_bytes": last_level_cache_bytes(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "git_sha": _git_sha(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "peaks": peaks,
    }
