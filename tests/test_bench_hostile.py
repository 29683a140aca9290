"""Hostile bench configs and flags: one line 'error: ...' on stderr, exit 2, nothing written, no traceback."""

import copy

import numpy as np
import pytest
import yaml
from PIL import Image

from restorekit.cli import main


def _base(tmp_path):
    data = tmp_path / "imgs"
    data.mkdir(exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / "a.png")
    return {"name": "t", "output": str(tmp_path / "res"),
            "datasets": {"d": {"path": str(data)}},
            "tasks": {"sr": {"scale": 2, "noise": 0.0},
                      "deblur": {"kernel": "gaussian", "kernel_std": 1.0, "kernel_size": 5, "noise": 0.01}},
            "methods": [{"name": "c", "method": "classical"}],
            "seeds": [0], "metrics": ["psnr"]}


def _set(cfg, path, value):
    d = cfg
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


CASES = {
    "unknown_metric": ((["metrics"], ["psnr", "nosuchmetric"]), "nosuchmetric"),
    "negative_seed": ((["seeds"], [-1]), "seed"),
    "negative_kernel_std": ((["tasks", "deblur", "kernel_std"], -2), "kernel_std"),
    "nan_noise": ((["tasks", "deblur", "noise"], float("nan")), "noise"),
    "negative_noise": ((["tasks", "sr", "noise"], -0.1), "noise"),
    "bogus_algorithm": ((["methods", 0, "options"], {"algorithm": "bogus"}), "bogus"),
    "unknown_option": ((["methods", 0, "options"], {"nosuchopt": 3}), "nosuchopt"),
    "unknown_method_key": ((["methods", 0, "nosuchopt"], 3), "nosuchopt"),
    "unknown_top_key": ((["nosuchkey"], 1), "nosuchkey"),
    "unknown_task_key": ((["tasks", "sr", "nosuchkey"], 1), "nosuchkey"),
    "dataset_limit_negative": ((["datasets", "d", "limit"], -1), "limit"),
    "unknown_method": ((["methods", 0, "method"], "nosuchmethod"), "nosuchmethod"),
}


def _run(tmp_path, capsys, cfg, *extra):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    rc = main(["bench", str(p), *extra])
    err = capsys.readouterr().err
    return rc, err


def _assert_refused(rc, err, out, needle=None):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    if needle:
        assert needle in lines[0], lines[0]
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_is_refused_before_anything_is_written(tmp_path, capsys, case):
    (path, value), needle = CASES[case]
    cfg = _base(tmp_path)
    _set(cfg, path, value)
    rc, err = _run(tmp_path, capsys, cfg)
    _assert_refused(rc, err, tmp_path / "res", needle)


def test_unknown_top_key_names_the_allowed_keys(tmp_path, capsys):
    cfg = _base(tmp_path)
    cfg["metric"] = ["psnr"]
    rc, err = _run(tmp_path, capsys, cfg)
    _assert_refused(rc, err, tmp_path / "res", "metric")
    assert "allowed" in err and "metrics" in err


@pytest.mark.parametrize("flags,needle", [(["--device", "gpu"], "gpu"), (["--limit", "-1"], "--limit"),
                                          (["--limit", "0"], "--limit")])
def test_bad_flags(tmp_path, capsys, flags, needle):
    rc, err = _run(tmp_path, capsys, _base(tmp_path), *flags)
    _assert_refused(rc, err, tmp_path / "res", needle)


def test_output_under_a_regular_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    rc, err = _run(tmp_path, capsys, _base(tmp_path), "--output", str(f / "res"))
    _assert_refused(rc, err, f.parent / "nothing_here")
    assert f.read_text() == "x"
    rc, err = _run(tmp_path, capsys, _base(tmp_path), "--output", str(f))
    _assert_refused(rc, err, f.parent / "nothing_here")


def test_algorithm_of_another_task_stays_a_skip(tmp_path, capsys):
    """A valid algorithm that one task cannot use is a method that cannot do that task: skipped, not refused."""
    cfg = _base(tmp_path)
    cfg["methods"] = [{"name": "bic", "method": "classical", "options": {"algorithm": "bicubic"}}]
    rc, err = _run(tmp_path, capsys, copy.deepcopy(cfg))
    assert rc == 0, err
    assert "skipped" in err
    assert (tmp_path / "res" / "results.csv").exists()


