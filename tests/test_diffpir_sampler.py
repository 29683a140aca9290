"""DiffPIR sampler vs a plain transcription of the official main_ddpir.py loop.

The reference below follows upstream step by step (find_nearest on the
reduced-alpha table, guided-diffusion's float64 x0-from-eps, the discarded
p_sample noise, the zeta/eta update, last x0 discarded) and solves the data
sub-problem with dense linear algebra instead of FFTs, so it shares no code
with restorekit's sampler or operators.
"""

import numpy as np
import pytest
import torch

from restorekit.diffusion import LinearSchedule
from restorekit.methods.diffpir.sampler import (TASK_DEFAULTS, DiffPIRConfig, EpsToX0, diffpir_rhos, diffpir_sample,
                                                diffpir_sequence, diffpir_timesteps)
from restorekit.operators import BicubicDownsample, Blur, BlurDownsample, Inpainting, gaussian_kernel

T = 1000


def toy_net(x, t):
    """Deterministic nonlinear stand-in for the UNet: 6 channels, only the first 3 are epsilon."""
    tt = t.float().view(-1, 1, 1, 1)
    eps = 0.6 * torch.tanh(x) * torch.cos(tt / 300.0) + 0.2 * torch.roll(x, 1, dims=-1) - 0.05
    garbage = 1e3 * torch.ones_like(x)  # must be ignored (learned-variance channels)
    return torch.cat([eps, garbage], dim=1)


def dense_matrix(op, h, w):
    """Matrix of a single-channel linear map on h x w images, built column by column."""
    n = h * w
    cols = []
    for j in range(n):
        e = torch.zeros(1, 1, h, w, dtype=torch.float64)
        e.view(-1)[j] = 1
        cols.append(op(e).reshape(-1))
    return torch.stack(cols, 1).numpy()


def official_reference(net, y, x_init, A, mask, cfg, gen):
    """Transcription of upstream's loop (iter_num_U = 1, DiffPIR mode, analytic data step)."""
    betas = torch.from_numpy(np.linspace(0.1 / 1000, 20 / 1000, T, dtype=np.float32))
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, 0)
    sqrt_ac = torch.sqrt(alphas_cumprod)
    s1m = torch.sqrt(1.0 - alphas_cumprod)
    reduced = s1m / sqrt_ac
    b64 = np.linspace(0.0001, 0.02, T, dtype=np.float64)
    ac64 = np.cumprod(1.0 - b64)
    sigma = max(0.001, cfg.noise_level)
    sigmas = [reduced[T - 1 - i] for i in range(T)]
    rhos = [cfg.lambda_ * sigma ** 2 / (s1m[i] / sqrt_ac[i]) ** 2 for i in range(T)]

    def find_nearest(arr, v):
        return int(np.abs(np.asarray(arr) - np.asarray(v)).argmin())

    skip = T // cfg.steps
    if cfg.skip_type == "uniform":
        seq = [i * skip for i in range(cfg.steps)]
        if skip > 1:
            seq.append(T - 1)
    else:
        seq = [int(s) for s in list(np.sqrt(np.linspace(0, T ** 2, cfg.steps)))]
        seq[-1] = seq[-1] - 1

    def rn(like):
        return torch.randn(like.shape, generator=gen).to(like.dtype)

    x = sqrt_ac[T - 1] * (2 * x_init - 1) + s1m[T - 1] * rn(x_init).to(x_init.dtype)
    for i in range(len(seq)):
        curr_sigma = sigmas[seq[i]].numpy()
        t_i = find_nearest(reduced, curr_sigma)
        t_model = find_nearest(reduced, curr_sigma * 255 / 255.0)
        eps_model = net(x, torch.tensor([t_model]))[:, :3]
        x0 = (torch.tensor(np.sqrt(1.0 / ac64[t_model])).float().item() * x
              - torch.tensor(np.sqrt(1.0 / ac64[t_model] - 1)).float().item() * eps_model).clamp(-1, 1)
        rn(x)  # p_sample's noise
        if seq[i] != seq[-1]:
            tau = float(rhos[t_i])
            if mask is not None:
                x0_p = (mask * (2 * y - 1) + tau * x0) / (mask + tau)
            else:
                z = (x0 / 2 + 0.5).double()
                out = torch.empty_like(z)
                M = A.T @ A + tau * np.eye(A.shape[1])
                for c in range(z.shape[1]):
                    rhs = A.T @ y[0, c].double().reshape(-1).numpy() + tau * z[0, c].reshape(-1).numpy()
                    out[0, c] = torch.from_numpy(np.linalg.solve(M, rhs)).reshape(z.shape[-2:])
                x0_p = out.to(x0.dtype) * 2 - 1
            x0 = x0 + 1.0 * (x0_p - x0)
        if not seq[i] == seq[-1]:
            t_im1 = find_nearest(reduced, sigmas[seq[i + 1]].numpy())
            eps = (x - sqrt_ac[t_i] * x0) / s1m[t_i]
            eta_sigma = cfg.eta * s1m[t_im1] / s1m[t_i] * torch.sqrt(betas[t_i])
            x = sqrt_ac[t_im1] * x0 + np.sqrt(1 - cfg.zeta) * (torch.sqrt(s1m[t_im1] ** 2 - eta_sigma ** 2) * eps
                                                                + eta_sigma * rn(x)) \
                + np.sqrt(cfg.zeta) * s1m[t_im1] * rn(x)
    if mask is not None:
        b = mask.expand_as(x).bool()
        x[b] = (2 * y - 1).expand_as(x)[b]
    return x / 2 + 0.5


