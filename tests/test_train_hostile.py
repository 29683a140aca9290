"""Hostile input to the training commands (``restorekit train prior``, ``restorekit train --method diffir``): one
``error:`` line on stderr, exit code 2, the inputs byte-for-byte untouched and nothing created - checked before any
training work."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from restorekit.cli import main

from .conftest import TINY
from .test_diffir import TINY as TINY_IR


def _png(path, size=32, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _snapshot(root):
    """Every path under ``root`` with its content digest (None for folders and links)."""
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


def work_folder(tmp_path):
    """A work folder: ``data/`` (two 32x32 images), a tiny prior config and a tiny DiffIR config."""
    root = tmp_path / "w"
    (root / "data").mkdir(parents=True)
    for k, name in enumerate(("a.png", "b.png")):
        _png(root / "data" / name, seed=k)
    (root / "prior.yaml").write_text(yaml.safe_dump({"unet": TINY.to_dict(),
                                                      "train": {"steps": 1, "batch_size": 1, "crop": 16}}))
    _diffir_cfg(root)
    return root


@pytest.fixture
def w(tmp_path):
    return work_folder(tmp_path)


def _diffir_cfg(root, name="ir.yaml", **over):
    cfg = {"task": "sr", "network": TINY_IR.to_dict(), "degradation": "bicubic", "gt_size": 32, "batch_size": 1,
           "seed": 0, "stage1": {"total_iter": 1, "output": str(root / "s1.safetensors")}}
    for k, v in over.items():
        if k == "stage1":
            cfg["stage1"].update(v)
        else:
            cfg[k] = v
    (root / name).write_text(yaml.safe_dump(cfg))
    return root / name


def _prior(w, *extra):
    return ["train", "prior", "--data", str(w / "data"), "--config", str(w / "prior.yaml"), "--steps", "1", *extra]


def _diffir(w, *extra, config="ir.yaml", stage="1", steps="1"):
    return ["train", "--method", "diffir", "--stage", stage, "--config", str(w / config), "--data", str(w / "data"),
            *(["--steps", steps] if steps else []), *extra]


def _refused(capsys, argv, root):
    """Run the CLI; it must refuse with one ``error:`` line (returned), leaving ``root`` exactly as it was."""
    before = _snapshot(root)
    rc = main([a.replace("W/", str(root) + "/") for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert _snapshot(root) == before  # inputs byte-for-byte untouched, nothing created
    return lines[0]


# ---------------------------------------------------------------------------- --output

@pytest.mark.parametrize("output,needle", [
    ("W/data/a.png", "image suffix"),  # overwrote the training image with weights, exit 0
    ("W/data", "is a folder"),  # trained, then IsADirectoryError; left data.part and data_training_states/
    ("W/weights.PNG", "image suffix"),
    ("W/link.safetensors", "file of the training data"),  # a link to a training image
    ("W/data/a.png/w.safetensors", "is a file, not a folder"),
    ("W/init.safetensors", "--init weights"),
])
@pytest.mark.parametrize("trainer", ["prior", "diffir"])
def test_an_output_that_would_destroy_an_input_is_refused(capsys, w, output, needle, trainer):
    (w / "link.safetensors").symlink_to(w / "data" / "a.png")
    (w / "init.safetensors").write_bytes(b"weights")
    if trainer == "prior":
        argv = _prior(w, "--output", output, "--init", str(w / "init.safetensors"))
    else:
        if output.endswith("init.safetensors"):  # stage 2: the stage-1 weights it starts from
            argv, needle = _diffir(w, "--output", output, "--s1-weights", output, stage="2"), "stage-1 weights"
        else:
            argv = _diffir(w, "--output", output)
    msg = _refused(capsys, argv, w)
    assert needle in msg and "output" in msg, msg


def test_an_unwritable_output_folder_is_refused_before_training(capsys, w):
    import os

    ro = w / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores the mode
            pytest.skip("running as root: a read-only folder is writable")
        msg = _refused(capsys, _prior(w, "--output", str(ro / "p.safetensors")), w)
        assert "not writable" in msg
    finally:
        ro.chmod(0o700)


# ---------------------------------------------------------------------------- crop / memory

def test_prior_crop_larger_than_every_image_is_refused(capsys, w):
    """--crop 1000 on 32x32 images upscaled every image to 1000 px and ran out of memory (a traceback)."""
    msg = _refused(capsys, _prior(w, "--output", str(w / "p.safetensors"), "--crop", "1000"), w)
    assert "crop 1000" in msg and "32x32" in msg, msg


def test_prior_small_images_beside_a_big_one_are_still_upscaled(capsys, w, tmp_path):
    _png(w / "data" / "c.png", size=48, seed=3)
    out = tmp_path / "p.safetensors"
    assert main(_prior(w, "--output", str(out), "--crop", "40")) == 0, capsys.readouterr().err
    assert out.is_file()


_OOM_MESSAGE = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                "to allocate 1024000000 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("exc", [RuntimeError(_OOM_MESSAGE), torch.OutOfMemoryError("CUDA out of memory.")])
def test_prior_out_of_memory_is_one_line(capsys, w, monkeypatch, exc):
    import restorekit.methods.diffpir.train as tr

    def oom(self, *a, **k):
        raise exc

    monkeypatch.setattr(tr.GuidedUNet, "forward", oom)
    msg = _refused(capsys, _prior(w, "--output", str(w / "p.safetensors"), "--batch-size", "2"), w)
    assert "out of memory" in msg and "crop 16" in msg and "batch size 2" in msg and "--batch-size" in msg, msg


def test_other_runtime_errors_stay_tracebacks(w, monkeypatch):
    import restorekit.methods.diffpir.train as tr

    def bug(self, *a, **k):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(tr.GuidedUNet, "forward", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(_prior(w, "--output", str(w / "p.safetensors")))


def test_diffir_out_of_memory_is_one_line(capsys, w, monkeypatch):
    import restorekit.methods.diffir.train as tr

    def oom(self, *a, **k):
        raise RuntimeError(_OOM_MESSAGE)

    monkeypatch.setattr(tr.DiffIRS1, "forward", oom)
    msg = _refused(capsys, _diffir(w, "--output", str(w / "s.safetensors")), w)
    assert "out of memory" in msg and "gt_size 32" in msg and "batch_size 1" in msg, msg


# ---------------------------------------------------------------------------- DiffIR settings

@pytest.mark.parametrize("over,needles", [
    ({"gt_size": 16}, ["gt_size 16", "scale 4", "multiple of 32"]),  # pixel_unshuffle RuntimeError
    ({"gt_size": 48}, ["gt_size 48", "multiple of 32"]),
    ({"gt_size": 12, "task": "deblur", "network": {**TINY_IR.to_dict(), "variant": "deblur"}},
     ["gt_size 12", "scale 1", "multiple of 8"]),
    ({"gt_size": 0}, ["gt_size must be >= 1"]),
    ({"gt_size": 64}, ["gt_size 64 is larger than every training image", "32x32"]),
    ({"batch_size": 0}, ["batch_size must be >= 1"]),
    ({"stage1": {"optim_g": {"lr": float("nan")}}}, ["stage1.optim_g.lr must be a finite number"]),
    ({"stage1": {"optim_g": {"lr": 0}}}, ["stage1.optim_g.lr must be > 0"]),
    ({"stage1": {"total_iter": 0}}, ["stage1.total_iter must be >= 1"]),
])
def test_diffir_config_the_network_cannot_take_is_refused(capsys, w, over, needles):
    _diffir_cfg(w, "bad.yaml", **over)
    msg = _refused(capsys, _diffir(w, config="bad.yaml", steps=None), w)
    assert all(n in msg for n in needles), msg


@pytest.mark.parametrize("steps", ["-1", "0"])
def test_diffir_steps_below_one_are_refused(capsys, w, steps):
    """--steps -1 / 0 exited 0 and wrote untrained weights."""
    msg = _refused(capsys, _diffir(w, "--output", str(w / "s.safetensors"), steps=steps), w)
    assert f"--steps must be >= 1, got {steps}" in msg, msg


@pytest.mark.parametrize("extra,needle", [
    (["--lr", "inf"], "lr must be a finite number"),
    (["--lr", "0"], "lr must be > 0"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--crop", "7"], "crop size must be a multiple of 4"),
])
def test_prior_bad_numbers_are_refused(capsys, w, extra, needle):
    msg = _refused(capsys, _prior(w, "--output", str(w / "p.safetensors"), *extra), w)
    assert needle in msg, msg


@pytest.mark.parametrize("argv,needle", [
    (["--method", "diffir", "--stage", "1", "--batch-size", "4"], "--batch-size is not used by DiffIR training"),
    (["--method", "diffir", "--stage", "1", "--lr", "nan"], "--lr is not used by DiffIR training"),
    (["--method", "diffir", "--stage", "1", "--crop", "7"], "--crop is not used by DiffIR training"),
    (["--method", "diffbir", "--stage", "1", "--init", "x.pt"], "--init is not used by DiffBIR training"),
    (["prior", "--sd-path", "sd.ckpt"], "--sd-path is not used by prior training"),
])
def test_flags_a_trainer_does_not_read_are_refused(tmp_path, capsys, argv, needle):
    """They were silently ignored (exit 0 with the config's values)."""
    rc = main(["train", *argv, "--config", str(tmp_path / "c.yaml"), "--data", str(tmp_path),
               "--output", str(tmp_path / "o.pth")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "o.pth").exists()
