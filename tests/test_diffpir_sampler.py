"""DiffPIR sampler: sequences, rho_t, flags and options.

The comparison with the official loop itself is in tests/test_diffpir_official.py.
"""

import numpy as np
import pytest
import torch

from restorekit.diffusion import LinearSchedule
from restorekit.methods.diffpir.sampler import (TASK_DEFAULTS, DiffPIRConfig, EpsToX0, diffpir_rhos, diffpir_sample,
                                                diffpir_sequence, diffpir_timesteps)
from restorekit.operators import BicubicDownsample, Blur, Inpainting, gaussian_kernel

T = 1000


def toy_net(x, t):
    """Deterministic nonlinear stand-in for the UNet: 6 channels, only the first 3 are epsilon."""
    tt = t.float().view(-1, 1, 1, 1)
    eps = 0.6 * torch.tanh(x) * torch.cos(tt / 300.0) + 0.2 * torch.roll(x, 1, dims=-1) - 0.05
    garbage = 1e3 * torch.ones_like(x)  # must be ignored (learned-variance channels)
    return torch.cat([eps, garbage], dim=1)


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



def test_flags_change_the_output():
    """zeta, the discarded p_sample draw, lambda and use_last_x0 each change the result."""
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


def test_inpainting_pastes_observed_pixels_only_when_asked():
    """Upstream pastes y into x after x_0 was saved, so its output is not pasted; paste_observed=True pastes."""
    op, y, x_init, mask = _problem("inpaint", 16, 16)
    sch = LinearSchedule()
    outs = {}
    for paste in (False, True):
        cfg = DiffPIRConfig(steps=5, zeta=1.0, lambda_=1.0, paste_observed=paste)
        outs[paste] = diffpir_sample(EpsToX0(toy_net, sch), y, op, x_init, cfg, sch, torch.Generator().manual_seed(0))
    keep = mask.expand_as(y).bool()
    assert torch.equal(outs[True][keep], y[keep])
    assert not torch.equal(outs[False][keep], y[keep])
    assert torch.equal(outs[True][~keep], outs[False][~keep])


def test_seed_determinism():
    op, y, x_init, _ = _problem("deblur")
    sch = LinearSchedule()
    cfg = DiffPIRConfig(steps=6)

    def run(seed):
        return diffpir_sample(EpsToX0(toy_net, sch), y, op, x_init, cfg, sch, torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
