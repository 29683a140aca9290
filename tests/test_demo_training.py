"""How the demo models are trained: prior configs (YAML), on-device crops, time budgets, the prior's exact resume
after a time limit, DiffIR's mixed SR degradation and stage time limits."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open

from restorekit.cli import main
from restorekit.errors import ConfigError
from restorekit.methods.diffir.train import make_pairs, network_config, train_diffir
from restorekit.methods.diffpir.train import (
    TRAIN_DEFAULTS,
    DeviceEMA,
    device_crops,
    load_prior_config,
    train_prior,
)

from .conftest import TINY
from .test_diffir import TINY as TINY_IR
from .test_diffir_train import _images


@pytest.mark.parametrize("name", ["demo_prior.yaml", "demo_prior_cpu.yaml"])
def test_committed_demo_prior_config_parses(name):
    cfg, train = load_prior_config(f"configs/diffpir/{name}")
    assert set(train) <= set(TRAIN_DEFAULTS) and train["crop"] % cfg.size_multiple == 0
    assert train["save_dtype"] == "fp16" and cfg.out_channels == 3


def test_bundled_prior_is_what_the_config_trains():
    """The bundled diffpir-demo file records the network and the options of configs/diffpir/demo_prior.yaml (its
    step count was cut by the config's time budget)."""
    from restorekit.weights import load_state_dict

    cfg, train = load_prior_config("configs/diffpir/demo_prior.yaml")
    _, meta = load_state_dict("restorekit/data/diffpir_demo_prior.safetensors")
    assert json.loads(meta["unet_config"]) == cfg.to_dict()
    info = json.loads(meta["training"])
    for k in ("batch_size", "crop", "lr", "seed", "t_power"):
        assert info[k] == pytest.approx(train[k]), k
    assert info["mixed_precision"] == train["mixed_precision"] and info["images"] == 199
    assert 0 < info["steps"] <= train["steps"] and info["seconds"] <= train["time_budget"]


@pytest.mark.parametrize("power", [1.0, 3.0])
def test_t_power_draws_the_low_noise_end_more_often(tmp_path, monkeypatch, power):
    import restorekit.methods.diffpir.train as tr

    seen = []

    class Spy(tr.GuidedUNet):
        def forward(self, x, t, *a, **k):
            seen.append(t.clone())
            return super().forward(x, t, *a, **k)

    monkeypatch.setattr(tr, "GuidedUNet", Spy)
    d = _images(tmp_path / "data")
    info = train_prior(d, tmp_path / "p.safetensors", steps=20, batch_size=8, crop=16, config=TINY, t_power=power,
                       log=lambda s: None)
    t = torch.cat(seen).double()
    assert t.numel() == 160 and t.min() >= 0 and t.max() <= 999 and info["t_power"] == power
    # mean of floor(1000 u^p): 500 for p = 1, 250 for p = 3 (standard error of 160 draws: about 23)
    assert (t.mean() > 400) if power == 1.0 else (t.mean() < 330)
    with pytest.raises(ConfigError, match="t_power"):
        train_prior(d, tmp_path / "q.safetensors", steps=1, batch_size=1, crop=16, config=TINY, t_power=0)


def test_prior_config_rejects_unknown_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"unet": TINY.to_dict(), "train": {"stepz": 3}}))
    with pytest.raises(ConfigError, match="stepz"):
        load_prior_config(p)


def test_cli_trains_prior_from_yaml_and_flags_win(tmp_path, capsys):
    d = _images(tmp_path / "data")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"unet": TINY.to_dict(), "train": {"steps": 50, "batch_size": 2, "crop": 32,
                                                                      "save_dtype": "fp16"}}))
    out = tmp_path / "p.safetensors"
    assert main(["train", "prior", "--config", str(cfg), "--data", str(d), "--output", str(out),
                 "--steps", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["steps"] == 2 and info["batch_size"] == 2 and info["crop"] == 32  # --steps beat the config's 50
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["unet_config"]) == TINY.to_dict()
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())


def test_time_budget_shortens_the_run(tmp_path):
    d = _images(tmp_path / "data")
    logs = []
    info = train_prior(d, tmp_path / "p.safetensors", steps=100000, batch_size=1, crop=16, config=TINY,
                       time_budget=1e-3, log=logs.append)
    assert info["steps"] == 51  # measured after 50 steps; then at least one more
    assert any("time budget" in s for s in logs)


