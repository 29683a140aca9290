"""Standard protocols in the bench (labelled tasks, kernel/mask files, per-task metric conventions), deepinv's
DiffPIR as a peer method, and the HTML report rendered in a real headless browser."""

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from restorekit import bench
from restorekit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TESTSETS = ROOT.parent / "shared" / "testsets"


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_weights):
    tmp = tmp_path_factory.mktemp("bench")
    data = tmp / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:44]
    for i in range(2):
        smooth = 0.5 + 0.3 * np.sin(xx / (5 + i))[..., None] * np.cos(yy / 7)[..., None] + 0.1 * rng.random((40, 44, 3))
        Image.fromarray((smooth.clip(0, 1) * 255).astype(np.uint8)).save(data / f"im{i}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "skip_me.png")  # excluded by the pattern
    k = np.zeros((2, 5, 5))
    k[0, 2, :] = 1  # horizontal motion
    k[1, :, 1] = 1  # vertical motion
    np.save(tmp / "kernels.npy", k)
    mask = np.ones((32, 32))
    mask[8:24, 8:24] = 0
    np.save(tmp / "mask.npy", mask)
    cfg = {"name": "proto", "output": str(tmp / "res"),
           "datasets": {"toy": {"path": str(data), "pattern": "im*.png", "crop": 32}},
           "tasks": {"deblur_files": {"task": "deblur", "kernel_file": str(tmp / "kernels.npy"),
                                      "kernel_index": "by_image", "noise": 0.02},
                     "sr_x4": {"task": "sr", "scale": 4, "noise": 0.0, "eval": {"y_channel": True, "border": 4}},
                     "inpaint_file": {"task": "inpaint", "mask_file": str(tmp / "mask.npy")}},
           "methods": [{"name": "dp", "method": "diffpir", "weights": str(tiny_weights), "steps": [2, 3]},
                       {"name": "dinv", "method": "deepinv-diffpir", "weights": str(tiny_weights), "steps": [2],
                        "tasks": ["deblur_files", "sr"]},
                       {"name": "bicubic", "method": "classical", "options": {"algorithm": "bicubic"},
                        "tasks": ["sr"]},
                       {"name": "wiener", "method": "classical", "options": {"algorithm": "wiener"},
                        "tasks": ["deblur"]},
                       {"name": "harmonic", "method": "classical", "options": {"algorithm": "diffusion"},
                        "tasks": ["inpaint"]}],
           "seeds": [0, 1], "metrics": ["psnr", "ssim", "dists"], "report": {"grid_images": 1}}
    p = tmp / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    summary = bench.run_bench(p, device="cpu", log=lambda s: None)
    return p, tmp / "res", cfg, summary


def test_protocols_expand_and_record(sweep):
    _, out, cfg, _ = sweep
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    # images x seeds x (deblur: dp 2 NFE settings + dinv + wiener; sr: dp 2 + dinv + bicubic; inpaint: dp 2 + harmonic)
    assert len(rows) == 2 * 2 * (4 + 4 + 3)
    assert {r["image"] for r in rows} == {"im0.png", "im1.png"}
    assert {r["task"] for r in rows} == {"deblur_files", "sr_x4", "inpaint_file"}
    assert {r["task_kind"] for r in rows} == {"deblur", "sr", "inpaint"}
    # deepinv's sampler ran with the network evaluations counted
    assert {r["nfe"] for r in rows if r["method"] == "dinv"} == {"2"}
    assert {r["nfe"] for r in rows if r["method"] == "dp"} == {"2", "3"}
    conv = {r["task"]: r["metric_convention"] for r in rows}
    assert conv["sr_x4"] == "PSNR/SSIM on Y of YCbCr (BT.601), 4-px border shaved"
    assert conv["deblur_files"].startswith("PSNR on RGB")
    # by_image: each image gets its own kernel from the file
    items = bench.expand_items(cfg, Path(cfg["output"]).parent)
    idx = {it.image: it.degradation["kernel_index"] for it in items if it.task == "deblur_files"}
    assert idx == {"im0.png": 0, "im1.png": 1}


def test_summary_states_conventions_and_has_baselines(sweep):
    _, out, _, _ = sweep
    text = (out / "summary.md").read_text()
    sections = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert sections == ["toy / deblur_files", "toy / inpaint_file", "toy / sr_x4"]
    assert "Metrics: PSNR/SSIM on Y of YCbCr (BT.601), 4-px border shaved." in text
    for block in text.split("\n## ")[1:]:
        types = {line.split("|")[4].strip() for line in block.splitlines() if line.startswith("| toy |")}
        assert "classical" in types and "diffusion" in types
    # two seeds: mean ± std over seeds
    assert re.search(r"\| toy \| sr_x4 \| bicubic \| classical \| - \| 4 \| [\d.]+ ± [\d.]+ \|", text)
    # a metric whose weights are missing gets an empty column and the reason
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    if all(r["dists"] == "" for r in rows):
        assert re.search(r"- DISTS: .*skipped", text)


def test_y_channel_border_convention_matches_numpy():
    from restorekit.bench.scoring import score

    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 40, 36, generator=g)
    b = (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    b[..., :4, :] = 1 - a[..., :4, :]  # damage only the border: shaved away

    def y(x):  # ITU-R BT.601 luma of MATLAB's rgb2ycbcr, [16, 235]
        x = x[0].double().numpy() * 255
        return (65.481 * x[0] + 128.553 * x[1] + 24.966 * x[2]) / 255 + 16

    ya, yb = y(a)[4:-4, 4:-4], y(b)[4:-4, 4:-4]
    ref = 10 * np.log10(255 ** 2 / np.mean((ya - yb) ** 2))
    s, _ = score(b, a, ["psnr"], {"y_channel": True, "border": 4})
    assert abs(s["psnr"] - ref) < 1e-3
    s0, _ = score(b, a, ["psnr"], {"y_channel": True, "border": 0})
    assert s0["psnr"] < s["psnr"] - 1


def test_report_renders_in_headless_browser(sweep):
    """Chromium loads report.html: the page's script fills in the table status after load, every <img> (grids,
    plots) decodes (naturalWidth > 0), and '#sort=psnr:desc' sorts the table by PSNR."""
    _, out, _, _ = sweep
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    html = out / "report.html"
    assert html.exists()
    n_rows = len([line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| toy |")])
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                        "--user-data-dir=" + str(out / ".chromium"), "--dump-dom",
                        html.as_uri() + "#sort=psnr:desc"], capture_output=True, text=True, timeout=120, check=False)
    dom = r.stdout
    assert "<table id=\"summary\"" in dom, r.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body))
    assert attrs["data-status"] == "ready"
    assert int(attrs["data-rows"]) == n_rows
    n_img = int(attrs["data-images"])
    grids = len(list((out / "grids").glob("*seed0.png")))  # the page shows the first seed's grids
    assert n_img == grids + 2 and int(attrs["data-images-loaded"]) == n_img  # grids + the two plots
    # sorted by the script: PSNR column (data-key psnr) non-increasing down the table
    table = dom[dom.index("<table id=\"summary\""):dom.index("</table>")]
    heads = re.findall(r'<th data-key="([a-z_]+)"', table)
    col = heads.index("psnr")
    values = []
    for tr in re.findall(r"<tr[^>]*data-group[^>]*>(.*?)</tr>", table, flags=re.DOTALL):
        cells = re.findall(r'<td[^>]*data-v="([^"]*)"', tr)
        values.append(float(cells[col]))
    assert len(values) == n_rows and values == sorted(values, reverse=True)
    assert 'data-sort="psnr:desc"' in table


