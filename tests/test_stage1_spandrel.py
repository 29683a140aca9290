"""DiffBIR stage 1 through spandrel: the official stage-1 layouts on spandrel's architectures, and any
spandrel-loadable model file as stage 1 (``stage1=PATH`` / ``--stage1 PATH``), with tiny models."""

import re

import numpy as np
import pytest
import spandrel
import torch
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.SwinIR import SwinIR as SpandrelSwinIR

from restorekit import RestoreKitError, TaskError, WeightsError
from restorekit.cli import main
from restorekit.methods.diffbir import DiffBIR
from restorekit.methods.diffbir.restorer import load_stage1_file
from restorekit.nets.bsrnet import RRDBNet
from restorekit.nets.scunet import SCUNet
from restorekit.nets.swinir import SwinIR, SwinIRConfig
from restorekit.weights import load_strict

from . import test_diffbir_pipeline as _pipeline
from .conftest import randomised
from .test_diffbir import _encode_prompt
from .test_diffbir_pipeline import _fake_cldm, off_apply_cleaner, off_run

light = _pipeline.light  # the tiny SD / ControlNet / VAE fixture of the pipeline tests


def _esrgan(scale=4, seed=3, **kw):
    return randomised(ESRGAN(num_filters=8, num_blocks=1, scale=scale, **kw), seed=seed, scale=0.05).eval()


def _to_new_arch(sd):
    """spandrel's old-arch ESRGAN keys -> Real-ESRGAN / BasicSR's RRDBNet keys (``conv_first``, ``body.N.rdbM``,
    ``conv_body``, ``conv_up1/2``, ``conv_hr``, ``conv_last``), the layout of Real-ESRGAN's released files."""
    names = {"model.0": "conv_first", "model.1.sub.1": "conv_body", "model.3": "conv_up1", "model.6": "conv_up2",
             "model.8": "conv_hr", "model.10": "conv_last"}
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", k)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = v
        else:
            mod, _, p = k.rpartition(".")
            out[f"{names[mod]}.{p}"] = v
    return out


def _diffbir(light, stage1, version="v2"):
    unet, cn, vae, text = light
    return DiffBIR.from_components(unet, cn, vae, stage1=stage1, version=version, device="cpu",
                                   encode_prompt=_encode_prompt(text))


# ------------------------------------------------------------------ official layouts on spandrel's networks
def test_official_layouts_load_strictly_on_spandrel_networks():
    """The spandrel-backed stage-1 classes take the official key names only: a missing key, an extra key, or
    spandrel's own name for an official tensor is an error naming the file and the key."""
    nets = {"bsrnet": RRDBNet(nf=8, nb=1, gc=4), "scunet": SCUNet(config=(2, 1, 1, 2, 1, 1, 2)),
            "swinir": SwinIR(SwinIRConfig(img_size=8, embed_dim=24, depths=(2,), num_heads=(2,), window_size=4))}
    for name, net in nets.items():
        sd = {k: v.clone() for k, v in net.state_dict().items()}
        load_strict(net, sd, f"{name}.pth")  # the official layout loads
        first = next(iter(sd))
        with pytest.raises(WeightsError, match=rf"{name}\.pth(.|\n)*missing keys(.|\n)*{re.escape(first)}"):
            load_strict(net, {k: v for k, v in sd.items() if k != first}, f"{name}.pth")
        with pytest.raises(WeightsError, match=r"unexpected keys(.|\n)*extra\.weight"):
            load_strict(net, {**sd, "extra.weight": torch.zeros(1)}, f"{name}.pth")
    sd = nets["bsrnet"].state_dict()
    spandrel_names = {"model.0.weight" if k == "conv_first.weight" else k: v for k, v in sd.items()}
    with pytest.raises(WeightsError, match=r"missing keys(.|\n)*conv_first\.weight(.|\n)*unexpected(.|\n)*model\.0"):
        load_strict(nets["bsrnet"], spandrel_names, "BSRNet.pth")
    with pytest.raises(RuntimeError, match="conv_first.weight"):  # torch's own strict load agrees
        nets["bsrnet"].load_state_dict(spandrel_names)