def test_device_crops_cover_the_range_and_rescale():
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 200).repeat(3, 100, 1)  # (3, 100, 200): value = column / 199
    x = device_crops([ramp], 64, 32, g)
    assert x.shape == (64, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    spans = (x.amax((1, 2, 3)) - x.amin((1, 2, 3))) / 2  # in [0, 1] units
    # a crop of side 32/s (s in [0.5, 1]) spans 31/199 .. 63/199 of the ramp before resizing
    assert spans.min() > 0.12 and spans.max() > 0.25


def test_device_ema_follows_the_ramp():
    m = torch.nn.Linear(2, 2)
    e = DeviceEMA(m, 0.999)
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    e.update(m)  # n = 1: d = 2/11
    assert torch.allclose(e.state["weight"], w0 + 9 / 11, atol=1e-6)


def test_mixed_sr_degradation_splits_the_batch():
    cfg = {"task": "sr", "degradation": "mixed", "p_bicubic": 0.5}
    net_cfg = network_config({"network": {**TINY_IR.to_dict(), "variant": "sr", "scale": 4}})
    gt = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lq, _ = make_pairs(gt, "sr", cfg, net_cfg, np.random.default_rng(0))
    bic = F.interpolate(gt[:2], scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    assert lq.shape == (4, 3, 8, 8) and torch.equal(lq[:2], bic)
    assert not torch.allclose(lq[2:], F.interpolate(gt[2:], scale_factor=0.25, mode="bicubic", antialias=True,
                                                    align_corners=False).clamp(0, 1), atol=1e-3)
    with pytest.raises(ConfigError, match="degradation"):
        make_pairs(gt, "sr", {"degradation": "jpeg"}, net_cfg, np.random.default_rng(0))


def test_diffir_stage_time_limit_saves_early(tmp_path):
    d = _images(tmp_path / "data", size=32)
    cfg = {"task": "sr", "network": {**TINY_IR.to_dict(), "variant": "sr", "scale": 4}, "degradation": "bicubic",
           "gt_size": 32, "batch_size": 2, "seed": 0,
           "stage1": {"steps": 1000, "time_limit": 0.0, "output": str(tmp_path / "s1.safetensors")}}
    info = train_diffir(cfg, 1, data=str(d), log=lambda s: None)
    assert info["steps"] == 1 and (tmp_path / "s1.safetensors").exists()


def test_prior_resume_after_time_limit_equals_uninterrupted_run(tmp_path):
    """The prior trainer runs on the shared StepLoop: a run stopped by ``time_limit`` writes a training state
    where it stopped, and resuming it gives the uninterrupted run's EMA weights bit for bit."""
    from safetensors.torch import load_file

    d = _images(tmp_path / "data")
    kw = {"steps": 6, "batch_size": 2, "crop": 16, "config": TINY, "save_every": 3, "log": lambda s: None}
    full = train_prior(d, tmp_path / "a.safetensors", **kw)
    assert sorted(p.name for p in (tmp_path / "a_training_states").iterdir()) == ["3.state", "6.state"]
    cut = train_prior(d, tmp_path / "b.safetensors", time_limit=0.0, **kw)
    assert cut["steps"] == 1 and (tmp_path / "b_training_states" / "1.state").is_file()
    res = train_prior(d, tmp_path / "b.safetensors", resume="auto", **kw)
    assert res["resumed_from"] == 1 and res["steps"] == 6 and res["final_loss"] == full["final_loss"]
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_prior_run_is_extended_with_init_not_resume(tmp_path):
    """README: --resume auto continues the same run only (a state of a run with another --steps is refused); a
    finished run goes on from its weights with init and a new step count."""
    d = _images(tmp_path / "data")
    kw = {"batch_size": 2, "crop": 16, "config": TINY, "save_every": 2, "log": lambda s: None}
    train_prior(d, tmp_path / "a.safetensors", steps=2, **kw)
    with pytest.raises(ConfigError, match="training state of another run .*steps"):
        train_prior(d, tmp_path / "a.safetensors", steps=3, resume="auto", **kw)
    more = train_prior(d, tmp_path / "b.safetensors", steps=1, init=tmp_path / "a.safetensors",
                       **{**kw, "save_every": 0})
    assert more["steps"] == 1 and (tmp_path / "b.safetensors").is_file()
