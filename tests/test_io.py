import numpy as np
import pytest
import torch
from PIL import Image

from restorekit.errors import ImageReadError
from restorekit.io import from_tensor, read_image, save_image, to_tensor


def test_grayscale_8bit(tmp_path):
    a = (np.arange(20 * 30) % 251).astype(np.uint8).reshape(20, 30)
    Image.fromarray(a, mode="L").save(tmp_path / "g.png")
    rgb, info = read_image(tmp_path / "g.png")
    assert rgb.shape == (20, 30, 3) and info.channels == 1
    assert np.allclose(rgb[..., 0], a / 255.0) and np.allclose(rgb[..., 0], rgb[..., 2])
    out = save_image(tmp_path / "o.png", torch.from_numpy(rgb).permute(2, 0, 1)[None], info)
    back = Image.open(out)
    assert back.mode == "L" and np.array_equal(np.asarray(back), a)


def test_rgba_alpha_carried_and_resized(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 12, 4), dtype=np.uint8)
    Image.fromarray(a, mode="RGBA").save(tmp_path / "a.png")
    rgb, info = read_image(tmp_path / "a.png")
    assert info.channels == 4 and info.alpha.shape == (16, 12)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    out = np.asarray(Image.open(save_image(tmp_path / "o.png", x, info)))
    assert out.shape == (16, 12, 4) and np.array_equal(out, a)
    up = torch.nn.functional.interpolate(x, scale_factor=2)  # e.g. SR output
    out2 = np.asarray(Image.open(save_image(tmp_path / "o2.png", up, info)))
    assert out2.shape == (32, 24, 4)


def test_16bit_rgb_keeps_precision(tmp_path):
    import cv2

    rng = np.random.default_rng(1)
    a = rng.integers(0, 65536, (10, 14, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "h.png"), a[..., ::-1])
    rgb, info = read_image(tmp_path / "h.png")
    assert info.bit_depth == 16
    assert np.allclose(rgb, a / 65535.0, atol=1e-6)  # not truncated to 8 bits
    out = save_image(tmp_path / "o.png", torch.from_numpy(rgb).permute(2, 0, 1)[None], info)
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert back.dtype == np.uint16 and np.array_equal(back, a)


def test_16bit_gray(tmp_path):
    a = (np.arange(64) * 1000).astype(np.uint16).reshape(8, 8)
    Image.fromarray(a).save(tmp_path / "g16.png")
    rgb, info = read_image(tmp_path / "g16.png")
    assert info.bit_depth == 16 and info.channels == 1
    assert np.allclose(rgb[..., 1], a / 65535.0, atol=1e-6)


@pytest.mark.parametrize("content", [b"", b"hello, this is text", b"\x89PNG\r\n\x1a\n\x00\x00broken"])
def test_unreadable(tmp_path, content):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(p)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_round_trips_keep_kind():
    rng = np.random.default_rng(2)
    u8 = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    t, info = to_tensor(u8)
    assert t.shape == (1, 3, 6, 5)
    back = from_tensor(t, info)
    assert back.dtype == np.uint8 and np.array_equal(back, u8)
    g16 = rng.integers(0, 65536, (6, 5), dtype=np.uint16)
    back = from_tensor(*to_tensor(g16))
    assert back.dtype == np.uint16 and back.shape == (6, 5) and np.abs(back.astype(int) - g16).max() <= 1
    pil = Image.fromarray(u8)
    back = from_tensor(*to_tensor(pil))
    assert isinstance(back, Image.Image) and np.array_equal(np.asarray(back), u8)
    chw = torch.rand(3, 6, 5)
    back = from_tensor(*to_tensor(chw))
    assert back.shape == (3, 6, 5) and torch.allclose(back, chw)
    with pytest.raises(ImageReadError):
        to_tensor(torch.rand(2, 3, 4, 4))


def test_atomic_save_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "o.png"
    save_image(p, torch.zeros(1, 3, 4, 4))
    before = p.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(RuntimeError):
        save_image(p, torch.ones(1, 3, 4, 4))
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["o.png"]  # no temp files left
