"""Image and weights input found wrong by a hostile-input audit: 32-bit integer pixels, EXIF orientation,
animations, float TIFFs, complex / integer tensors, single-file errors that did not name the file, plain-pickle
weights, and ``--json`` leaving out the failed images of a folder run."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from restorekit import ImageReadError, WeightsError
from restorekit.cli import main
from restorekit.io import read_image, to_tensor
from restorekit.weights import load_state_dict


def _gradient(h=24, w=40) -> np.ndarray:
    """An image whose every row and column differs (any flip or rotation shows)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 6 % 256, yy * 10 % 256, (xx * 3 + yy * 5) % 256], -1).astype(np.uint8)


def _run(args, capfd) -> tuple[int, str, str]:
    rc = main(["run", "--no-progress"] + [str(a) for a in args])
    out, err = capfd.readouterr()
    return rc, out, err


# -- integer pixels --------------------------------------------------------------------------------------------

def test_full_range_uint32_is_scaled_by_its_type_not_clipped(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    g = _gradient()
    u32 = g.astype(np.uint32) * 16843009  # 8-bit values spread over the full 32-bit range (255 -> 2**32 - 1)
    f = tmp_path / "u32.tif"
    tifffile.imwrite(f, u32, photometric="rgb")
    arr, info = read_image(f)
    np.testing.assert_allclose(arr, g / 255.0, atol=1e-6)  # was: values / 65535, clipped -> 98% white
    assert info.bit_depth == 16
    x, _ = to_tensor(u32)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), g / 255.0, atol=1e-6)


@pytest.mark.parametrize("arr,needle", [
    (np.full((8, 8, 3), 10**7, np.int64), "int64 pixel values up to 10000000 have no known range"),
    (np.full((8, 8, 3), -100, np.int8), "integer pixel values must not be negative, got -100..-100 (int8)"),
])
def test_integer_arrays_without_a_known_range_are_refused(arr, needle):
    with pytest.raises(ImageReadError) as e:
        to_tensor(arr)
    assert str(e.value).startswith(needle) and "\n" not in str(e.value)


def test_signed_integer_arrays_keep_their_value_rules():
    g = _gradient()
    x8, i8 = to_tensor(g.astype(np.int32))
    x16, i16 = to_tensor(g.astype(np.int64) * 257)
    assert (i8.bit_depth, i16.bit_depth) == (8, 16)
    torch.testing.assert_close(x8, x16)


@pytest.mark.parametrize("t,needle", [
    (torch.ones(3, 8, 8, dtype=torch.complex64), "unsupported pixel type torch.complex64"),
    (torch.full((3, 8, 8), 200, dtype=torch.uint8), "a torch.uint8 tensor image must hold floats in [0, 1], "
                                                      "got integers 200..200; convert it with .float() (divide by"),
])
def test_complex_and_integer_tensors_get_one_line(t, needle):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 'Casting complex values to real' warning either
        with pytest.raises(ImageReadError) as e:
            to_tensor(t)
    assert str(e.value).startswith(needle)


def test_zero_one_integer_and_bool_tensors_are_masks_of_values():
    x, _ = to_tensor(torch.ones(3, 4, 4, dtype=torch.uint8))
    assert x.dtype == torch.float32 and float(x.min()) == 1.0
    x, _ = to_tensor(torch.zeros(3, 4, 4, dtype=torch.bool))
    assert float(x.max()) == 0.0


# -- files -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pil_exif_transpose(tmp_path, orientation):
    im = Image.fromarray(_gradient())
    ex = im.getexif()
    ex[0x0112] = orientation
    f = tmp_path / f"o{orientation}.png"  # lossless, so the reference is exact; OpenCV decodes it
    im.save(f, exif=ex)
    with Image.open(f) as ref_im:
        ref = np.asarray(ImageOps.exif_transpose(ref_im).convert("RGB")) / 255.0
    arr, _ = read_image(f)
    assert arr.shape == ref.shape
    np.testing.assert_allclose(arr, ref, atol=1e-6)


def test_rotated_phone_photo_is_restored_upright(tmp_path, capfd):
    im = Image.fromarray(_gradient(48, 64))  # stored 64 wide, 48 high
    ex = im.getexif()
    ex[0x0112] = 6  # displays rotated 90 degrees clockwise: 48 wide, 64 high
    f = tmp_path / "phone.jpg"
    im.save(f, exif=ex, quality=95)
    before = f.read_bytes()
    rc, _, err = _run(["--method", "classical", "--task", "sr", "--scale", "2", "--input", f,
                       "--output", tmp_path / "out.png"], capfd)
    assert rc == 0, err
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (96, 128)  # the displayed 48x64, x2 (was 128x96: on its side)
        assert out.getexif().get(0x0112) is None  # no EXIF rotation left to apply twice
    assert f.read_bytes() == before
    # a folder run with batches groups images by their displayed size
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jpg").write_bytes(before)
    Image.fromarray(_gradient(64, 48)).save(d / "b.png")  # stored upright at the displayed size
    rc, _, err = _run(["--method", "classical", "--task", "sr", "--scale", "2", "--input", d, "--output",
                       tmp_path / "o2", "--batch-size", "2"], capfd)
    assert rc == 0, err
    for name in ("a", "b"):
        with Image.open(next((tmp_path / "o2").glob(f"{name}*.png"))) as out:
            assert out.size == (96, 128)


