"""DiffBIR training (stage 1 and the IRControlNet) with tiny networks on CPU: the CodeFormer degradation against
the official parameter draws and formulas, the ControlNet-from-UNet initialisation against the official mapping,
loss decrease on a fixed batch, exact resume, and a trained model restoring through the public API."""

import copy
import gzip
import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from restorekit.methods.diffbir import data as D
from restorekit.methods.diffbir import train as T

from .conftest import randomised
from .test_diffbir_pipeline import off_q_coefs
from .test_diffir_train import launch_two_cpu_processes

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = {name: yaml.safe_load((ROOT / "configs" / "diffbir" / f"{name}.yaml").read_text())
            for name in ("train_stage1", "train_stage2", "train_stage2_v2.1")}

# tiny SD in DiffBIR's ldm options (restorekit's norm_num_groups lets GroupNorm run on few channels)
UNET_CFG = {"use_checkpoint": True, "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 16,
                "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 8,
                "use_spatial_transformer": True, "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": 32,
                "legacy": False, "norm_num_groups": 8}
VAE_CFG = {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 8,
                                          "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
                                          "norm_num_groups": 4}}
CLIP_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 64, "patch_size": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}, "layer": "penultimate"}
SWINIR = {"target": "diffbir.model.swinir.SwinIR",
          "params": {"img_size": 8, "patch_size": 1, "in_chans": 3, "embed_dim": 12, "depths": [1], "num_heads": [2], "window_size": 4,
                         "mlp_ratio": 2, "sf": 2, "img_range": 1.0, "upsampler": "nearest+conv", "resi_connection": "1conv",
                         "unshuffle": True, "unshuffle_scale": 2}}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Six smooth 80x72 colour images (a folder) with a caption file beside one of them."""
    d = tmp_path_factory.mktemp("imgs")
    yy, xx = np.mgrid[:72, :80] / 80.0
    for i in range(6):
        a = np.stack([np.sin(xx * (3 + i) + yy * 2), np.cos(yy * (4 + i) - xx), np.sin((xx + yy) * (2 + i))], -1)
        Image.fromarray(((a * 0.5 + 0.5) * 255).round().astype(np.uint8)).save(d / f"im{i}.png")
    (d / "im0.txt").write_text("a colourful pattern")
    return d


def _write_tokenizer_files(folder):
    """vocab.json / merges.txt in Hugging Face's CLIP format from open_clip's BPE table (SD 2.1's tokenizer)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as f:
        merges = f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


@pytest.fixture(scope="module")
def sd_files(tmp_path_factory):
    """A tiny SD 2.x ldm checkpoint (UNet, VAE, open_clip text tower with the visual tower deleted, schedule
    buffers) and the tokenizer files."""
    open_clip = pytest.importorskip("open_clip")
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from restorekit.methods.diffbir.convert import unet_to_ldm, vae_to_ldm

    d = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    ukw = T.diffusers_unet_config(UNET_CFG)
    vkw = T.diffusers_vae_config(VAE_CFG, 0.18215)
    unet = randomised(UNet2DConditionModel(**ukw), seed=3, scale=0.05)
    vae = randomised(AutoencoderKL(**vkw), seed=4, scale=0.1)
    oc = open_clip.model.CLIP(32, CLIP_CFG["vision_cfg"], CLIP_CFG["text_cfg"])
    del oc.visual
    ckpt = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(unet.state_dict(), ukw).items()}
    ckpt.update({f"first_stage_model.{k}": v for k, v in vae_to_ldm(vae.state_dict(), vkw).items()})
    ckpt.update({f"cond_stage_model.model.{k}": v for k, v in oc.state_dict().items()})
    ckpt["betas"] = torch.zeros(1000)
    torch.save({"state_dict": ckpt}, d / "sd.ckpt")
    _write_tokenizer_files(d)
    return d


