"""Hostile input through the CLI entry point and the Python API: a one-line error (exit 2) with nothing written and
the inputs untouched, or - for odd but valid input - a sane result (exit 0)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit import Restorer
from restorekit.cli import main
from restorekit.errors import RestoreKitError
from restorekit.operators import Blur, Inpainting, gaussian_kernel


def _png(path, hw=(24, 24), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)
    return path


def _digest(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def scene(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    img = _png(src / "x.png")
    return tmp_path, img, ["--weights", str(tiny_weights), "--no-progress"]


def _run_error(capsys, argv, scene_dir, must_not_exist=()):
    before = _digest(scene_dir / "in")
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and len(lines) <= 3, err
    assert _digest(scene_dir / "in") == before  # inputs byte-identical
    for p in must_not_exist:
        assert not p.exists(), p
    return errors[0]


@pytest.mark.parametrize("extra,needle", [
    (["--task", "sr", "--scale", "0", "--degrade"], "--scale must be in [1, 16]"),
    (["--task", "deblur", "--degrade", "--skip-type", "uniform", "--steps", "2000"], "--steps must be in [1, 1000]"),
    (["--task", "deblur", "--degrade", "--noise", "nan"], "--noise must be a finite number"),
    (["--task", "deblur", "--degrade", "--noise", "inf"], "--noise must be a finite number"),
    (["--task", "deblur", "--degrade", "--lambda", "nan"], "--lambda must be a finite number"),
    (["--task", "deblur", "--degrade", "--zeta", "3"], "--zeta must be in [0, 1]"),
    (["--task", "deblur", "--degrade", "--opt", "guidance_scale=abc"], "guidance_scale expects a number"),
    (["--task", "deblur", "--degrade", "--opt", "eta=abc"], "--eta expects a number"),
    (["--task", "deblur", "--degrade", "--eta", "0.2", "--opt", "eta=0.5"], "contradicts"),
    (["--task", "deblur", "--degrade", "--opt", "no_such_option=1"], "no_such_option"),
    (["--task", "colorize"], "does not do task"),
    (["--task", "deblur", "--degrade", "--device", "gpu"], "unknown device"),
    (["--task", "deblur", "--degrade", "--device", "cuda:7"], "cuda:7"),
    # found only when sampling starts, after the degraded image was made: it must not be written either
    (["--task", "deblur", "--degrade", "--steps", "2", "--opt", "t_start=99999"], "t_start must be in [0, 999]"),
    (["--task", "deblur", "--degrade", "--opt", "noise_level_model=-1"], "noise_level_model must be >= 0"),
])
def test_bad_options_exit_2_before_any_work(capsys, scene, extra, needle):
    tmp, img, common = scene
    out = tmp / "out" / "r.png"
    msg = _run_error(capsys, ["run", "--input", str(img), "--output", str(out)] + common + extra, tmp,
                     must_not_exist=[out, out.parent, out.with_name("r_degraded.png")])
    assert needle in msg


def test_output_under_a_file(capsys, scene):
    tmp, img, common = scene
    (tmp / "afile").write_text("x")
    _run_error(capsys, ["run", "--task", "deblur", "--degrade", "--steps", "2", "--input", str(img), "--output",
                        str(tmp / "afile" / "r.png")] + common, tmp)
    assert (tmp / "afile").read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into read-only folders")
def test_output_in_read_only_folder(capsys, scene):
    tmp, img, common = scene
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        msg = _run_error(capsys, ["run", "--task", "deblur", "--degrade", "--steps", "2", "--input", str(img),
                                  "--output", str(ro / "r.png")] + common, tmp)
        assert "not writable" in msg
    finally:
        ro.chmod(0o755)


def test_output_equal_to_input_is_refused(capsys, scene):
    tmp, img, common = scene
    msg = _run_error(capsys, ["run", "--task", "deblur", "--degrade", "--steps", "2", "--input", str(img),
                              "--output", str(img)] + common, tmp)
    assert "refusing to overwrite" in msg
    # with --overwrite it is the user's explicit choice
    assert main(["run", "--task", "deblur", "--degrade", "--steps", "2", "--input", str(img), "--output", str(img),
                 "--save-degraded", str(tmp / "deg.png"), "--overwrite"] + common) == 0


def test_huge_diffpir_image_refused_up_front(capsys, scene):
    tmp, _, common = scene
    big = tmp / "in" / "big.png"
    Image.fromarray(np.zeros((3000, 4000, 3), np.uint8)).save(big)
    msg = _run_error(capsys, ["run", "--task", "deblur", "--degrade", "--input", str(big), "--output",
                              str(tmp / "o.png")] + common, tmp, must_not_exist=[tmp / "o.png"])
    assert "4000x3000" in msg and "--max-megapixels" in msg


@pytest.mark.parametrize("hw", [(1, 1), (3, 3), (5, 7)])
def test_tiny_images_restore_and_skip_ssim(capsys, scene, hw):
    tmp, _, common = scene
    img = _png(tmp / "in" / "tiny.png", hw)
    out = tmp / "o.png"
    rc = main(["run", "--task", "deblur", "--degrade", "--kernel-size", "3", "--steps", "3", "--input", str(img),
               "--output", str(out)] + common)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "SSIM skipped" in err and "Traceback" not in err
    assert Image.open(out).size == (hw[1], hw[0])


def test_valid_opt_that_is_also_a_flag(capsys, scene):
    tmp, img, common = scene
    out = tmp / "o.png"
    assert main(["run", "--task", "deblur", "--degrade", "--steps", "2", "--opt", "eta=0.5", "--opt", "zeta=0.3",
                 "--input", str(img), "--output", str(out), "--json"] + common) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["eta"] == 0.5 and summary["config"]["zeta"] == 0.3


def test_new_folder_and_suffixless_output(capsys, scene):
    tmp, img, common = scene
    for name in ("newdir/", "plainname"):
        arg = str(tmp / name) if not name.endswith("/") else str(tmp / name.rstrip("/")) + "/"
        assert main(["run", "--task", "deblur", "--degrade", "--steps", "2", "--input", str(img),
                     "--output", arg] + common) == 0
        folder = tmp / name.rstrip("/")
        assert (folder / "x_diffpir_deblur.png").is_file() and (folder / "x_diffpir_deblur_degraded.png").is_file()


def test_existing_single_output_is_overwritten_with_a_note(capsys, scene):
    tmp, img, common = scene
    out = tmp / "o.png"
    out.write_bytes(b"old")
    assert main(["run", "--task", "deblur", "--degrade", "--steps", "2", "--input", str(img),
                 "--output", str(out)] + common) == 0
    assert "will be overwritten" in capsys.readouterr().err
    assert Image.open(out).size == (24, 24)


def test_few_steps_warn(capsys, scene):
    tmp, img, common = scene
    assert main(["run", "--task", "deblur", "--degrade", "--steps", "2", "--input", str(img),
                 "--output", str(tmp / "o.png")] + common) == 0
    assert "far below" in capsys.readouterr().err


# ---------------------------------------------------------------------------- Python API
@pytest.fixture
def restorer(tiny_weights):
    return Restorer.from_pretrained(tiny_weights, method="diffpir", device="cpu")


def test_api_bad_inputs(restorer):
    y = torch.rand(1, 3, 16, 16)
    with pytest.raises(RestoreKitError, match="mask is 8x8 but the image is 16x16"):
        restorer.restore(y, task="inpaint", operator=Inpainting(torch.ones(8, 8)), steps=2)
    with pytest.raises(RestoreKitError, match="empty"):
        restorer.restore(torch.zeros(3, 0, 16), task="deblur", operator=Blur(gaussian_kernel(5, 1.0)), steps=2)
    y_nan = y.clone()
    y_nan[0, 0, 3, 3] = float("nan")
    with pytest.raises(RestoreKitError, match="NaN"):
        restorer.restore(y_nan, task="deblur", operator=Blur(gaussian_kernel(5, 1.0)), steps=2)
    with pytest.raises(RestoreKitError, match="divide by 255"):
        restorer.restore(np.full((16, 16, 3), 200.0, np.float32), task="deblur",
                         operator=Blur(gaussian_kernel(5, 1.0)), steps=2)
    for dev in ("gpu", "cuda:7"):
        with pytest.raises(RestoreKitError, match="device"):
            Restorer.from_pretrained(device=dev)


def test_api_noisy_float_input_is_not_clamped(restorer):
    """A noisy observation strays outside [0, 1]; it is used as given (the official scripts do not clip y)."""
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(1, 3, 16, 16, generator=g) + 0.3 * torch.randn(1, 3, 16, 16, generator=g))
    assert y.min() < 0 and y.max() > 1
    op = Blur(gaussian_kernel(5, 1.0))
    a = restorer.restore(y, task="deblur", operator=op, steps=2, seed=0)
    b = restorer.restore(y.clamp(0, 1), task="deblur", operator=op, steps=2, seed=0)
    assert not torch.allclose(a, b)


def test_from_pretrained_without_arguments_loads_the_default():
    r = Restorer.from_pretrained(device="cpu")
    assert r.name == "diffpir" and r.card.name == "diffpir-demo"


def test_diffbir_offline_lists_every_missing_file_once(capsys, scene):
    tmp, img, _ = scene
    rc = main(["run", "--method", "diffbir", "--task", "sr", "--input", str(img), "--output", str(tmp / "o.png"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and not (tmp / "o.png").exists()
    assert err.count("error:") == 1 and "needs 5 file(s)" in err
    for f in ("sd2.1-base-zsnr-laionaes5.ckpt", "vocab.json", "merges.txt", "DiffBIR_v2.1.pt"):
        assert f in err
    assert err.count("put it at") == 5


def test_to_moves_the_networks(restorer):
    assert restorer.to("cpu") is restorer and restorer.device.type == "cpu"
    assert all(p.device.type == "cpu" for p in restorer.unet.parameters())
    with pytest.raises(RestoreKitError, match="device"):
        restorer.to("gpu")


def _png_declaring(path, w, h, rows):
    """A PNG whose header says w x h (8-bit RGB) but whose pixel data holds only ``rows`` rows."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(3 * w) for _ in range(rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("w,h,rows,needle", [
    (100_000, 100_000, 1, "over 179 M pixels"),      # OpenCV raised cv2.error (traceback)
    (12_000, 12_000, 10, "12000x12000 pixels"),      # PIL decoded 144 MP of mostly zeros, then the run hung
    (32, 32, 4, "damaged or truncated"),             # PIL filled 28 missing rows with black without a word
])
def test_decompression_bombs_and_short_pngs_are_refused(capsys, scene, w, h, rows, needle):
    tmp, _, common = scene
    bad = _png_declaring(tmp / "in" / "bad.png", w, h, rows)
    out = tmp / "out"
    msg = _run_error(capsys, ["run", "--method", "classical", "--task", "deblur", "--degrade", "--input", str(bad),
                              "--output", str(out)], tmp, must_not_exist=[out])
    assert needle in msg and "bad.png" in msg


