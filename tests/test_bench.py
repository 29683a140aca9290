import csv
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
