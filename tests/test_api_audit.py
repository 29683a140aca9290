"""Findings of the Python API audit: mismatched operators, masks and scales, restore_folder's up-front checks,
odd pixel types, loader options, and another method's weights -- each one line, a RestoreKitError, before work."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit import Restorer
from restorekit.errors import ConfigError, ImageReadError, RestoreKitError, TaskError, WeightsError
from restorekit.operators import BicubicDownsample, Blur, BlurDownsample, Inpainting, gaussian_kernel

from .test_diffbir_pipeline import light  # noqa: F401  (the tiny DiffBIR models' fixture)

DATA = Path(__file__).resolve().parents[1] / "restorekit" / "data"


@pytest.fixture(scope="module")
def y():
    return np.random.default_rng(0).random((24, 24, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def diffpir():
    return Restorer.from_pretrained()


@pytest.fixture(scope="module")
def classical():
    return Restorer.from_pretrained(method="classical")


@pytest.fixture(scope="module")
def diffir_sr():
    return Restorer.from_pretrained("diffir-demo-sr", method="diffir")


def one_line(e) -> str:
    s = str(e.value)
    assert "\n" not in s
    return s


# 1. task="sr" with a deblurring operator
def test_sr_refuses_a_blur_operator(diffpir, classical, y):
    with pytest.raises(TaskError, match="does not fit task 'sr'") as e:
        diffpir.restore(y, task="sr", operator=Blur(gaussian_kernel(5, 1.0)), steps=2)
    one_line(e)
    with pytest.raises(TaskError, match="does not fit task 'sr'"):
        classical.restore(y, task="sr", operator=Blur(gaussian_kernel(9, 1.5)))


def test_sr_still_takes_its_operators(diffpir, classical, y):
    assert diffpir.restore(y, task="sr", operator=BicubicDownsample(2), steps=2).shape == (48, 48, 3)
    # sr_mode='blur': Gaussian blur + decimation (make_operator's "blur" SR mode)
    k = gaussian_kernel(13, 1.6)
    assert diffpir.restore(y, task="sr", operator=BlurDownsample(k, 2), scale=2, steps=2).shape == (48, 48, 3)
    assert diffpir.restore(y, task="sr", steps=2, scale=2).shape == (48, 48, 3)
    assert diffpir.restore(y, task="sr", steps=2, sr_mode="cubic", operator=BicubicDownsample(2)).shape == (48, 48, 3)
    assert diffpir.restore(y[:8, :8], task="sr", steps=2).shape == (32, 32, 3)  # default x4
    assert classical.restore(y, task="sr", operator=BicubicDownsample(2)).shape == (48, 48, 3)
    assert classical.restore(y, task="sr").shape == (96, 96, 3)


# 2. one image, N > 1 masks
def test_one_image_with_several_masks_is_refused(diffpir, classical, y):
    m = (torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    with pytest.raises(TaskError, match="carries 2 masks but there is 1 image") as e:
        diffpir.restore(y, task="inpaint", operator=Inpainting(m), steps=2, seed=0)
    one_line(e)
    with pytest.raises(TaskError, match="carries 2 masks"):
        classical.restore(y, task="inpaint", operator=Inpainting(m))
    # two images, two masks: still fine
    outs = diffpir.restore([y, y], task="inpaint", operator=Inpainting(m), steps=2, seed=0)
    assert len(outs) == 2


# 3. restore_folder checks the operator before the first image
@pytest.mark.parametrize("task", ["deblur", "inpaint"])
def test_restore_folder_without_operator_raises_up_front(diffpir, classical, tmp_path, task):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(src / "a.png")
    for r in (diffpir, classical):
        with pytest.raises(TaskError, match="needs|non-blind") as e:
            r.restore_folder(src, tmp_path / "out", task=task, steps=2)
        one_line(e)
        with pytest.raises(TaskError) as e2:
            r.restore(np.full((16, 16, 3), 0.5, np.float32), task=task, steps=2)
        assert str(e.value) == str(e2.value)  # the message restore() gives
        assert not (tmp_path / "out").exists()


def test_restore_folder_refuses_several_masks(diffpir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(src / "a.png")
    with pytest.raises(TaskError, match="carries 2 masks"):
        diffpir.restore_folder(src, tmp_path / "out", task="inpaint", operator=Inpainting(torch.ones(2, 1, 16, 16)),
                               steps=2)
    assert not (tmp_path / "out").exists()


# 4. contradicting or ignored settings
def test_scale_contradicting_the_operator(diffpir, classical, y):
    with pytest.raises(TaskError, match="scale=4 contradicts the operator's factor x2") as e:
        diffpir.restore(y, task="sr", operator=BicubicDownsample(2), scale=4, steps=2)
    one_line(e)
    with pytest.raises(TaskError, match="contradicts"):
        classical.restore(y, task="sr", operator=BicubicDownsample(2), scale=4)
    assert diffpir.restore(y, task="sr", operator=BicubicDownsample(2), scale=2, steps=2).shape == (48, 48, 3)


def test_blind_diffir_refuses_an_operator(diffir_sr, y):
    with pytest.raises(TaskError, match="blind") as e:
        diffir_sr.restore(y, task="sr", operator=BicubicDownsample(2))
    assert "x4" in one_line(e)
    with pytest.raises(TaskError, match="blind"):
        diffir_sr.restore(y, operator=BicubicDownsample(4))
    assert diffir_sr.restore(y, task="sr", seed=0).shape == (96, 96, 3)


def test_diffir_inpaint_folder_needs_the_mask(tmp_path):
    r = Restorer.from_pretrained("diffir-demo-inpaint", method="diffir")
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(src / "a.png")
    with pytest.raises(TaskError, match="Inpainting"):
        r.restore_folder(src, tmp_path / "out", task="inpaint")
    with pytest.raises(TaskError, match="does not fit task 'inpaint'"):
        r.restore(np.zeros((16, 16, 3), np.float32), task="inpaint", operator=Blur(gaussian_kernel(5, 1.0)))
    assert not (tmp_path / "out").exists()


# 5. complex and negative integer pixels
def test_complex_and_negative_integer_tensors_are_refused(diffpir, recwarn):
    with pytest.raises(ImageReadError, match="unsupported pixel type torch.complex64"):
        diffpir.restore(torch.ones(3, 8, 8, dtype=torch.complex64), task="sr", steps=2)
    assert not [w for w in recwarn if "complex" in str(w.message).lower()]
    with pytest.raises(ImageReadError, match=r"tensor image must hold floats in \[0, 1\], got integers -1\.\.-1"):
        diffpir.restore(torch.full((3, 8, 8), -1, dtype=torch.int8), task="sr", steps=2)
    with pytest.raises(ImageReadError, match="got integers -3..-3"):
        diffpir.restore([torch.zeros(3, 8, 8), torch.full((3, 8, 8), -3, dtype=torch.int16)], task="sr", steps=2)
    with pytest.raises(ImageReadError, match="must not be negative"):
        diffpir.restore(np.full((8, 8, 3), -100, np.int8), task="sr", steps=2)


# 6. loader options, weightless methods, classical steps
def test_unknown_loader_option_is_a_restorekit_error():
    for kw in (dict(), dict(method="classical"), dict(name_or_path="diffir-demo-sr")):
        with pytest.raises(ConfigError, match="unexpected options for .*from_pretrained: \\['foo'\\]") as e:
            Restorer.from_pretrained(foo=1, **kw)
        assert isinstance(e.value, TypeError)  # the CLI maps a TypeError about torch_dtype to --precision


def test_classical_weights_and_steps(classical, y):
    with pytest.raises(RestoreKitError, match="takes no weights") as e:
        Restorer.from_pretrained("x.pt", method="classical")
    assert not isinstance(e.value, WeightsError)
    for steps in (-1, 0, 1.5):
        with pytest.raises(TaskError, match="steps"):
            classical.restore(y, task="sr", steps=steps)
    assert classical.restore(y, task="sr", steps=10).shape == (96, 96, 3)


# 7. another method's weights
def test_another_methods_weights_are_named():
    with pytest.raises(WeightsError) as e:
        Restorer.from_pretrained(str(DATA / "diffir_demo_sr.safetensors"), method="diffpir")
    msg = one_line(e)
    assert "diffir_demo_sr.safetensors is a DiffIR model (restorekit_method=diffir)" in msg
    assert "--method diffir" in msg and "method='diffir'" in msg
    with pytest.raises(WeightsError) as e:
        Restorer.from_pretrained(str(DATA / "diffpir_demo_prior.safetensors"), method="diffir")
    msg = one_line(e)
    assert "diffpir_demo_prior.safetensors is a DiffPIR model" in msg and "--method diffpir" in msg


def test_unknown_layout_names_the_file_and_both_routes(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "odd.safetensors"
    save_file({"w": torch.zeros(2, 2)}, str(p))
    with pytest.raises(WeightsError) as e:
        Restorer.from_pretrained(str(p), method="diffpir")
    msg = one_line(e)
    assert str(p) in msg and "unet_config=" in msg and "CLI" in msg
    with pytest.raises(WeightsError) as e:
        Restorer.from_pretrained(str(p), method="diffir")
    msg = one_line(e)
    assert str(p) in msg and "config=" in msg and "CLI" in msg


def test_cli_names_the_other_methods_file(tmp_path, capsys):
    from restorekit.cli import main

    src = tmp_path / "a.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(src)
    rc = main(["run", "--method", "diffpir", "--task", "sr", "--scale", "2", "--steps", "3", "--weights",
               str(DATA / "diffir_demo_sr.safetensors"), "--input", str(src), "--output", str(tmp_path / "out") + "/"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a DiffIR model" in err[0] and "--method diffir" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_classical_blind_wiener_refuses_an_operator_it_would_ignore(classical, y, tmp_path):
    op = Blur(gaussian_kernel(5, 1.0))
    with pytest.raises(TaskError) as e:
        classical.restore(y, task="deblur", operator=op, algorithm="blind_wiener")
    assert one_line(e).startswith("classical deblur is blind: it estimates the degradation from the image "
                                        "and would ignore operator=Blur(...)")
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((y * 255).astype(np.uint8)).save(folder / "a.png")
    with pytest.raises(TaskError, match="is blind"):
        classical.restore_folder(folder, tmp_path / "out", task="deblur", operator=op, algorithm="blind_wiener")
    assert not (tmp_path / "out").exists()
    # without an operator it runs; the non-blind algorithms still take theirs
    assert classical.restore(y, task="deblur", algorithm="blind_wiener", kernel_size=5).shape == y.shape
    assert classical.restore(y, task="deblur", operator=op).shape == y.shape


def test_diffbir_restore_refuses_an_operator(light):  # noqa: F811  (light: test_diffbir_pipeline's tiny models)
    from .test_diffbir_pipeline import _restorer

    r = _restorer(light, version="v2.1")
    y = torch.rand(1, 3, 16, 16)
    with pytest.raises(TaskError, match="diffbir sr is blind: it estimates the degradation from the image and would "
                                        "ignore operator=BicubicDownsample"):
        r.restore(y, task="sr", operator=BicubicDownsample(4), steps=1)