def test_grids_hold_input_methods_truth_and_zoom(sweep):
    _, out, _, _ = sweep
    files = sorted((out / "grids").glob("*.png"))
    # grid_images: 1 -> the first image of each task, both seeds
    assert {f.name.split("__")[1] for f in files} == {"im0.png"} and len(files) == 3 * 2
    meta = json.loads(re.search(r"<script type='application/json' id='grids'>(.*?)</script>",
                                (out / "report.html").read_text(), flags=re.DOTALL).group(1))
    sr = next(g for g in meta if g["task"] == "sr_x4" and g["seed"] == 0)
    assert sr["labels"][0].startswith("input") and sr["labels"][-1].startswith("ground truth")
    assert any(lb.startswith("bicubic") for lb in sr["labels"]) and any(lb.startswith("dp 3 NFE") for lb in sr["labels"])
    im = Image.open(out / sr["file"])
    n_tiles = len(sr["labels"])
    # two rows: the images and the zoomed crops
    assert im.width == n_tiles * (32 * 4 + 4) - 4 and im.height > 2 * 128


def test_mat_kernels_v73_and_levin(tmp_path):
    import h5py

    from restorekit.bench.degradations import count_kernels, load_kernel

    k = np.arange(12, dtype=np.float64).reshape(3, 4) + 1  # non-symmetric, 3x4 in MATLAB
    with h5py.File(tmp_path / "k.mat", "w") as f:
        refs = f.create_group("#refs#")
        d = refs.create_dataset("a", data=k.T)  # MATLAB v7.3 stores column-major: the file holds the transpose
        cell = f.create_dataset("kernels", (1, 1), dtype=h5py.ref_dtype)
        cell[0, 0] = d.ref
    got = load_kernel(tmp_path / "k.mat", 0).double().numpy()
    assert got.shape == (3, 4) and np.allclose(got, k / k.sum())
    levin = TESTSETS / "kernels" / "Levin09.mat"
    if not levin.exists():
        pytest.skip(f"{levin} not present")
    assert count_kernels(levin) == 8
    sizes = [tuple(load_kernel(levin, i).shape) for i in range(8)]
    assert sizes == [(19, 19), (17, 17), (15, 15), (27, 27), (13, 13), (21, 21), (23, 23), (23, 23)]


