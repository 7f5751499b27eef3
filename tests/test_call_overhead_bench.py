"""bench/call_overhead.py: every case runs both sides, and the JSON holds what the table prints."""

from __future__ import annotations

import json

import pytest
from genai_fast.bench import call_overhead


def test_runs_every_case_and_writes_json(tmp_path, capsys):
    out = tmp_path / "calls.json"
    assert call_overhead.main(["--rounds", "1", "--calls", "3", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"] for r in rows] == [case[0] for case in call_overhead._cases()]
    for r in rows:
        assert r["genai_fast_us"] > 0 and r["torch_us"] > 0 and r["backend"]
        assert r["speedup"] == pytest.approx(r["torch_us"] / r["genai_fast_us"])
    assert "rms_norm 1x576" in capsys.readouterr().out


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        call_overhead.main(["--rounds", "0"])
