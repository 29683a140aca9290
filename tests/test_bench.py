import csv
from pathlib import Path
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from restorekit import bench
from restorekit.cli import main


@pytest.fixture
def sweep(tmp_path, tiny_weights):
    data = tmp_path / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(data / f"im{i}.png")
    cfg = {"name": "t", "output": str(tmp_path / "res"),
           "datasets": {"toy": {"path": str(data), "crop": 32}},
           "tasks": {"deblur": {"kernel": "gaussian", "kernel_std": 1.5, "kernel_size": 9, "noise": 0.02},
                     "inpaint": {"mask": "random"}},
           "methods": [{"name": "dp", "method": "diffpir", "weights": str(tiny_weights), "steps": [2, 4]}],
           "seeds": [0, 1], "metrics": ["psnr", "ssim"]}
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p, tmp_path / "res"


def test_sweep_outputs_and_resume(sweep, monkeypatch):
    cfg_path, out = sweep
    assert main(["bench", str(cfg_path), "--device", "cpu"]) == 0
    n_items = 2 * 2 * 2 * 2  # images x tasks x NFE settings x seeds
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == n_items
    assert {r["nfe"] for r in rows if r["task"] == "deblur"} == {"2", "4"}
    assert all(float(r["psnr"]) > 0 and float(r["seconds"]) > 0 for r in rows)
    assert (out / "summary.md").read_text().count("| toy |") == 4  # task x NFE groups
    assert len(list((out / "grids").glob("*.png"))) == 2 * 2 * 2
    assert (out / "quality_vs_nfe.png").exists()

    # interruption: lose one finished record and leave a half-written line
    rec = out / "records-0.jsonl"
    lines = rec.read_text().splitlines()
    rec.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    lost_key = json.loads(lines[-1])["key"]
    calls = []
    from restorekit.methods.diffpir import DiffPIR

    orig = DiffPIR.restore_tensor

    def spy(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(DiffPIR, "restore_tensor", spy)
    logs = []
    bench.run_bench(cfg_path, device="cpu", log=logs.append)
    assert len(calls) == 1  # only the lost item is recomputed
    assert "15 already done" in logs[0]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == n_items and lost_key in {r["key"] for r in rows}


def test_degradation_is_seeded_and_shared(tmp_path):
    import torch

    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _, a, _ = bench.degrade(x, "deblur", {"kernel": "motion", "noise": 0.05}, seed=3)
    _, b, _ = bench.degrade(x, "deblur", {"kernel": "motion", "noise": 0.05}, seed=3)
    _, c, _ = bench.degrade(x, "deblur", {"kernel": "motion", "noise": 0.05}, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    x2, y, op = bench.degrade(torch.rand(1, 3, 34, 30), "sr", {"scale": 4}, seed=0)
    assert x2.shape[-2:] == (32, 28) and y.shape[-2:] == (8, 7)


def test_bad_config(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\n")
    assert main(["bench", str(p)]) == 2
    assert "needs 'datasets'" in capsys.readouterr().err


def test_two_processes_share_the_sweep(sweep):
    """Launched as 2 processes (torchrun; accelerate launch works the same on GPUs), items are dealt to the
    ranks, each rank writes its own records, rank 0 merges the reports."""
    import os
    import socket
    import subprocess
    import sys

    cfg_path, out = sweep
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(port), "-m", "restorekit.cli", "bench", str(cfg_path),
                        "--device", "cpu"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    n0 = len((out / "records-0.jsonl").read_text().splitlines())
    n1 = len((out / "records-1.jsonl").read_text().splitlines())
    assert n0 == n1 == 8  # 16 items dealt round-robin
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 16 and len({r["key"] for r in rows}) == 16


def test_changed_config_or_weights_reruns_and_same_stem_differs(sweep, tmp_path):
    cfg_path, out = sweep
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["methods"][0]["steps"] = [2]
    cfg["seeds"] = [0]
    cfg["tasks"] = {"deblur": cfg["tasks"]["deblur"]}
    cfg_path.write_text(yaml.safe_dump(cfg))
    logs = []
    bench.run_bench(cfg_path, device="cpu", log=logs.append)
    assert "0 already done" in logs[0]
    keys1 = {r["key"] for r in csv.DictReader(open(out / "results.csv"))}
    # a changed degradation gives new keys: nothing is silently reused, and old records are not reported
    cfg["tasks"]["deblur"]["noise"] = 0.03
    cfg_path.write_text(yaml.safe_dump(cfg))
    logs = []
    bench.run_bench(cfg_path, device="cpu", log=logs.append)
    assert "0 already done" in logs[0]
    keys2 = {r["key"] for r in csv.DictReader(open(out / "results.csv"))}
    assert len(keys2) == 2 and not keys1 & keys2
    # a.png and a.jpg are different items
    data = Path(cfg["datasets"]["toy"]["path"])
    Image.open(data / "im0.png").save(data / "im0.jpg")
    items = bench.expand_items(cfg, cfg_path.parent)
    assert len({it.key for it in items}) == len(items) == 3


def test_two_sweeps_on_one_folder_do_not_duplicate(sweep):
    """Two independent 'restorekit bench' processes on one results folder: one runs, the other is refused with
    a clear message while the first holds the lock; every item is computed once and recorded once."""
    import os
    import subprocess
    import sys
    import time

    cfg_path, out = sweep
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "restorekit.cli", "bench", str(cfg_path), "--device", "cpu"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lock = out / ".bench.lock"
    deadline = time.time() + 120
    while not lock.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1[-2000:]
    assert second.returncode == 2 and "another 'restorekit bench'" in second.stderr
    assert "Traceback" not in second.stderr
    keys = [json.loads(line)["key"] for line in (out / "records-0.jsonl").read_text().splitlines()]
    assert len(keys) == 16 and len(set(keys)) == 16
    assert not lock.exists()
    # a lock left by a killed process is taken over
    lock.write_text(f"{__import__('socket').gethostname()} 999999\n")
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "16 already done" in again.stderr