def test_spandrel_auto_detection_matches_the_official_stage1_classes():
    """spandrel's loader, given an official-layout state dict (DiffBIR's SwinIR with PixelUnshuffle 8 and a
    ``module.`` prefix, BSRGAN's RRDBNet, SCUNet), builds a network with the same output as restorekit's class."""
    g = torch.Generator().manual_seed(5)
    cases = [(SwinIR(SwinIRConfig(img_size=8, embed_dim=24, depths=(2, 2), num_heads=(2, 2), window_size=4)),
              torch.rand(1, 3, 64, 64, generator=g), "module."),
             (RRDBNet(nf=8, nb=1, gc=32), torch.rand(1, 3, 12, 10, generator=g), ""),
             (SCUNet(config=(2, 1, 1, 1, 1, 1, 2)), torch.rand(1, 3, 64, 64, generator=g), "")]
    for net, x, prefix in cases:
        net = randomised(net, seed=2).eval()
        sd = {prefix + k: v for k, v in net.state_dict().items()}
        desc = spandrel.ModelLoader().load_from_state_dict(dict(sd))
        assert len(desc.model.state_dict()) == len(sd)
        with torch.no_grad():
            ours, theirs = net(x), desc.model.eval()(x)
        assert ours.shape == theirs.shape and torch.equal(ours, theirs), type(net).__name__
    assert isinstance(cases[0][0], SpandrelSwinIR)
    # sides that are not multiples of 64: spandrel's SCUNet reflects the border, the official one replicates it
    # (``nn.ReplicationPad2d``), as restorekit's SCUNet does before calling spandrel's forward
    net, x = cases[2][0], torch.rand(1, 3, 40, 56, generator=g)
    with torch.no_grad():
        ours, theirs = net(x), desc.model(x)
        replicated = desc.model(torch.nn.functional.pad(x, (0, 8, 0, 24), mode="replicate"))[..., :40, :56]
    assert torch.equal(ours, replicated) and not torch.allclose(ours, theirs, atol=1e-3)


# ------------------------------------------------------------------ stage1=PATH
@pytest.mark.parametrize("layout", ["spandrel", "realesrgan"])
def test_stage1_file_x4_is_spandrel_model_and_restores(light, tmp_path, monkeypatch, layout):
    """A x4 spandrel model file as stage 1 (kind bsrnet): its output is spandrel's call on the LQ image, and the
    8-bit result equals the official BSRNet flow run with that model (stage 2 replaced by the same function);
    end to end (real stage 2), another stage-1 file changes the restored image."""
    net = _esrgan()
    sd = net.state_dict() if layout == "spandrel" else {"params_ema": _to_new_arch(net.state_dict())}
    path = tmp_path / "x4.pth"
    torch.save(sd, path)
    desc = spandrel.ModelLoader().load_from_file(str(path))
    r = _diffbir(light, str(path))
    s1, kind = r.stage1_for("sr")
    assert kind == "bsrnet" and s1.scale == 4
    lq_u8 = (np.random.default_rng(0).random((9, 11, 3)) * 255).astype(np.uint8)
    lq = torch.from_numpy(lq_u8).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        assert torch.equal(s1(lq), desc(lq))
        assert not torch.equal(desc(lq), torch.nn.functional.interpolate(lq, scale_factor=4))

    seen = []

    def fake(c, *a, **k):
        seen.append(c)
        return _fake_cldm(c)

    monkeypatch.setattr(r.pipeline, "apply_cldm", fake)
    out = r.restore(lq_u8, task="sr", steps=1, seed=0, scale=4)
    with torch.no_grad():
        ref_cond = off_apply_cleaner("bsrnet", desc, lq, (36, 44))
    assert torch.equal(seen[0], ref_cond)
    assert np.array_equal(out, off_run(lq_u8, "bsrnet", 4, desc, _fake_cldm)[0])
    monkeypatch.undo()
    if layout != "spandrel":
        return
    a = r.restore(lq, task="sr", steps=1, seed=0, scale=4)
    torch.save(_esrgan(seed=9).state_dict(), tmp_path / "other.pth")
    b = _diffbir(light, tmp_path / "other.pth").restore(lq, task="sr", steps=1, seed=0, scale=4)
    assert a.shape == b.shape == (1, 3, 36, 44) and torch.isfinite(a).all()
    assert (a - b).abs().max() > 1e-2


