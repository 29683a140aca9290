"""The run's notes (demo model, few steps, an output overwritten) wait until the first image is ready: a mistake
found before then is the only line printed. Flags a run would ignore are refused. `restorekit models` names each
file's source and where to put it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from restorekit.cli import main


@pytest.fixture
def img(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(p)
    return p


def _err(capsys, argv):
    rc = main(["run", "--no-progress", *[str(a) for a in argv]])
    return rc, capsys.readouterr().err


def _alone(rc, err, needle):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err


@pytest.mark.parametrize("extra,needle", [
    (["--task", "deblur"], "non-blind: give the blur kernel"),
    (["--task", "inpaint"], "needs --mask-file"),
    (["--task", "inpaint", "--degrade", "--mask", "box", "--box-size", "32"], "needs an image over 64 px"),
])
def test_an_error_found_at_the_first_image_is_printed_without_the_demo_note(capsys, tmp_path, img, extra, needle):
    out = tmp_path / "o.png"
    rc, err = _err(capsys, ["--input", img, "--output", out, *extra])
    _alone(rc, err, needle)
    assert not out.exists()


def test_a_mask_of_another_size_is_alone_and_an_existing_output_is_kept(capsys, tmp_path, img):
    out = tmp_path / "o.png"
    out.write_bytes(b"keep")
    mask = tmp_path / "m.png"
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(mask)
    rc, err = _err(capsys, ["--task", "inpaint", "--input", img, "--output", out, "--mask-file", mask])
    _alone(rc, err, "mask")
    assert out.read_bytes() == b"keep"
    rc, err = _err(capsys, ["--method", "classical", "--task", "deblur", "--input", img, "--output", out,
                            "--opt", "algorithm=foo"])
    _alone(rc, err, "algorithm 'foo'")
    assert out.read_bytes() == b"keep"


def test_the_notes_come_once_a_run_starts(capsys, tmp_path, img):
    out = tmp_path / "o.png"
    out.write_bytes(b"old")
    rc, err = _err(capsys, ["--task", "deblur", "--degrade", "--steps", "3", "--input", img, "--output", out])
    assert rc == 0, err
    assert "NOTE: using the bundled DEMO model 'diffpir-demo'" in err
    assert f"note: {out} exists and will be overwritten" in err and "warning: --steps 3" in err
    assert out.read_bytes() != b"old"


@pytest.mark.parametrize("extra,needle", [
    (["--method", "diffir", "--task", "deblur", "--kernel-file", "K"], "--kernel-file: DiffIR deblurring is blind"),
    (["--method", "classical", "--task", "deblur", "--opt", "algorithm=blind_wiener", "--kernel-file", "K"],
     "--kernel-file: classical deblurring is blind"),
    (["--method", "diffir", "--task", "sr", "--sr-mode", "blur"], "--sr-mode: DiffIR super-resolution is blind"),
    (["--method", "diffpir", "--task", "sr", "--sr-mode", "realesrgan"], "--sr-mode realesrgan is a random"),
])
def test_flags_a_run_would_ignore_are_refused(capsys, tmp_path, img, extra, needle):
    k = tmp_path / "k.npy"
    np.save(k, np.full((5, 5), 1 / 25, np.float32))
    out = tmp_path / "o.png"
    rc, err = _err(capsys, ["--input", img, "--output", out, *[k if a == "K" else a for a in extra]])
    _alone(rc, err, needle)
    assert not out.exists()


def test_the_same_flags_with_degrade_are_used(capsys, tmp_path, img):
    k = tmp_path / "k.npy"
    np.save(k, np.full((5, 5), 1 / 25, np.float32))
    rc, err = _err(capsys, ["--method", "diffir", "--task", "deblur", "--degrade", "--kernel-file", k, "--input", img,
                            "--output", tmp_path / "a.png"])
    assert rc == 0, err
    rc, err = _err(capsys, ["--method", "classical", "--task", "sr", "--degrade", "--sr-mode", "blur", "--input", img,
                            "--output", tmp_path / "b.png"])
    assert rc == 0, err


def test_models_names_sources_and_where_to_put_files(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RESTOREKIT_CACHE", str(tmp_path / "cache"))
    assert main(["models", "--method", "diffpir"]) == 0
    out = capsys.readouterr().out
    assert "source: bundled with restorekit" in out
    assert "source: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt" in out
    assert f"put 256x256_diffusion_uncond.pt in {tmp_path / 'cache'}" in out
    assert main(["models", "--method", "foo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no models of method 'foo'") and err.count("\n") == 1
