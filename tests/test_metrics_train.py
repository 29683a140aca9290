import json

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit import metrics
from restorekit.cli import main
from restorekit.methods.diffpir import DiffPIR
from restorekit.methods.diffpir.train import train_prior

from .conftest import TINY


def test_psnr_ssim_always_available():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 32, 32, generator=g)
    pred = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    scores, _ = metrics.compute_metrics(pred, ref, ("psnr", "ssim"))
    mse = ((pred - ref) ** 2).mean().item()
    assert scores["psnr"] == pytest.approx(10 * np.log10(1 / mse), abs=0.05)
    assert 0 < scores["ssim"] < 1
    same, _ = metrics.compute_metrics(ref, ref, ("ssim",))
    assert same["ssim"] == pytest.approx(1.0, abs=1e-4)


def test_unavailable_metric_is_skipped_with_reason(monkeypatch):
    import pyiqa

    def offline(name, *a, **k):
        raise OSError(f"could not download weights for {name}")

    monkeypatch.setattr(pyiqa, "create_metric", offline)
    monkeypatch.setattr(metrics, "_cache", {})
    monkeypatch.setattr(metrics, "_failed", {})
    scores, notes = metrics.compute_metrics(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), ("lpips",))
    assert scores["lpips"] is None and "LPIPS skipped" in notes[0] and "could not download" in notes[0]


def _data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # smooth random images
        a = rng.random((12, 12, 3))
        a = np.kron(a, np.ones((4, 4, 1)))
        Image.fromarray((a * 255).astype(np.uint8)).save(d / f"{i}.png")
    return d


def test_training_reduces_loss(tmp_path):
    d = _data(tmp_path)
    logs = []
    info = train_prior(d, tmp_path / "p.safetensors", steps=120, batch_size=8, crop=32, lr=1e-3, config=TINY,
                       log_every=20, log=logs.append)
    losses = [float(s.split("loss ")[1].split()[0]) for s in logs]
    # zero-initialised output layer: the first losses are ~1 (predicting eps = 0)
    assert losses[0] > 0.5 and losses[-1] < 0.6 * losses[0]
    assert info["steps"] == 120
    r = DiffPIR.from_pretrained(tmp_path / "p.safetensors", device="cpu")
    assert r.unet.config == TINY  # config travels in the safetensors metadata


def test_cli_train_prior(tmp_path, capsys):
    d = _data(tmp_path)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TINY.to_dict()))
    out = tmp_path / "p.safetensors"
    assert main(["train", "prior", "--data", str(d), "--output", str(out), "--steps", "3", "--batch-size", "2",
                 "--crop", "32", "--config", str(cfg)]) == 0
    assert out.exists() and json.loads(capsys.readouterr().out)["steps"] == 3
    assert main(["train", "prior", "--data", str(tmp_path / "none"), "--output", str(out)]) == 2
    # --time-limit 0 stops after one step and saves a state in --state-dir; --resume auto finishes the run
    base = ["train", "prior", "--data", str(d), "--output", str(tmp_path / "r.safetensors"), "--steps", "3",
            "--batch-size", "2", "--crop", "32", "--config", str(cfg), "--save-every", "2",
            "--state-dir", str(tmp_path / "st")]
    assert main(base + ["--time-limit", "0"]) == 0 and json.loads(capsys.readouterr().out)["steps"] == 1
    assert (tmp_path / "st" / "1.state").is_file()
    assert main(base + ["--resume", "auto"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["resumed_from"] == 1 and info["steps"] == 3


def test_fid_skipped_with_reason_when_weights_unavailable(monkeypatch, tmp_path):
    import pyiqa

    def offline(name, *a, **k):
        raise OSError("no route to host")

    monkeypatch.setattr(pyiqa, "create_metric", offline)
    monkeypatch.setattr(metrics, "_cache", {})
    monkeypatch.setattr(metrics, "_failed", {})
    value, reason = metrics.fid(str(tmp_path), str(tmp_path))
    assert value is None and "FID skipped" in reason and "no route to host" in reason