def test_an_animation_is_refused_in_one_line(tmp_path, capfd):
    frames = [Image.fromarray(_gradient()), Image.fromarray(255 - _gradient())]
    f = tmp_path / "anim.gif"
    frames[0].save(f, save_all=True, append_images=frames[1:], duration=100, loop=0)
    rc, out, err = _run(["--method", "classical", "--task", "sr", "--scale", "2", "--input", f,
                         "--output", tmp_path / "o.png"], capfd)
    assert rc == 2 and err.count("\n") == 1 and "is an animation of 2 frames (GIF)" in err
    assert not (tmp_path / "o.png").exists()
    # a still GIF is fine
    frames[0].save(tmp_path / "still.gif")
    assert read_image(tmp_path / "still.gif")[0].shape == (24, 40, 3)


def test_multi_page_tiff_gives_its_first_page(tmp_path):
    pages = [Image.fromarray(_gradient()), Image.fromarray(_gradient(12, 20))]  # e.g. an image and its thumbnail
    f = tmp_path / "pages.tif"
    pages[0].save(f, save_all=True, append_images=pages[1:])
    with Image.open(f) as im:
        assert im.n_frames == 2
    arr, _ = read_image(f)
    np.testing.assert_allclose(arr, _gradient() / 255.0, atol=1e-6)


def test_float_tiff_is_written_back_with_16_bits(tmp_path, capfd):
    g = (_gradient() / 255.0).astype(np.float32)
    f = tmp_path / "f.tif"
    Image.fromarray(g[..., 0], mode="F").save(f)
    rc, _, err = _run(["--method", "classical", "--task", "sr", "--scale", "2", "--input", f,
                       "--output", tmp_path / "o.png"], capfd)
    assert rc == 0, err
    with Image.open(tmp_path / "o.png") as out:
        assert out.mode in ("I;16", "I") and np.asarray(out).max() > 255  # was an 8-bit L image


def test_single_file_value_errors_name_the_file(tmp_path, capfd):
    f = tmp_path / "f255.tif"
    Image.fromarray(_gradient()[..., 0].astype(np.float32), mode="F").save(f)  # 0..255 floats
    rc, _, err = _run(["--method", "classical", "--task", "sr", "--input", f, "--output", tmp_path / "o.png"],
                      capfd)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: image {f}: float image values must be [0, 1] data")


def test_json_lists_the_failed_images_of_a_folder_run(tmp_path, capfd):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_gradient()).save(d / "good.png")
    (d / "bad.png").write_bytes(b"not an image")
    rc, out, err = _run(["--method", "classical", "--task", "sr", "--scale", "2", "--input", d, "--output",
                         tmp_path / "o", "--json"], capfd)
    assert rc == 2
    rows = json.loads(out)
    assert [r["input"] for r in rows if "output" in r] == [str(d / "good.png")]
    failed = [r for r in rows if "error" in r]
    assert [r["input"] for r in failed] == [str(d / "bad.png")] and "cannot read image" in failed[0]["error"]


# -- weights ---------------------------------------------------------------------------------------------------

def test_plain_pickle_weights_are_named_as_such_without_torch_warnings(tmp_path):
    import pickle

    f = tmp_path / "raw.pth"
    with open(f, "wb") as fh:
        pickle.dump({"w": torch.zeros(2)}, fh, protocol=4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(WeightsError) as e:
            load_state_dict(f)
    assert "it is a plain pickle, not a PyTorch checkpoint" in str(e.value) and "\n" not in str(e.value)
    assert not [w for w in seen if "pickle protocol" in str(w.message)]
    # a legacy torch.save file that ends early is still 'truncated or corrupt'
    g = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(64)}, g, _use_new_zipfile_serialization=False)
    g.write_bytes(g.read_bytes()[:40])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_state_dict(g)


def test_folder_errors_name_the_file_once(tmp_path, capfd):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_gradient()).save(d / "good.png")
    Image.fromarray(_gradient()[..., 0].astype(np.float32), mode="F").save(d / "f255.tif")  # 0..255 floats
    (d / "bad.png").write_bytes(b"not an image")
    rc, _, err = _run(["--method", "classical", "--task", "sr", "--scale", "2", "--input", d, "--output",
                       tmp_path / "o"], capfd)
    assert rc == 2
    lines = [x for x in err.splitlines() if str(d) in x]
    assert len(lines) == 2, lines
    for name in ("bad.png", "f255.tif"):  # was "error: in/f255.tif: image in/f255.tif: ..."
        line = next(x for x in lines if name in x)
        assert line.startswith(("error: cannot read image ", "error: image ")) and f"{name}: image " not in line


def test_plain_pickle_resume_file_is_one_line_without_torch_warnings(tmp_path):
    import pickle

    from restorekit.errors import ConfigError
    from restorekit.training import load_training_state

    f = tmp_path / "raw.state"
    with open(f, "wb") as fh:
        pickle.dump({"iter": 1}, fh, protocol=4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ConfigError, match="it is a plain pickle"):
            load_training_state(f)
    assert not [w for w in seen if "pickle protocol" in str(w.message)]
