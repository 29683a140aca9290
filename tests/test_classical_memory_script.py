"""benchmarks/classical_memory.py (the figures behind the classical baselines' 32 MP limit) runs: one tiny case
through the public API in a fresh process, a table and JSON with the result's size and the memory it grew by."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("classical_memory", ROOT / "benchmarks" / "classical_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_one_small_case_writes_its_row(tmp_path, capsys):
    out = tmp_path / "mem.md"
    assert _load().main(["--cases", "bicubic:0.04", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["result"] == [200, 200] and rows[0]["input"] == [50, 50]
    assert rows[0]["peak_rss_growth_gb"] >= 0 and rows[0]["gb_per_mp"] == pytest.approx(
        rows[0]["peak_rss_growth_gb"] / 0.04)
    assert "| bicubic | sr | 50x50 | 200x200 | 0.04 |" in out.read_text()


def test_a_bad_case_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        _load().main(["--cases", "lanczos:1", "--out", str(tmp_path / "m.md")])
    assert not (tmp_path / "m.md").exists()