def test_stage1_file_x1_runs_on_the_resized_lq(light, tmp_path, monkeypatch):
    """A x1 model (spandrel's SwinIR denoiser layout) as stage 1 (kind scunet): the LQ image is resized by
    ``upscale`` first, then spandrel's call, as the official SCUNet flow."""
    sw = SpandrelSwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2.0,
                        upscale=1, upsampler="", resi_connection="1conv")
    path = tmp_path / "x1.safetensors"
    from safetensors.torch import save_file

    save_file(randomised(sw, seed=4).state_dict(), str(path))
    desc = spandrel.ModelLoader().load_from_file(str(path))
    assert desc.scale == 1
    r = _diffbir(light, path)
    assert r.stage1_for("denoise")[1] == "scunet"
    monkeypatch.setattr(r.pipeline, "apply_cldm", lambda c, *a, **k: _fake_cldm(c))
    lq_u8 = (np.random.default_rng(1).random((10, 12, 3)) * 255).astype(np.uint8)
    out = r.restore(lq_u8, task="denoise", steps=1, seed=0, scale=2)
    assert out.shape == (20, 24, 3)
    assert np.array_equal(out, off_run(lq_u8, "scunet", 2, desc, _fake_cldm)[0])


def test_stage1_file_errors(light, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(WeightsError, match="junk.pth"):
        load_stage1_file(junk)
    torch.save({"a.weight": torch.zeros(3, 3)}, tmp_path / "unknown.pth")
    with pytest.raises(WeightsError, match="unknown.pth: spandrel does not recognise"):
        load_stage1_file(tmp_path / "unknown.pth")
    torch.save(_esrgan(in_nc=1, out_nc=1).state_dict(), tmp_path / "gray.pth")
    with pytest.raises(WeightsError, match="gray.pth: a DiffBIR stage 1 maps RGB to RGB.*takes 1 and gives 1"):
        load_stage1_file(tmp_path / "gray.pth")
    sd = _esrgan().state_dict()
    torch.save({k: v for k, v in sd.items() if k != "model.8.bias"}, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing.pth: spandrel cannot load it.*Missing key.*model\.8\.bias"):
        load_stage1_file(tmp_path / "missing.pth")
    # spandrel's Real-ESRGAN key conversion drops keys it does not know; restorekit refuses such a file
    new = _to_new_arch(sd)
    new["conv_extra.weight"] = torch.ones(2, 2)
    torch.save({"params_ema": new}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"extra.pth: .*uses 42 tensors.*of the file's 43.*\['conv_extra.weight'\]"):
        load_stage1_file(tmp_path / "extra.pth")
    for e in (WeightsError, TaskError):
        assert issubclass(e, RestoreKitError)
    torch.save(_esrgan(scale=2).state_dict(), tmp_path / "x2.pth")
    with pytest.raises(TaskError, match="stage1_kind"):
        DiffBIR.from_components(*light[:3], stage1=str(tmp_path / "x2.pth"), stage1_kind="bsrnet", device="cpu",
                                encode_prompt=_encode_prompt(light[3]))


def test_from_pretrained_stage1_file(tmp_path):
    """from_pretrained(stage1=PATH): the file is read first (a bad one fails before SD is looked for); a good one
    replaces the task's stage-1 card, so the missing-files list no longer names it."""
    torch.save(_esrgan().state_dict(), tmp_path / "x4.pth")
    (tmp_path / "bad.pth").write_bytes(b"\0" * 100)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="bad.pth"):
        DiffBIR.from_pretrained(empty, method="diffbir", version="v2", stage1=str(tmp_path / "bad.pth"))
    with pytest.raises(TaskError, match="not a file, and not one of bsrnet"):
        DiffBIR.from_pretrained(empty, method="diffbir", version="v2", stage1=str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError) as e:
        DiffBIR.from_pretrained(empty, method="diffbir", version="v2", stage1=tmp_path / "x4.pth")
    assert "v2.pth" in str(e.value) and "BSRNet.pth" not in str(e.value)
    with pytest.raises(WeightsError) as e:
        DiffBIR.from_pretrained(empty, method="diffbir", version="v2")
    assert "BSRNet.pth" in str(e.value)


def test_cli_stage1_flag(tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    (tmp_path / "bad.pth").write_bytes(b"\0" * 100)
    torch.save({"a.weight": torch.zeros(3, 3)}, tmp_path / "unknown.pth")
    empty = tmp_path / "w"
    empty.mkdir()
    base = ["run", "--method", "diffbir", "--task", "sr", "--input", str(img), "--output", str(tmp_path / "out/"),
            "--weights", str(empty), "--opt", "version=v2"]
    for f, msg in (("bad.pth", "bad.pth"), ("unknown.pth", "does not recognise")):
        assert main(base + ["--stage1", str(tmp_path / f)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and msg in err[0]
    torch.save(_esrgan().state_dict(), tmp_path / "x4.pth")
    assert main(base + ["--stage1", str(tmp_path / "x4.pth")]) == 2  # the stage-1 file loads; SD is missing
    err = capsys.readouterr().err
    assert "v2.pth" in err and "BSRNet.pth" not in err
    assert main(base + ["--stage1", "bsrnet", "--opt", "stage1=scunet-psnr"]) == 2
    assert "contradicts --stage1 bsrnet" in capsys.readouterr().err
    assert main(["run", "--method", "diffpir", "--task", "deblur", "--input", str(img), "--output",
                 str(tmp_path / "o2/"), "--degrade", "--stage1", str(tmp_path / "x4.pth")]) == 2
    assert "--stage1 is a DiffBIR option" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_tiled_stage1_places_tiles_for_any_factor(light, tmp_path):
    """The tiled stage 1 scales tile positions by the model's own factor (x2 here): 3x3 tiles of 8 px every 4 on a
    16x16 LQ give a 32x32 stage-1 image close to the untiled one (a wrong factor misplaces or mis-sizes tiles)."""
    from restorekit.methods.diffbir.pipeline import DiffBIRSettings, apply_cleaner
    from restorekit.methods.diffbir.restorer import load_stage1_file

    torch.save(_esrgan(scale=2).state_dict(), tmp_path / "x2.pth")
    net, kind = load_stage1_file(tmp_path / "x2.pth")
    assert kind == "bsrnet" and net.scale == 2
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    s_tiled = DiffBIRSettings(cleaner_tiled=True, cleaner_tile_size=8, cleaner_tile_stride=4)
    with torch.no_grad():
        raw = net(lq)
        tiles = apply_cleaner(net, "bsrnet", lq, s_tiled, (32, 32))
        whole = apply_cleaner(net, "bsrnet", lq, DiffBIRSettings(), (32, 32))
    assert raw.shape[-2:] == (32, 32) and tiles.shape == whole.shape
    assert 0 < (tiles - whole).abs().mean() < 0.5 * (whole - whole.mean()).abs().mean()
    # and through the restorer, as a user asks for it (this used to be refused for a x2 model)
    r = _diffbir(light, str(tmp_path / "x2.pth"))
    out = r.restore(lq, task="sr", scale=2, steps=1, cleaner_tiled=True, cleaner_tile_size=8, cleaner_tile_stride=4)
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