def _stage1_cfg(exp, steps=4):
    return {"model": {"swinir": copy.deepcopy(SWINIR)},
            "dataset": {"train": {"target": "diffbir.dataset.codeformer.CodeformerDataset",
                                  "params": {**OFFICIAL["train_stage1"]["dataset"]["train"]["params"], "out_size": 32,
                                             "crop_type": "random"}}},
            "batch_transform": {"target": "diffbir.dataset.batch_transform.IdentityBatchTransform"},
            "train": {"exp_dir": str(exp), "learning_rate": 1e-3, "batch_size": 2, "train_steps": steps,
                      "log_every": 1, "ckpt_every": 2, "image_every": 2, "val_every": 0}}


def _stage2_cfg(exp, sd_files, s1_path, version="v2", steps=4):
    off = OFFICIAL["train_stage2_v2.1" if version == "v2.1" else "train_stage2"]
    cfg = copy.deepcopy(off)
    cfg["model"]["cldm"]["params"].update(unet_cfg=dict(UNET_CFG), vae_cfg=copy.deepcopy(VAE_CFG),
                                          clip_cfg=copy.deepcopy(CLIP_CFG),
                                          controlnet_cfg={**{k: v for k, v in UNET_CFG.items() if k != "out_channels"},
                                                          "hint_channels": 4})
    cfg["model"]["swinir"] = copy.deepcopy(SWINIR)
    cfg["dataset"]["train"]["params"].update(out_size=32, crop_type="random")
    if version == "v2.1":
        cfg["batch_transform"]["params"]["queue_size"] = 4
    cfg["train"].update(sd_path=str(sd_files / "sd.ckpt"), exp_dir=str(exp), swinir_path=str(s1_path),
                        tokenizer=str(sd_files), batch_size=2, train_steps=steps, log_every=1, ckpt_every=2,
                        image_every=0, learning_rate=1e-3)
    return cfg


@pytest.fixture(scope="module")
def stage1_run(images, tmp_path_factory):
    exp = tmp_path_factory.mktemp("s1")
    info = T.train_diffbir(_stage1_cfg(exp), 1, data=str(images), val_freq=2, val_data=str(images),
                           log=lambda s: None)
    return exp, info


# ------------------------------------------------------------------ data
def _official_draws(n, o, seed=0):
    """Transcribed from DiffBIR diffbir/dataset/codeformer.py L95-L125 and degradation.py L177-L220, L325-L345,
    L516-L536, L751-L766: the random choices of n CodeFormer degradations (global numpy / Python RNGs)."""
    np.random.seed(seed)
    random.seed(seed)
    out = []
    for _ in range(n):
        kind = random.choices(o["kernel_list"], o["kernel_prob"])[0]
        sx = np.random.uniform(o["blur_sigma"][0], o["blur_sigma"][1])
        if kind == "aniso":
            sy = np.random.uniform(o["blur_sigma"][0], o["blur_sigma"][1])
            rot = np.random.uniform(-math.pi, math.pi)
        else:
            sy, rot = sx, 0
        scale = np.random.uniform(o["downsample_range"][0], o["downsample_range"][1])
        sigma = np.random.uniform(o["noise_range"][0], o["noise_range"][1])
        np.random.uniform()  # gray_prob draw of random_generate_gaussian_noise
        q = int(np.random.uniform(o["jpeg_range"][0], o["jpeg_range"][1]))
        out.append((kind == "aniso", sx, sy, rot, scale, sigma, q))
    return np.array(out, dtype=np.float64)


