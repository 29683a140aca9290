"""Hostile input through the Python API (Restorer.from_pretrained / restore / restore_folder, the operator classes):
a one-line RestoreKitError naming the bad value, never a raw TypeError / ValueError / RuntimeError from inside torch,
and never a silently wrong (all-black) result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit import Restorer
from restorekit.errors import RestoreKitError
from restorekit.operators import BicubicDownsample, Blur, BlurDownsample, Inpainting, gaussian_kernel

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def p(tiny_weights):
    """DiffPIR with a tiny random UNet (the checks come before the network)."""
    return Restorer.from_pretrained(str(tiny_weights), method="diffpir", device="cpu")


@pytest.fixture(scope="module")
def c():
    return Restorer.from_pretrained(method="classical", device="cpu")


def _u8(h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _blur():
    return Blur(gaussian_kernel(5, 1.0))


# ---------------------------------------------------------------------------- A: silently wrong before
@pytest.mark.parametrize("opts,needle", [
    (dict(lambda_=NAN), "lambda_ must be a finite number"),
    (dict(lambda_=INF), "lambda_ must be a finite number"),
    (dict(lambda_=0.0), "lambda_ must be > 0"),
    (dict(zeta=NAN), "zeta must be a finite number"),
    (dict(eta=NAN), "eta must be a finite number"),
    (dict(eta=INF), "eta must be a finite number"),
    (dict(eta=-1.0), "eta must be >= 0"),
    (dict(noise_level=INF), "noise_level must be a finite number"),
    (dict(noise_level=5.0), r"noise_level must be in \[0, 1\]"),
    (dict(guidance_scale=NAN), "guidance_scale must be a finite number"),
    (dict(noise_level_model=NAN), "noise_level_model must be a finite number"),
    (dict(use_last_x0="false"), "use_last_x0 expects True or False"),
    (dict(t_start=2.5), "t_start expects a whole number"),
    (dict(noise_init_img="x"), "noise_init_img"),
])
def test_diffpir_bad_numbers_refused(p, opts, needle):
    with pytest.raises(RestoreKitError, match=needle):
        p.restore(_u8(), task="deblur", operator=_blur(), steps=2, **opts)


def test_diffpir_non_finite_result_is_an_error_not_a_black_image(p, monkeypatch):
    from restorekit.methods.diffpir import restorer as mod

    monkeypatch.setattr(mod, "diffpir_sample", lambda *a, **k: torch.full((1, 3, 32, 32), NAN))
    with pytest.raises(RestoreKitError, match="non-finite"):
        p.restore(_u8(), task="deblur", operator=_blur(), steps=2)


@pytest.mark.parametrize("kernel,needle", [
    (torch.full((3, 3), NAN), "non-finite"),
    (torch.tensor([[0, 1, 0], [1, INF, 1], [0, 1, 0.0]]), "non-finite"),
    (-torch.ones(3, 3), "positive sum"),
    (torch.zeros(3, 3), "positive sum"),
    (torch.ones(3), r"2-D .* got shape \(3,\)"),
    (torch.ones(3, 3, 3), r"2-D .* got shape \(3, 3, 3\)"),
    (torch.ones(0, 0), "non-empty"),
    ("abc", "array of numbers"),
])
def test_bad_blur_kernel_refused(p, kernel, needle):
    with pytest.raises(RestoreKitError, match=needle) as e:
        p.restore(_u8(), task="deblur", operator=Blur(kernel), steps=2)
    assert isinstance(e.value, ValueError)  # what the operator raised before, for code that catches it


def test_valid_kernels_still_accepted():
    k = gaussian_kernel(5, 1.0)
    assert torch.equal(Blur(k).kernel, k) and torch.equal(Blur(k[None, None]).kernel, k)
    assert Blur(np.ones((3, 3)) / 9).kernel.shape == (3, 3)
    assert BicubicDownsample(4).kernel.min() < 0  # negative taps with a positive sum stay allowed
    assert BlurDownsample(k, 2.0).sf == 2 and BicubicDownsample(np.int64(2)).sf == 2


@pytest.mark.parametrize("mask,needle", [
    (torch.full((1, 1, 32, 32), NAN), "non-finite"),
    (torch.full((1, 1, 32, 32), 2.0), r"in \[0, 1\]"),
    (-torch.ones(32, 32), r"in \[0, 1\]"),
    (torch.ones(1, 1, 1, 32, 32), "got shape"),
    ("abc", "array of numbers"),
])
def test_bad_inpainting_mask_refused(p, mask, needle):
    with pytest.raises(RestoreKitError, match=needle):
        p.restore(_u8(), task="inpaint", operator=Inpainting(mask), steps=2)


def test_soft_and_bool_masks_still_accepted():
    assert Inpainting(torch.full((8, 8), 0.5)).mask.shape == (1, 1, 8, 8)
    assert Inpainting(torch.ones(8, 8, dtype=torch.bool)).mask.dtype == torch.float32


@pytest.mark.parametrize("opts,needle", [
    (dict(tv_weight=INF), "tv_weight .* must be a finite number"),
    (dict(tv_weight=NAN), "tv_weight .* must be a finite number"),
    (dict(tv_weight=-1.0), "tv_weight .* must be >= 0"),
    (dict(noise_level="a"), "noise_level expects a number"),
    (dict(noise_level=INF), "noise_level must be a finite number"),
    (dict(iterations="x"), "iterations expects a number"),
    (dict(iterations=1.5), "iterations expects a whole number"),
    (dict(kernel_size=3.5), "kernel_size expects a whole number"),
    (dict(kernel_size="x"), "kernel_size expects a number"),
])
def test_classical_bad_numbers_refused(c, opts, needle):
    with pytest.raises(RestoreKitError, match=needle):
        c.restore(_u8(16, 16), task="deblur", operator=_blur(), algorithm="tv", **opts)


# ---------------------------------------------------------------------------- B: raw exceptions before
@pytest.mark.parametrize("seed,needle", [("abc", "expects a number"), (2**70, "seed must be in"),
                                         (1.5, "whole number"), (-1, "seed must be in"), (True, "expects a number")])
@pytest.mark.parametrize("which", ["p", "c"])
def test_bad_seed_refused(p, c, which, seed, needle):
    r = {"p": p, "c": c}[which]
    with pytest.raises(RestoreKitError, match=needle):
        r.restore(_u8(16, 16), task="deblur", operator=_blur(), steps=2, seed=seed)


def test_bad_seed_refused_by_restore_batch(p):
    with pytest.raises(RestoreKitError, match="seed expects a number"):
        p.restore_batch([torch.rand(1, 3, 16, 16)], [_blur()], ["x"], task="deblur", steps=2)


def test_numpy_numbers_are_numbers(p):
    a = p.restore(_u8(16, 16), task="deblur", operator=_blur(), steps=2, seed=3, lambda_=7.0)
    b = p.restore(_u8(16, 16), task="deblur", operator=_blur(), steps=np.int64(2), seed=np.int64(3),
                  lambda_=np.float64(7.0))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("opts,needle", [(dict(lambda_="x"), "lambda_ expects a number"),
                                         (dict(steps="2"), "steps expects a number"),
                                         (dict(steps=1.5), "steps expects a whole number"),
                                         (dict(steps=0), "steps must be in"),
                                         (dict(steps=True), "steps expects a number")])
def test_diffpir_bad_types_refused(p, opts, needle):
    opts = {"steps": 2, **opts}
    with pytest.raises(RestoreKitError, match=needle):
        p.restore(_u8(), task="deblur", operator=_blur(), **opts)


@pytest.mark.parametrize("scale,needle", [(0, r"scale must be in \[1, 16\]"), (-2, r"scale must be in \[1, 16\]"),
                                          (2.5, "scale expects a whole number"),
                                          (1000, r"scale must be in \[1, 16\]|larger than"),
                                          ("2", "scale expects a number")])
@pytest.mark.parametrize("which", ["p", "c"])
def test_bad_sr_scale_refused(p, c, which, scale, needle):
    r = {"p": p, "c": c}[which]
    with pytest.raises(RestoreKitError, match=needle):
        r.restore(_u8(8, 8), task="sr", scale=scale, steps=2)


@pytest.mark.parametrize("sf,needle", [(0, "scale factor must be >= 1"), (2.5, "whole number"),
                                       ("2", "expects a number")])
def test_bad_operator_scale_factor(sf, needle):
    for make in (BicubicDownsample, lambda s: BlurDownsample(gaussian_kernel(5, 1.0), s)):
        with pytest.raises(RestoreKitError, match=needle):
            make(sf)


def test_classical_sr_scale_still_works(c):
    assert c.restore(_u8(8, 8), task="sr", scale=2).shape == (16, 16, 3)
    assert c.restore(_u8(8, 8), task="sr", scale=2.0).shape == (16, 16, 3)


def test_diffpir_sr_result_size_guard(p):
    """The megapixel guard looks at the SR result (x4 of the input), not the input: 600x600 -> 2400x2400."""
    with pytest.raises(RestoreKitError, match="2400x2400"):
        p.restore(np.zeros((600, 600, 3), np.uint8), task="sr", steps=2)


def test_from_pretrained_bad_names():
    with pytest.raises(RestoreKitError, match="model name or a weights path, got 5"):
        Restorer.from_pretrained(5)
    with pytest.raises(RestoreKitError, match="empty model name"):
        Restorer.from_pretrained("")
    # a method without weights takes "" as no name (the CLI passes its default, "")
    assert Restorer.from_pretrained("", method="classical").name == "classical"


# ---------------------------------------------------------------------------- C: restore_folder
@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "img"
    src.mkdir()
    for i in range(2):
        Image.fromarray(_u8(16, 16, i)).save(src / f"a{i}.png")
    return src, tmp_path / "out"


@pytest.mark.parametrize("opts,needle", [
    (dict(bogus=1), "bogus"),
    (dict(degrade=True), "degrade"),
    (dict(operator=[_blur(), _blur()]), "not a list"),
    (dict(seed="x"), "seed expects a number"),
    (dict(lambda_=NAN), "lambda_ must be a finite number"),
    (dict(scale=0), "scale must be in"),
    (dict(max_batch=0), "max_batch must be >= 1"),
    (dict(operator=Inpainting(torch.ones(16, 16))), "does not fit task"),
])
def test_restore_folder_checks_options_before_the_first_image(p, folder, opts, needle):
    src, out = folder
    opts = {"operator": _blur(), **opts}
    with pytest.raises(RestoreKitError, match=needle):
        p.restore_folder(src, out, task="deblur", steps=2, **opts)
    assert not out.exists()


def test_restore_folder_classical_checks_up_front(c, folder):
    src, out = folder
    with pytest.raises(RestoreKitError, match="does not apply"):
        c.restore_folder(src, out, task="deblur", operator=_blur(), bogus=1)
    with pytest.raises(RestoreKitError, match="non-blind"):
        c.restore_folder(src, out, task="deblur", operator=Inpainting(torch.ones(16, 16)))
    assert not out.exists()


def test_restore_folder_refuses_no_output(c, folder, tmp_path, monkeypatch):
    src, _ = folder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RestoreKitError, match="output folder"):
        c.restore_folder(src, None, task="deblur", operator=_blur())
    assert not (tmp_path / "None").exists()


def test_restore_folder_valid_run_still_writes(c, folder):
    src, out = folder
    rep = c.restore_folder(src, out, task="sr", scale=2)
    assert len(rep["written"]) == 2 and not rep["failed"]


# ---------------------------------------------------------------------------- D: blind Wiener on small images
@pytest.mark.parametrize("hw", [(1, 1), (4, 4), (7, 7), (8, 20), (30, 40)])
def test_blind_wiener_small_and_non_square_images(c, hw):
    y = _u8(*hw).astype(np.float32) / 255
    out = c.restore(y, task="deblur", algorithm="blind_wiener")
    assert out.shape == y.shape and np.isfinite(out).all()
