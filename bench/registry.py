"""The benchmark registry: what to run for each op, at which shapes, against which references."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Inputs = dict[str, Any]


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
    moved; bound: "memory" or "compute", which ceiling pct_of_peak is measured against.
    """

    op: str
    presets: dict[str, dict[str, list[Case]]]
    make_inputs: Callable[[Case, torch.device], Inputs]
    run: Callable[[Inputs, str], torch.Tensor]
    references: dict[str, Callable[[Inputs], torch.Tensor]]
    oracle: Callable[[Inputs], torch.Tensor]
    flops: Callable[[Case], float]
    bytes: Callable[[Case], float]
    bound: str = "memory"

    def cases(self, preset: str, device_type: str) -> list[Case]:
        return self.presets.get(preset, {}).get(device_type, [])


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
    "rms_norm",
    "unet",
    "word2vec",
)


def load_entries() -> dict[str, BenchEntry]:
    """Import every entry module (each registers itself) and return the registry."""
    for name in ENTRY_MODULES:
        importlib.import_module(f"genai_fast.bench.{name}")
    return REGISTRY
