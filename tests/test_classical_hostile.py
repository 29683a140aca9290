"""Hostile inputs to the classical baselines: an empty inpainting mask, images smaller than BM3D's block, flat and
grey images for BM3D. Bad input is one line ``error: ...`` and exit 2; good input restores, with no warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit import Restorer
from restorekit.cli import main
from restorekit.errors import TaskError
from restorekit.io import read_image
from restorekit.operators import Inpainting


@pytest.fixture(scope="module")
def classical():
    return Restorer.from_pretrained(method="classical", device="cpu")


def _save(path, arr):
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)
    return path


def _run(argv):
    return main(["run", "--method", "classical", "--no-progress"] + [str(a) for a in argv])


@pytest.mark.parametrize("algorithm", ["biharmonic", "diffusion"])
def test_all_zero_mask_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, algorithm):
    g = np.random.default_rng(0)
    src = _save(tmp_path / "x.png", g.integers(0, 256, (16, 16, 3)))
    mask = _save(tmp_path / "m.png", np.zeros((16, 16)))
    out = tmp_path / "out.png"
    rc = _run(["--task", "inpaint", "--mask-file", mask, "--input", src, "--output", out,
               "--opt", f"algorithm={algorithm}"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "observes no pixel" in lines[0] and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("algorithm", ["biharmonic", "diffusion"])
def test_all_zero_mask_through_the_api(classical, algorithm):
    y = torch.rand(1, 3, 8, 8)
    with pytest.raises(TaskError, match="observes no pixel"):
        classical.restore_tensor(y, "inpaint", Inpainting(torch.zeros(8, 8)), algorithm=algorithm)
    # a per-channel mask where no pixel is observed in every channel is just as empty
    m = torch.zeros(1, 3, 8, 8)
    m[:, 0, ::2] = 1
    m[:, 1:, 1::2] = 1
    with pytest.raises(TaskError, match="every channel"):
        classical.restore_tensor(y, "inpaint", Inpainting(m), algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ["biharmonic", "diffusion"])
def test_a_single_observed_pixel_fills_the_image(classical, algorithm):
    y = torch.zeros(1, 3, 6, 5)
    y[0, :, 2, 3] = torch.tensor([0.2, 0.5, 0.8])
    m = torch.zeros(6, 5)
    m[2, 3] = 1
    out = classical.restore_tensor(y, "inpaint", Inpainting(m), algorithm=algorithm)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, y[:, :, 2:3, 3:4].expand_as(out), atol=1e-4)


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (5, 3), (7, 20), (8, 8)])  # 8x8 crashed bm3d natively
def test_bm3d_on_images_smaller_than_its_block(classical, hw):
    g = torch.Generator().manual_seed(0)
    y = torch.rand(1, 3, *hw, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = classical.restore_tensor(y, "denoise", None)
    assert out.shape == y.shape and torch.isfinite(out).all()
    if hw == (1, 1):  # a single pixel is its own estimate
        assert torch.allclose(out, y, atol=1e-5)


@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_bm3d_on_a_flat_image_returns_the_constant(classical, level):
    y = torch.full((1, 3, 32, 32), level)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = classical.restore_tensor(y, "denoise", None)
    assert torch.isfinite(out).all()
    assert (out - level).abs().max() < 1e-4


def test_bm3d_on_a_flat_colour_and_a_grey_image(classical):
    flat = torch.tensor([0.1, 0.6, 0.9]).view(1, 3, 1, 1).expand(1, 3, 24, 24).clone()
    g = torch.Generator().manual_seed(1)
    clean = torch.nn.functional.interpolate(torch.rand(1, 1, 6, 6, generator=g), size=(32, 32), mode="bilinear",
                                            align_corners=False)
    noisy = (clean + 0.05 * torch.randn(clean.shape, generator=g)).repeat(1, 3, 1, 1)  # R = G = B
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out_flat = classical.restore_tensor(flat, "denoise", None)
        out_grey = classical.restore_tensor(noisy, "denoise", None, noise_level=0.05)
    assert (out_flat - flat).abs().max() < 1e-4
    assert torch.isfinite(out_grey).all()
    assert (out_grey[:, 0] - out_grey[:, 1]).abs().max() < 1e-4  # stays grey
    mse = lambda a: float(((a[:, :1] - clean) ** 2).mean())  # noqa: E731
    assert mse(out_grey) < 0.7 * mse(noisy)


@pytest.mark.parametrize("hw,value", [((32, 32), 128), ((1, 1), 77)])
def test_cli_denoises_flat_and_1x1_images(tmp_path, capsys, hw, value):
    src = _save(tmp_path / "x.png", np.full(hw + (3,), value))
    out = tmp_path / "out.png"
    rc = _run(["--task", "denoise", "--input", src, "--output", out])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "Warning" not in err and "error" not in err and "Traceback" not in err
    arr, _ = read_image(out)
    assert arr.shape[:2] == hw
    assert np.isfinite(arr).all() and np.abs(arr - value / 255).max() <= 1.5 / 255


def test_bm3d_on_ordinary_colour_images_equals_the_bm3d_package(classical):
    """The steps done here (to leave zero-range channels unscaled) must give bm3d.bm3d_rgb's own output elsewhere;
    through the public API, as a user denoises."""
    import bm3d

    rng = np.random.default_rng(3)
    clean = np.clip(np.cumsum(rng.normal(0, 0.05, (40, 36, 3)), axis=1) * 0.3 + 0.5, 0, 1)
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    out = classical.restore(torch.from_numpy(noisy).permute(2, 0, 1)[None], task="denoise", noise_level=0.1)
    ours = out[0].permute(1, 2, 0).numpy()
    ref = np.clip(bm3d.bm3d_rgb(noisy.astype(np.float64), 0.1), 0, 1)
    assert np.abs(ours - ref).max() < 1e-5
    assert np.abs(ours - noisy).max() > 0.05  # it did denoise


def test_an_x16_sr_of_a_photo_is_refused_before_any_work(tmp_path, capsys, classical):
    """The result of x16 SR of a 1500x1500 photo is 576 MP (about 170 GB for the filters): one line, exit 2."""
    src = _save(tmp_path / "big.png", np.zeros((1500, 1500, 3)))
    out = tmp_path / "o.png"
    assert _run(["--task", "sr", "--scale", "16", "--input", src, "--output", out]) == 2
    err = capsys.readouterr().err
    assert "24000x24000" in err and "classical's limit of 32 MP" in err and "--max-megapixels" in err, err
    assert err.count("\n") == 1 and not out.exists()
    with pytest.raises(Exception, match="classical's limit of 32 MP"):  # the API measures the result too
        classical.restore(np.zeros((400, 400, 3), np.uint8), task="sr", scale=16)


def test_the_classical_limit_follows_max_megapixels(classical):
    out = classical.restore(np.zeros((64, 64, 3), np.uint8), task="sr", scale=2, max_megapixels=0.02)
    assert out.shape[:2] == (128, 128)
    with pytest.raises(Exception, match="limit of 0.01 MP"):
        classical.restore(np.zeros((64, 64, 3), np.uint8), task="sr", scale=2, max_megapixels=0.01)
