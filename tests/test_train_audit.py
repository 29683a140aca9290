"""Findings of the training audit: the prior trainer refuses its own config as --output, bad seeds and UNet
configs, flags it does not read and an output path ending with a separator; a corrupt training state is one line
for every trainer; a fresh run refuses a state folder holding an earlier run's states; an existing output is
announced before it is overwritten. Each refusal: one ``error:`` line, exit code 2, nothing changed."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from restorekit.cli import main
from restorekit.errors import ConfigError

from .conftest import TINY
from .test_train_hostile import _diffir_cfg, _refused, work_folder




@pytest.fixture
def w(tmp_path):
    """test_train_hostile's work folder: ``data/`` (two 32x32 images), ``prior.yaml`` (1 step, crop 16) and a
    tiny DiffIR stage-1 config ``ir.yaml``."""
    return work_folder(tmp_path)


def _prior_cfg(root, name="prior.yaml", unet=None, **train):
    cfg = {"unet": {**TINY.to_dict(), **(unet or {})}, "train": {"steps": 1, "batch_size": 1, "crop": 16, **train}}
    (root / name).write_text(yaml.safe_dump(cfg))
    return root / name


def _prior(w, *extra, config="prior.yaml", steps="1"):
    return ["train", "prior", "--data", str(w / "data"), "--config", str(w / config),
            *(["--steps", steps] if steps else []), *extra]


def _diffir(w, *extra, steps="1"):
    return ["train", "--method", "diffir", "--stage", "1", "--config", str(w / "ir.yaml"), "--data", str(w / "data"),
            *(["--steps", steps] if steps else []), *extra]


@pytest.fixture
def no_data_reads(monkeypatch):
    """Reading the training data fails the test: the refusals come before it."""
    import restorekit.methods.diffir.train  # noqa: F401  (its trainer imports load_images from training)
    import restorekit.methods.diffpir.train as tr
    import restorekit.training as training

    def fail(*a, **k):
        raise AssertionError("the training data was read before the refusal")

    monkeypatch.setattr(tr, "load_images", fail)
    monkeypatch.setattr(training, "load_images", fail)


# ---------------------------------------------------------------------------- 1. the config as --output

def test_prior_refuses_its_config_as_output(capsys, w, no_data_reads):
    """--output c.yaml overwrote the YAML config with the weights, exit 0."""
    msg = _refused(capsys, _prior(w, "--output", str(w / "prior.yaml")), w)
    assert "prior.yaml is the training config; refusing to overwrite an input" in msg, msg


# ---------------------------------------------------------------------------- 2. seeds and UNet configs

@pytest.mark.parametrize("unet,train,extra,needles", [
    ({}, {"seed": -1}, [], ["bad prior config", "train: seed must be >= 0, got -1"]),
    ({}, {}, ["--seed", "-5"], ["seed must be >= 0, got -5"]),
    ({}, {"seed": 2 ** 64}, [], ["seed must be at most"]),
    ({"model_channels": 0}, {}, [], ["model_channels", "must be a whole number >= 1, got 0"]),
    ({"model_channels": 15}, {}, [], ["norm_groups 8 does not divide the 15 channels"]),
    ({"norm_groups": 7}, {}, [], ["norm_groups 7 does not divide the 16 channels"]),
    ({"channel_mult": "abc"}, {}, [], ["channel_mult must be a list of positive numbers", "'abc'"]),
    ({"channel_mult": [1, 0]}, {}, [], ["channel_mult must be a list of positive numbers"]),
    ({"num_head_channels": 12}, {}, [], ["num_head_channels 12 does not divide"]),
    ({"num_head_channels": -1, "num_heads": 5}, {}, [], ["num_heads", "5", "does not divide"]),
    ({"attention_resolutions": "8,x"}, {}, [], ["attention_resolutions must be comma-separated"]),
    ({"num_res_blocks": 1.5}, {}, [], ["num_res_blocks must be a whole number"]),
    ({"dropout": 2}, {}, [], ["dropout must be a number in [0, 1)"]),
])
def test_prior_bad_seed_or_unet_config_is_one_line(capsys, w, no_data_reads, unet, train, extra, needles):
    """Each was a Python traceback with exit code 1 (model_channels 0 even ran the network first)."""
    _prior_cfg(w, "bad.yaml", unet=unet, **train)
    msg = _refused(capsys, _prior(w, "--output", str(w / "p.safetensors"), *extra, config="bad.yaml"), w)
    assert all(n in msg for n in needles), msg
    if unet:
        assert "bad.yaml" in msg, msg


def test_prior_unet_config_is_checked_through_the_python_api(tmp_path):
    from restorekit.errors import ConfigError
    from restorekit.methods.diffpir.train import train_prior
    from restorekit.nets.guided_unet import GuidedUNetConfig

    bad = GuidedUNetConfig(**{**TINY.to_dict(), "norm_groups": 7})
    with pytest.raises(ConfigError, match="norm_groups 7"):
        train_prior(tmp_path / "missing", tmp_path / "p.safetensors", steps=1, crop=16, config=bad)


def test_diffir_negative_seed_is_one_line(capsys, w, no_data_reads):
    _diffir_cfg(w, seed=-3)
    msg = _refused(capsys, _diffir(w, "--output", str(w / "s.safetensors")), w)
    assert "seed must be >= 0, got -3" in msg, msg


# ---------------------------------------------------------------------------- 3. corrupt training states

def _train_prior_states(capsys, w, steps="3", output="p.safetensors"):
    assert main(_prior(w, "--output", str(w / output), "--save-every", "1", steps=steps)) == 0, \
        capsys.readouterr().err
    capsys.readouterr()
    return w / (output.rsplit(".", 1)[0] + "_training_states")


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "tensors"])
def test_prior_corrupt_resume_state_is_one_line(capsys, w, kind):
    """4096 random bytes as --resume gave a 28-line torch traceback (IndexError in the weights-only unpickler)."""
    bad = w / "bad.state"
    if kind == "random":
        bad.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8).numpy().tobytes())
    elif kind == "truncated":
        good = _train_prior_states(capsys, w, steps="1") / "1.state"
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        bad.write_bytes(b"")
    else:  # a valid torch file that is not a training state
        torch.save({"weight": torch.zeros(2)}, bad)
    msg = _refused(capsys, _prior(w, "--output", str(w / "b.safetensors"), "--resume", str(bad)), w)
    assert str(bad) in msg and "--resume" in msg, msg
    assert ("not a restorekit training state" in msg) if kind == "tensors" else ("cannot load" in msg), msg


def test_diffir_corrupt_resume_state_is_one_line(capsys, w):
    bad = w / "bad.state"
    bad.write_bytes(b"\x80\x02" + bytes(range(256)) * 8)
    msg = _refused(capsys, _diffir(w, "--output", str(w / "s.safetensors"), "--resume", str(bad)), w)
    assert str(bad) in msg and "cannot load the training state" in msg, msg


def test_state_of_another_network_is_one_line(capsys, w):
    """Same options, another UNet: the saved network does not fit (the meta does not record the UNet)."""
    sdir = _train_prior_states(capsys, w, steps="1")
    _prior_cfg(w, "wide.yaml", unet={"model_channels": 32})
    msg = _refused(capsys, _prior(w, "--output", str(w / "p2.safetensors"), "--resume", str(sdir / "1.state"),
                                  config="wide.yaml"), w)
    assert "state in" in msg and "does not fit this run" in msg, msg


# ---------------------------------------------------------------------------- 4. an existing output

def test_prior_and_diffir_announce_an_existing_output(capsys, w):
    out = w / "p.safetensors"
    assert main(_prior(w, "--output", str(out))) == 0
    assert "exists and will be overwritten" not in capsys.readouterr().err
    assert main(_prior(w, "--output", str(out))) == 0
    assert f"note: {out} exists and will be overwritten" in capsys.readouterr().err
    s = w / "s.safetensors"
    assert main(_diffir(w, "--output", str(s))) == 0
    capsys.readouterr()
    assert main(_diffir(w, "--output", str(s))) == 0
    assert f"note: {s} exists and will be overwritten" in capsys.readouterr().err


# ---------------------------------------------------------------------------- 5. states of an earlier run

def test_fresh_prior_run_refuses_a_folder_of_earlier_states_and_resume_auto_continues(capsys, w):
    """A fresh shorter run rewrote the first states and left the later ones; --resume auto then refused."""
    sdir = _train_prior_states(capsys, w, steps="3")
    assert sorted(p.name for p in sdir.glob("*.state")) == ["1.state", "2.state", "3.state"]
    msg = _refused(capsys, _prior(w, "--output", str(w / "p.safetensors"), "--save-every", "1", steps="2"), w)
    assert str(sdir) in msg and "3.state" in msg and "--resume auto" in msg and "delete" in msg, msg
    # the earlier run is intact: resuming it works
    assert main(_prior(w, "--output", str(w / "p.safetensors"), "--save-every", "1", "--resume", "auto",
                       steps="3")) == 0
    assert json.loads(capsys.readouterr().out)["resumed_from"] == 3


def test_fresh_diffir_run_refuses_a_folder_of_earlier_states(capsys, w):
    out = str(w / "s.safetensors")
    assert main(_diffir(w, "--output", out, "--save-every", "1")) == 0
    capsys.readouterr()
    msg = _refused(capsys, _diffir(w, "--output", out, "--save-every", "1"), w)
    assert "s_training_states" in msg and "1.state" in msg and "--resume auto" in msg, msg


def test_step_loop_refuses_earlier_states_for_every_trainer(tmp_path):
    """The shared loop checks it too (DiffBIR does not call check_training_output)."""
    from restorekit.errors import ConfigError
    from restorekit.training import StepLoop

    (tmp_path / "5.state").write_bytes(b"x")
    loop = StepLoop(2, tmp_path, save_every=1, log=lambda s: None)
    with pytest.raises(ConfigError, match="5.state.*--resume auto"):
        loop.resume(None, {})
    assert StepLoop(2, tmp_path, save_every=0, log=lambda s: None).resume(None, {}) == 0  # writes no states


# ---------------------------------------------------------------------------- 6. an output ending with a separator

@pytest.mark.parametrize("trainer", ["prior", "diffir"])
def test_output_ending_with_a_separator_is_refused(capsys, w, no_data_reads, trainer):
    """--output outdir/ (no such folder) wrote a file named outdir."""
    out = str(w / "outdir") + "/"
    argv = _prior(w, "--output", out) if trainer == "prior" else _diffir(w, "--output", out)
    msg = _refused(capsys, argv, w)
    assert "is a folder; give a weights file name such as" in msg and "outdir/model.safetensors" in msg, msg
    assert not (w / "outdir").exists()


# ---------------------------------------------------------------------------- 7. flags the prior trainer ignores

def test_prior_refuses_stage(capsys, w, no_data_reads):
    msg = _refused(capsys, _prior(w, "--output", str(w / "p.safetensors"), "--stage", "1"), w)
    assert "--stage is not used by prior training" in msg, msg


def test_stage_without_method_asks_what_to_train(capsys, w):
    msg = _refused(capsys, ["train", "--stage", "1", "--config", str(w / "ir.yaml"), "--data", str(w / "data")], w)
    assert "say what to train" in msg, msg



@pytest.mark.parametrize("seed,needle", [(-1, "train.seed must be >= 0, got -1"),
                                         (2 ** 64, "train.seed must be at most 2**63 - 1")])
def test_diffbir_bad_seed_is_one_line_naming_it(seed, needle):
    from restorekit.methods.diffbir.train import train_stage1

    cfg = {"train": {"seed": seed}, "model": {"swinir": {}}}
    with pytest.raises(ConfigError) as e:
        train_stage1(cfg, data="unused", output="unused")
    assert needle in str(e.value) and "\n" not in str(e.value)
