"""Batches (issue #12): N images per network call give each image the result it gets alone with seed S+k."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit import Restorer
from restorekit.cli import main
from restorekit.files import batches_by_size
from restorekit.methods.diffpir import restorer as diffpir_restorer
from restorekit.operators import Blur, Inpainting, gaussian_kernel

from . import test_diffbir_pipeline as _pipeline
from .test_diffbir_pipeline import _restorer

light = _pipeline.light  # the tiny DiffBIR models' fixture, shared with test_diffbir_pipeline


@pytest.fixture
def unet_batches(monkeypatch):
    """Records the batch size of every DiffPIR sampler run (the UNet sees that many images per call)."""
    sizes = []
    orig = diffpir_restorer.diffpir_sample

    def spy(model, y, *a, **k):
        sizes.append(y.shape[0])
        return orig(model, y, *a, **k)

    monkeypatch.setattr(diffpir_restorer, "diffpir_sample", spy)
    return sizes


def _ys(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, h, w, generator=g) for h, w in sizes]


@pytest.mark.parametrize("opts", [{}, {"generate_mode": "DPS_y0"}], ids=["diffpir", "dps_y0"])
def test_diffpir_batch_equals_one_at_a_time(tiny_weights, unet_batches, opts):
    """Three 16x16 images with their own kernels and seeds in one batch (plus one 12x20 image, its own group):
    each result equals the one-image run with its seed; swapping the seeds changes the results."""
    r = Restorer.from_pretrained(tiny_weights, method="diffpir", device="cpu")
    ys = _ys([(16, 16), (12, 20), (16, 16), (16, 16)])
    ops = [Blur(gaussian_kernel(5, s)) for s in (0.8, 1.5, 1.2, 2.0)]
    seeds = [7, 8, 9, 10]
    batch = r.restore_batch(ys, ops, seeds, task="deblur", steps=3, **opts)
    assert sorted(unet_batches) == [1, 3]  # the three 16x16 images went through the UNet together
    unet_batches.clear()
    for k in range(4):
        alone = r.restore_tensor(ys[k], "deblur", ops[k], steps=3, seed=seeds[k], **opts)
        assert batch[k].shape == alone.shape
        torch.testing.assert_close(batch[k], alone, atol=1e-5, rtol=0)
    assert unet_batches == [1, 1, 1, 1]
    # the noise streams matter: image 0 restored with image 2's seed is clearly different
    other = r.restore_tensor(ys[0], "deblur", ops[0], steps=3, seed=seeds[2], **opts)
    assert (other - batch[0]).abs().max() > 1e-2


def test_restore_batched_tensor_with_a_batch_of_masks(tiny_weights, unet_batches):
    """restore() on an (N, C, H, W) tensor with an Inpainting operator carrying N masks: one batch, and each
    image equals its own one-image run (seed + k, its own mask)."""
    r = Restorer.from_pretrained(tiny_weights, method="diffpir", device="cpu")
    g = torch.Generator().manual_seed(1)
    ys = torch.rand(3, 3, 16, 16, generator=g)
    masks = (torch.rand(3, 1, 16, 16, generator=g) > 0.5).float()
    out = r.restore(ys, task="inpaint", operator=Inpainting(masks), steps=3, seed=4)
    assert unet_batches == [3] and out.shape == ys.shape
    for k in range(3):
        alone = r.restore_tensor(ys[k:k + 1], "inpaint", Inpainting(masks[k:k + 1]), steps=3, seed=4 + k)
        torch.testing.assert_close(out[k], alone[0], atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="2 masks but there are 3 images"):
        r.restore(ys, task="inpaint", operator=Inpainting(masks[:2]), steps=3)


def test_max_batch_splits_and_keeps_order(tiny_weights, unet_batches):
    """max_batch=2 on three images: batches of 2 and 1, results in input order and as one-at-a-time."""
    r = Restorer.from_pretrained(tiny_weights, method="diffpir", device="cpu")
    ys = [y[0] for y in _ys([(16, 16)] * 3, seed=2)]
    op = Blur(gaussian_kernel(5, 1.0))
    out = r.restore(ys, task="deblur", operator=op, steps=2, seed=0, max_batch=2)
    assert unet_batches == [2, 1] and isinstance(out, list) and len(out) == 3
    for k in range(3):
        alone = r.restore_tensor(ys[k][None], "deblur", op, steps=2, seed=k)
        torch.testing.assert_close(out[k], alone[0], atol=1e-5, rtol=0)


def test_batches_by_size_groups_in_sorted_order():
    sizes = {"a": (2, 2), "b": (3, 3), "c": (2, 2), "d": None, "e": (2, 2), "f": (3, 3), "g": (2, 2)}
    got = list(batches_by_size(list("abcdefg"), 2, sizes.get))
    assert got == [["a", "c"], ["d"], ["b", "f"], ["e", "g"]]
    assert list(batches_by_size(list("abc"), 5, sizes.get)) == [["a", "c"], ["b"]]


def _png(path, hw, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)


def test_cli_batch_size_gives_the_same_images(tmp_path, tiny_weights, unet_batches):
    """`--batch-size 3` on a folder of mixed sizes (with --degrade: a random kernel per image) writes the same
    images as `--batch-size 1`, and really batches the three 16x16 images."""
    photos = tmp_path / "photos"
    for name, hw, s in [("a", (16, 16), 1), ("b", (20, 12), 2), ("c", (16, 16), 3), ("d", (16, 16), 4),
                        ("e", (20, 12), 5)]:
        _png(photos / f"{name}.png", hw, s)
    common = ["--task", "deblur", "--degrade", "--steps", "2", "--kernel-size", "5", "--weights", str(tiny_weights),
              "--no-progress", "--seed", "3"]
    assert main(["run", "--input", str(photos), "--output", str(tmp_path / "one")] + common) == 0
    assert unet_batches == [1] * 5
    unet_batches.clear()
    assert main(["run", "--input", str(photos), "--output", str(tmp_path / "three"), "--batch-size", "3"]
                + common) == 0
    assert unet_batches == [3, 2]
    for name in "abcde":
        a = np.asarray(Image.open(tmp_path / "one" / f"{name}_diffpir_deblur.png")).astype(int)
        b = np.asarray(Image.open(tmp_path / "three" / f"{name}_diffpir_deblur.png")).astype(int)
        assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01  # 8-bit rounding of ~1e-6 differences


def test_cli_batch_size_rejects_nonsense(tmp_path, capsys):
    rc = main(["run", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--task", "deblur",
               "--batch-size", "0"])
    assert rc == 2 and "--batch-size must be" in capsys.readouterr().err


def test_default_restore_batch_loops_for_other_methods():
    """A method without its own batching (classical) goes through the looping default with the same results."""
    r = Restorer.from_pretrained(method="classical", device="cpu")
    assert not r.supports_batch
    ys = [y[0] for y in _ys([(16, 16), (16, 16)], seed=3)]
    op = Blur(gaussian_kernel(5, 1.0))
    out = r.restore(ys, task="deblur", operator=op, noise_level=0.01)
    for k in range(2):
        alone = r.restore(ys[k], task="deblur", operator=op, noise_level=0.01, seed=k)
        assert torch.equal(out[k], alone)


def test_compile_sends_the_unet_through_torch_compile(tiny_weights, monkeypatch):
    """DiffPIR.compile() wraps the UNet with torch.compile (replaced here by a counting wrapper: compiling for
    real takes minutes on CPU) and sampling then calls the wrapped network, with unchanged results."""
    r = Restorer.from_pretrained(tiny_weights, method="diffpir", device="cpu")
    y = _ys([(16, 16)], seed=5)[0]
    op = Blur(gaussian_kernel(5, 1.0))
    plain = r.restore_tensor(y, "deblur", op, steps=3, seed=0)
    seen = {"kw": None, "calls": 0}

    class Counting(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, *a):
            seen["calls"] += 1
            return self.net(*a)

    def fake_compile(model, **kw):
        seen["kw"] = kw
        return Counting(model)

    monkeypatch.setattr(torch, "compile", fake_compile)
    r.compile(mode="max-autotune")
    out = r.restore_tensor(y, "deblur", op, steps=3, seed=0)
    assert seen["kw"] == {"mode": "max-autotune"} and seen["calls"] == 3  # one UNet call per step
    assert torch.equal(out, plain)


def test_compile_flag_on_a_method_without_it(tmp_path, capsys):
    img = tmp_path / "a.png"
    _png(img, (16, 16), 0)
    rc = main(["run", "--method", "classical", "--task", "deblur", "--degrade", "--kernel-size", "5", "--input",
               str(img), "--output", str(tmp_path / "o.png"), "--compile", "--no-progress"])
    assert rc == 0 and "does not support --compile" in capsys.readouterr().err


def test_restore_folder_max_batch(tmp_path, tiny_weights, unet_batches):
    """restore_folder(max_batch=2) batches the two 16x16 images and writes what max_batch=1 writes."""
    photos = tmp_path / "p"
    for name, hw, s in [("a", (16, 16), 1), ("b", (12, 20), 2), ("c", (16, 16), 3)]:
        _png(photos / f"{name}.png", hw, s)
    r = Restorer.from_pretrained(tiny_weights, method="diffpir", device="cpu")
    op = lambda x: Blur(gaussian_kernel(5, 1.0))  # noqa: E731
    one = r.restore_folder(photos, tmp_path / "one", task="deblur", operator=op, steps=2, seed=1)
    assert unet_batches == [1, 1, 1]
    unet_batches.clear()
    two = r.restore_folder(photos, tmp_path / "two", task="deblur", operator=op, steps=2, seed=1, max_batch=2)
    assert unet_batches == [2, 1] and len(two["written"]) == len(one["written"]) == 3
    for name in "abc":
        a = np.asarray(Image.open(tmp_path / "one" / f"{name}_diffpir_deblur.png")).astype(int)
        b = np.asarray(Image.open(tmp_path / "two" / f"{name}_diffpir_deblur.png")).astype(int)
        assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize("task", ["sr", "inpaint"])
def test_diffir_batch_equals_one_at_a_time(tmp_path, task):
    """DiffIR runs same-size images in one network call (counted), each with its own seed's random stream and its
    own mask, and gives what one-image runs give; a different seed changes the IPR draw and the result."""
    from restorekit.operators import Inpainting, random_mask

    from .test_diffir import TINY, write_tiny_diffir

    cfg = TINY if task == "sr" else type(TINY)(**{**TINY.to_dict(), "variant": "inpaint", "scale": 1,
                                                  "inp_channels": 4})
    path = write_tiny_diffir(tmp_path / "m.safetensors", cfg, 0.05)
    r = Restorer.from_pretrained(str(path), method="diffir")
    assert r.supports_batch
    ys = [y[0] for y in _ys([(16, 16), (16, 16), (16, 16), (8, 12)], seed=5)]
    ops = ([Inpainting(random_mask(y.shape[-2], y.shape[-1], 0.5, rng=k)) for k, y in enumerate(ys)]
           if task == "inpaint" else None)
    calls = []
    r.net.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    out = r.restore(ys, task=task, operator=ops, seed=7)
    assert sorted(calls) == [1, 3]  # the three 16x16 images together, the 8x12 one alone
    for k in range(len(ys)):
        alone = r.restore(ys[k], task=task, operator=None if ops is None else ops[k], seed=7 + k)
        assert (out[k] - alone).abs().max() < 1e-5
    other = r.restore(ys[0], task=task, operator=None if ops is None else ops[0], seed=99)
    assert (other - out[0]).abs().max() > 1e-4


@pytest.mark.parametrize("version,opts", [
    ("v2", {"g_scale": 0.5, "g_loss": "w_mse", "start_point_type": "cond", "noise_aug": 20}),
    ("v2.1", {"cfg_scale": 2.0}),  # edm_dpm++_3m_sde: one Brownian tree per image
    ("v2", {"cldm_tiled": True, "cldm_tile_size": 256, "cldm_tile_stride": 192}),  # 512x626: 6 diffusion tiles
], ids=["v2-spaced-guidance", "v2.1-edm-sde", "v2-tiled"])
def test_diffbir_batch_equals_one_at_a_time(light, version, opts, monkeypatch):
    """DiffBIR runs same-size images through both stages together (the ControlNet sees 2 images per call), each
    drawing every noise (start point, noise augmentation, guidance target's VAE sample, sampler noise, Brownian
    tree) from its own seed, and gives what one-image runs give; a different seed changes the result."""
    from restorekit.nets.bsrnet import RRDBNet

    r = _restorer(light, stage1=RRDBNet(nf=8, nb=1, gc=4).eval(), kind="bsrnet", version=version)
    assert r.supports_batch
    ys = [y for y in _ys([(9, 11), (10, 12), (9, 11)], seed=4)]
    calls, tiles = [], []
    r.pipeline.controlnet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    from restorekit.methods.diffbir import pipeline as diffbir_pipeline

    windows = diffbir_pipeline.sliding_windows
    monkeypatch.setattr(diffbir_pipeline, "sliding_windows", lambda *a: tiles.append(len(windows(*a))) or windows(*a))
    out = r.restore([y[0] for y in ys], task="sr", steps=2, seed=7, scale=4, **opts)
    assert 2 in calls and set(calls) == {1, 2}  # the two 9x11 images together, the 10x12 one alone
    assert (min(tiles) > 1) if opts.get("cldm_tiled") else not tiles
    for k in range(3):
        alone = r.restore(ys[k], task="sr", steps=2, seed=7 + k, scale=4, **opts)[0]
        d = (out[k] - alone).abs()
        assert out[k].shape == alone.shape == (3, 4 * ys[k].shape[-2], 4 * ys[k].shape[-1])
        # 8-bit outputs: a batched convolution may round one level differently, nowhere more
        assert d.max() <= 1 / 255 + 1e-6 and (d > 0).float().mean() < 0.01, (k, float(d.max()))
    other = r.restore(ys[0], task="sr", steps=2, seed=99, scale=4, **opts)[0]
    assert (other - out[0]).abs().max() > 0.02
