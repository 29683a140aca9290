"""The classical baselines: each algorithm's defining property, and the method through the API and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit import Restorer
from restorekit.cli import main
from restorekit.errors import TaskError
from restorekit.methods.classical.restorer import harmonic_fill, tv_deconvolve, wiener_deconvolve
from restorekit.operators import Blur, Inpainting, gaussian_kernel, synthesize


def _smooth_image(h=48, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h // 4, w // 4, generator=g, dtype=torch.float64)
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def _psnr(a, b):
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def classical():
    return Restorer.from_pretrained(method="classical", device="cpu")


def test_wiener_inverts_a_noise_free_blur():
    x = _smooth_image()
    k = gaussian_kernel(5, 0.6).double()  # OTF without zeros
    y = Blur(k).forward(x)
    out = wiener_deconvolve(y, k, sigma=0.0)
    assert (out - x).abs().max() < 1e-3


def test_tv_admm_reaches_the_minimum():
    """ADMM's result is a minimiser of 1/2||k*x-y||^2 + lam TV(x): random perturbations never lower the objective."""
    x = _smooth_image(24, 24)
    k = gaussian_kernel(7, 1.2).double()
    op = Blur(k)
    g = torch.Generator().manual_seed(1)
    y = op.forward(x) + 0.03 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    lam = 0.01

    def objective(z):
        dh = torch.roll(z, -1, -1) - z
        dv = torch.roll(z, -1, -2) - z
        return 0.5 * float(((op.forward(z) - y) ** 2).sum()) + lam * float(torch.sqrt(dh ** 2 + dv ** 2).sum())

    est = tv_deconvolve(y, k, 0.03, lam, iterations=3000)
    best = objective(est)
    for s in range(20):
        d = torch.randn(est.shape, generator=torch.Generator().manual_seed(100 + s), dtype=torch.float64)
        assert objective(est + 1e-3 * d) >= best - 1e-6
    assert objective(est) < objective(y)


def test_harmonic_fill_solves_laplace():
    rng = np.random.default_rng(0)
    img = rng.random((20, 18, 3))
    known = rng.random((20, 18)) > 0.5
    out = harmonic_fill(img, known)
    assert np.array_equal(out[known], img[known])
    h, w = known.shape  # at the border only the neighbours inside the image count
    for i, j in np.argwhere(~known):
        nb = [(a, b) for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)) if 0 <= a < h and 0 <= b < w]
        assert np.allclose(out[i, j], np.mean([out[a, b] for a, b in nb], axis=0), atol=1e-8)


@pytest.mark.parametrize("task,algorithm", [("deblur", "wiener"), ("deblur", "tv"), ("sr", "bicubic"),
                                            ("sr", "lanczos"), ("inpaint", "biharmonic"),
                                            ("inpaint", "diffusion"), ("denoise", "bm3d")])
def test_each_algorithm_beats_its_input(classical, task, algorithm):
    x = _smooth_image(48, 48).float()
    spec = {"deblur": dict(kernel="gaussian", kernel_std=1.5, kernel_size=15), "sr": dict(scale=2),
            "inpaint": dict(mask="random", mask_prob=0.5), "denoise": {}}[task]
    noise = {"deblur": 0.01, "sr": 0.0, "inpaint": 0.0, "denoise": 0.1}[task]
    y, op = synthesize(x, task, noise=noise, seed=0, **spec)
    out = classical.restore_tensor(y, task, op, algorithm=algorithm, noise_level=max(noise, 1e-3), scale=2)
    assert out.shape == x.shape
    base = torch.nn.functional.interpolate(y, size=x.shape[-2:], mode="nearest") if task == "sr" else y
    assert _psnr(out.double(), x.double()) > _psnr(base.double().clamp(0, 1), x.double()) + 1.0


