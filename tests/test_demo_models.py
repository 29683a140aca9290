"""The bundled demo models: they load from their cards offline and really restore (on a held-out image)."""

import pytest
import torch

from restorekit import Restorer
from restorekit.io import read_image
from restorekit.operators import Blur, Inpainting, add_gaussian_noise, gaussian_kernel, random_mask


def _psnr(a, b):
    return (10 * torch.log10(1 / ((a.clamp(0, 1) - b) ** 2).mean())).item()


@pytest.fixture(scope="module")
def coffee():
    # examples/coffee.png (scikit-image's 'coffee') was held out of the demo models' training data
    arr, _ = read_image("examples/coffee.png")
    return torch.from_numpy(arr).permute(2, 0, 1)[None][..., 64:192, 64:192].contiguous()


@pytest.fixture(scope="module")
def diffpir_demo():
    r = Restorer.from_pretrained("diffpir-demo", device="cpu")
    assert r.card.demo and r.weights_path.name == "diffpir_demo_prior.safetensors"
    return r


def test_diffpir_demo_deblurs_better_than_wiener(coffee, diffpir_demo):
    """With its card's defaults (30 NFE), the demo beats Wiener deconvolution with the true kernel on a held-out
    crop (the DiffPIR protocol: 61x61, std 3, noise 0.05)."""
    op = Blur(gaussian_kernel(61, 3.0))
    y = add_gaussian_noise(op.forward(coffee), 0.05, torch.Generator().manual_seed(0))
    out = diffpir_demo.restore(y, task="deblur", operator=op, seed=0, noise_level=0.05)
    wiener = Restorer.from_pretrained(method="classical").restore(y, task="deblur", operator=op, noise_level=0.05)
    assert _psnr(out, coffee) > _psnr(wiener, coffee) + 0.3


def test_diffpir_demo_inpaints(coffee, diffpir_demo):
    op = Inpainting(random_mask(128, 128, 0.5, rng=0))
    y = op.forward(coffee)
    out = diffpir_demo.restore(y, task="inpaint", operator=op, steps=20, seed=0)
    assert _psnr(out, coffee) > 24.0  # measured: 9.0 (masked) -> 27.7 dB


@pytest.fixture(scope="module")
def diffir_demos():
    return {t: Restorer.from_pretrained(f"diffir-demo-{t}", method="diffir", device="cpu")
            for t in ("sr", "deblur", "inpaint")}


def test_diffir_demo_cards(diffir_demos):
    for task, r in diffir_demos.items():
        assert r.card.demo and r.tasks == (task,)


def test_diffir_demo_deblurs(coffee, diffir_demos):
    from restorekit.operators import motion_kernel

    op = Blur(motion_kernel(31, 0.5, 1))
    y = (op.forward(coffee) + 0.01 * torch.randn(coffee.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    out = diffir_demos["deblur"].restore(y, task="deblur", seed=0)
    assert _psnr(out, coffee) > _psnr(y, coffee) + 0.8  # measured on the whole image: +1.2 .. +1.7 dB


def test_diffir_demo_inpaints(coffee, diffir_demos):
    mask = torch.ones(1, 1, 128, 128)
    mask[..., 40:80, 30:90] = 0
    op = Inpainting(mask)
    y = op.forward(coffee)
    out = diffir_demos["inpaint"].restore(y, task="inpaint", operator=op, seed=0)
    hole = (mask == 0).expand_as(coffee)
    assert ((out - coffee)[hole] ** 2).mean() < 0.5 * ((y - coffee)[hole] ** 2).mean()  # better than leaving it black


def test_diffpir_demo_card_defaults_apply_to_the_demo_only(diffpir_demo, tmp_path):
    """The demo card's tuned per-task defaults replace the official ones for diffpir-demo; explicit options still
    win, and the same file loaded by path (no card) keeps the official defaults."""
    from restorekit.methods.diffpir.sampler import TASK_DEFAULTS

    tuned = diffpir_demo.card.options["task_defaults"]
    assert set(tuned) == {"deblur", "sr", "inpaint"}
    for task, opts in tuned.items():
        cfg = diffpir_demo.make_config(task)
        assert all(getattr(cfg, k) == v for k, v in opts.items()), task
        assert diffpir_demo.make_config(task, zeta=0.123).zeta == 0.123
    by_path = Restorer.from_pretrained(str(diffpir_demo.weights_path), method="diffpir", device="cpu")
    for task in tuned:
        cfg = by_path.make_config(task)
        assert all(getattr(cfg, k) == v for k, v in TASK_DEFAULTS[task].items()), task


def test_bundled_weights_stay_under_40_mb():
    """The demo-models issue caps all bundled weights together at 40 MB."""
    from pathlib import Path

    import restorekit

    files = list((Path(restorekit.__file__).parent / "data").glob("*.safetensors"))
    assert len(files) == 4 and sum(f.stat().st_size for f in files) < 40e6
