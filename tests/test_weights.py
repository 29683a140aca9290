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


def _lightning_ckpt(path, state_dict):
    """A checkpoint in PyTorch Lightning's layout: an OmegaConf DictConfig in hyper_parameters (as LaMa /
    DiffIR-inpainting save it), callback states and optimizer states next to the state dict; plus an object
    of a class from a module that does not exist when loading."""
    import sys
    import types

    from omegaconf import OmegaConf

    mod = types.ModuleType("fake_lightning_module")

    class Callback:
        def __init__(self):
            self.best = torch.tensor(0.5)
            self.path = "models/best.ckpt"

    Callback.__module__ = mod.__name__
    Callback.__qualname__ = "Callback"
    mod.Callback = Callback
    sys.modules[mod.__name__] = mod
    try:
        cfg = OmegaConf.create({"generator": {"kind": "DiffIRS2", "dim": 52, "num_blocks": [1, 1, 1, 9]},
                                "losses": {"l1": {"weight_missing": 0, "weight_known": 10}}})
        torch.save({"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.2.9",
                    "state_dict": state_dict, "callbacks": {"ModelCheckpoint": Callback()},
                    "optimizer_states": [{"state": {0: {"step": 3, "exp_avg": torch.zeros(2)}},
                                          "param_groups": [{"lr": 1e-3, "params": [0]}]}],
                    "lr_schedulers": [], "hparams_name": "kwargs", "hyper_parameters": {"config": cfg}}, path)
    finally:
        del sys.modules[mod.__name__]


def test_lightning_checkpoint_with_dictconfig_loads_without_omegaconf(tmp_path, monkeypatch):
    import pickle
    import sys

    sd = {"generator.w": torch.randn(3, 2), "discriminator.b": torch.randn(4)}
    p = tmp_path / "last.ckpt"
    _lightning_ckpt(p, sd)
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only loading refuses it (the report)
        torch.load(p, weights_only=True)
    for name in [m for m in sys.modules if m == "omegaconf" or m.startswith("omegaconf.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "omegaconf", None)  # any import of omegaconf now fails
    got, meta = load_state_dict(p)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert "omegaconf.dictconfig.DictConfig" in meta["skipped_objects"]
    assert "fake_lightning_module.Callback" in meta["skipped_objects"]


def test_placeholders_never_enter_the_state_dict(tmp_path):
    from omegaconf import OmegaConf

    p = tmp_path / "odd.pth"
    torch.save({"params": {"w": torch.ones(1), "cfg": OmegaConf.create({"a": 1})}}, p)
    with pytest.raises(WeightsError, match="not tensors.*cfg"):
        load_state_dict(p)


def test_precise_messages_for_broken_files(tmp_path):
    import zipfile

    good = tmp_path / "good.pth"
    torch.save({"w": torch.randn(1000)}, good)
    data = good.read_bytes()
    cases = {
        "empty.pth": (b"", "empty"),
        "cut.pth": (data[: len(data) // 2], "truncated.*central directory"),
        "page.pth": (b"<!DOCTYPE html><html>Sign in</html>", "HTML page"),
        "lfs.ckpt": (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n", "Git LFS pointer"),
        "pic.pth": (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "PNG image"),
        "torchfile.safetensors": (data, "not a safetensors file.*zip"),
    }
    st = tmp_path / "good.safetensors"
    save_file({"a": torch.randn(1000)}, str(st))
    cases["cut.safetensors"] = (st.read_bytes()[:-100], "truncated")
    for name, (content, pattern) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(WeightsError, match=pattern) as e:
            load_state_dict(p)
        assert name in str(e.value)
    z = tmp_path / "other.pth"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("readme.txt", "hello")
    with pytest.raises(WeightsError, match="zip archive but not a PyTorch checkpoint"):
        load_state_dict(z)


class _RunsCode:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('ran')",))


def test_pickled_calls_are_not_executed(tmp_path):
    import os

    marker = tmp_path / "marker"
    p = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": _RunsCode(marker)}, p)
    sd, meta = load_state_dict(p)
    assert not marker.exists() and "builtins.exec" in meta["skipped_objects"] and torch.equal(sd["w"], torch.ones(1))

    class _System:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": _System()}, p)
    with pytest.raises(WeightsError, match="refusing.*system"):
        load_state_dict(p)
