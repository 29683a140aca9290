"""benchmarks/official_loops.py without running any official loop: argument parsing, the work-folder guard, and
that every text edit it makes in a copy of an official checkout matches its target exactly once (checked against
the official checkouts when they are on this machine)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = Path("/work/official")


def _load():
    spec = importlib.util.spec_from_file_location("official_loops", ROOT / "benchmarks" / "official_loops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_work_folder_inside_the_repository_is_refused():
    mod = _load()
    with pytest.raises(SystemExit):
        mod.main(["--work", str(ROOT / "benchmarks" / "tmp_official")])
    assert not (ROOT / "benchmarks" / "tmp_official").exists()


def test_unknown_method_is_refused():
    mod = _load()
    with pytest.raises(SystemExit):
        mod.main(["--methods", "nosuchmethod", "--work", "/tmp/rk_official_loops_test"])


@pytest.mark.parametrize("method,folder", [("diffpir", "DiffPIR"), ("diffir", "DiffIR/DiffIR-RealSR"),
                                           ("diffbir", "DiffBIR")])
def test_edits_apply_once_to_the_official_sources(tmp_path, method, folder):
    src = OFFICIAL / folder
    if not src.is_dir():
        pytest.skip(f"no official checkout at {src}")
    mod = _load()
    edits = {"diffpir": lambda: mod.diffpir_edits(10, 0, "rk_bench"), "diffir": lambda: mod.diffir_edits(0),
             "diffbir": lambda: mod.diffbir_edits(231)}[method]()
    copy = tmp_path / "copy"
    for fname in {e[0] for e in edits}:
        (copy / fname).parent.mkdir(parents=True, exist_ok=True)
        (copy / fname).write_text((src / fname).read_text())
    done = mod.apply_edits(copy, edits)
    assert len(done) == len(edits)
    for fname, _old, new, _ in edits:
        assert new in (copy / fname).read_text()
    # the official sources themselves are untouched
    for fname, old, _new, _ in edits:
        assert (src / fname).read_text().count(old) == 1


def test_report_lists_each_row_with_its_load_average():
    mod = _load()
    rows = [dict(method="diffpir", impl="official", round=0, nfe=10, loop_s=20.0, wall_s=30.0, peak_rss_mib=1500,
                 load_before=1.0, load_after=2.0, durations=[2.0] * 10),
            dict(method="diffpir", impl="restorekit", round=0, nfe=10, loop_s=22.0, wall_s=31.0, peak_rss_mib=1300,
                 load_before=2.0, load_after=2.5, load_s=3.0, max_abs_float=0.01, max_abs_uint8=3,
                 durations=[2.2] * 10)]
    meta = dict(machine="test machine", cpu="cpu", torch="x", threads=2, date="now", methods=["diffpir"],
                settings={"diffpir": "setting"}, commands={"diffpir": "cmd"}, edits={"diffpir": []})
    text = mod.report(rows, meta)
    assert "test machine" in text and "1.00 -> 2.00" in text and "2.00 -> 2.50" in text
    assert "1.100x" in text  # 22 / 20
