"""The benchmark registry: what to run for each op, at which shapes, against which references."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Inputs = dict[str, Any]
BOUNDS = ("memory", "compute")  # the ceilings pct_of_peak is measured against: copy bandwidth, matmul rate


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration: parameters for make_inputs, the dtype, and a readable label."""

    params: dict[str, Any]
    dtype: torch.dtype
    label: str


@dataclass(frozen=True)
class BenchEntry:
    """A benchmarked op.

    presets: "quick" (CPU- and CI-sized) and "full" (GPU-sized) lists of cases, per device type.
    make_inputs(case, device) -> inputs; run(inputs, backend) -> output through genai_fast;
    references: name -> callable(inputs) -> output (the things users compare against);
    oracle(inputs) -> float64 output on the CPU; flops(case) and bytes(case): work and the fewest bytes
    moved; bound: "memory" or "compute", which ceiling pct_of_peak is measured against, or a callable
    case -> one of them for an entry whose cases fall on both sides (decode rows and GEMMs of one op).
    """

    op: str
    presets: dict[str, dict[str, list[Case]]]
    make_inputs: Callable[[Case, torch.device], Inputs]
    run: Callable[[Inputs, str], torch.Tensor]
    references: dict[str, Callable[[Inputs], torch.Tensor]]
    oracle: Callable[[Inputs], torch.Tensor]
    flops: Callable[[Case], float]
    bytes: Callable[[Case], float]
    bound: str | Callable[[Case], str] = "memory"

    def cases(self, preset: str, device_type: str) -> list[Case]:
        return self.presets.get(preset, {}).get(device_type, [])

    def bound_of(self, case: Case) -> str:
        """The ceiling this case is measured against: "memory" (copy bandwidth) or "compute" (matmul rate)."""
        bound = self.bound(case) if callable(self.bound) else self.bound
        if bound not in BOUNDS:
            raise ValueError(f"{self.op}: bound: expected one of {BOUNDS}, got {bound!r} for {case.label}")
        return bound


REGISTRY: dict[str, BenchEntry] = {}


def register(entry: BenchEntry) -> BenchEntry:
    REGISTRY[entry.op] = entry
    return entry


# Modules under bench/ that register entries when imported (one name per line, so that adding an op
# is a one-line change).
ENTRY_MODULES = (
    "attention",
    "conv2d",
    "decode_gemv",
    "geglu",
    "gguf_linear",
    "group_norm",
    "guided_update",
    "linear",
    "moe",
    "rms_norm",
    "unet",
    "word2vec",
)


def load_entries() -> dict[str, BenchEntry]:
    """Import every entry module (each registers itself) and return the registry."""
    for name in ENTRY_MODULES:
        importlib.import_module(f"genai_fast.bench.{name}")
    return REGISTRY