def test_unknown_option_of_a_method_with_weights(tmp_path, capsys, tiny_weights):
    cfg = _base(tmp_path)
    cfg["methods"] = [{"name": "dp", "method": "diffpir", "weights": str(tiny_weights), "steps": [2],
                       "options": {"nosuchopt": 3}}]
    rc, err = _run(tmp_path, capsys, cfg)
    _assert_refused(rc, err, tmp_path / "res", "nosuchopt")
    assert not (tmp_path / "res").exists()


def test_an_unreadable_dataset_image_stops_the_sweep_before_it_starts(tmp_path, capsys):
    """It used to end the sweep halfway, after the readable images before it had been run."""
    cfg = _base(tmp_path)
    (tmp_path / "imgs" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rc, err = _run(tmp_path, capsys, cfg)
    _assert_refused(rc, err, tmp_path / "res", "b.png")
    assert "dataset 'd'" in err


def _digest(folder):
    import hashlib

    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_report_without_its_records_is_never_replaced(tmp_path, capsys):
    """A clone used to lack the records (git-ignored): a rerun, a --limit smoke run or --report-only replaced the
    committed report by an empty or one-item one, exit 0."""
    cfg = _base(tmp_path)
    out = tmp_path / "res"
    rc, err = _run(tmp_path, capsys, cfg)
    assert rc == 0, err
    (out / "records-0.jsonl").unlink()
    before = _digest(out)
    for extra in ([], ["--limit", "1"], ["--report-only"]):
        rc, err = _run(tmp_path, capsys, cfg, *extra)
        assert rc == 2 and "holds a report (summary.md, results.csv, report.html) but not the records" in err, err
        assert err.count("\n") == 1
        assert _digest(out) == before, extra


def test_a_limited_run_keeps_every_recorded_item_in_the_report(tmp_path, capsys):
    cfg = _base(tmp_path)
    out = tmp_path / "res"
    assert _run(tmp_path, capsys, cfg)[0] == 0
    full = (out / "results.csv").read_text()
    assert full.count("\n") == 3  # header + sr + deblur
    rc, err = _run(tmp_path, capsys, cfg, "--limit", "1")
    assert rc == 0, err
    assert (out / "results.csv").read_text() == full
    (out / "results.csv").unlink()
    assert _run(tmp_path, capsys, cfg, "--report-only")[0] == 0
    assert (out / "results.csv").read_text() == full


def test_the_committed_cpu_sweep_report_rebuilds_from_its_records(tmp_path, capsys):
    """benchmarks/results/cpu_sweep carries its records: --report-only on a copy gives the committed table back
    (the restored images are not in git; the committed grids stay)."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "configs" / "../../../shared/testsets").exists():
        pytest.skip("cpu.yaml's datasets (../shared/testsets beside the project) are not here")
    src = root / "benchmarks" / "results" / "cpu_sweep"
    out = tmp_path / "cpu_sweep"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("images"))
    grids = sorted(p.name for p in (out / "grids").iterdir())
    rc = main(["bench", str(root / "benchmarks" / "configs" / "cpu.yaml"), "--report-only", "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert (out / "results.csv").read_text() == (src / "results.csv").read_text()
    tables = [[ln for ln in (f / "summary.md").read_text().splitlines() if ln.startswith("|")] for f in (out, src)]
    assert tables[0] == tables[1] and len(tables[0]) > 50  # (why a metric column is empty is this machine's)
    assert sorted(p.name for p in (out / "grids").iterdir()) == grids


def test_a_missing_relative_dataset_names_the_resolved_folder(tmp_path, capsys):
    cfg = _base(tmp_path)
    cfg["datasets"]["d"]["path"] = "../nowhere/sets"
    rc, err = _run(tmp_path, capsys, cfg)
    _assert_refused(rc, err, tmp_path / "res", f"dataset folder not found: {tmp_path.parent / 'nowhere' / 'sets'}")
    assert f"(path '../nowhere/sets', taken from {tmp_path})" in err
