"""DiffPIR options through the Python API and the CLI: precision, modes, masks, classical SR degradation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.ndimage
import torch

from restorekit import Restorer
from restorekit.errors import TaskError
from restorekit.methods.diffpir import DiffPIR
from restorekit.nets import GuidedUNet
from restorekit.operators import Blur, BlurDownsample, Inpainting, gaussian_kernel

from .conftest import TINY, randomised


@pytest.fixture(scope="module")
def unet():
    return randomised(GuidedUNet(TINY), seed=3, scale=0.08).eval()


def _y(h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g)


@pytest.mark.parametrize("dtype,name", [(torch.bfloat16, "bf16"), (torch.float16, "fp16")])
def test_half_precision_unet(tiny_weights, dtype, name):
    """torch_dtype runs the UNet in half precision; the result stays close to float32 (loose bound)."""
    ref = Restorer.from_pretrained(str(tiny_weights), method="diffpir")
    half = Restorer.from_pretrained(str(tiny_weights), method="diffpir", torch_dtype=name)
    assert next(half.unet.parameters()).dtype == dtype
    assert half.unet(torch.zeros(1, 3, 32, 32), torch.tensor([10])).dtype == dtype
    op = Blur(gaussian_kernel(5, 1.0))
    y = op.forward(_y())
    a = ref.restore(y, "deblur", operator=op, steps=8, seed=0)
    b = half.restore(y, "deblur", operator=op, steps=8, seed=0)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (a - b).abs().mean() < 0.05
    with pytest.raises(TaskError, match="torch_dtype"):
        Restorer.from_pretrained(str(tiny_weights), method="diffpir", torch_dtype="int8")


MODES = [("deblur", dict(generate_mode="DPS_y0")), ("deblur", dict(generate_mode="DPS_yt", ddim_sample=True)),
         ("deblur", dict(generate_mode="vanilla")), ("deblur", dict(sub_1_analytic=False)),
         ("deblur", dict(iter_num_U=2, start_from_t_y=True)), ("deblur", dict(model_output_type="pred_x_prev")),
         ("deblur", dict(skip_noise_model_t=True, noise_init_img=20)), ("deblur", dict(model_output_type="epsilon")),
         ("inpaint", dict(model_output_type="score")),
         ("sr", dict(sr_mode="cubic", inIter=2, gamma=0.1)), ("sr", dict(generate_mode="DPS_y0")),
         ("sr", dict(classical_degradation=True)),
         ("inpaint", dict(generate_mode="repaint")), ("inpaint", dict(generate_mode="vanilla")),
         ("inpaint", dict(model_output_type="pred_x_prev")), ("inpaint", dict(paste_observed=True))]


@pytest.mark.parametrize("task,opts", MODES, ids=[f"{t}:{o}" for t, o in MODES])
def test_every_official_mode_runs_from_python(unet, task, opts):
    r = DiffPIR(unet)
    if task == "deblur":
        op, y = Blur(gaussian_kernel(5, 1.0)), _y()
    elif task == "sr":
        op, y = BlurDownsample(gaussian_kernel(5, 1.0), 2), _y(16, 16)
    else:
        op = Inpainting((_y(32, 32, 1)[:, :1] > 0.5).float())
        y = op.forward(_y())
    out = r.restore_tensor(y, task, operator=op, steps=6, seed=0, **opts)
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_bad_options_are_one_line_errors(unet):
    r = DiffPIR(unet)
    op = Blur(gaussian_kernel(5, 1.0))
    for opts, msg in ((dict(generate_mode="DPS"), "generate_mode"), (dict(model_output_type="x"), "model_output_type"),
                      (dict(sr_mode="cubic"), "sr_mode"), (dict(generate_mode="repaint"), "inpainting mode")):
        with pytest.raises(TaskError, match=msg):
            r.restore_tensor(_y(), "deblur", operator=op, steps=2, **opts)
    with pytest.raises(TaskError, match="not available for inpainting"):
        r.restore_tensor(_y(), "inpaint", operator=Inpainting(torch.ones(1, 1, 32, 32)), steps=2,
                         generate_mode="DPS_y0")


def test_cli_runs_official_modes(tmp_path, tiny_weights, capsys):
    from PIL import Image

    from restorekit.cli import main

    rng = np.random.default_rng(0)
    big, small = tmp_path / "x.png", tmp_path / "lr.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(big)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(small)
    np.save(tmp_path / "k.npy", gaussian_kernel(5, 1.0).numpy())
    m = np.zeros((32, 32), np.uint8)
    m[:, :16] = 255
    Image.fromarray(m, "L").save(tmp_path / "m.png")
    base = ["--weights", str(tiny_weights), "--no-progress", "--json", "--steps", "3"]
    deblur = ["--task", "deblur", "--input", str(big), "--kernel-file", str(tmp_path / "k.npy")]
    runs = [(deblur, ["generate_mode=DPS_y0", "ddim_sample=true", "iter_num_U=2"]),
            (["--task", "sr", "--scale", "2", "--input", str(small)], ["sr_mode=cubic", "inIter=2", "gamma=0.05"]),
            (["--task", "inpaint", "--input", str(big), "--mask-file", str(tmp_path / "m.png")],
             ["generate_mode=repaint", "start_from_t_y=true", "paste_observed=true"])]
    for i, (task_args, opts) in enumerate(runs):
        out = tmp_path / f"o{i}.png"
        args = ["run"] + base + task_args + ["--output", str(out)] + sum((["--opt", o] for o in opts), [])
        assert main(args) == 0, capsys.readouterr().err
        cfg = json.loads(capsys.readouterr().out)["config"]
        for o in opts:
            k, v = o.split("=")
            assert str(cfg[k]).lower() == v.lower()
        assert out.exists()
    bad = ["run"] + base + deblur + ["--output", str(tmp_path / "bad.png"), "--opt", "generate_mode=foo"]
    assert main(bad) == 2
    assert "unknown generate_mode" in capsys.readouterr().err
    # --precision reaches DiffPIR as torch_dtype
    assert main(["run"] + base + deblur + ["--precision", "bf16", "--output", str(tmp_path / "h.png")]) == 0
    capsys.readouterr()
    assert (tmp_path / "h.png").exists()


def test_shift_pixel_is_bilinear_resampling_clamped_to_the_border():
    """utils_sisr.shift_pixel resamples at (i + (sf-1)/2) clipped to the image with interp2d (linear);
    scipy.ndimage.map_coordinates(order=1) is the independent reference."""
    from restorekit.operators import shift_pixel

    x = np.random.default_rng(0).random((9, 11, 3))
    for sf, ul in ((2, True), (3, True), (4, False)):
        s = (sf - 1) / 2 * (1 if ul else -1)
        r = np.clip(np.arange(9) + s, 0, 8)
        c = np.clip(np.arange(11) + s, 0, 10)
        rr, cc = np.meshgrid(r, c, indexing="ij")
        ref = np.stack([scipy.ndimage.map_coordinates(x[..., i], [rr, cc], order=1) for i in range(3)], -1)
        assert np.abs(shift_pixel(x, sf, ul) - ref).max() < 1e-12
    assert np.abs(shift_pixel(x[..., 0], 3) - shift_pixel(x, 3)[..., 0]).max() < 1e-12


def test_sisr_start_image_matches_opencv_bicubic():
    """main_ddpir_sisr.py upsamples y with cv2.resize(INTER_CUBIC); restorekit's F.interpolate bicubic equals it."""
    cv2 = pytest.importorskip("cv2")
    a = np.random.default_rng(1).random((16, 12, 3)).astype(np.float32)
    ref = cv2.resize(a, (48, 64), interpolation=cv2.INTER_CUBIC)
    ours = torch.nn.functional.interpolate(torch.from_numpy(a).permute(2, 0, 1)[None], size=(64, 48), mode="bicubic",
                                           align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - ref).max() < 1e-5


