"""The Restorer API and the CLI, end to end with a tiny UNet the tests build."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit import Restorer, TaskError, WeightsError
from restorekit.cli import main
from restorekit.methods.diffpir import DiffPIR
from restorekit.operators import Blur, Inpainting, gaussian_kernel


@pytest.fixture
def restorer(tiny_weights):
    return Restorer.from_pretrained(tiny_weights, method="diffpir", device="cpu")


def test_from_pretrained_paths_and_errors(tiny_weights):
    r = DiffPIR.from_pretrained(tiny_weights, device="cpu")
    assert isinstance(r, DiffPIR) and r.unet.config.model_channels == 16
    with pytest.raises(WeightsError, match="not found"):
        Restorer.from_pretrained("/no/such/file.pt", method="diffpir")
    with pytest.raises(Exception, match="unknown model"):
        Restorer.from_pretrained("no-such-model")
    with pytest.raises(Exception, match="method="):
        Restorer.from_pretrained(tiny_weights)
    # official card offline: clear error naming the file
    with pytest.raises(WeightsError, match="diffusion_ffhq_10m.pt"):
        Restorer.from_pretrained("diffpir-ffhq")


def test_restore_keeps_input_kind(restorer):
    k = gaussian_kernel(9, 1.5)
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    out = restorer.restore(u8, task="deblur", operator=Blur(k), steps=3, seed=0)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (20, 28, 3)
    pil = restorer.restore(Image.fromarray(u8[..., 0]), task="deblur", operator=Blur(k), steps=3, seed=0)
    assert isinstance(pil, Image.Image) and pil.mode == "L" and pil.size == (28, 20)
    t = restorer.restore(torch.rand(3, 16, 16), task="sr", steps=3, seed=0, scale=2)
    assert isinstance(t, torch.Tensor) and t.shape == (3, 32, 32)


def test_restore_deterministic_under_seed(restorer):
    y = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    op = Blur(gaussian_kernel(9, 1.5))
    a = restorer.restore(y, task="deblur", operator=op, steps=4, seed=7)
    b = restorer.restore(y, task="deblur", operator=op, steps=4, seed=7)
    c = restorer.restore(y, task="deblur", operator=op, steps=4, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_wrong_task_and_operator(restorer):
    y = torch.rand(1, 3, 16, 16)
    with pytest.raises(TaskError, match="does not do task 'colorize'"):
        restorer.restore(y, task="colorize")
    with pytest.raises(TaskError, match="non-blind"):
        restorer.restore(y, task="deblur")
    with pytest.raises(TaskError, match="does not fit"):
        restorer.restore(y, task="deblur", operator=Inpainting(torch.ones(1, 1, 16, 16)))
    with pytest.raises(TaskError, match="unknown DiffPIR option"):
        restorer.restore(y, task="sr", steps=2, gammma=3)


def _img(tmp_path, name, arr, mode=None):
    p = tmp_path / name
    Image.fromarray(arr, mode=mode).save(p)
    return p


@pytest.mark.parametrize("task,extra", [("deblur", []), ("deblur", ["--kernel", "motion"]),
                                        ("sr", ["--scale", "4"]), ("sr", ["--scale", "2", "--sr-mode", "blur"]),
                                        ("inpaint", ["--mask", "random"]), ("inpaint", ["--mask", "half"])])
def test_cli_degrade_and_restore_odd_sizes(tmp_path, tiny_weights, capsys, task, extra):
    rng = np.random.default_rng(0)
    src = _img(tmp_path, "in.png", rng.integers(0, 256, (37, 45, 3), dtype=np.uint8))  # odd size
    out = tmp_path / "out.png"
    rc = main(["run", "--task", task, "--input", str(src), "--output", str(out), "--degrade", "--steps", "3",
               "--weights", str(tiny_weights), "--no-progress", "--json", "--device", "cpu"] + extra)
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert Image.open(out).size == (45, 37)  # padded internally, cropped back
    assert (tmp_path / "out_degraded.png").exists()
    assert summary["metrics_restored"]["psnr"] is not None and summary["config"]["steps"] == 3


def test_cli_keeps_gray_and_alpha(tmp_path, tiny_weights):
    rng = np.random.default_rng(1)
    g = _img(tmp_path, "g.png", rng.integers(0, 256, (24, 20), dtype=np.uint8), "L")
    a = _img(tmp_path, "a.png", rng.integers(0, 256, (24, 20, 4), dtype=np.uint8), "RGBA")
    for src, mode in ((g, "L"), (a, "RGBA")):
        out = tmp_path / f"o_{src.stem}.png"
        assert main(["run", "--task", "sr", "--scale", "2", "--input", str(src), "--output", str(out), "--steps", "2",
                     "--weights", str(tiny_weights), "--no-progress", "--device", "cpu"]) == 0
        im = Image.open(out)
        assert im.mode == mode and im.size == (40, 48)
    alpha_in = np.asarray(Image.open(a))[..., 3].astype(float)
    alpha_out = np.asarray(Image.open(tmp_path / "o_a.png"))[..., 3].astype(float)
    small = alpha_out.reshape(24, 2, 20, 2).mean(axis=(1, 3))
    assert np.corrcoef(small.ravel(), alpha_in.ravel())[0, 1] > 0.8  # the alpha channel was carried, upscaled


def test_cli_given_kernel_and_mask_files(tmp_path, tiny_weights):
    rng = np.random.default_rng(2)
    src = _img(tmp_path, "blurry.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "k.npy", gaussian_kernel(7, 1.0).numpy())
    assert main(["run", "--task", "deblur", "--input", str(src), "--output", str(tmp_path / "d.png"),
                 "--kernel-file", str(tmp_path / "k.npy"), "--steps", "2", "--weights", str(tiny_weights),
                 "--no-progress"]) == 0
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255
    _img(tmp_path, "m.png", mask, "L")
    out = tmp_path / "i.png"
    assert main(["run", "--task", "inpaint", "--input", str(src), "--output", str(out), "--mask-file",
                 str(tmp_path / "m.png"), "--steps", "2", "--weights", str(tiny_weights), "--no-progress",
                 "--opt", "paste_observed=true"]) == 0
    # known pixels are kept when asked (upstream's output is not pasted)
    assert np.abs(np.asarray(Image.open(out))[:, :16].astype(int) - np.asarray(Image.open(src))[:, :16]).max() <= 1


@pytest.mark.parametrize("args,needle", [
    (["--task", "deblur"], "non-blind"),
    (["--task", "inpaint"], "--mask-file"),
])
def test_cli_missing_operator_info(tmp_path, tiny_weights, capsys, args, needle):
    src = _img(tmp_path, "x.png", np.zeros((16, 16, 3), np.uint8))
    rc = main(["run", "--input", str(src), "--output", str(tmp_path / "o.png"), "--weights", str(tiny_weights),
               "--no-progress"] + args)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_cli_bad_inputs_give_clear_errors(tmp_path, tiny_weights, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    rc = main(["run", "--task", "sr", "--input", str(bad), "--output", str(tmp_path / "o.png"),
               "--weights", str(tiny_weights)])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot read image" in err and "bad.png" in err
    good = _img(tmp_path, "g.png", np.zeros((16, 16, 3), np.uint8))
    rc = main(["run", "--task", "sr", "--input", str(good), "--output", str(tmp_path / "o.png"),
               "--weights", str(tmp_path / "missing.pt")])
    assert rc == 2 and "weights file not found" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    rc = main(["run", "--task", "sr", "--input", str(good), "--output", str(tmp_path / "o.png"),
               "--weights", str(corrupt)])
    assert rc == 2 and "corrupt" in capsys.readouterr().err
    rc = main(["run", "--task", "sr", "--input", str(good), "--output", str(tmp_path / "o.png"),
               "--weights", "diffpir-imagenet"])
    err = capsys.readouterr().err
    assert rc == 2 and "256x256_diffusion_uncond.pt" in err and "openaipublic" in err
    rc = main(["run", "--task", "colorize", "--input", str(good), "--output", str(tmp_path / "o.png")])
    assert rc == 2 and "does not do task 'colorize'" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_configs_match_official_defaults():
    import yaml

    from restorekit.methods.diffpir.sampler import TASK_DEFAULTS

    for task in ("deblur", "sr", "inpaint"):
        cfg = yaml.safe_load(open(f"configs/diffpir/{task}.yaml"))
        assert cfg["task"] == task and cfg["method"] == "diffpir"
        for k, v in TASK_DEFAULTS[task].items():
            assert cfg[k] == pytest.approx(v, abs=1e-3), (task, k)


def test_cli_config_file_and_override(tmp_path, tiny_weights, capsys):
    src = _img(tmp_path, "x.png", np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    args = ["run", "--config", "configs/diffpir/sr.yaml", "--input", str(src), "--output", str(tmp_path / "o.png"),
            "--weights", str(tiny_weights), "--no-progress", "--json", "--steps", "2", "--zeta", "0.5"]
    assert main(args) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["task"] == "sr" and s["size"] == [64, 64]  # scale 4 from the config
    assert s["config"]["steps"] == 2 and s["config"]["zeta"] == 0.5  # flags win
    assert s["config"]["lambda_"] == 1.0  # from the config
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: sr\nsteppps: 3\n")
    assert main(["run", "--config", str(bad), "--input", str(src), "--output", str(tmp_path / "o2.png")]) == 2
    assert "steppps" in capsys.readouterr().err


def test_cli_generic_options(tmp_path, tiny_weights, capsys):
    src = _img(tmp_path, "x.png", np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    base = ["run", "--task", "sr", "--scale", "2", "--input", str(src), "--output", str(tmp_path / "o.png"),
            "--weights", str(tiny_weights), "--no-progress", "--json", "--steps", "2"]
    assert main(base + ["--opt", "guidance_scale=0.5", "--opt", "official_rng=false"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["config"]["guidance_scale"] == 0.5 and s["config"]["official_rng"] is False
    assert main(base + ["--opt", "nonsense=1"]) == 2
    assert "unknown DiffPIR option 'nonsense'" in capsys.readouterr().err
    assert main(base + ["--opt", "novalue"]) == 2
