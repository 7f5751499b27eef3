"""The benchmark runner behind `genai-fast bench`: times every runnable backend of every registered op
side by side with its references on the same inputs, and writes a table, JSON and a plot."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from genai_fast.bench.env import environment, last_level_cache_bytes, measure_peaks
from genai_fast.bench.registry import BenchEntry, Case, load_entries
from genai_fast.bench.timing import Timing, rotating, time_together
from tqdm import tqdm

from genai_fast.backends.dispatch import OPS, BackendNotSupportedError
from genai_fast.io import atomic_write_text
from genai_fast.testing import error_stats

PRESETS = ("quick", "full")


def select_entries(ops: list[str] | None) -> list[BenchEntry]:
    registry = load_entries()
    if not ops:
        return list(registry.values())
    unknown = [op for op in ops if op not in registry]
    if unknown:
        raise ValueError(f"--ops: unknown op(s) {', '.join(unknown)}; registered: {', '.join(registry)}")
    return [registry[op] for op in dict.fromkeys(ops)]  # an op named twice is measured once


def _rotation_count(entry: BenchEntry, case: Case, device: torch.device) -> int:
    """Input sets to cycle through: enough to overflow the last-level cache twice (at most 8), the GPU's L2 or
    the CPU's L3, so that an op is timed reading its inputs from memory, as in a model whose weights and
    activations do not all fit. (With one set on a CPU, a 7 MB weight stayed in the 32 MB L3 and the linear
    rows read "273% of the copy bandwidth".)"""
    if device.type == "cuda":
        cache = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    else:
        cache = last_level_cache_bytes()
    return max(1, min(8, math.ceil(2 * cache / max(entry.bytes(case), 1.0))))


def _backends_to_time(entry: BenchEntry, device: torch.device) -> list[str]:
    names = [impl.backend for impl in OPS[entry.op].implementations if impl.backend != "torch"]
    # The Triton interpreter (CPU) is a test tool, not something to time.
    return [b for b in names if not (device.type == "cpu" and b == "triton")]


def _row(entry: BenchEntry, case: Case, backend: str, reference: str, ours: Timing, ref: Timing,
         max_err: float, ref_err: float, auto: str | None, peaks: dict[str, Any]) -> dict[str, Any]:
    tflops = entry.flops(case) / ours.median_ms / 1e9
    gbps = entry.bytes(case) / ours.median_ms / 1e6
    bound = entry.bound_of(case)
    ceiling = peaks["copy_gbps"] if bound == "memory" else peaks["matmul_tflops"]
    achieved = gbps if bound == "memory" else tflops
    return {
        "op": entry.op,
        "backend": backend,
        "auto_selected": backend == auto,
        "reference": reference,
        "shape": case.label,
        "dtype": str(case.dtype).removeprefix("torch."),
        "median_ms": ours.median_ms,
        "p20_ms": ours.p20_ms,
        "p80_ms": ours.p80_ms,
        "tflops": tflops,
        "gbps": gbps,
        "pct_of_peak": 100.0 * achieved / ceiling,
        "bound": bound,
        "reference_ms": ref.median_ms,
        "speedup_vs_reference": ref.median_ms / ours.median_ms,
        "max_err": max_err,
        "reference_max_err": ref_err,
    }


def _skip(entry: BenchEntry, case: Case, who: str, reason: str) -> dict[str, Any]:
    return {"op": entry.op, "shape": case.label, "backend": who, "reason": reason}


def _checked_candidates(entry: BenchEntry, case: Case, inputs: list, oracle: torch.Tensor,
                        device: torch.device, skipped: list) -> dict[tuple[str, str], tuple[Callable, float]]:
    """Everything to time for this case, keyed ("reference"|"backend", name), each with its max-abs error
    against the oracle. A reference that fails (out of memory, unsupported) or a backend that cannot
    run these inputs is listed in `skipped` with the reason instead."""
    candidates: dict[tuple[str, str], tuple[Callable, float]] = {}
    for name, ref_fn in entry.references.items():
        try:
            err = error_stats(ref_fn(inputs[0]), oracle).max_abs
        except (RuntimeError, ValueError, NotImplementedError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            skipped.append(_skip(entry, case, f"reference {name}", f"{type(exc).__name__}: {exc}"[:300]))
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        candidates["reference", name] = (rotating([lambda i=i, f=ref_fn: f(i) for i in inputs]), err)
    for backend in _backends_to_time(entry, device):
        try:
            err = error_stats(entry.run(inputs[0], backend), oracle).max_abs
        except BackendNotSupportedError as exc:
            skipped.append(_skip(entry, case, backend, str(exc)))
            continue
        candidates["backend", backend] = (rotating([lambda i=i, b=backend: entry.run(i, b) for i in inputs]), err)
    return candidates


def bench_case(entry: BenchEntry, case: Case, device: torch.device, quick: bool,
               peaks: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for one case, and what was skipped (a backend that cannot run, a reference that failed)."""
    # The first set before the count: an entry may learn its bytes only from its inputs (the U-Net entry counts
    # its weights when it builds them; asked before, it says 0 bytes, which would ask for 8 U-Nets).
    inputs = [entry.make_inputs(case, device)]
    inputs += [entry.make_inputs(case, device) for _ in range(_rotation_count(entry, case, device) - 1)]
    oracle = entry.oracle(inputs[0])
    skipped: list[dict[str, Any]] = []
    candidates = _checked_candidates(entry, case, inputs, oracle, device, skipped)
    entry.run(inputs[0], None)  # what automatic dispatch picks for this case
    auto = OPS[entry.op].last_backend
    timings = time_together({key: fn for key, (fn, _) in candidates.items()}, device, quick)
    refs = [key for key in candidates if key[0] == "reference"]
    backends = [key for key in candidates if key[0] == "backend"]
    rows = [
        _row(entry, case, b[1], r[1], timings[b], timings[r], candidates[b][1], candidates[r][1], auto, peaks)
        for b in backends for r in refs
    ]
    for row in rows:
        row["input_sets"] = len(inputs)  # rotated so the last-level cache holds none of them (_rotation_count)
    return rows, skipped