def _problem(task, h=8, w=8):
    g = torch.Generator().manual_seed(11)
    clean = torch.rand(1, 3, h, w, generator=g)
    if task == "deblur":
        op = Blur(gaussian_kernel(5, 1.0))
        y = op.forward(clean) + 0.05 * torch.randn(clean.shape, generator=g)
        return op, y, y, None
    if task == "sr":
        op = BicubicDownsample(2)
        y = op.forward(clean) + 0.05 * torch.randn(1, 3, h // 2, w // 2, generator=g)
        x_init = torch.nn.functional.interpolate(y, size=(h, w), mode="bicubic", align_corners=False)
        return op, y, x_init, None
    mask = (torch.rand(1, 1, h, w, generator=g) > 0.5).float()
    op = Inpainting(mask)
    y = clean * mask
    return op, y, y * mask, mask


CASES = [
    ("deblur", dict(steps=12, lambda_=7.0, zeta=0.3, noise_level=0.05)),
    ("sr", dict(steps=12, lambda_=6.0, zeta=0.3, noise_level=0.05)),
    ("deblur", dict(steps=10, lambda_=2.0, zeta=0.5, eta=0.8, noise_level=0.03, skip_type="uniform")),
    ("sr", dict(steps=9, lambda_=1.0, zeta=0.25, noise_level=0.05)),
    ("inpaint", dict(steps=7, lambda_=1.0, zeta=1.0, noise_level=0.0)),
    ("inpaint", dict(steps=6, lambda_=3.0, zeta=0.1, noise_level=0.0, skip_type="uniform")),
]


@pytest.mark.parametrize("task,opts", CASES)
def test_sampler_matches_official_transcription(task, opts):
    """Images in float64 on both sides.

    At t ~ T the SR data step has rho ~ 1e-7 and the Woodbury form
    (F R - correction) / rho cancels catastrophically in float32 (upstream
    runs it in float32 too), so the formula is checked in float64; the float32
    deblurring case below checks the everyday path.
    """
    op, y, x_init, mask = _problem(task)
    y, x_init = y.double(), x_init.double()
    mask = None if mask is None else mask.double()
    cfg = DiffPIRConfig(**opts)
    sch = LinearSchedule()
    A = None if mask is not None else dense_matrix(lambda e: op.forward(e), 8, 8)
    if isinstance(op, BlurDownsample):
        op.kernel = op.kernel.double()
        op._cache.clear()
    ours = diffpir_sample(EpsToX0(toy_net, sch), y, op, x_init, cfg, sch, torch.Generator().manual_seed(5))
    ref = official_reference(toy_net, y, x_init, A, mask, cfg, torch.Generator().manual_seed(5))
    assert ours.shape == ref.shape == (1, 3, 8, 8)
    assert (ours - ref).abs().max() < 1e-5, (ours - ref).abs().max()


def test_sampler_matches_official_transcription_float32_deblur():
    op, y, x_init, _ = _problem("deblur")
    cfg = DiffPIRConfig(steps=15, lambda_=7.0, zeta=0.3, noise_level=0.05)
    sch = LinearSchedule()
    A = dense_matrix(lambda e: op.forward(e), 8, 8)
    op.kernel = op.kernel.float()
    op._cache.clear()
    ours = diffpir_sample(EpsToX0(toy_net, sch), y, op, x_init, cfg, sch, torch.Generator().manual_seed(5))
    ref = official_reference(toy_net, y, x_init, A, None, cfg, torch.Generator().manual_seed(5))
    assert (ours - ref).abs().max() < 2e-4


def test_reference_is_sensitive():
    """The comparison above would catch a wrong zeta or a missing RNG draw."""
    op, y, x_init, _ = _problem("deblur")
    sch = LinearSchedule()
    base = DiffPIRConfig(steps=8, lambda_=7.0, zeta=0.3)
    a = diffpir_sample(EpsToX0(toy_net, sch), y, op, x_init, base, sch, torch.Generator().manual_seed(5))
    for change in (dict(zeta=0.31), dict(official_rng=False), dict(lambda_=7.5), dict(use_last_x0=True)):
        cfg = DiffPIRConfig(**{**base.to_dict(), **change})
        b = diffpir_sample(EpsToX0(toy_net, sch), y, op, x_init, cfg, sch, torch.Generator().manual_seed(5))
        assert (a - b).abs().max() > 1e-3, change


def test_timestep_sequences():
    # quad, 20 steps: int(sqrt(k * 1e6 / 19)) -> 0, 229, 324, ... , 999
    seq = diffpir_sequence(20, "quad")
    assert len(seq) == 20 and seq[:3] == [0, 229, 324] and seq[-1] == 999
    assert diffpir_timesteps(20, "quad")[:3] == [999, 770, 675] and diffpir_timesteps(20)[-1] == 0
    # quad, 100 steps: second entry int(sqrt(1e6/99)) = 100
    assert diffpir_sequence(100)[:2] == [0, 100] and len(diffpir_sequence(100)) == 100
    # uniform appends T-1: 10 steps -> 11 network evaluations
    assert diffpir_sequence(10, "uniform") == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999]
    assert diffpir_timesteps(10, "uniform") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0]
    assert diffpir_sequence(1000, "uniform") == list(range(1000))
    with pytest.raises(ValueError):
        diffpir_sequence(5, "cosine")


