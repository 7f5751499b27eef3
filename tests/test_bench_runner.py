"""The benchmark runner's input rotation: memory-bound ops are timed reading memory, not a warm cache."""

from __future__ import annotations

import pytest
import torch
from genai_fast.bench import runner
from genai_fast.bench.env import last_level_cache_bytes
from genai_fast.bench.registry import BenchEntry, Case


def _cache_level(root, name: str, level: int, size: str) -> None:
    (root / name).mkdir()
    (root / name / "level").write_text(f"{level}\n")
    (root / name / "size").write_text(f"{size}\n")


def test_last_level_cache_is_the_highest_level_linux_lists(tmp_path):
    _cache_level(tmp_path, "index0", 1, "48K")
    _cache_level(tmp_path, "index2", 2, "1024K")
    _cache_level(tmp_path, "index3", 3, "32768K")
    assert last_level_cache_bytes(tmp_path) == 32 << 20


def test_last_level_cache_falls_back_without_sysfs(tmp_path):
    assert last_level_cache_bytes(tmp_path / "missing", default=123) == 123
    _cache_level(tmp_path, "index0", 1, "garbage")
    assert last_level_cache_bytes(tmp_path, default=7) == 7


def _entry(bytes_moved: float) -> BenchEntry:
    return BenchEntry(op="fake", presets={}, make_inputs=lambda case, device: None, run=lambda i, b: None,
                      references={}, oracle=lambda i: None, flops=lambda case: 1.0, bytes=lambda case: bytes_moved)


@pytest.mark.parametrize("bytes_moved, sets", [(1 << 20, 8), (40 << 20, 2), (64 << 20, 1), (1 << 30, 1)])
def test_cpu_rotation_overflows_the_last_level_cache_twice(monkeypatch, bytes_moved, sets):
    monkeypatch.setattr(runner, "last_level_cache_bytes", lambda: 32 << 20)
    case = Case(params={}, dtype=torch.float32, label="x")
    assert runner._rotation_count(_entry(bytes_moved), case, torch.device("cpu")) == sets