def test_weights_that_do_not_fit_give_one_line(capsys, scene, tiny_weights):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    tmp, img, _ = scene
    sd = load_file(str(tiny_weights))
    with safe_open(str(tiny_weights), "pt") as f:
        meta = f.metadata()
    sd.pop(sorted(sd)[0])
    broken = tmp / "broken.safetensors"
    save_file(sd, str(broken), metadata=meta)
    out = tmp / "out"
    msg = _run_error(capsys, ["run", "--task", "deblur", "--degrade", "--input", str(img), "--output", str(out),
                              "--weights", str(broken), "--no-progress"], tmp, must_not_exist=[out])
    assert "1 missing keys" in msg


def test_sigterm_ends_like_ctrl_c_and_removes_the_half_written_file(capsys, tmp_path, monkeypatch):
    import signal

    from restorekit import cli
    from restorekit.io import _atomic_write

    target = tmp_path / "o.png"

    def killed_while_writing(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half an image")
        os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` or `kill` would

    monkeypatch.setattr(cli, "cmd_models", lambda args: _atomic_write(target, killed_while_writing))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["models"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the target nor its .part file
    assert signal.getsignal(signal.SIGTERM) is before  # main puts the previous handler back


@pytest.mark.parametrize("extra,needle", [
    (["--steps", "-1"], "steps must be >= 1"),  # wrote an untrained model with exit 0
    (["--config", "BAD_YAML"], "bad prior config"),  # a 51-line traceback
])
def test_prior_training_refuses_bad_settings(capsys, tmp_path, extra, needle):
    data = tmp_path / "data"
    data.mkdir()
    for k in range(2):
        _png(data / f"{k}.png", (64, 64), seed=k)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("unet:\n  output: [\n  x: 1\n")
    out = tmp_path / "out" / "p.safetensors"
    argv = ["train", "prior", "--data", str(data), "--output", str(out)] + [str(bad_yaml) if a == "BAD_YAML" else a
                                                                          for a in extra]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert not out.exists() and not out.parent.exists()


def test_missing_mask_file_is_named_as_a_mask(capsys, scene):
    tmp, img, common = scene
    out = tmp / "out"
    msg = _run_error(capsys, ["run", "--method", "classical", "--task", "inpaint", "--input", str(img),
                              "--mask-file", str(tmp / "nope.png"), "--output", str(out)], tmp, must_not_exist=[out])
    assert "mask file not found" in msg and "nope.png" in msg  # was "input image not found"


def test_truncated_jpeg_is_refused(capsys, scene):
    tmp, _, _ = scene
    good = tmp / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, quality=90)
    bad = tmp / "in" / "half.jpg"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp / "out"
    msg = _run_error(capsys, ["run", "--method", "classical", "--task", "deblur", "--degrade", "--input", str(bad),
                              "--output", str(out)], tmp, must_not_exist=[out])
    assert "JPEG file is damaged or truncated" in msg and "half.jpg" in msg


@pytest.mark.parametrize("argv,needle", [
    (["run", "--task", "deblur", "--input", "x.png", "--output", "o.png", "--bogus"], "unrecognized arguments"),
    (["run", "--task", "deblur"], "required: --input, --output"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    ([], "required: command"),
])
def test_usage_mistakes_are_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err and "usage:" not in err, err


def test_only_the_error_line_on_stderr(capfd, scene):
    """Checked at the file-descriptor level (OpenCV's native WARN lines bypass sys.stderr), with the demo model (its
    NOTE comes after the options are checked)."""
    tmp, img, _ = scene
    short = _png_declaring(tmp / "in" / "short.png", 32, 32, 4)
    for argv in (["--method", "classical", "--input", str(short)],
                 ["--method", "diffpir", "--input", str(img), "--opt", "no_such_option=1"]):
        capfd.readouterr()
        assert main(["run", "--task", "deblur", "--degrade", "--output", str(tmp / "o.png"), *argv]) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err


def test_message_helpers():
    """The CLI's one-line policy (per image and at the end) and the cut of other libraries' messages; an empty
    message no longer raises IndexError in the per-image handler (it took ``splitlines()[0]``)."""
    from restorekit.errors import first_line, one_line

    assert one_line(ValueError("mapping values\n  in line 2,\tcolumn 3")) == "mapping values in line 2, column 3"
    assert one_line(RuntimeError()) == ""
    assert first_line(RuntimeError("first\nTraceback ...")) == "first"
    assert first_line(RuntimeError("x" * 500), 10) == "x" * 10
    assert first_line(RuntimeError(), empty="none") == "none"


# ---------------------------------------------------------------------------- probe 2 (CLI side)
@pytest.mark.parametrize("cmd", [
    ["run", "--method", "classical", "--task", "deblur", "--degrade", "--input", "IMG", "--output", "OUT/o.png"],
    ["bench"],
    ["train", "prior", "--data", "IN", "--output", "OUT/p.safetensors"],
    ["train", "--method", "diffir", "--stage", "1", "--data", "IN", "--output", "OUT/d.pth"],
])
def test_a_config_that_is_not_text_is_one_line(capsys, scene, cmd):
    """An image given as --config (or as the bench config) was a UnicodeDecodeError traceback."""
    tmp, img, _ = scene
    argv = [{"IMG": str(img), "IN": str(tmp / "in"), "OUT/o.png": str(tmp / "out" / "o.png"),
             "OUT/p.safetensors": str(tmp / "out" / "p.safetensors"),
             "OUT/d.pth": str(tmp / "out" / "d.pth")}.get(a, a) for a in cmd]
    argv += [str(img)] if cmd == ["bench"] else ["--config", str(img)]
    msg = _run_error(capsys, argv, tmp, must_not_exist=[tmp / "out"])
    assert "not a UTF-8 text file" in msg and "x.png" in msg


def _kernel_run(tmp, kfile, out="out.png"):
    return ["run", "--method", "classical", "--task", "deblur", "--input", str(tmp / "in" / "x.png"),
            "--output", str(tmp / out), "--kernel-file", str(kfile)]


def test_kernel_files_mat_npy_and_bad_ones(capsys, scene):
    import scipy.io

    tmp, _, _ = scene
    k = np.outer(np.hanning(7), np.hanning(7))[1:-1, 1:-1]
    scipy.io.savemat(tmp / "k1.mat", {"kernels": k})
    assert main(_kernel_run(tmp, tmp / "k1.mat", "ok.png")) == 0  # was "cannot read image k1.mat"
    capsys.readouterr()
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = k, k.T
    scipy.io.savemat(tmp / "k12.mat", {"kernels": cell})
    np.save(tmp / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp / "complex.npy", k.astype(np.complex64))
    (tmp / "k.txt").write_text("1 2 3")
    cases = {"k12.mat": "holds 2 kernels", "pickled.npy": "pickled Python objects",
             "complex.npy": "not real numbers", "k.txt": "use a .npy, a .mat or an image"}
    for name, needle in cases.items():
        msg = _run_error(capsys, _kernel_run(tmp, tmp / name), tmp, must_not_exist=[tmp / "out.png"])
        assert needle in msg and name in msg and "allow_pickle" not in msg, msg


def test_npy_mask_in_run_and_a_kernel_given_as_mask(capsys, scene):
    tmp, img, _ = scene
    m = (np.random.default_rng(0).random((24, 24)) > 0.5).astype(np.float32)
    np.save(tmp / "m.npy", m)
    base = ["run", "--method", "classical", "--task", "inpaint", "--input", str(img), "--output", str(tmp / "o.png")]
    assert main(base + ["--mask-file", str(tmp / "m.npy")]) == 0  # as bench reads .npy masks
    capsys.readouterr()
    (tmp / "m.mat").write_bytes(b"MATLAB")
    msg = _run_error(capsys, base + ["--mask-file", str(tmp / "m.mat")], tmp)
    assert "mask file" in msg and "use an image" in msg


def test_save_degraded_mistakes(capsys, scene):
    tmp, img, common = scene
    base = ["run", "--task", "deblur", "--input", str(img), "--output", str(tmp / "o.png")] + common
    msg = _run_error(capsys, base + ["--save-degraded", str(tmp / "d.png")], tmp, must_not_exist=[tmp / "d.png"])
    assert "needs --degrade" in msg  # was silently ignored
    msg = _run_error(capsys, base + ["--degrade", "--save-degraded", str(tmp / "o.png")], tmp,
                     must_not_exist=[tmp / "o.png"])
    assert "restored output's name" in msg  # the degraded image was silently lost
    (tmp / "d.png").write_bytes(b"old")
    assert main(base + ["--degrade", "--steps", "2", "--save-degraded", str(tmp / "d.png")]) == 0
    assert f"note: {tmp / 'd.png'} exists and will be overwritten" in capsys.readouterr().err


def test_warnings_and_notes_come_after_the_checks(capfd, scene):
    tmp, img, common = scene
    bad = tmp / "in" / "bad.png"
    bad.write_bytes(b"not a png")
    assert main(["run", "--task", "deblur", "--degrade", "--steps", "2", "--input", str(bad), "--output",
                 str(tmp / "o.png")] + common) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "bad.png" in err, err  # no --steps warning first
    assert main(["run", "--method", "diffir", "--task", "deblur", "--input", str(img), "--output",
                 str(tmp / "o.png"), "--weights", "diffir-demo-sr"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "is a sr model" in err, err  # no demo NOTE first


def test_a_folder_where_all_images_fail_says_nothing_was_written(capsys, tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    (src / "fake.png").write_bytes(b"not a png")
    rc = main(["run", "--task", "deblur", "--degrade", "--input", str(src), "--output", str(tmp_path / "o"),
               "--weights", str(tiny_weights), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "1 of 1 images failed (listed above); nothing was written" in err


def test_weights_folder_and_a_bare_diffbir_controlnet_path(capsys, scene):
    tmp, img, _ = scene
    (tmp / "w.pt").mkdir()
    base = ["run", "--task", "deblur", "--degrade", "--input", str(img), "--output", str(tmp / "o.png")]
    msg = _run_error(capsys, base + ["--weights", str(tmp / "w.pt")], tmp)
    assert "is a folder, not a checkpoint file" in msg  # was "weights file not found" for a path that exists
    junk = tmp / "junk.pt"
    junk.write_bytes(b"x" * 100)
    msg = _run_error(capsys, ["run", "--method", "diffbir", "--task", "sr", "--input", str(img), "--output",
                              str(tmp / "o.png"), "--weights", str(junk)], tmp)
    assert f"{junk} is used as its ControlNet" in msg and "DiffBIR_v2.1.pt" not in msg  # was ignored silently


def test_bench_lock_without_an_owner_line_is_taken_over_after_a_grace(tmp_path):
    import os
    import time

    from restorekit.bench.records import BenchLock
    from restorekit.errors import RestoreKitError

    lock = tmp_path / ".bench.lock"
    lock.write_text("")  # its writer died between creating and writing it
    with pytest.raises(RestoreKitError, match="delete"):
        BenchLock(tmp_path).acquire()  # a fresh empty lock may be being written: refused
    old = time.time() - 60
    os.utime(lock, (old, old))
    BenchLock(tmp_path).acquire().release()
    # a live PID that started after the lock was written is a reused PID: stale
    lock.write_text(f"{__import__('socket').gethostname()} 1\n")
    os.utime(lock, (1.0, 1.0))
    with BenchLock(tmp_path):
        assert lock.read_text().split()[1] == str(os.getpid())