def test_rho_and_schedule_values():
    sch = LinearSchedule()
    assert sch.betas[0].item() == pytest.approx(1e-4) and sch.betas[-1].item() == pytest.approx(0.02)
    # abar_0 = 1 - 1e-4 -> sigmabar_0^2 = 1e-4 / 0.9999
    rho = diffpir_rhos(7.0, 0.05, sch)
    # (float32 schedule as upstream: 1 - abar_0 carries ~2e-4 relative rounding)
    assert rho[0].item() == pytest.approx(7 * 0.0025 * 0.9999 / 1e-4, rel=1e-3)
    # sigma_n is floored at 0.001 (noise-free inpainting)
    assert diffpir_rhos(1.0, 0.0, sch)[0].item() == pytest.approx(1e-6 * 0.9999 / 1e-4, rel=1e-3)
    assert rho[999] < rho[500] < rho[0]


def test_task_defaults_are_official():
    assert TASK_DEFAULTS["deblur"] == dict(steps=100, lambda_=7.0, zeta=0.3, noise_level=12.75 / 255)
    assert TASK_DEFAULTS["sr"]["zeta"] == 0.25 and TASK_DEFAULTS["sr"]["steps"] == 100
    assert TASK_DEFAULTS["inpaint"] == dict(steps=20, lambda_=1.0, zeta=1.0, noise_level=0.0)


def test_eps_to_x0_uses_first_three_channels_and_float64_coefficients():
    sch = LinearSchedule()
    x = torch.randn(1, 3, 16, 16) * 0.3
    t = 400
    got = EpsToX0(toy_net, sch)(x, t)
    ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t]
    eps = toy_net(x, torch.tensor([t]))[:, :3]
    ref = (np.sqrt(1 / ac) * x.double() - np.sqrt(1 / ac - 1) * eps.double()).clamp(-1, 1)
    assert (got.double() - ref).abs().max() < 1e-6


def test_eps_to_x0_pads_to_network_multiple():
    seen = {}

    def net(x, t):
        seen["shape"] = tuple(x.shape)
        return torch.zeros_like(x)

    out = EpsToX0(net, LinearSchedule(), size_multiple=32)(torch.zeros(1, 3, 37, 50), 10)
    assert seen["shape"] == (1, 3, 64, 64) and out.shape == (1, 3, 37, 50)


def test_last_x0_flag_returns_data_step_at_t0():
    """use_last_x0 returns the t = 0 data step on x0(x_0); upstream returns the chain's x_0 itself.

    Both runs share the chain up to the last step (the data step draws no
    noise), so the flagged output must equal the data solution applied to the
    x0 predicted from upstream's final state.
    """
    op, y, x_init, _ = _problem("deblur", 16, 16)
    sch = LinearSchedule()
    x0_fn = EpsToX0(toy_net, sch)
    outs = {}
    for flag in (False, True):
        cfg = DiffPIRConfig(steps=10, lambda_=7.0, zeta=0.3, use_last_x0=flag)
        outs[flag] = diffpir_sample(x0_fn, y, op, x_init, cfg, sch, torch.Generator().manual_seed(0))
    x_last = outs[False] * 2 - 1
    expected = op.data_solution(x0_fn(x_last, 0) / 2 + 0.5, y, diffpir_rhos(7.0, 0.05, sch)[0])
    assert (outs[True] - expected).abs().max() < 1e-5
    assert (outs[True] - outs[False]).abs().max() > 1e-3


def test_inpainting_keeps_observed_pixels():
    op, y, x_init, mask = _problem("inpaint", 16, 16)
    sch = LinearSchedule()
    out = diffpir_sample(EpsToX0(toy_net, sch), y, op, x_init, DiffPIRConfig(steps=5, zeta=1.0, lambda_=1.0),
                         sch, torch.Generator().manual_seed(0))
    keep = mask.expand_as(out).bool()
    assert torch.equal(out[keep], y.expand_as(out)[keep])


def test_seed_determinism():
    op, y, x_init, _ = _problem("deblur")
    sch = LinearSchedule()
    cfg = DiffPIRConfig(steps=6)

    def run(seed):
        return diffpir_sample(EpsToX0(toy_net, sch), y, op, x_init, cfg, sch, torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
