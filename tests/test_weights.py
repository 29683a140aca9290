import hashlib

import pytest
import torch
from safetensors.torch import save_file

from restorekit.errors import WeightsError
from restorekit.weights import ModelCard, download_url, load_state_dict, resolve_card


def _ckpt(tmp_path):
    p = tmp_path / "src" / "w.safetensors"
    p.parent.mkdir()
    save_file({"a": torch.arange(6.0)}, str(p))
    return p, hashlib.sha256(p.read_bytes()).hexdigest()


def test_url_download_caches_and_checks_sha(tmp_path, monkeypatch):
    src, sha = _ckpt(tmp_path)
    card = ModelCard(name="t", method="diffpir", filename="w.safetensors", description="",
                     sources=[src.as_uri()], sha256=sha)
    got = resolve_card(card)
    assert got.parent == tmp_path / "cache" and got.read_bytes() == src.read_bytes()
    src.unlink()  # second call is served from the cache, no source needed
    assert resolve_card(card) == got
    sd, _ = load_state_dict(got)
    assert torch.equal(sd["a"], torch.arange(6.0))


def test_corrupt_download_is_rejected_and_not_kept(tmp_path):
    src, sha = _ckpt(tmp_path)
    dest = tmp_path / "dl" / "w.safetensors"
    with pytest.raises(WeightsError, match="corrupt"):
        download_url(src.as_uri(), dest, sha256="0" * 64)
    assert not dest.exists() and not list(dest.parent.glob("*.part"))


def test_corrupt_cached_file_is_reported(tmp_path):
    src, sha = _ckpt(tmp_path)
    cached = tmp_path / "cache" / "w.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage")
    card = ModelCard(name="t", method="diffpir", filename="w.safetensors", description="", sha256=sha)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        resolve_card(card)


def test_offline_error_names_file_and_destination(tmp_path):
    card = ModelCard(name="diffpir-ffhq", method="diffpir", filename="diffusion_ffhq_10m.pt", description="",
                     sources=["hf://deepinv/diffunet/diffusion_ffhq_10m.pt", "http://127.0.0.1:9/nothing.pt"])
    with pytest.raises(WeightsError) as e:
        resolve_card(card)
    msg = str(e.value)
    assert "diffusion_ffhq_10m.pt" in msg
    assert "huggingface.co/deepinv/diffunet" in msg and "127.0.0.1" in msg
    assert str(tmp_path / "cache" / "diffusion_ffhq_10m.pt") in msg
    assert "RESTOREKIT_WEIGHTS" in msg


def test_weights_folder_env(tmp_path, monkeypatch):
    src, sha = _ckpt(tmp_path)
    monkeypatch.setenv("RESTOREKIT_WEIGHTS", str(src.parent))
    card = ModelCard(name="t", method="diffpir", filename="w.safetensors", description="", sha256=sha)
    assert resolve_card(card, download=False) == src


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_corrupt_checkpoint_files(tmp_path, content):
    for name in ("bad.pt", "bad.safetensors"):
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(WeightsError, match=name):
            load_state_dict(p)


def test_unwraps_params_ema(tmp_path):
    p = tmp_path / "net_g.pth"
    torch.save({"params_ema": {"w": torch.ones(2)}, "params": {"w": torch.zeros(2)}}, p)
    sd, _ = load_state_dict(p)
    assert torch.equal(sd["w"], torch.ones(2))