def test_classical_degradation_operator_and_kernel_file(tmp_path):
    """y = ndimage.convolve(x, k, mode='wrap')[::sf, ::sf] (utils_sisr.classical_degradation); kernels from a .mat."""
    import scipy.io

    from restorekit.operators import classical_operator, load_kernels_mat

    rng = np.random.default_rng(0)
    ks = np.empty((1, 3), dtype=object)
    for i in range(3):
        k = rng.random((25, 25)).astype(np.float32) ** 4
        ks[0, i] = k / k.sum()
    scipy.io.savemat(tmp_path / "kernels_12.mat", {"kernels": ks})
    kernels = load_kernels_mat(tmp_path / "kernels_12.mat")
    assert len(kernels) == 3 and kernels[1].shape == (25, 25) and kernels[1].dtype == np.float64
    x = rng.random((32, 40, 3))
    for sf in (2, 3, 4):
        xs = x[: 32 // sf * sf, : 40 // sf * sf]
        ref = scipy.ndimage.convolve(xs, kernels[2][..., None], mode="wrap")[::sf, ::sf]
        ours = classical_operator(kernels[2], sf).forward(torch.from_numpy(xs).permute(2, 0, 1)[None].float())
        assert np.abs(ours[0].permute(1, 2, 0).numpy() - ref).max() < 1e-5
    with pytest.raises(TaskError, match="not found"):
        load_kernels_mat(tmp_path / "missing.mat")


def test_extreme_and_both_masks():
    from restorekit.operators import box_mask, both_mask, extreme_mask, make_operator, random_mask

    e = extreme_mask(64, 64, 20, margin=4, rng=3)
    assert torch.equal(e, 1 - box_mask(64, 64, 20, margin=4, rng=3)) and e.sum() == 400
    b = both_mask(64, 64, 20, prob=0.5, margin=4, rng=3)
    rng = np.random.default_rng(3)
    assert torch.equal(b, box_mask(64, 64, 20, margin=4, rng=rng) * random_mask(64, 64, 0.5, rng))
    assert 0.3 < b.mean() < 0.5
    op = make_operator("inpaint", (64, 64), mask="extreme", box_size=20, seed=1)
    assert op.mask.sum() == 400
    op = make_operator("inpaint", (64, 64), mask="both", box_size=20, seed=1)
    assert 0.3 < op.mask.mean() < 0.5


def test_dps_guidance_matches_deepinv():
    """restorekit's DPS_y0 guidance grad_x ||y - A x0(x_t)|| vs deepinv's DPSDataFidelity on the same weights.

    deepinv's DiffUNet denoises z = (x_t / sqrt(abar_t) + 1) / 2 at sigma = sigmabar_t / 2 (images in [0, 1]),
    which is guided-diffusion's x0 at timestep t, so grad_x = grad_z / (2 sqrt(abar_t)). The blur is deepinv's
    own ``Blur(padding='reflect')`` on deepinv's side and restorekit's ``reflect_blur`` on ours.
    """
    import deepinv as dinv
    from deepinv.models import DiffUNet
    from deepinv.sampling.noisy_datafidelity import DPSDataFidelity

    from restorekit.diffusion import LinearSchedule
    from restorekit.methods.diffpir.sampler import GuidedDiffusionModel, dps_grad, reflect_blur
    from restorekit.nets import FFHQ_10M
    from restorekit.weights import load_strict

    torch.manual_seed(0)
    ref = randomised(DiffUNet(large_model=False, pretrained=None), seed=1, scale=0.03).eval()
    net = GuidedUNet(FFHQ_10M).eval()
    load_strict(net, {k: v for k, v in ref.state_dict().items() if "alphas_cumprod" not in k}, "deepinv DiffUNet")
    g = torch.Generator().manual_seed(2)
    k = gaussian_kernel(5, 1.2)
    clean = torch.rand(1, 3, 32, 32, generator=g)
    physics = dinv.physics.Blur(filter=k[None, None], padding="reflect")
    y = physics.A(clean)
    assert (y - reflect_blur(clean, k)).abs().max() < 1e-5  # the two blurs agree
    sch = LinearSchedule()
    for t in (400,):
        x = torch.randn(1, 3, 32, 32, generator=g) * 0.7
        xr = x.clone().requires_grad_()
        with torch.enable_grad():
            _, x0 = GuidedDiffusionModel(net, sch).sample(xr, t, torch.zeros_like(x))
            ours, _ = dps_grad(xr, x0, y, lambda v: reflect_blur(v / 2 + 0.5, k))
        sac, red = sch.sqrt_alphas_cumprod[t], sch.reduced_alpha_cumprod[t]
        z = (x / sac + 1) / 2
        gz = DPSDataFidelity(denoiser=ref, clip=[-1.0, 1.0], weight=1.0).grad(z, y, physics, red / 2)
        theirs = gz / (2 * sac)
        assert theirs.abs().max() > 1e-3
        assert (ours - theirs).abs().max() < 1e-3 * theirs.abs().max(), (t, (ours - theirs).abs().max())


def test_official_rng_false_skips_the_discarded_draw(unet):
    """official_rng=False: contiguous draws and no p_sample draw in DiffPIR mode (a different stream)."""
    r = DiffPIR(unet)
    op = Blur(gaussian_kernel(5, 1.0))
    y = op.forward(_y())
    a = r.restore_tensor(y, "deblur", operator=op, steps=6, seed=0)
    b = r.restore_tensor(y, "deblur", operator=op, steps=6, seed=0, official_rng=False)
    c = r.restore_tensor(y, "deblur", operator=op, steps=6, seed=0, official_rng=False)
    assert torch.equal(b, c) and (a - b).abs().max() > 1e-2


@pytest.mark.parametrize("shape", [(1, 3, 64, 48), (1, 3, 5, 7), (1, 1, 4, 4), (2, 3, 6, 7), (1, 3, 1, 2)])
def test_fast_channels_last_draw_is_torchs_serial_draw_bit_for_bit(shape):
    """The sampler's shortcut for upstream's channels-last ``randn_like`` (torch's serial CPU kernel, emulated
    from the generator's 64-bit stream) gives exactly torch's values and leaves the generator in exactly torch's
    state, over several draws, for even and odd sizes (odd: the generator caches a value, and the shortcut must
    step aside), one channel (torch's vectorised path) and mixed sequences; the per-image draws of a batch, done
    in threads, equal one-image draws."""
    from restorekit.methods.diffpir.sampler import _draw, serial_normal

    def torch_draw(s, g):
        return torch.empty(s, dtype=torch.float32, memory_format=torch.channels_last).normal_(generator=g)

    shapes = [shape, shape, (1, 3, 5, 5), shape, (1, 3, 8, 8), shape]
    for seed in (0, 7):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for s in shapes:
            assert torch.equal(torch_draw(s, g1), _draw(s, g2, "cpu", torch.float32, True))
            assert torch.equal(g1.get_state(), g2.get_state())
    g = torch.Generator().manual_seed(3)
    assert serial_normal((1, 3, 64, 48), g) is not None  # the shortcut is taken where it applies
    assert serial_normal((1, 3, 5, 5), g) is None  # odd size
    gens = [torch.Generator().manual_seed(k) for k in range(5)]
    batch = _draw((5, 3, 16, 12), gens, "cpu", torch.float32, True)
    ones = torch.cat([torch_draw((1, 3, 16, 12), torch.Generator().manual_seed(k)) for k in range(5)])
    assert torch.equal(batch, ones)


def test_threaded_draws_work_in_a_forked_child():
    """A process forked after a threaded batch draw (a sweep's worker, a DataLoader) makes its own threads instead
    of waiting forever on the parent's, and draws the same numbers."""
    import multiprocessing as mp

    from restorekit.methods.diffpir.sampler import _draw

    def gens():
        return [torch.Generator().manual_seed(k) for k in range(3)]

    a = _draw((3, 3, 8, 8), gens(), "cpu", torch.float32, True)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=lambda: q.put(_draw((3, 3, 8, 8), gens(), "cpu", torch.float32, True).tolist()))
    p.start()
    b = torch.tensor(q.get(timeout=60))
    p.join(timeout=60)
    assert torch.equal(a, b)
