"""A new user's machine: offline (no model hub reachable) and umask 0o022.

Files restorekit writes atomically get the normal mode of a new file (0o644 here, not mkstemp's or safetensors'
0o600); metric set-up downloads and prints nothing and names a missing weights file once; building DiffBIR's
SwinIR gives no torch.meshgrid warning.
"""

import json
import os
import stat
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit import metrics
from restorekit.cli import main

from .conftest import TINY


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_writers_give_new_files_the_umask_mode(tmp_path, umask022):
    from restorekit.io import atomic_write_bytes, new_file_mode, save_image
    from restorekit.training import save_atomic, save_safetensors_atomic

    assert new_file_mode() == 0o644
    save_image(tmp_path / "a.png", torch.rand(1, 3, 8, 8))
    atomic_write_bytes(tmp_path / "r.jsonl", b"{}\n")
    save_atomic({"x": torch.zeros(2)}, tmp_path / "s.state")
    save_safetensors_atomic({"x": torch.zeros(2)}, tmp_path / "w.safetensors", metadata={"k": "v"})
    for name in ("a.png", "r.jsonl", "s.state", "w.safetensors"):
        assert _mode(tmp_path / name) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "r.jsonl", "s.state", "w.safetensors"]
    # an overwritten file keeps the mode it had (made private by hand: stays private)
    os.chmod(tmp_path / "w.safetensors", 0o600)
    save_safetensors_atomic({"x": torch.ones(2)}, tmp_path / "w.safetensors")
    assert _mode(tmp_path / "w.safetensors") == 0o600
    # a stricter umask is honoured
    os.umask(0o077)
    save_image(tmp_path / "b.png", torch.rand(1, 3, 8, 8))
    assert _mode(tmp_path / "b.png") == 0o600


def _pngs(folder, seed: int, n: int = 2):
    """``n`` random 40x40 PNGs in a new ``folder``."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def test_trained_prior_weights_are_0644(tmp_path, umask022, capsys):
    d = _pngs(tmp_path / "data", seed=0)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TINY.to_dict()))
    out = tmp_path / "p.safetensors"
    assert main(["train", "prior", "--data", str(d), "--output", str(out), "--steps", "1", "--batch-size", "1",
                 "--crop", "32", "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert _mode(out) == 0o644


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """Empty torch.hub / pyiqa caches and no reachable host (nothing is fetched, whatever the network)."""
    from pyiqa.utils import download_util

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    monkeypatch.setattr(download_util, "DEFAULT_CACHE_DIR", str(hub / "pyiqa"))
    monkeypatch.setattr(metrics, "_host_unreachable", lambda url: "test: offline")
    monkeypatch.setattr(metrics, "_cache", {})
    monkeypatch.setattr(metrics, "_failed", {})
    from restorekit.bench import scoring

    monkeypatch.setattr(scoring, "_cache", {})
    monkeypatch.setattr(scoring, "_failed", {})
    return hub


def test_offline_lpips_is_quiet_and_noted_once(offline_hub, capfd):
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 48, 48, generator=g)
    pred = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    s1, n1 = metrics.compute_metrics(pred, ref, ("psnr", "ssim", "lpips"))
    s2, n2 = metrics.compute_metrics(pred, ref, ("psnr", "ssim", "lpips"))
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err and "Loading pretrained" not in out + err
    assert out == "" and err == ""
    assert s1["lpips"] is None and s2["lpips"] is None and s1["psnr"] == s2["psnr"] > 20
    notes = [n for n in n1 + n2 if n.startswith("LPIPS")]
    assert len(notes) == 1 and notes == [n for n in n1 if n.startswith("LPIPS")]
    note = notes[0]
    assert "\n" not in note and "alexnet-owt-7be5be79.pth" in note and str(offline_hub / "checkpoints") in note
    assert "test: offline" in note
    # nothing was written to the caches (no partial download)
    assert not any(p.is_file() for p in offline_hub.rglob("*"))


def test_offline_cli_run_folder_notes_lpips_once(offline_hub, tmp_path, capfd):
    d = _pngs(tmp_path / "in", seed=1)
    assert main(["run", "--method", "classical", "--task", "denoise", "--input", str(d), "--output",
                 str(tmp_path / "out"), "--degrade", "--seed", "0"]) == 0
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err
    assert (out + err).count("LPIPS skipped") == 1


def test_offline_bench_scoring_is_quiet(offline_hub, capfd):
    from restorekit.bench.scoring import score

    ref = torch.rand(1, 3, 48, 48)
    for _ in range(2):  # the bench keeps every note in a set: each call returns them
        scores, notes = score(ref.clone(), ref, ("psnr", "lpips", "dists"), {"y_channel": True, "border": 4})
        assert scores["lpips"] is None and scores["dists"] is None
        assert {n.split()[0] for n in notes} == {"LPIPS", "DISTS"}
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_diffbir_swinir_builds_without_meshgrid_warning():
    from restorekit.nets._compat import meshgrid_default_indexing
    from restorekit.nets.swinir import SwinIR, SwinIRConfig

    # torch warns once per process, so also check the filter itself
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with meshgrid_default_indexing():
            warnings.warn("torch.meshgrid: in an upcoming release, it will be required to pass the indexing "
                          "argument.", UserWarning)
            with pytest.raises(UserWarning):
                warnings.warn("another warning", UserWarning)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = SwinIR(SwinIRConfig(img_size=16, embed_dim=12, depths=(1,), num_heads=(2,), window_size=4, sf=1))
    assert net(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def _fresh_python(code: str) -> str:
    """stderr of ``code`` run in a new interpreter (torch warns about meshgrid once per process)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr


def test_spandrel_stage1_file_loads_without_meshgrid_warning(tmp_path):
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    f = tmp_path / "swinir_x2.pth"
    torch.save(SwinIR(upscale=2, img_size=16, window_size=4, depths=[1], num_heads=[2], embed_dim=12,
                      upsampler="pixelshuffle").state_dict(), f)
    err = _fresh_python("import warnings; warnings.simplefilter('always')\n"
                        "from restorekit.methods.diffbir.restorer import load_stage1_file\n"
                        f"net, kind = load_stage1_file({str(f)!r})\nassert kind == 'bsrnet', kind\n")
    assert "meshgrid" not in err, err


def test_bitsandbytes_kernel_note_is_dropped():
    """bitsandbytes (imported by pyiqa and diffusers) logs this at import on CPUs with AVX512-BF16 and without the
    optional 'kernels' package; after ``import restorekit`` it is dropped, its logger's other records pass."""
    err = _fresh_python(
        "import logging, restorekit\n"
        "log = logging.getLogger('bitsandbytes.backends.cpu.ops')\n"
        "log.warning('Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you '\n"
        "            'already `pip install kernels` and the kernels >= 0.11.1', \"No module named 'kernels'\")\n"
        "log.warning('another bitsandbytes warning')\n"
        "import pyiqa, diffusers\n")
    assert "gemm_4bit_forward" not in err and "another bitsandbytes warning" in err, err