def test_config_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"datasets": {"d": {"path": "."}}, "tasks": {"deblurr": {}},
                                 "methods": [{"method": "classical"}]}))
    with pytest.raises(ConfigError, match="task 'deblurr' is not one of"):
        bench.load_bench_config(p)
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    np.save(tmp_path / "k.npy", np.ones((2, 3, 3)))
    p.write_text(yaml.safe_dump({"datasets": {"d": {"path": str(img)}},
                                 "tasks": {"deblur": {"kernel_file": str(tmp_path / "k.npy"), "kernel_index": 5}},
                                 "methods": [{"method": "classical"}]}))
    with pytest.raises(ConfigError, match="holds 2 kernels"):
        bench.expand_items(bench.load_bench_config(p), tmp_path)


@pytest.mark.parametrize("name", ["cpu.yaml", "official.yaml"])
def test_committed_configs_parse_and_expand(name):
    if not TESTSETS.exists():
        pytest.skip(f"{TESTSETS} not present")
    path = ROOT / "benchmarks" / "configs" / name
    cfg = bench.load_bench_config(path)
    items = bench.expand_items(cfg, path.parent)
    for ds, spec in cfg["datasets"].items():
        for t in spec["tasks"]:
            methods = {it.method for it in items if it.dataset == ds and it.task == t}
            types = {it.method_name for it in items if it.dataset == ds and it.task == t}
            assert "classical" in types and types - {"classical"}, (ds, t, methods)


def test_deepinv_gets_the_official_layout_in_its_own_unet():
    """Weights in the FFHQ layout load strictly into deepinv's own DiffUNet (not a wrapper) and give restorekit's
    GuidedUNet output."""
    from deepinv.models import DiffUNet

    from restorekit.bench.peers import deepinv_denoiser
    from restorekit.nets import FFHQ_10M, GuidedUNet

    from .conftest import randomised

    ours = randomised(GuidedUNet(FFHQ_10M), seed=3, scale=0.02).eval()
    theirs = deepinv_denoiser(ours, "cpu")
    assert type(theirs) is DiffUNet
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        assert torch.allclose(theirs.forward_diffusion(x, t), ours(x, t), atol=1e-4)


def test_rebuild_reports_from_records(sweep):
    """The reports are rewritten from the records alone: no method runs, same table."""
    from restorekit.methods.classical import Classical

    cfg_path, out, _, _ = sweep
    before = (out / "results.csv").read_text()
    (out / "report.html").unlink()
    (out / "summary.md").unlink()
    orig = Classical.restore_tensor
    try:
        Classical.restore_tensor = lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran a method"))
        bench.rebuild_reports(cfg_path)
    finally:
        Classical.restore_tensor = orig
    assert (out / "results.csv").read_text() == before
    assert (out / "report.html").exists() and "## toy / sr_x4" in (out / "summary.md").read_text()


def test_deepinv_dps_peer_runs(tiny_weights):
    """deepinv's DPS (gradient through the prior) runs on restorekit's operator; its network calls are counted."""
    from restorekit.bench.peers import DeepinvDPS

    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _, y, op = bench.degrade(x, "sr", {"scale": 2, "noise": 0.05}, seed=0)
    r = DeepinvDPS.from_pretrained(str(tiny_weights))
    calls = []
    out = r.restore_tensor(y, "sr", op, steps=4, seed=0, noise_level=0.05, progress=lambda i, n, t: calls.append(n))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert calls and calls[-1] == r.calls >= 3