def test_codeformer_degradation_statistics_match_official_ranges():
    """The official stage-1 options; 4000 draws each from restorekit and from the official code: same support
    (ranges), means within 3 standard errors, and the iso / aniso structure."""
    params = OFFICIAL["train_stage1"]["dataset"]["train"]["params"]
    o = D.CodeformerOptions.from_params(params)
    assert (o.blur_kernel_size, o.blur_sigma, o.downsample_range, o.noise_range, o.jpeg_range) == \
        (41, (0.1, 12), (1, 12), (0, 15), (30, 100))
    n = 4000
    rng = np.random.default_rng(0)
    ours = [D.draw_codeformer_params(o, rng) for _ in range(n)]
    mine = np.array([(p["kernel"] == "aniso", p["sigma_x"], p["sigma_y"], p["theta"], p["scale"], p["noise"],
                      p["jpeg"]) for p in ours])
    ref = _official_draws(n, params)
    lo = [0, 0.1, 0.1, -math.pi, 1, 0, 30]
    hi = [1, 12, 12, math.pi, 12, 15, 99]
    for j in range(7):
        for arr in (mine, ref):
            assert arr[:, j].min() >= lo[j] - 1e-12 and arr[:, j].max() <= hi[j] + 1e-12
        se = math.sqrt(ref[:, j].var() / n + mine[:, j].var() / n)
        assert abs(mine[:, j].mean() - ref[:, j].mean()) < 3 * se + 1e-9, j
        # both cover the range: extremes within 1% of its width of the ends
        assert mine[:, j].min() - lo[j] < 0.01 * (hi[j] - lo[j]) + 1e-9 and hi[j] - mine[:, j].max() < 0.01 * (hi[j] - lo[j]) + 1e-9
    iso = mine[:, 0] == 0
    assert np.all(mine[iso, 1] == mine[iso, 2]) and np.all(mine[iso, 3] == 0)
    assert np.all(np.equal(np.mod(mine[:, 6], 1), 0))


