"""restorekit.samplers against the official DiffBIR sampler math.

The reference implementations below are transcriptions of the official DiffBIR code (github.com/XPixelGroup/DiffBIR,
commit 3f8b530), each citing file and lines; they use the global torch RNG exactly as the official code does, after
``torch.manual_seed(seed)``. restorekit's samplers get a CPU ``torch.Generator`` seeded with the same seed.
The "model" is a tiny random conv net with a time embedding and an image condition, so outputs depend on x, t and
the condition, and noise matters.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torchsde
from scipy import integrate
from torch import nn

from restorekit.errors import RestoreKitError
from restorekit.samplers import (
    SAMPLER_NAMES,
    diffbir_betas,
    sample,
    sample_ddim,
    spaced_timesteps,
)

TOL = 1e-5
SHAPE = (2, 4, 8, 8)


# =============================================================================================== tiny model
class TinyModel(nn.Module):
    """(x, t, cond={"c_img"}) -> eps or v, shaped like x.

    The ideal prediction for data x0 ~ N(c_img, I) under the training schedule (so samples stay O(1)), plus a
    small random conv net with a sinusoidal time embedding, so the output depends on x, t and the condition in a
    non-trivial way. ``t`` may be a float (dpm++_m2); abar is interpolated linearly.
    """

    def __init__(self, betas, parameterization):
        super().__init__()
        self.parameterization = parameterization
        self.register_buffer("ac", torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32))
        g = torch.Generator().manual_seed(1234)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1)
        self.temb = nn.Linear(16, 16)
        self.conv2 = nn.Conv2d(16, 4, 3, padding=1)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x, t, cond):
        m = cond["c_img"]
        tf = t.float().clamp(0, len(self.ac) - 1)
        lo = tf.floor().long()
        w = tf - lo
        ab = (self.ac[lo] * (1 - w) + self.ac[(lo + 1).clamp(max=len(self.ac) - 1)] * w).view(-1, 1, 1, 1)
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * m)
        x0 = m + ab.sqrt() * (x - ab.sqrt() * m)
        out = eps if self.parameterization == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
        freqs = torch.exp(-math.log(10000) * torch.arange(8, dtype=torch.float32) / 8)
        ang = tf[:, None] * freqs[None]
        emb = self.temb(torch.cat([ang.sin(), ang.cos()], dim=1))
        h = self.conv1(torch.cat([x, m], dim=1)) + emb[:, :, None, None]
        return out + 0.2 * torch.tanh(self.conv2(torch.nn.functional.silu(h)))


def make_conds(batch=SHAPE[0]):
    g = torch.Generator().manual_seed(99)
    cond = {"c_img": torch.randn((batch, *SHAPE[1:]), generator=g) * 0.5}
    uncond = {"c_img": torch.randn((batch, *SHAPE[1:]), generator=g) * 0.2}
    return cond, uncond


# ======================================================================= reference: schedules and betas
# transcribed from DiffBIR diffbir/model/gaussian_diffusion.py L9-L17 (make_beta_schedule "linear")
def ref_make_beta_schedule(n_timestep=1000, linear_start=0.00085, linear_end=0.0120):
    return np.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=np.float64) ** 2


# transcribed from DiffBIR diffbir/model/gaussian_diffusion.py L49-L72 (enforce_zero_terminal_snr)
def ref_enforce_zero_terminal_snr(betas):
    betas = torch.from_numpy(betas)
    alphas = 1 - betas
    alphas_bar = alphas.cumprod(0)
    alphas_bar_sqrt = alphas_bar.sqrt()
    alphas_bar_sqrt_0 = alphas_bar_sqrt[0].clone()
    alphas_bar_sqrt_T = alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= alphas_bar_sqrt_T
    alphas_bar_sqrt *= alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T)
    alphas_bar = alphas_bar_sqrt**2
    alphas = alphas_bar[1:] / alphas_bar[:-1]
    alphas = torch.cat([alphas_bar[0:1], alphas])
    return (1 - alphas).numpy()


# configs/inference/diffusion.yaml (v1/v2: eps) and diffusion_v2.1.yaml (zero_snr: True, parameterization: v)
BETAS = {"eps": ref_make_beta_schedule(), "v": ref_enforce_zero_terminal_snr(ref_make_beta_schedule())}
MODELS = {p: TinyModel(BETAS[p], p).eval() for p in ("eps", "v")}


# transcribed from DiffBIR diffbir/sampler/spaced_sampler.py L14-L63 (space_timesteps, integer-string branch)
def ref_space_timesteps(num_timesteps, section_counts):
    section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        if section_count <= 1:
            frac_stride = 1
        else:
            frac_stride = (size - 1) / (section_count - 1)
        cur_idx = 0.0
        taken_steps = []
        for _ in range(section_count):
            taken_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken_steps
        start_idx += size
    return set(all_steps)


def extract(a, t, x_shape):
    # transcribed from DiffBIR diffbir/model/gaussian_diffusion.py L39-L44 (extract_into_tensor)
    b, *_ = t.shape
    return a.gather(-1, t).reshape(b, *((1,) * (len(x_shape) - 1)))


def f32(v):
    return torch.tensor(v, dtype=torch.float32)


# transcribed from DiffBIR diffbir/sampler/sampler.py L31-L38 (get_cfg_scale)
def ref_get_cfg_scale(rescale_cfg, default_cfg_scale, model_t):
    if rescale_cfg and default_cfg_scale > 1:
        return 1 + default_cfg_scale * ((1 - math.cos(math.pi * ((1000 - model_t) / 1000) ** 5.0)) / 2)
    return default_cfg_scale


# ============================================================================= reference: spaced sampler
def ref_spaced(model, betas, parameterization, rescale_cfg, steps, x_size, cond, uncond, cfg_scale, x_T=None,
               cond_fn=None):
    """DiffBIR diffbir/sampler/spaced_sampler.py L77-L116 (make_schedule), L118-L185 (posterior, x0, apply_model,
    p_sample), L187-L245 (sample). ``cond_fn`` is applied to pred_x0 before the posterior as in the v1 code
    (commit c3f415c utils/sampler.py L230-L251, p_sample)."""
    training_alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    used_timesteps = ref_space_timesteps(len(betas), str(steps))
    sbetas = []
    last_alpha_cumprod = 1.0
    for i, alpha_cumprod in enumerate(training_alphas_cumprod):
        if i in used_timesteps:
            sbetas.append(1 - alpha_cumprod / last_alpha_cumprod)
            last_alpha_cumprod = alpha_cumprod
    timesteps = np.array(sorted(list(used_timesteps)), dtype=np.int32)
    sbetas = np.array(sbetas, dtype=np.float64)
    alphas = 1.0 - sbetas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    with np.errstate(divide="ignore"):
        sqrt_recip_alphas_cumprod = f32(np.sqrt(1.0 / alphas_cumprod))
        sqrt_recipm1_alphas_cumprod = f32(np.sqrt(1.0 / alphas_cumprod - 1))
    sqrt_alphas_cumprod = f32(np.sqrt(alphas_cumprod))
    sqrt_one_minus_alphas_cumprod = f32(np.sqrt(1 - alphas_cumprod))
    posterior_variance = f32(sbetas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod))
    posterior_mean_coef1 = f32(sbetas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
    posterior_mean_coef2 = f32((1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod))

    def apply_model(x, model_t, cfg):
        if uncond is None or cfg == 1.0:
            return model(x, model_t, cond)
        model_cond = model(x, model_t, cond)
        model_uncond = model(x, model_t, uncond)
        return model_uncond + cfg * (model_cond - model_uncond)

    if x_T is None:
        x_T = torch.randn(x_size, dtype=torch.float32)
    x = x_T
    total_steps = len(timesteps)
    bs = x_size[0]
    for i, step in enumerate(np.flip(timesteps)):
        model_t = torch.full((bs,), step, dtype=torch.long)
        t = torch.full((bs,), total_steps - i - 1, dtype=torch.long)
        model_output = apply_model(x, model_t, ref_get_cfg_scale(rescale_cfg, cfg_scale, step))
        if parameterization == "eps":
            pred_x0 = (extract(sqrt_recip_alphas_cumprod, t, x.shape) * x
                       - extract(sqrt_recipm1_alphas_cumprod, t, x.shape) * model_output)
        else:
            pred_x0 = (extract(sqrt_alphas_cumprod, t, x.shape) * x
                       - extract(sqrt_one_minus_alphas_cumprod, t, x.shape) * model_output)
        if cond_fn is not None:
            pred_x0 = cond_fn(pred_x0, int(step), total_steps - i - 1)
        mean = extract(posterior_mean_coef1, t, x.shape) * pred_x0 + extract(posterior_mean_coef2, t, x.shape) * x
        variance = extract(posterior_variance, t, x.shape)
        noise = torch.randn_like(x)
        nonzero_mask = (t != 0).float().view(-1, *([1] * (len(x.shape) - 1)))
        x = mean + nonzero_mask * torch.sqrt(variance) * noise
    return x


# =============================================================================== reference: DDIM sampler
def ref_ddim(model, betas, parameterization, rescale_cfg, eta, steps, x_size, cond, uncond, cfg_scale, x_T=None):
    """DiffBIR diffbir/sampler/ddim_sampler.py L13-L58 (timesteps, parameters), L73-L96 (make_schedule),
    L98-L146 (p_sample, batched cond/uncond), L148-L203 (sample)."""
    c = len(betas) // steps
    ddim_timesteps = np.asarray(list(range(0, len(betas), c))) + 1
    alphacums = np.cumprod(1.0 - betas, axis=0)
    alphas = alphacums[ddim_timesteps]
    alphas_prev = np.asarray([alphacums[0]] + alphacums[ddim_timesteps[:-1]].tolist())
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    ddim_sigmas, ddim_alphas, ddim_alphas_prev = f32(sigmas), f32(alphas), f32(alphas_prev)
    ddim_sqrt_alphas, ddim_sqrt_one_minus_alphas = f32(np.sqrt(alphas)), f32(np.sqrt(1.0 - alphas))
    if x_T is None:
        x_T = torch.randn(x_size, dtype=torch.float32)
    x = x_T
    total_steps = ddim_timesteps.shape[0]
    bs = x_size[0]
    for i, step in enumerate(np.flip(ddim_timesteps)):
        model_t = torch.full((bs,), step, dtype=torch.long)
        t = torch.full((bs,), total_steps - i - 1, dtype=torch.long)
        cfg = ref_get_cfg_scale(rescale_cfg, cfg_scale, step)
        if uncond is None or cfg == 1.0:
            model_output = model(x, model_t, cond)
        else:
            x_in = torch.cat([x] * 2)
            t_in = torch.cat([model_t] * 2)
            cond_in = {k: torch.cat([cond[k], uncond[k]]) for k in cond.keys()}
            model_cond, model_uncond = model(x_in, t_in, cond_in).chunk(2)
            model_output = model_uncond + cfg * (model_cond - model_uncond)
        if parameterization == "eps":
            e_t = model_output
        else:
            e_t = (extract(ddim_sqrt_alphas, t, x.shape) * model_output
                   + extract(ddim_sqrt_one_minus_alphas, t, x.shape) * x)
        a_t = extract(ddim_alphas, t, x.shape)
        a_prev = extract(ddim_alphas_prev, t, x.shape)
        sigma_t = extract(ddim_sigmas, t, x.shape)
        sqrt_one_minus_at = extract(ddim_sqrt_one_minus_alphas, t, x.shape)
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        noise = sigma_t * torch.randn_like(x)
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
    return x


# ========================================================================= reference: DPM-Solver++ (2M)
# transcribed from DiffBIR diffbir/sampler/dpm_solver_pytorch.py L1273-L1312 (interpolate_fn)
def ref_interpolate_fn(x, xp, yp):
    N, K = x.shape[0], xp.shape[1]
    all_x = torch.cat([x.unsqueeze(2), xp.unsqueeze(0).repeat((N, 1, 1))], dim=2)
    sorted_all_x, x_indices = torch.sort(all_x, dim=2)
    x_idx = torch.argmin(x_indices, dim=2)
    cand_start_idx = x_idx - 1
    start_idx = torch.where(torch.eq(x_idx, 0), torch.tensor(1),
                            torch.where(torch.eq(x_idx, K), torch.tensor(K - 2), cand_start_idx))
    end_idx = torch.where(torch.eq(start_idx, cand_start_idx), start_idx + 2, start_idx + 1)
    start_x = torch.gather(sorted_all_x, dim=2, index=start_idx.unsqueeze(2)).squeeze(2)
    end_x = torch.gather(sorted_all_x, dim=2, index=end_idx.unsqueeze(2)).squeeze(2)
    start_idx2 = torch.where(torch.eq(x_idx, 0), torch.tensor(0),
                             torch.where(torch.eq(x_idx, K), torch.tensor(K - 2), cand_start_idx))
    y_positions_expanded = yp.unsqueeze(0).expand(N, -1, -1)
    start_y = torch.gather(y_positions_expanded, dim=2, index=start_idx2.unsqueeze(2)).squeeze(2)
    end_y = torch.gather(y_positions_expanded, dim=2, index=(start_idx2 + 1).unsqueeze(2)).squeeze(2)
    return start_y + (x - start_x) * (end_y - start_y) / (end_x - start_x)


class RefNoiseScheduleVP:
    """DiffBIR diffbir/sampler/dpm_solver_pytorch.py L7-L155 (NoiseScheduleVP, discrete branch)."""

    def __init__(self, betas):
        log_alphas = 0.5 * torch.log(1 - betas).cumsum(dim=0)
        log_sigmas = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alphas))  # numerical_clip_alpha, L115-L126
        lambs = log_alphas - log_sigmas
        idx = torch.searchsorted(torch.flip(lambs, [0]), -5.1)
        if idx > 0:
            log_alphas = log_alphas[:-idx]
        self.T = 1.0
        self.log_alpha_array = log_alphas.reshape((1, -1)).to(dtype=torch.float32)
        self.total_N = self.log_alpha_array.shape[1]
        self.t_array = torch.linspace(0.0, 1.0, self.total_N + 1)[1:].reshape((1, -1)).to(dtype=torch.float32)

    def marginal_log_mean_coeff(self, t):
        return ref_interpolate_fn(t.reshape((-1, 1)), self.t_array, self.log_alpha_array).reshape(-1)

    def marginal_alpha(self, t):
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t):
        log_mean_coeff = self.marginal_log_mean_coeff(t)
        log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean_coeff))
        return log_mean_coeff - log_std


def ref_expand_dims(v, dims):
    return v[(...,) + (None,) * (dims - 1)]


def ref_dpmpp_m2(model, betas, parameterization, rescale_cfg, steps, x_size, cond, uncond, cfg_scale, x_T=None):
    """DiffBIR diffbir/sampler/dpms_sampler.py L17-L101 ("dpm++_m2": dpmsolver++, multistep, order 2,
    time_uniform; betas registered as float32), dpm_solver_pytorch.py L171-L352 (model_wrapper,
    classifier-free), L445-L469 (noise/data prediction), L471-L498 (get_time_steps), L565-L610 (first update),
    L814-L870 (multistep second update), L1065-L1233 (sample, multistep branch, lower_order_final)."""
    if x_T is None:
        x_T = torch.randn(x_size, dtype=torch.float32)
    x = x_T
    ns = RefNoiseScheduleVP(torch.tensor(betas, dtype=torch.float32))
    model_type = "noise" if parameterization == "eps" else "v"

    def get_model_input_time(t_continuous):
        return (t_continuous - 1.0 / ns.total_N) * 1000.0

    def noise_pred_fn(x, t_continuous, c):
        output = model(x, get_model_input_time(t_continuous), c)
        if model_type == "noise":
            return output
        alpha_t, sigma_t = ns.marginal_alpha(t_continuous), ns.marginal_std(t_continuous)
        return ref_expand_dims(alpha_t, x.dim()) * output + ref_expand_dims(sigma_t, x.dim()) * x

    def wrapped(x, t_continuous):
        if cfg_scale == 1.0 or uncond is None:
            return noise_pred_fn(x, t_continuous, cond)
        x_in = torch.cat([x] * 2)
        t_in = torch.cat([t_continuous] * 2)
        c_in = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        noise_uncond, noise = noise_pred_fn(x_in, t_in, c_in).chunk(2)
        if not rescale_cfg:
            return noise_uncond + cfg_scale * (noise - noise_uncond)
        t_input = get_model_input_time(t_continuous)
        scale = 1 + cfg_scale * ((1 - math.cos(math.pi * ((1000 - t_input) / 1000) ** 5.0)) / 2)
        return noise_uncond + scale * (noise - noise_uncond)

    def model_fn_dpm(x, t):  # DPM_Solver.model -> data_prediction_fn
        noise = wrapped(x, t.expand(x.shape[0]))
        alpha_t, sigma_t = ns.marginal_alpha(t), ns.marginal_std(t)
        return (x - sigma_t * noise) / alpha_t

    def first_update(x, s, t, model_s):
        lambda_s, lambda_t = ns.marginal_lambda(s), ns.marginal_lambda(t)
        h = lambda_t - lambda_s
        sigma_s, sigma_t = ns.marginal_std(s), ns.marginal_std(t)
        alpha_t = torch.exp(ns.marginal_log_mean_coeff(t))
        phi_1 = torch.expm1(-h)
        return sigma_t / sigma_s * x - alpha_t * phi_1 * model_s

    def second_update(x, model_prev_list, t_prev_list, t):
        model_prev_1, model_prev_0 = model_prev_list[-2], model_prev_list[-1]
        t_prev_1, t_prev_0 = t_prev_list[-2], t_prev_list[-1]
        lambda_prev_1, lambda_prev_0, lambda_t = (ns.marginal_lambda(t_prev_1), ns.marginal_lambda(t_prev_0),
                                                  ns.marginal_lambda(t))
        sigma_prev_0, sigma_t = ns.marginal_std(t_prev_0), ns.marginal_std(t)
        alpha_t = torch.exp(ns.marginal_log_mean_coeff(t))
        h_0 = lambda_prev_0 - lambda_prev_1
        h = lambda_t - lambda_prev_0
        r0 = h_0 / h
        D1_0 = (1.0 / r0) * (model_prev_0 - model_prev_1)
        phi_1 = torch.expm1(-h)
        return (sigma_t / sigma_prev_0) * x - (alpha_t * phi_1) * model_prev_0 - 0.5 * (alpha_t * phi_1) * D1_0

    def update(x, model_prev_list, t_prev_list, t, order):
        if order == 1:
            return first_update(x, t_prev_list[-1], t, model_prev_list[-1])
        return second_update(x, model_prev_list, t_prev_list, t)

    order = 2
    t_0, t_T = 1.0 / ns.total_N, ns.T
    timesteps = torch.linspace(t_T, t_0, steps + 1)
    t = timesteps[0]
    t_prev_list = [t]
    model_prev_list = [model_fn_dpm(x, t)]
    for step in range(1, order):
        t = timesteps[step]
        x = update(x, model_prev_list, t_prev_list, t, step)
        t_prev_list.append(t)
        model_prev_list.append(model_fn_dpm(x, t))
    for step in range(order, steps + 1):
        t = timesteps[step]
        step_order = min(order, steps + 1 - step) if steps < 10 else order
        x = update(x, model_prev_list, t_prev_list, t, step_order)
        for i in range(order - 1):
            t_prev_list[i] = t_prev_list[i + 1]
            model_prev_list[i] = model_prev_list[i + 1]
        t_prev_list[-1] = t
        if step < steps:
            model_prev_list[-1] = model_fn_dpm(x, t)
    return x


# ============================================================================ reference: k-diffusion solvers
# transcribed from DiffBIR diffbir/sampler/k_diffusion.py L10-L119 (helpers, Brownian-tree noise)
def append_dims(x, target_dims):
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def to_d(x, sigma, denoised):
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def default_noise_sampler(x):
    return lambda sigma, sigma_next: torch.randn_like(x)


class BatchedBrownianTree:
    def __init__(self, x, t0, t1, seed=None, **kwargs):
        t0, t1, self.sign = self.sort(t0, t1)
        w0 = kwargs.get("w0", torch.zeros_like(x))
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()
        self.batched = True
        try:
            assert len(seed) == x.shape[0]
            w0 = w0[0]
        except TypeError:
            seed = [seed]
            self.batched = False
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s, **kwargs) for s in seed]

    @staticmethod
    def sort(a, b):
        return (a, b, 1) if a < b else (b, a, -1)

    def __call__(self, t0, t1):
        t0, t1, sign = self.sort(t0, t1)
        w = torch.stack([tree(t0, t1) for tree in self.trees]) * (self.sign * sign)
        return w if self.batched else w[0]


class BrownianTreeNoiseSampler:
    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda x: x):
        self.transform = transform
        t0, t1 = self.transform(torch.as_tensor(sigma_min)), self.transform(torch.as_tensor(sigma_max))
        self.tree = BatchedBrownianTree(x, t0, t1, seed)

    def __call__(self, sigma, sigma_next):
        t0, t1 = self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next))
        return self.tree(t0, t1) / (t1 - t0).abs().sqrt()


# transcribed from DiffBIR diffbir/sampler/k_diffusion.py L122-L140 (sample_euler)
def sample_euler(model, x, sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = torch.randn_like(x) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        x = x + d * dt
    return x


# transcribed from DiffBIR diffbir/sampler/k_diffusion.py L143-L160 (sample_euler_ancestral)
def sample_euler_ancestral(model, x, sigmas, eta=1.0, s_noise=1.0):
    noise_sampler = default_noise_sampler(x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        d = to_d(x, sigmas[i], denoised)
        dt = sigma_down - sigmas[i]
        x = x + d * dt
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


# transcribed from DiffBIR diffbir/sampler/k_diffusion.py L163-L189 (sample_heun)
def sample_heun(model, x, sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = torch.randn_like(x) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
    return x


# transcribed from DiffBIR diffbir/sampler/k_diffusion.py L192-L220 (sample_dpm_2)
def sample_dpm_2(model, x, sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = torch.randn_like(x) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            dt = sigmas[i + 1] - sigma_hat
            x = x + d * dt
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            dt_1 = sigma_mid - sigma_hat
            dt_2 = sigmas[i + 1] - sigma_hat
            x_2 = x + d * dt_1
            denoised_2 = model(x_2, sigma_mid * s_in)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * dt_2
    return x


# transcribed from DiffBIR diffbir/sampler/k_diffusion.py L223-L249 (sample_dpm_2_ancestral)
def sample_dpm_2_ancestral(model, x, sigmas, eta=1.0, s_noise=1.0):
    noise_sampler = default_noise_sampler(x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            dt_1 = sigma_mid - sigmas[i]
            dt_2 = sigma_down - sigmas[i]
            x_2 = x + d * dt_1
            denoised_2 = model(x_2, sigma_mid * s_in)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * dt_2
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


# transcribed from DiffBIR diffbir/sampler/k_diffusion.py L252-L282 (linear_multistep_coeff, sample_lms)
def linear_multistep_coeff(order, t, i, j):
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j == k:
                continue
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def sample_lms(model, x, sigmas, order=4):
    s_in = x.new_ones([x.shape[0]])
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        ds.append(d)
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


# transcribed from DiffBIR diffbir/sampler/k_diffusion.py L513-L544 (sample_dpmpp_2s_ancestral)
def sample_dpmpp_2s_ancestral(model, x, sigmas, eta=1.0, s_noise=1.0):
    noise_sampler = default_noise_sampler(x)
    s_in = x.new_ones([x.shape[0]])
    sigma_fn = lambda t: t.neg().exp()
    t_fn = lambda sigma: sigma.log().neg()
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sigma_down == 0:
            d = to_d(x, sigmas[i], denoised)
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (sigma_fn(s) / sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, sigma_fn(s) * s_in)
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


# transcribed from DiffBIR diffbir/sampler/k_diffusion.py L547-L586 (sample_dpmpp_sde)
def sample_dpmpp_sde(model, x, sigmas, eta=1.0, s_noise=1.0, r=1 / 2):
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    noise_sampler = BrownianTreeNoiseSampler(x, sigma_min, sigma_max)
    s_in = x.new_ones([x.shape[0]])
    sigma_fn = lambda t: t.neg().exp()
    t_fn = lambda sigma: sigma.log().neg()
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            d = to_d(x, sigmas[i], denoised)
            dt = sigmas[i + 1] - sigmas[i]
            x = x + d * dt
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(s), eta)
            s_ = t_fn(sd)
            x_2 = (sigma_fn(s_) / sigma_fn(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + noise_sampler(sigma_fn(t), sigma_fn(s)) * s_noise * su
            denoised_2 = model(x_2, sigma_fn(s) * s_in)
            sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(t_next), eta)
            t_next_ = t_fn(sd)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (sigma_fn(t_next_) / sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + noise_sampler(sigma_fn(t), sigma_fn(t_next)) * s_noise * su
    return x


# transcribed from DiffBIR diffbir/sampler/k_diffusion.py L589-L612 (sample_dpmpp_2m)
def sample_dpmpp_2m(model, x, sigmas):
    s_in = x.new_ones([x.shape[0]])
    sigma_fn = lambda t: t.neg().exp()
    t_fn = lambda sigma: sigma.log().neg()
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


# transcribed from DiffBIR diffbir/sampler/k_diffusion.py L615-L657 (sample_dpmpp_2m_sde, midpoint)
def sample_dpmpp_2m_sde(model, x, sigmas, eta=1.0, s_noise=1.0):
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    noise_sampler = BrownianTreeNoiseSampler(x, sigma_min, sigma_max)
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    h_last = None
    h = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


# transcribed from DiffBIR diffbir/sampler/k_diffusion.py L660-L707 (sample_dpmpp_3m_sde)
def sample_dpmpp_3m_sde(model, x, sigmas, eta=1.0, s_noise=1.0):
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    noise_sampler = BrownianTreeNoiseSampler(x, sigma_min, sigma_max)
    denoised_1, denoised_2 = None, None
    h_1, h_2 = None, None
    h = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# DiffBIR diffbir/sampler/edm_sampler.py L28-L41 (TYPE_TO_SOLVER)
TYPE_TO_SOLVER = {
    "euler": (sample_euler, ("s_churn", "s_tmin", "s_tmax", "s_noise")),
    "euler_a": (sample_euler_ancestral, ("eta", "s_noise")),
    "heun": (sample_heun, ("s_churn", "s_tmin", "s_tmax", "s_noise")),
    "dpm_2": (sample_dpm_2, ("s_churn", "s_tmin", "s_tmax", "s_noise")),
    "dpm_2_a": (sample_dpm_2_ancestral, ("eta", "s_noise")),
    "lms": (sample_lms, ("order",)),
    "dpm++_2s_a": (sample_dpmpp_2s_ancestral, ("eta", "s_noise")),
    "dpm++_sde": (sample_dpmpp_sde, ("eta", "s_noise")),
    "dpm++_2m": (sample_dpmpp_2m, ()),
    "dpm++_2m_sde": (sample_dpmpp_2m_sde, ("eta", "s_noise")),
    "dpm++_3m_sde": (sample_dpmpp_3m_sde, ("eta", "s_noise")),
}


def ref_edm(model, betas, parameterization, rescale_cfg, solver_type, params, steps, x_size, cond, uncond,
            cfg_scale, x_T=None):
    """DiffBIR diffbir/sampler/edm_sampler.py L83-L96 (make_schedule), L98-L138 (convert_to_denoiser),
    L140-L188 (sample)."""
    training_alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    timesteps = np.linspace(len(training_alphas_cumprod) - 1, 0, steps, endpoint=False).astype(int)
    alphas_cumprod = training_alphas_cumprod[timesteps].copy()
    alphas_cumprod[0] = 1e-8
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    sigmas = f32(np.append(sigmas, 0))
    timesteps = torch.tensor(np.append(timesteps, 0), dtype=torch.long)

    def denoiser(x, sigma):
        if parameterization == "eps":
            c_skip = torch.ones_like(sigma)
            c_out = -sigma
            c_in = 1 / (sigma**2 + 1.0) ** 0.5
            c_noise = sigma.clone()
        else:
            c_skip = 1.0 / (sigma**2 + 1.0)
            c_out = -sigma / (sigma**2 + 1.0) ** 0.5
            c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
            c_noise = sigma.clone()
        c_noise = timesteps[(c_noise - sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)]
        cur_cfg_scale = ref_get_cfg_scale(rescale_cfg, cfg_scale, c_noise[0].item())
        c_in, c_out, c_skip = map(lambda c: append_dims(c, x.ndim), (c_in, c_out, c_skip))
        if uncond is None or cfg_scale == 1.0:
            return model(x * c_in, c_noise, cond) * c_out + x * c_skip
        model_cond = model(x * c_in, c_noise, cond) * c_out + x * c_skip
        model_uncond = model(x * c_in, c_noise, uncond) * c_out + x * c_skip
        return model_uncond + cur_cfg_scale * (model_cond - model_uncond)

    solver_fn, solver_hparams = TYPE_TO_SOLVER[solver_type]
    if x_T is None:
        x_T = torch.randn(x_size, dtype=torch.float32)
    x = x_T * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    return solver_fn(denoiser, x, sigmas, **{k: params[k] for k in solver_hparams})


# inference.py argparse defaults (L204-L239): s_churn 0, s_tmin 0, s_tmax 300, s_noise 1, eta 1, order 1
DEFAULTS = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 300.0, "s_noise": 1.0, "eta": 1.0, "order": 1}


def reference(name, parameterization, steps, cfg_scale, rescale_cfg=False, x_T=None, batch=SHAPE[0], **opts):
    """The official sampler ``name`` as DiffBIR pipeline.py L179-L199 builds it (ddim with eta=0)."""
    params = {**DEFAULTS, **opts}
    cond, uncond = make_conds(batch)
    x_size = (batch, *SHAPE[1:])
    betas = BETAS[parameterization]
    MODEL = MODELS[parameterization]
    if name == "spaced":
        return ref_spaced(MODEL, betas, parameterization, rescale_cfg, steps, x_size, cond, uncond, cfg_scale, x_T)
    if name == "ddim":
        return ref_ddim(MODEL, betas, parameterization, rescale_cfg, 0, steps, x_size, cond, uncond, cfg_scale, x_T)
    if name == "dpm++_m2":
        return ref_dpmpp_m2(MODEL, betas, parameterization, rescale_cfg, steps, x_size, cond, uncond, cfg_scale, x_T)
    return ref_edm(MODEL, betas, parameterization, rescale_cfg, name[4:], params, steps, x_size, cond, uncond,
                   cfg_scale, x_T)


def ours(name, parameterization, steps, cfg_scale, seed, rescale_cfg=False, x_T=None, batch=SHAPE[0], **opts):
    cond, uncond = make_conds(batch)
    zero_snr = parameterization == "v"
    return sample(name, MODELS[parameterization], x_T, (batch, *SHAPE[1:]), steps=steps, betas=diffbir_betas(zero_snr),
                  parameterization=parameterization, cond=cond, uncond=uncond, cfg_scale=cfg_scale,
                  rescale_cfg=rescale_cfg, generator=torch.Generator().manual_seed(seed), **opts)


def run_reference(seed, *args, **kwargs):
    torch.manual_seed(seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde warns about queries a float32 ulp outside its interval
        return reference(*args, **kwargs)


def assert_close(a, b, tol=TOL):
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err < tol, f"max abs difference {err}"


# ===================================================================================================== tests
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is several times faster on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_spaced_timesteps_match_official_for_every_step_count():
    for steps in range(1, 1001):
        assert spaced_timesteps(1000, steps).tolist() == sorted(ref_space_timesteps(1000, str(steps))), steps


def test_spaced_timesteps_differ_from_linspace_rounding():
    differ = sum(
        spaced_timesteps(1000, n).tolist() != np.round(np.linspace(0, 999, n)).astype(int).tolist()
        for n in range(1, 1001)
    )
    assert differ == 278


def test_betas_match_official():
    np.testing.assert_array_equal(diffbir_betas(False), BETAS["eps"])
    np.testing.assert_array_equal(diffbir_betas(True), BETAS["v"])
    assert BETAS["v"][-1] == 1.0  # zero terminal SNR


def test_sampler_names_are_the_official_ones():
    assert set(SAMPLER_NAMES) == {"spaced", "ddim", "dpm++_m2"} | {"edm_" + k for k in TYPE_TO_SOLVER}
    assert len(SAMPLER_NAMES) == 14


@pytest.mark.parametrize("parameterization", ["eps", "v"])
@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_matches_official_sampler(name, parameterization):
    seed = 7
    expected = run_reference(seed, name, parameterization, 6, 3.5)
    got = ours(name, parameterization, 6, 3.5, seed)
    assert_close(got, expected)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_matches_official_with_rescale_cfg_and_given_x_T(name):
    seed = 3
    x_T = torch.randn((1, *SHAPE[1:]), generator=torch.Generator().manual_seed(5))
    expected = run_reference(seed, name, "v", 5, 4.0, rescale_cfg=True, x_T=x_T.clone(), batch=1)
    got = ours(name, "v", 5, 4.0, seed, rescale_cfg=True, x_T=x_T.clone(), batch=1)
    assert_close(got, expected)


def test_dpmpp_m2_rescale_cfg_runs_per_sample_for_batches():
    # the official wrapper takes math.cos of the (batch,) time tensor, which only works for batch 1; restorekit
    # uses the shared time, so a batch equals its samples run one by one
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(41))
    cond, uncond = make_conds()
    kw = {"steps": 5, "betas": diffbir_betas(True), "parameterization": "v", "cfg_scale": 4.0, "rescale_cfg": True}
    batch = sample("dpm++_m2", MODELS["v"], x_T, SHAPE, cond=cond, uncond=uncond, **kw)
    for i in range(SHAPE[0]):
        one = sample("dpm++_m2", MODELS["v"], x_T[i:i + 1], (1, *SHAPE[1:]), cond={"c_img": cond["c_img"][i:i + 1]},
                     uncond={"c_img": uncond["c_img"][i:i + 1]}, **kw)
        assert_close(batch[i:i + 1], one)


@pytest.mark.parametrize("name", ["edm_dpm++_3m_sde", "dpm++_m2", "spaced"])
def test_v21_defaults_ten_steps(name):
    # v2.1 defaults: edm_dpm++_3m_sde, 10 steps, cfg 6 (inference.py L89-L113, L191); 10 steps also takes
    # dpm++_m2's branch without the lower-order last step
    expected = run_reference(231, name, "v", 10, 6.0)
    got = ours(name, "v", 10, 6.0, 231)
    assert_close(got, expected)


CHURN = {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 20.0, "s_noise": 0.9}


@pytest.mark.parametrize("parameterization", ["eps", "v"])
@pytest.mark.parametrize("name", ["edm_euler", "edm_heun", "edm_dpm_2"])
def test_churn_options_match_official(name, parameterization):
    expected = run_reference(11, name, parameterization, 6, 2.5, **CHURN)
    got = ours(name, parameterization, 6, 2.5, 11, **CHURN)
    assert_close(got, expected)
    plain = ours(name, parameterization, 6, 2.5, 11)
    assert (got - plain).abs().max() > 1e-3  # churn really changed something


@pytest.mark.parametrize("eta", [0.0, 0.6])
@pytest.mark.parametrize("name", ["edm_euler_a", "edm_dpm_2_a", "edm_dpm++_2s_a", "edm_dpm++_sde",
                                  "edm_dpm++_2m_sde", "edm_dpm++_3m_sde"])
def test_eta_and_s_noise_match_official(name, eta):
    expected = run_reference(13, name, "eps", 6, 2.0, eta=eta, s_noise=0.8)
    got = ours(name, "eps", 6, 2.0, 13, eta=eta, s_noise=0.8)
    assert_close(got, expected)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_lms_order_matches_official(order):
    expected = run_reference(17, "edm_lms", "v", 7, 3.0, order=order)
    got = ours("edm_lms", "v", 7, 3.0, 17, order=order)
    assert_close(got, expected)
    assert (got - ours("edm_lms", "v", 7, 3.0, 17, order=1)).abs().max() > 1e-4


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_ddim_with_eta_matches_official(parameterization):
    cond, uncond = make_conds()
    torch.manual_seed(19)
    with torch.no_grad():
        expected = ref_ddim(MODELS[parameterization], BETAS[parameterization], parameterization, False, 0.7, 8, SHAPE, cond, uncond,
                            3.0)
    g = torch.Generator().manual_seed(19)
    x_T = torch.randn(SHAPE, generator=g)  # the official sampler draws x_T first, then the step noise
    with torch.no_grad():
        got = sample_ddim(MODELS[parameterization], x_T, steps=8, betas=BETAS[parameterization], parameterization=parameterization,
                          cond=cond, uncond=uncond, cfg_scale=3.0, eta=0.7, generator=g)
    assert_close(got, expected)
    assert (got - ours("ddim", parameterization, 8, 3.0, 19)).abs().max() > 1e-3  # eta mattered


def test_ddim_step_counts_follow_official_stride():
    # 7 steps: stride 1000 // 7 = 142 gives 8 timesteps (1, 143, ..., 995), as in the official make_ddim_timesteps
    expected = run_reference(37, "ddim", "eps", 7, 2.0)
    got = ours("ddim", "eps", 7, 2.0, 37)
    assert_close(got, expected)


def test_progress_reports_each_step():
    seen = []
    cond, uncond = make_conds()
    for name, t0 in [("spaced", 999), ("edm_euler", 999), ("dpm++_m2", None)]:
        seen.clear()
        sample(name, MODELS["v"], None, SHAPE, steps=4, betas=diffbir_betas(True), parameterization="v", cond=cond,
               uncond=uncond, cfg_scale=2.0, generator=torch.Generator().manual_seed(0),
               progress=lambda i, n, t: seen.append((i, n, t)))
        assert [(i, n) for i, n, _ in seen] == [(0, 4), (1, 4), (2, 4), (3, 4)]
        if t0 is not None:
            assert seen[0][2] == t0


def test_spaced_applies_cond_fn_to_x0():
    target = torch.randn(SHAPE, generator=torch.Generator().manual_seed(23))
    calls = []

    def cond_fn(x0, t, index):
        calls.append((t, index))
        return x0 + 0.1 * (target - x0)

    cond, uncond = make_conds()
    torch.manual_seed(29)
    with torch.no_grad():
        expected = ref_spaced(MODELS["eps"], BETAS["eps"], "eps", False, 5, SHAPE, cond, uncond, 2.0, cond_fn=cond_fn)
    ref_calls, calls[:] = list(calls), []
    got = sample("spaced", MODELS["eps"], None, SHAPE, steps=5, betas=diffbir_betas(False), parameterization="eps",
                 cond=cond, uncond=uncond, cfg_scale=2.0, generator=torch.Generator().manual_seed(29),
                 cond_fn=cond_fn)
    assert calls == ref_calls == [(999, 4), (749, 3), (500, 2), (250, 1), (0, 0)]
    assert_close(got, expected)
    plain = ours("spaced", "eps", 5, 2.0, 29)
    assert (got - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["ddim", "dpm++_m2", "edm_dpm++_3m_sde"])
def test_other_samplers_do_not_call_cond_fn(name):
    def cond_fn(x0, t, index):
        raise AssertionError("called")

    cond, uncond = make_conds()
    kw = {"steps": 4, "betas": diffbir_betas(False), "parameterization": "eps", "cond": cond, "uncond": uncond, "cfg_scale": 2.0}
    got = sample(name, MODELS["eps"], None, SHAPE, generator=torch.Generator().manual_seed(1), cond_fn=cond_fn, **kw)
    assert torch.equal(got, sample(name, MODELS["eps"], None, SHAPE, generator=torch.Generator().manual_seed(1), **kw))


STOCHASTIC = ["spaced", "edm_euler_a", "edm_dpm_2_a", "edm_dpm++_2s_a", "edm_dpm++_sde", "edm_dpm++_2m_sde",
              "edm_dpm++_3m_sde"]


@pytest.mark.parametrize("name", STOCHASTIC + ["edm_euler", "edm_heun", "edm_dpm_2"])
def test_seed_changes_stochastic_samplers(name):
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    opts = CHURN if name in ("edm_euler", "edm_heun", "edm_dpm_2") else {}
    a = ours(name, "eps", 6, 3.0, 1, x_T=x_T.clone(), **opts)
    b = ours(name, "eps", 6, 3.0, 2, x_T=x_T.clone(), **opts)
    again = ours(name, "eps", 6, 3.0, 1, x_T=x_T.clone(), **opts)
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(a, again)


@pytest.mark.parametrize("name", ["ddim", "dpm++_m2", "edm_dpm++_2m", "edm_lms", "edm_euler"])
def test_deterministic_samplers_ignore_seed_but_not_x_T(name):
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    a = ours(name, "eps", 6, 3.0, 1, x_T=x_T.clone())
    b = ours(name, "eps", 6, 3.0, 2, x_T=x_T.clone())
    assert torch.equal(a, b)
    assert (ours(name, "eps", 6, 3.0, 1) - ours(name, "eps", 6, 3.0, 2)).abs().max() > 1e-3


def test_bad_options_are_clear_errors():
    cond, uncond = make_conds()
    kw = {"betas": diffbir_betas(), "parameterization": "eps", "cond": cond, "uncond": uncond, "cfg_scale": 1.0}
    with pytest.raises(RestoreKitError, match="unknown sampler"):
        sample("euler", MODELS["eps"], None, SHAPE, steps=4, **kw)
    with pytest.raises(RestoreKitError, match="steps"):
        sample("spaced", MODELS["eps"], None, SHAPE, steps=0, **kw)
    with pytest.raises(RestoreKitError, match="ddim"):
        sample("ddim", MODELS["eps"], None, SHAPE, steps=3, **kw)  # official: index 1000 out of range
    with pytest.raises(RestoreKitError, match="parameterization"):
        sample("spaced", MODELS["eps"], None, SHAPE, steps=4, **{**kw, "parameterization": "x0"})