def test_options_and_errors(classical):
    y = torch.rand(1, 3, 16, 16)
    with pytest.raises(TaskError, match="choose wiener, tv"):
        classical.restore_tensor(y, "deblur", Blur(gaussian_kernel(5, 1.0)), algorithm="magic")
    with pytest.raises(TaskError, match="non-blind"):
        classical.restore_tensor(y, "deblur", None)
    with pytest.raises(TaskError, match="Inpainting"):
        classical.restore_tensor(y, "inpaint", None)
    with pytest.raises(TaskError, match="does not apply"):
        classical.restore_tensor(y, "sr", None, guidance_scale=1.0)
    out = classical.restore(y[0], task="inpaint", operator=Inpainting(torch.ones(16, 16)))
    assert torch.allclose(out, y[0])


def test_cli_runs_the_classical_baseline(tmp_path, capsys):
    src = tmp_path / "x.png"
    x = (_smooth_image(40, 40)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(x).save(src)
    assert main(["run", "--method", "classical", "--task", "deblur", "--degrade", "--kernel-std", "1.5",
                 "--kernel-size", "15", "--noise", "0.01", "--input", str(src), "--output", str(tmp_path / "o/"),
                 "--opt", "algorithm=wiener", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert (tmp_path / "o" / "x_classical_deblur.png").is_file()
    deg = float(err.split("degraded: PSNR ")[1].split()[0])
    res = float(err.split("restored: PSNR ")[1].split()[0])
    assert res > deg


def test_blind_wiener_estimates_the_kernel_without_being_given_it():
    """The blind baseline (Cho & Lee-style kernel estimation + Wiener) recovers a motion kernel close to the true
    one from the blurred photo alone, and restores through the public API with no operator."""
    from restorekit import Restorer
    from restorekit.io import read_image
    from restorekit.methods.classical.blind import estimate_kernel
    from restorekit.operators import motion_kernel

    arr, _ = read_image("examples/coffee.png")
    x = torch.from_numpy(arr).permute(2, 0, 1)[None][..., :256, 100:356].double()
    kt = motion_kernel(31, 0.5, 3).double()
    y = (Blur(kt).forward(x) + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0),
                                                 dtype=torch.float64)).clamp(0, 1)
    ke = estimate_kernel(y, 31)
    assert ke.shape == (31, 31) and ke.min() >= 0 and abs(float(ke.sum()) - 1) < 1e-9
    cos = float((ke * kt).sum() / (ke.norm() * kt.norm()))
    delta = torch.zeros(31, 31, dtype=torch.float64)
    delta[15, 15] = 1
    assert cos > 0.5 and cos > 2 * float((delta * kt).sum() / kt.norm())  # far closer than "no blur"
    r = Restorer.from_pretrained(method="classical")
    out = r.restore(y.float(), task="deblur", algorithm="blind_wiener", noise_level=0.01)
    assert out.shape == y.shape and torch.isfinite(out).all()
    with pytest.raises(TaskError, match="kernel_size"):
        r.restore(y.float(), task="deblur", algorithm="blind_wiener", kernel_size=30)


def test_cli_blind_wiener_needs_no_kernel_but_wiener_does(tmp_path, capsys):
    """On an already blurred input, `--opt algorithm=blind_wiener` runs without --kernel-file (it estimates the
    kernel); plain Wiener still stops with a one-line error and exit code 2."""
    from restorekit.io import read_image
    from restorekit.operators import motion_kernel

    arr, _ = read_image("examples/coffee.png")
    x = torch.from_numpy(arr).permute(2, 0, 1)[None][..., :96, 100:196].double()
    y = Blur(motion_kernel(15, 0.5, 3).double()).forward(x).clamp(0, 1)
    src = tmp_path / "blurred.png"
    Image.fromarray((y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src)
    before = src.read_bytes()
    args = ["run", "--method", "classical", "--task", "deblur", "--input", str(src), "--no-progress",
            "--noise", "0.01", "--opt", "kernel_size=15"]
    assert main(args + ["--output", str(tmp_path / "a/"), "--opt", "algorithm=blind_wiener"]) == 0
    assert (tmp_path / "a" / "blurred_classical_deblur.png").is_file()
    capsys.readouterr()
    assert main(args + ["--output", str(tmp_path / "b/"), "--opt", "algorithm=wiener"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--kernel-file" in err[0]
    assert src.read_bytes() == before and not (tmp_path / "b" / "blurred_classical_deblur.png").exists()