def _off_bivariate_gaussian(k, sx, sy, theta, iso):
    """Transcribed from DiffBIR diffbir/dataset/degradation.py L17-L112 (sigma_matrix2, mesh_grid, pdf2,
    bivariate_Gaussian)."""
    ax = np.arange(-k // 2 + 1., k // 2 + 1.)
    xx, yy = np.meshgrid(ax, ax)
    grid = np.hstack((xx.reshape((k * k, 1)), yy.reshape(k * k, 1))).reshape(k, k, 2)
    if iso:
        sm = np.array([[sx ** 2, 0], [0, sx ** 2]])
    else:
        d = np.array([[sx ** 2, 0], [0, sy ** 2]])
        u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        sm = np.dot(u, np.dot(d, u.T))
    kern = np.exp(-0.5 * np.sum(np.dot(grid, np.linalg.inv(sm)) * grid, 2))
    return kern / np.sum(kern)


def test_codeformer_kernel_blur_and_resizes_match_official_formulas():
    """Kernels equal the official bivariate Gaussian; blur + downsample + resize back equal OpenCV's filter2D /
    INTER_LINEAR resize on the official BGR float32 path (when OpenCV is installed); JPEG keeps the size."""
    for sx, sy, th, iso in [(0.1, 0.1, 0, True), (3.7, 3.7, 0, True), (11.9, 0.4, 2.1, False), (5, 2, -0.7, False)]:
        ours = D.gaussian_kernel2d(41, sx, sy, th)
        assert np.abs(ours - _off_bivariate_gaussian(41, sx, sy, th, iso)).max() < 1e-12
    o = D.CodeformerOptions(noise_range=None, jpeg_range=None)
    g = np.random.default_rng(3)
    hq = torch.from_numpy(g.random((1, 3, 37, 45)).astype(np.float32))
    p = {"kernel": "aniso", "sigma_x": 2.3, "sigma_y": 0.7, "theta": 0.9, "scale": 3.3, "noise": None, "jpeg": None}
    lq = D.codeformer_degrade(hq, o, g, params=p)
    assert lq.shape == hq.shape
    cv2 = pytest.importorskip("cv2")
    img = hq[0].permute(1, 2, 0).numpy()[..., ::-1].copy()  # codeformer.py L102-L128 (BGR float32)
    h, w, _ = img.shape
    ref = cv2.filter2D(img, -1, _off_bivariate_gaussian(41, 2.3, 0.7, 0.9, False))
    ref = cv2.resize(ref, (int(w // 3.3), int(h // 3.3)), interpolation=cv2.INTER_LINEAR)
    ref = cv2.resize(ref, (w, h), interpolation=cv2.INTER_LINEAR)[..., ::-1]
    assert np.abs(lq[0].permute(1, 2, 0).numpy() - ref).max() < 1e-5
    full = D.codeformer_degrade(hq, D.CodeformerOptions(), g)
    assert full.shape == hq.shape and 0 <= full.min() and full.max() <= 1


def test_file_lists_folders_and_prompt_dropout(images, tmp_path):
    files = D.load_file_list(str(images))
    assert len(files) == 6 and files[0]["short_prompt"] == "a colourful pattern"
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(f["image_path"] for f in files[:3]) + "\n")
    assert [f["image_path"] for f in D.load_file_list(str(lst))] == [f["image_path"] for f in files[:3]]
    ds = D.CodeformerDataset(files[:1], D.CodeformerOptions(out_size=32, crop_type="center"))
    rng = np.random.default_rng(0)
    prompts = [ds.sample(0, rng)[2] for _ in range(200)]
    frac = sum(p == "" for p in prompts) / 200
    assert 0.38 < frac < 0.62  # official: prompt = "" with probability 0.5
    hq, lq, _ = ds.sample(0, rng)
    assert hq.shape == lq.shape == (3, 32, 32)
    # the v2.1 recipe: a caption table with the config's column names; long caption w.p. 0.2, empty w.p. 0.2
    table = tmp_path / "captions.jsonl"
    table.write_text("\n".join(json.dumps({"image_path": f["image_path"], "llava_short": "short",
                                            "llava_long": "long"}) for f in files))
    ds_cfg = copy.deepcopy(OFFICIAL["train_stage2_v2.1"]["dataset"]["train"])
    ds_cfg["params"].update(out_size=32, crop_type="center")
    ds2, transform = D.build_dataset(ds_cfg, OFFICIAL["train_stage2_v2.1"]["batch_transform"], data=str(table))
    assert len(ds2) == 6 and transform.pool.size == 256 and transform.o.stage2_scale == 4
    caps = [ds2.sample(1, rng)[2] for _ in range(400)]
    assert 0.12 < caps.count("") / 400 < 0.28 and 0.1 < caps.count("long") / 400 < 0.23


# ------------------------------------------------------------------ stage 2 construction
def test_official_model_options_give_sd21():
    """The official cldm options (configs/train/train_stage2.yaml) map to SD 2.1-base's diffusers configuration."""
    from restorekit.methods.diffbir.convert import SD21_TEXT, SD21_UNET, SD21_VAE

    p = OFFICIAL["train_stage2"]["model"]["cldm"]["params"]
    u = T.diffusers_unet_config(p["unet_cfg"])
    assert {k: u[k] for k in SD21_UNET if k != "sample_size"} == {k: v for k, v in SD21_UNET.items()
                                                                   if k != "sample_size"}
    assert u["norm_num_groups"] == 32 and u["transformer_layers_per_block"] == 1
    v = T.diffusers_vae_config(p["vae_cfg"], p["latent_scale_factor"])
    assert {k: v[k] for k in SD21_VAE if k != "sample_size"} == {k: w for k, w in SD21_VAE.items()
                                                                  if k != "sample_size"}
    t = T.clip_text_config(p["clip_cfg"])
    assert {k: t[k] for k in SD21_TEXT if k != "projection_dim"} == {k: w for k, w in SD21_TEXT.items()
                                                                      if k != "projection_dim"}


def _off_load_controlnet_from_unet(unet_sd, scratch_sd):
    """Transcribed from DiffBIR diffbir/model/cldm.py L67-L88 (ControlLDM.load_controlnet_from_unet)."""
    init_sd, init_with_new_zero, init_with_scratch = {}, set(), set()
    for key in scratch_sd:
        if key in unet_sd:
            this, target = scratch_sd[key], unet_sd[key]
            if this.size() == target.size():
                init_sd[key] = target.clone()
            else:
                d_ic = this.size(1) - target.size(1)
                oc, _, h, w = this.size()
                zeros = torch.zeros((oc, d_ic, h, w), dtype=target.dtype)
                init_sd[key] = torch.cat((target, zeros), dim=1)
                init_with_new_zero.add(key)
        else:
            init_sd[key] = scratch_sd[key].clone()
            init_with_scratch.add(key)
    return init_sd, init_with_new_zero, init_with_scratch


def test_controlnet_from_unet_equals_official_mapping_key_by_key():
    from diffusers import UNet2DConditionModel

    from restorekit.methods.diffbir import IRControlNet
    from restorekit.methods.diffbir.convert import controlnet_to_ldm, unet_to_ldm

    ukw = T.diffusers_unet_config(UNET_CFG)
    unet = randomised(UNet2DConditionModel(**ukw), seed=5)
    ours, report = T.controlnet_from_unet(unet, 4)
    fresh = IRControlNet.from_unet_config(unet)  # the official ControlNet's constructor: zero convs are zeros
    cfg = {"block_out_channels": ukw["block_out_channels"], "layers_per_block": ukw["layers_per_block"]}
    unet_ldm = unet_to_ldm(unet.state_dict(), ukw)
    scratch_ldm = controlnet_to_ldm(fresh.state_dict(), cfg)
    ref, new_zero, scratch = _off_load_controlnet_from_unet(unet_ldm, scratch_ldm)
    got = T.controlnet_official_state(ours)
    assert set(got) == set(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert set(report["new_zero"]) == new_zero == {"input_blocks.0.0.weight"}
    assert set(report["scratch"]) == scratch and all(k.startswith(("zero_convs.", "middle_block_out.")) for k in scratch)
    assert set(report["copied"]) == set(ref) - new_zero - scratch
    assert ref["input_blocks.0.0.weight"][:, 4:].abs().sum() == 0 and ref["input_blocks.0.0.weight"][:, :4].abs().sum() > 0


# ------------------------------------------------------------------ loss decreases on a fixed batch
@pytest.mark.parametrize("entry", [
    SWINIR,
    {"target": "diffbir.model.RRDBNet", "params": {"in_nc": 3, "out_nc": 3, "nf": 8, "nb": 1, "gc": 4, "sf": 4}},
    {"target": "diffbir.model.SCUNet", "params": {"in_nc": 3, "config": [1, 1, 1, 1, 1, 1, 1], "dim": 64,
                                                      "input_resolution": 64}},
], ids=["swinir", "bsrnet", "scunet"])
def test_stage1_steps_reduce_the_loss_on_a_fixed_batch(entry, images):
    torch.manual_seed(0)
    net, kind = T.build_stage1(entry)
    net.eval()  # the loss is measured without stochastic depth
    ds = D.CodeformerDataset(D.load_file_list(str(images)), D.CodeformerOptions(out_size=32))
    rng = np.random.default_rng(0)
    pairs = [ds.sample(i, rng) for i in range(2)]
    hq, lq = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0)

    def loss():
        return F.mse_loss(T.stage1_forward(net, kind, lq), hq, reduction="sum")

    with torch.no_grad():
        before = loss().item()
    net.train()
    for _ in range(3 if kind == "scunet" else 8):
        opt.zero_grad()
        loss().backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        assert loss().item() < (0.97 if kind == "scunet" else 0.9) * before


def _off_diffusion(zero_snr, t, x0, noise, parameterization):
    """Transcribed from DiffBIR diffbir/model/gaussian_diffusion.py L7-L20 (linear make_beta_schedule),
    L48-L73 (enforce_zero_terminal_snr), L106-L125 (buffers), L130-L141 (q_sample, get_v), L171-L182 (target)."""
    sa, s1, _ = off_q_coefs(zero_snr)  # the betas / zero-SNR / buffer lines, transcribed in test_diffbir_pipeline
    ex = lambda a: a.gather(-1, t).reshape(t.shape[0], 1, 1, 1)
    x_noisy = ex(sa) * x0 + ex(s1) * noise
    target = noise if parameterization == "eps" else ex(sa) * noise - ex(s1) * x0
    return x_noisy, target


@pytest.mark.parametrize("name", ["train_stage2", "train_stage2_v2.1"])
def test_noise_schedule_and_targets_match_official(name):
    """eps prediction on SD's betas (v1/v2), v prediction on zero-terminal-SNR betas (v2.1)."""
    diff = T.Diffusion(OFFICIAL[name]["model"]["diffusion"]["params"])
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    t = torch.tensor([0, 517, 999])
    ref_noisy, ref_target = _off_diffusion(diff.zero_snr, t, x0, noise, diff.parameterization)
    assert diff.parameterization == ("v" if name.endswith("v2.1") else "eps")
    assert (diff.sqrt_ac[-1].item() == 0) == name.endswith("v2.1")
    assert torch.equal(diff.q_sample(x0, t, noise), ref_noisy)
    assert torch.allclose(diff.target(x0, t, noise), ref_target, atol=1e-7)


def test_stage2_steps_reduce_the_loss_on_a_fixed_batch(sd_files, stage1_run, tmp_path):
    """Only the ControlNet trains (the UNet is untouched); the v2.1 objective."""
    _exp, info = stage1_run
    cfg = _stage2_cfg(tmp_path, sd_files, info["output"], "v2.1")
    unet, vae, text, cn, _, _scale = T.build_stage2(cfg, cfg["train"]["sd_path"], log=lambda s: None)
    diff = T.Diffusion(cfg["model"]["diffusion"]["params"])
    model = T.ControlLDM(unet, cn)
    unet_before = {k: v.clone() for k, v in unet.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 4, 4, 4, generator=g)
    c_img = torch.randn(2, 4, 4, 4, generator=g)
    c_txt = torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([100, 900])
    noise = torch.randn(2, 4, 4, 4, generator=g)
    opt = torch.optim.AdamW(cn.parameters(), lr=1e-3)
    before = diff.loss(model, z0, t, noise, c_txt, c_img).item()
    for _ in range(4):
        opt.zero_grad()
        diff.loss(model, z0, t, noise, c_txt, c_img).backward()
        opt.step()
    assert diff.loss(model, z0, t, noise, c_txt, c_img).item() < before
    assert all(torch.equal(v, unet_before[k]) for k, v in unet.state_dict().items())
    assert not any(p.requires_grad for m in (unet, vae, text) for p in m.parameters())


# ------------------------------------------------------------------ runs, resume, outputs
def _same_state(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_stage1_run_checkpoints_and_exact_resume(stage1_run, images, tmp_path):
    exp, info = stage1_run
    assert len(info["history"]) == 4
    # validation every 2 steps on 6 fixed pairs: loss and PSNR recorded
    assert [v["iter"] for v in info["validation"]] == [2, 4]
    assert all(np.isfinite(v["val_psnr"]) and v["val_loss"] > 0 for v in info["validation"])
    assert (exp / "images" / "stage1_0000001.png").is_file()  # as upstream: step 1 and every image_every
    assert sorted(p.name for p in (exp / "checkpoints").iterdir()) == ["0000002.pt", "0000004.pt"]
    assert (exp / "images" / "stage1_0000002.png").is_file()
    final = torch.load(exp / "stage1.pt", weights_only=True)
    net, _ = T.build_stage1(SWINIR)
    net.load_state_dict(final, strict=True)  # official layout: the network's state dict
    assert _same_state(final, torch.load(exp / "checkpoints" / "0000004.pt", weights_only=True))
    # resume from the state written at iteration 2 of that run, in another folder
    exp2 = tmp_path / "resumed"
    (exp2 / "states").mkdir(parents=True)
    shutil.copy(exp / "states" / "2.state", exp2 / "states" / "2.state")
    info2 = T.train_diffbir(_stage1_cfg(exp2), 1, data=str(images), resume="auto", val_freq=2,
                            val_data=str(images), log=lambda s: None)
    assert info2["resumed_from"] == 2
    assert info2["history"] == info["history"] and info2["validation"] == info["validation"]
    assert _same_state(torch.load(exp2 / "stage1.pt", weights_only=True), final)


def test_stage1_time_limit_stops_and_saves(images, tmp_path):
    """``time_limit`` (restorekit option, seconds): the run stops after the step that passes it, writes a state
    there and saves the network it trained."""
    exp = tmp_path / "cut"
    info = T.train_diffbir(_stage1_cfg(exp), 1, data=str(images), time_limit=0, log=lambda s: None)
    assert info["steps"] == 1 and len(info["history"]) == 1
    assert (exp / "stage1.pt").is_file() and (exp / "states" / "1.state").is_file()


@pytest.fixture(scope="module")
def stage2_run(sd_files, stage1_run, images, tmp_path_factory):
    exp = tmp_path_factory.mktemp("s2")
    cfg = _stage2_cfg(exp, sd_files, stage1_run[1]["output"], "v2.1")
    info = T.train_diffbir(cfg, 2, data=str(images), log=lambda s: None)
    return exp, cfg, info


def test_stage2_run_exact_resume_and_official_layout(stage2_run, images, tmp_path):
    """v2.1 recipe (Real-ESRGAN degradation, pair pool, noise augmentation): a run resumed from its iteration-2
    state gives the same losses and ControlNet bit for bit; checkpoints load as official ControlNet files."""
    exp, cfg, info = stage2_run
    assert len(info["history"]) == 4 and all(np.isfinite(h["loss"]) for h in info["history"])
    assert info["init"]["new_zero"] == ["input_blocks.0.0.weight"]
    ck = torch.load(exp / "checkpoints" / "0000004.pt", weights_only=True)
    assert "input_blocks.0.0.weight" in ck and ck["input_blocks.0.0.weight"].shape[1] == 8
    assert any(k.startswith("zero_convs.") for k in ck) and any(k.startswith("middle_block_out.") for k in ck)
    assert _same_state(ck, torch.load(exp / "controlnet.pth", weights_only=True))
    exp2 = tmp_path / "resumed"
    (exp2 / "states").mkdir(parents=True)
    shutil.copy(exp / "states" / "2.state", exp2 / "states" / "2.state")
    cfg2 = copy.deepcopy(cfg)
    cfg2["train"]["exp_dir"] = str(exp2)
    info2 = T.train_diffbir(cfg2, 2, data=str(images), resume="auto", log=lambda s: None)
    assert info2["resumed_from"] == 2 and info2["history"] == info["history"]
    assert _same_state(torch.load(exp2 / "controlnet.pth", weights_only=True), ck)


def test_trained_model_restores_through_the_public_api(stage2_run):
    """The stage-2 folder loads (official and diffusers layouts give the same ControlNet) and restores."""
    from restorekit import Restorer

    exp, _, _ = stage2_run
    r = Restorer.from_pretrained(str(exp), method="diffbir", version="custom", device="cpu")
    trained = T.load_controlnet_file(exp / "checkpoints" / "0000004.pt", r.pipeline.unet)
    diffusers_layout = T.load_controlnet_diffusers(exp / "controlnet")
    for other in (trained, diffusers_layout):
        assert _same_state(r.pipeline.controlnet.state_dict(), other.state_dict())
    y = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    a = r.restore(y, task="sr", scale=1, steps=2, seed=3, sampler="spaced")
    assert a.shape == y.shape and torch.isfinite(a).all()


def test_official_stage1_config_builds_the_official_swinir(images):
    """configs/diffbir/train_stage1.yaml builds DiffBIR's SwinIR (official key list and shapes) and its
    CodeFormer dataset on a folder."""
    cfg = T.load_config(ROOT / "configs" / "diffbir" / "train_stage1.yaml")
    net, kind = T.build_stage1(cfg["model"]["swinir"])
    keys = json.loads((ROOT / "tests" / "data" / "diffbir_stage1_keys.json").read_text())["swinir_diffbir"]
    assert kind == "swinir" and {k: list(v.shape) for k, v in net.state_dict().items()} == keys
    ds, transform = D.build_dataset(cfg["dataset"]["train"], cfg["batch_transform"], data=str(images))
    assert transform is None and len(ds) == 6 and ds.o.out_size == 512


@pytest.mark.slow
def test_stage1_under_accelerate_launch_with_two_cpu_processes(images, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on CPUs: the batch of 2 is split over the processes,
    each keeps its own random streams in the training states (``2.rng1``), and the run finishes."""
    exp = tmp_path / "exp"
    (tmp_path / "cfg.json").write_text(json.dumps(_stage1_cfg(exp)))
    _, hist = launch_two_cpu_processes(tmp_path, "from restorekit.methods.diffbir.train import train_diffbir\n"
                                       f"info = train_diffbir(json.load(open({str(tmp_path / 'cfg.json')!r})), 1, "
                                       f"data={str(images)!r}, log=lambda s: None)")
    assert hist[0] == hist[1] and len(hist[0]) == 4  # the logged loss is gathered
    assert {p.name for p in (exp / "states").iterdir()} == {"2.state", "2.rng1", "4.state", "4.rng1"}
    net, _ = T.build_stage1(SWINIR)
    net.load_state_dict(torch.load(exp / "stage1.pt", weights_only=True), strict=True)


@pytest.mark.slow
def test_stage2_under_accelerate_launch_with_two_cpu_processes(sd_files, stage1_run, images, tmp_path):
    """Stage 2 (v2 recipe) under ``accelerate launch --multi_gpu --num_processes 2`` on CPUs: the batch of 2 is
    split over the processes, both log the gathered loss, each keeps its random streams in the training states
    (``2.rng1``, a different stream from the main process's), and the ControlNet is written in the official
    layout with ``diffbir_custom.json``."""
    exp = tmp_path / "exp"
    cfg = _stage2_cfg(exp, sd_files, stage1_run[1]["output"], "v2")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    _, hist = launch_two_cpu_processes(tmp_path, "from restorekit.methods.diffbir.train import train_diffbir\n"
                                       f"info = train_diffbir(json.load(open({str(tmp_path / 'cfg.json')!r})), 2, "
                                       f"data={str(images)!r}, log=lambda s: None)")
    assert hist[0] == hist[1] and len(hist[0]) == 4  # the logged loss is gathered
    assert all(np.isfinite(h["loss"]) for h in hist[0])
    assert {p.name for p in (exp / "states").iterdir()} == {"2.state", "2.rng1", "4.state", "4.rng1"}
    r0 = torch.load(exp / "states" / "2.state", weights_only=True)["rng"]["torch_gen"]
    r1 = torch.load(exp / "states" / "2.rng1", weights_only=True)["rng"]["torch_gen"]
    assert not torch.equal(r0, r1)  # seed + rank: the processes draw different data
    ck = torch.load(exp / "checkpoints" / "0000004.pt", weights_only=True)
    assert _same_state(ck, torch.load(exp / "controlnet.pth", weights_only=True))
    unet = T.build_stage2(cfg, cfg["train"]["sd_path"], log=lambda s: None)[0]
    T.load_controlnet_file(exp / "controlnet.pth", unet)  # loads strictly as an official ControlNet file
    assert (exp / "diffbir_custom.json").is_file()


def test_cli_diffbir_training_needs_stage_and_config(capsys):
    from restorekit.cli import main

    assert main(["train", "--method", "diffbir", "--stage", "gan", "--config", "x.yaml"]) == 2
    assert main(["train", "--method", "diffbir", "--stage", "1"]) == 2
    assert "--stage 1|2 and --config" in capsys.readouterr().err