def _bench_case_or_skip(entry: BenchEntry, case: Case, device: torch.device, quick: bool,
                        peaks: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """bench_case, or the case listed as skipped with the error when it fails (inputs or oracle out of memory, a
    kernel that raises): one case must not cost a device run's remaining ops, whose results come only once."""
    try:
        return bench_case(entry, case, device, quick, peaks)
    except Exception as exc:  # anything a case raises is reported with it, in the table and the JSON
        reason = f"failed: {type(exc).__name__}: {exc}"[:300]
    if device.type == "cuda":
        torch.cuda.empty_cache()  # after the except block: the traceback no longer holds the case's tensors
    return [], [_skip(entry, case, "all", reason)]


def _interleave(entries: list[BenchEntry], preset: str, device_type: str) -> list[tuple[BenchEntry, Case]]:
    """Cases ordered round-robin across ops, so a time budget cuts every op's tail, not whole ops."""
    per_entry = [[(e, c) for c in e.cases(preset, device_type)] for e in entries]
    longest = max((len(cases) for cases in per_entry), default=0)
    return [cases[i] for i in range(longest) for cases in per_entry if i < len(cases)]


def run_benchmarks(device: torch.device, preset: str, ops: list[str] | None = None,
                   progress: bool = True, budget_s: float | None = None,
                   checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the preset on `device`; returns {"env", "preset", "rows", "skipped", "complete"} (DESIGN.md
    section 5).

    budget_s: stop starting new cases after this many seconds (the rest are listed as skipped).
    checkpoint: called with the results so far (complete False) before the first measurement (no rows yet) and after
    every case, so that a run stopped from outside (a device machine's time limit) keeps what it measured.
    A case that raises is listed in "skipped" with its error, and the run goes on.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {PRESETS}, got {preset!r}")
    entries = select_entries(ops)
    work = _interleave(entries, preset, device.type)
    quick = preset == "quick"
    start = time.perf_counter()
    # An op with nothing to run here (GPU-only entries on a CPU) says so, rather than leaving an unexplained gap.
    no_cases = [{"op": e.op, "shape": "-", "backend": "all", "reason": f"no {preset} cases for {device.type}"}
                for e in entries if not e.cases(preset, device.type)]
    if checkpoint is not None:
        # Written before anything is measured: a path that cannot be written fails now, not after the first case.
        checkpoint({"env": environment(device, {}), "preset": preset, "rows": [], "skipped": [], "complete": False})
    peaks = measure_peaks(device, quick)
    rows, skipped = [], no_cases
    env: dict[str, Any] | None = None
    for entry, case in tqdm(work, desc=f"bench {device.type} {preset}", unit="case", disable=not progress):
        if budget_s is not None and time.perf_counter() - start > budget_s:
            skipped.append(_skip(entry, case, "all", f"time budget of {budget_s:.0f} s spent"))
            continue
        case_rows, case_skipped = _bench_case_or_skip(entry, case, device, quick, peaks)
        rows += case_rows
        skipped += case_skipped
        if checkpoint is not None:
            env = env or environment(device, peaks)  # once: it runs git and reads the driver
            checkpoint({"env": env, "preset": preset, "rows": rows, "skipped": skipped, "complete": False})
    return {"env": environment(device, peaks), "preset": preset, "rows": rows, "skipped": skipped,
            "complete": True}


def format_table(result: dict[str, Any]) -> str:
    """A table of the rows (columns as wide as their longest entry; each row names the reference it is
    compared with), and the peaks it measured."""
    header = ("op", "shape", "dtype", "backend", "ms", "ref ms", "speedup", "GB/s", "TFLOP/s", "%peak", "max err",
              "reference")
    right = {"ms", "ref ms", "speedup", "GB/s", "TFLOP/s", "%peak", "max err"}
    body = [(r["op"], r["shape"], r["dtype"], r["backend"] + ("*" if r["auto_selected"] else ""),
             f"{r['median_ms']:.3f}", f"{r['reference_ms']:.3f}", f"{r['speedup_vs_reference']:.2f}x",
             f"{r['gbps']:.1f}", f"{r['tflops']:.3f}", f"{r['pct_of_peak']:.1f}", f"{r['max_err']:.2e}",
             r["reference"]) for r in result["rows"]]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        padded = [c.rjust(w) if name in right else c.ljust(w) for c, w, name in zip(cells, widths, header, strict=True)]
        return " ".join(padded).rstrip()

    lines = [line(header), "-" * len(line(header))] + [line(row) for row in body]
    peaks = result["env"]["peaks"]
    matmul = f"{peaks['matmul_dtype']} matmul {peaks['matmul_tflops']:.2f} TFLOP/s"
    if "matmul_tflops_blas" in peaks:
        matmul += f" (BLAS {peaks['matmul_tflops_blas']:.2f}, oneDNN {peaks['matmul_tflops_onednn']:.2f})"
    lines.append(f"* = chosen by automatic dispatch. Measured peaks: copy {peaks['copy_gbps']:.1f} GB/s, {matmul}.")
    for s in result["skipped"]:
        lines.append(f"skipped {s['op']} {s['backend']} at {s['shape']}: {s['reason']}")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str) -> None:
    try:
        atomic_write_text(path, json.dumps(result, indent=2, sort_keys=False) + "\n")
    except OSError as exc:  # it names the temporary file beside `path`; name the path asked for
        message = f"cannot write the benchmark JSON to {path}: {exc.strerror or exc}"
        # OSError(errno, message) is the errno's subclass (FileNotFoundError, PermissionError, ...), as exc was.
        raise (OSError(exc.errno, message) if exc.errno is not None else OSError(message)) from exc
