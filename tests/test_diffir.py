"""DiffIR: official checkpoint layout, agreement with the official networks, training, inference."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from restorekit import Restorer, TaskError, WeightsError
from restorekit.cli import main
from restorekit.methods.diffir import DiffIR, convert_checkpoint, infer_config
from restorekit.methods.diffir.train import (
    make_pairs,
    random_inpaint_mask,
    train_diffir,
)
from restorekit.nets.diffir import PRESETS, DiffIRConfig, DiffIRS1, DiffIRS2
from restorekit.operators import Inpainting
from restorekit.operators.realesrgan import (
    anisotropic_kernel,
    second_order_degrade,
    sinc_kernel,
)

DATA = Path(__file__).parent / "data"
# Key/shape lists of the official DiffIRS1/DiffIRS2 modules (Zj-BinXia/DiffIR archs/S{1,2}_arch.py with the
# options/*.yml settings), recorded by instantiating the official code.
MANIFEST = json.loads((DATA / "diffir_official_keys.json").read_text())

TINY = DiffIRConfig(variant="sr", scale=4, n_encoder_res=1, dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1,
                    heads=(1, 1, 2, 2), ffn_expansion_factor=2.0, layernorm_type="WithBias", n_feats=8)


def _meta_shapes(cls, cfg):
    with torch.device("meta"):
        m = cls(cfg)
    return {k: list(v.shape) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("entry", sorted(MANIFEST))
def test_official_key_and_shape_lists(entry):
    preset, stage = entry.split("/")
    cls = DiffIRS2 if stage == "S2" else DiffIRS1
    ours = _meta_shapes(cls, PRESETS[preset])
    assert ours == MANIFEST[entry]  # same keys, same shapes (order included)


def test_official_state_dict_structure():
    keys = MANIFEST["realsr_x4/S2"]
    # shared modules appear under both names, and the schedule buffers are saved
    assert "denoise.resmlp.0.weight" in keys and "diffusion.model.resmlp.0.weight" in keys
    assert "condition.E.0.weight" in keys and "diffusion.condition.E.0.weight" in keys
    for b in ("betas", "alphas_cumprod", "posterior_mean_coef1", "posterior_mean_coef2"):
        assert f"diffusion.{b}" in keys
    assert keys["G.encoder_level1.0.attn.kernel.0.weight"] == [128, 256]  # Linear(256, 2*dim)
    assert keys["condition.E.0.weight"][1] == 3 and MANIFEST["realsr_x4/S1"]["E.E.0.weight"][1] == 51


def _fill_official_order(model, manifest_keys):
    """Fill parameters as the golden vectors were made: official named_parameters() order, one stream."""
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(1)
    seen = set()
    with torch.no_grad():
        for k in manifest_keys:
            if k in params and k not in seen:
                params[k].copy_(torch.randn(params[k].shape, generator=g) * 0.05)
                seen.add(k)
    assert seen == set(params)


@pytest.mark.parametrize("preset,n,c", [("realsr_x4", 16, 3), ("gopro", 32, 3), ("inpaint_place2", 32, 4)])
def test_matches_official_networks(preset, n, c):
    """Outputs of the official DiffIRS1 / DiffIRS2 (eval mode; torch.manual_seed(5) before the stochastic IPR
    diffusion) on deterministic weights and inputs, stored in tests/data/diffir_golden.pt."""
    golden = torch.load(DATA / "diffir_golden.pt")
    cfg = PRESETS[preset]
    gi = torch.Generator().manual_seed(2)
    lq = torch.rand(1, c, n, n, generator=gi)
    gt = torch.rand(1, 3, n * cfg.sf, n * cfg.sf, generator=gi)
    s2 = DiffIRS2(cfg).eval()
    _fill_official_order(s2, MANIFEST[f"{preset}/S2"])
    s1 = DiffIRS1(cfg).eval()
    _fill_official_order(s1, MANIFEST[f"{preset}/S1"])
    with torch.no_grad():
        o2 = s2(lq, generator=torch.Generator().manual_seed(5))
        o1, _ = s1(lq, gt)
        other = s2(lq, generator=torch.Generator().manual_seed(6))
    for out, ref in ((o2, golden[f"{preset}/S2"]), (o1, golden[f"{preset}/S1"])):
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())
    assert (other - golden[f"{preset}/S2"]).abs().max() > 1e-3  # the seed matters, so the check is sharp


def test_ipr_diffusion_schedule():
    d = DiffIRS2(PRESETS["gopro"]).diffusion
    betas = np.linspace(0.1 ** 0.5, 0.99 ** 0.5, 4) ** 2
    assert np.allclose(d.betas.numpy(), betas, atol=1e-7)
    assert np.allclose(d.alphas_cumprod.numpy(), np.cumprod(1 - betas), atol=1e-7)
    # last step (t=0) returns the denoiser's x0 exactly: coef1 = 1, coef2 = 0
    assert d.posterior_mean_coef1[0].item() == pytest.approx(1.0) and abs(d.posterior_mean_coef2[0].item()) < 1e-7


def test_converter_and_shape_detection(tmp_path):
    with torch.device("meta"):
        shapes = {name: DiffIRS2(PRESETS[name]).state_dict() for name in ("realsr_x4", "realsr_x2", "realsr_x1",
                                                                           "gopro", "inpaint_place2")}
    for name, sd in shapes.items():
        assert infer_config(sd)[0] == name
    # Lightning inpainting checkpoint: generator.* next to generatorS1.*, discriminator.*
    sd = {f"generator.{k}": v for k, v in shapes["inpaint_place2"].items()}
    sd.update({"generatorS1.G.x": torch.zeros(1), "discriminator.model.0.weight": torch.zeros(1)})
    conv = convert_checkpoint(sd)
    assert set(conv) == set(shapes["inpaint_place2"])
    with pytest.raises(WeightsError, match="none of the official"):
        infer_config({"G.patch_embed.proj.weight": torch.zeros(8, 3, 3, 3)})


def test_official_pth_layout_loads(tmp_path):
    """A BasicSR-style .pth ({'params_ema': ...}) with the official GoPro layout loads and runs."""
    net = DiffIRS2(PRESETS["gopro"])
    p = tmp_path / "net_g_latest.pth"
    torch.save({"params": {}, "params_ema": net.state_dict()}, p)
    r = Restorer.from_pretrained(p, method="diffir", device="cpu")
    assert r.preset == "gopro" and r.tasks == ("deblur",)
    out = r.restore(torch.rand(3, 20, 28), task="deblur", seed=0)
    assert out.shape == (3, 20, 28)


def test_realesrgan_degradation():
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b = second_order_degrade(x, 4, seed=3), second_order_degrade(x, 4, seed=3)
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, second_order_degrade(x, 4, seed=4))
    assert 0 <= a.min() and a.max() <= 1
    for k in (sinc_kernel(21, np.pi / 3), anisotropic_kernel(15, 2.0, 0.5, 0.7),
              anisotropic_kernel(15, 1.0, 1.0, 0, "plateau", 1.5), anisotropic_kernel(15, 1.5, 1.0, 0, "generalized", 3)):
        assert abs(k.sum() - 1) < 1e-9
    k = anisotropic_kernel(21, 4.0, 0.5, 0.0)
    assert k[10, :].sum() > 3 * k[:, 10].sum()  # elongated along x for theta = 0


def test_training_pairs_and_masks():
    rng = np.random.default_rng(0)
    gt = torch.rand(2, 3, 32, 32)
    lq, _ = make_pairs(gt, "inpaint", {}, PRESETS["inpaint_place2"], rng)
    assert lq.shape == (2, 4, 32, 32) and set(lq[:, 3].unique().tolist()) <= {0.0, 1.0}
    assert torch.all(lq[:, :3][lq[:, 3:].expand(-1, 3, -1, -1) > 0] == 0)  # holes are zeroed
    m = random_inpaint_mask(8, 64, rng)
    assert 0.02 < m.mean() < 0.9
    lq, _ = make_pairs(gt, "deblur", {"kernel_size": 15}, PRESETS["gopro"], rng)
    assert lq.shape == gt.shape and not torch.allclose(lq, gt)


def _images(tmp_path):
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        a = np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1)))
        Image.fromarray((a * 255).astype(np.uint8)).save(d / f"{i}.png")
    return d


def _cfg(tmp_path, task="sr", **over):
    net = TINY.to_dict() if task == "sr" else {**TINY.to_dict(), "variant": task,
                                                 "inp_channels": 4 if task == "inpaint" else 3}
    c = {"task": task, "network": net, "degradation": "bicubic", "gt_size": 32, "batch_size": 4, "seed": 0,
         "ema_warmup": True,  # restorekit's EMA ramp: 60 iterations are too few for BasicSR's constant 0.999
         "stage1": {"steps": 60, "lr": 2e-3, "output": str(tmp_path / "s1.safetensors")},
         "stage2": {"steps": 40, "encoder_iter": 20, "lr": 1e-3, "lr_encoder": 2e-3,
                    "output": str(tmp_path / "s2.safetensors")}}
    c.update(over)
    return c


def test_two_stage_training_reduces_losses(tmp_path):
    d = _images(tmp_path)
    cfg = _cfg(tmp_path)
    h1 = train_diffir(cfg, 1, data=str(d), log=lambda s: None)["history"]
    assert len(h1) == 60
    # on a fixed batch, the saved stage-1 (EMA) weights beat the network it started from
    from restorekit.training import load_images, random_crops
    from restorekit.weights import load_state_dict

    gt = random_crops(load_images(d, 32), 8, 32, torch.Generator().manual_seed(123))
    lq, gt = make_pairs(gt, "sr", cfg, TINY, np.random.default_rng(0))
    torch.manual_seed(0)
    init = DiffIRS1(TINY).eval()  # train_diffir seeds torch with cfg["seed"] = 0 before building it
    trained = DiffIRS1(TINY).eval()
    trained.load_state_dict(load_state_dict(tmp_path / "s1.safetensors")[0])
    with torch.no_grad():
        l_init = (init(lq, gt)[0] - gt).abs().mean().item()
        l_trained = (trained(lq, gt)[0] - gt).abs().mean().item()
    assert l_trained < 0.8 * l_init, (l_init, l_trained)
    h2 = train_diffir(cfg, 2, data=str(d), log=lambda s: None)["history"]
    enc = [r["l_ipr"] for r in h2[:20]]
    assert "l_pix" not in h2[0] and "l_pix" in h2[-1]  # encoder phase, then joint phase
    assert np.mean(enc[-5:]) < np.mean(enc[:5])
    r = DiffIR.from_pretrained(tmp_path / "s2.safetensors", device="cpu")
    assert r.config == TINY
    y = torch.rand(1, 3, 13, 11)
    a = r.restore(y, task="sr", seed=1)
    assert a.shape == (1, 3, 52, 44)  # odd sizes: reflect-padded to the multiple, cropped back
    assert torch.equal(a, r.restore(y, task="sr", seed=1))  # deterministic under a seed


@pytest.fixture(scope="module")
def tiny_diffir(tmp_path_factory):
    paths = {}
    for task in ("sr", "inpaint"):
        p = tmp_path_factory.mktemp(task) / f"{task}.safetensors"
        cfg = _cfg(Path(p.parent), task)
        net = DiffIRS2(DiffIRConfig.from_dict(cfg["network"]))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for prm in net.parameters():
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.1)
        save_file({k: v.contiguous().clone() for k, v in net.state_dict().items()}, str(p),
                  metadata={"diffir_config": json.dumps(cfg["network"]), "name": f"tiny-{task}"})
        paths[task] = p
    return paths


def test_restorer_task_checks(tiny_diffir):
    r = DiffIR.from_pretrained(tiny_diffir["sr"], device="cpu")
    with pytest.raises(TaskError, match="sr model"):
        r.restore(torch.rand(3, 16, 16), task="deblur")
    with pytest.raises(TaskError, match="does not do task"):
        r.restore(torch.rand(3, 16, 16), task="colorize")
    with pytest.raises(TaskError, match="fixed"):
        r.restore(torch.rand(3, 16, 16), task="sr", lambda_=3.0)
    with pytest.raises(TaskError, match="4 steps"):
        r.restore(torch.rand(3, 16, 16), task="sr", steps=10)
    with pytest.raises(TaskError, match="x4"):
        r.restore(torch.rand(3, 16, 16), task="sr", scale=2)
    ri = DiffIR.from_pretrained(tiny_diffir["inpaint"], device="cpu")
    with pytest.raises(TaskError, match="mask"):
        ri.restore(torch.rand(3, 16, 16), task="inpaint")
    y = torch.rand(1, 3, 20, 24)
    mask = torch.ones(1, 1, 20, 24)
    mask[..., 5:15, 5:15] = 0
    out = ri.restore(y, task="inpaint", operator=Inpainting(mask), seed=0)
    keep = mask.expand_as(y).bool()
    assert torch.allclose(out[keep], y[keep]) and not torch.allclose(out[~keep], y[~keep])


def test_cli_diffir(tmp_path, tiny_diffir, capsys):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 26, 3), dtype=np.uint8)).save(src)
    for mode in ("bicubic", "realesrgan"):
        out = tmp_path / f"o_{mode}.png"
        assert main(["run", "--method", "diffir", "--task", "sr", "--input", str(src), "--output", str(out),
                     "--degrade", "--sr-mode", mode, "--weights", str(tiny_diffir["sr"]), "--no-progress"]) == 0
        assert Image.open(out).size == (26, 30)
    out = tmp_path / "o_inp.png"
    assert main(["run", "--method", "diffir", "--task", "inpaint", "--input", str(src), "--output", str(out),
                 "--degrade", "--mask", "half", "--weights", str(tiny_diffir["inpaint"]), "--no-progress"]) == 0
    rc = main(["run", "--method", "diffir", "--task", "deblur", "--input", str(src), "--output", str(out),
               "--weights", str(tiny_diffir["sr"]), "--no-progress"])
    assert rc == 2 and "sr model" in capsys.readouterr().err


def write_tiny_diffir(path, cfg, scale: float):
    """A DiffIRS2 of ``cfg`` (torch seed 0, weights moved by ``scale`` x N(0, 1)) as a restorekit safetensors file."""
    torch.manual_seed(0)
    net = DiffIRS2(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape))
    save_file({k: v.clone().contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"restorekit_method": "diffir", "diffir_config": json.dumps(cfg.to_dict())})
    return path


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_network_keeps_float32_io(tmp_path, dtype):
    """torch_dtype= runs DiffIR's network in half precision; the result stays float32 and close to fp32."""
    path = write_tiny_diffir(tmp_path / "m.safetensors", TINY, 0.02)
    y = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = Restorer.from_pretrained(str(path), method="diffir").restore(y, task="sr", seed=0)
    r = Restorer.from_pretrained(str(path), method="diffir", torch_dtype=dtype)
    assert next(r.net.parameters()).dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    out = r.restore(y, task="sr", seed=0)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert 0 < (out - ref).abs().max() < 0.05
