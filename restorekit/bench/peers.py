"""Peer implementations as sweep methods: deepinv's DiffPIR and DPS with the same prior weights as restorekit's
DiffPIR (optional: the methods are skipped when deepinv is not installed).

* ``deepinv-diffpir``: ``deepinv.sampling.DiffPIR`` (its own loop, schedule and data step, solved by deepinv's
  proximal operator of the L2 fidelity), with restorekit's per-task ``lambda_``/``zeta`` defaults unless the
  method's ``options`` say otherwise; the start point is restorekit's (bicubic upscale for SR, the masked
  observation for inpainting, the observation otherwise).
* ``deepinv-dps``: ``deepinv.sampling.DPS`` (DDPM solver, ``weight`` option, default 1.0).

The prior: weights in the official guided-diffusion FFHQ / ImageNet layouts load (strictly) into deepinv's own
``DiffUNet``; other guided-diffusion UNets (the bundled demo prior) run as restorekit's ``GuidedUNet`` inside
deepinv's ``DiffUNet`` wrapper, so that deepinv's noise-level-to-timestep mapping and denoiser are used.
The degradation is restorekit's operator (forward and adjoint) as a ``deepinv.physics.LinearPhysics``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import RestoreKitError, TaskError


def deepinv_available() -> bool:
    try:
        import deepinv  # noqa: F401
    except ImportError:
        return False
    return True


def _load_unet(weights, device):
    from ..methods.diffpir import DiffPIR

    r = DiffPIR.from_pretrained(weights, device="cpu")
    return r.unet.float()


def deepinv_denoiser(unet, device):
    """A ``deepinv.models.DiffUNet`` with the weights of restorekit's ``GuidedUNet`` ``unet``."""
    from deepinv.models import DiffUNet

    from ..nets import FFHQ_10M, IMAGENET_256_UNCOND

    cfg = unet.config
    for preset, large in ((FFHQ_10M, False), (IMAGENET_256_UNCOND, True)):
        if cfg == preset:
            model = DiffUNet(large_model=large, pretrained=None)
            sd = model.state_dict()
            theirs = set(sd) - set(unet.state_dict())  # deepinv's two schedule buffers
            if theirs - {"sqrt_1m_alphas_cumprod", "sqrt_alphas_cumprod"} or set(unet.state_dict()) - set(sd):
                raise RestoreKitError("deepinv's DiffUNet and restorekit's GuidedUNet disagree on the weight names")
            sd.update(unet.state_dict())
            model.load_state_dict(sd, strict=True)
            return model.to(device).eval()
    return _GuidedInDiffUNet(unet).to(device).eval()


def _guided_class():
    from deepinv.models import DiffUNet

    class GuidedInDiffUNet(DiffUNet):
        """deepinv's ``DiffUNet`` (forward, forward_denoise, schedule) around another guided-diffusion UNet."""

        def __init__(self, unet):
            torch.nn.Module.__init__(self)
            self.net = unet
            self.model_channels = unet.config.model_channels
            self.num_classes = None
            self.dtype = torch.float32
            s1m, s = self.get_alpha_prod()[-2:]
            self.register_buffer("sqrt_1m_alphas_cumprod", s1m)
            self.register_buffer("sqrt_alphas_cumprod", s)

        def forward_diffusion(self, x, timesteps, y=None):
            return self.net(x, timesteps)

    return GuidedInDiffUNet


def _GuidedInDiffUNet(unet):
    return _guided_class()(unet)


def _physics(op, sigma: float, device):
    import deepinv as dinv

    return dinv.physics.LinearPhysics(A=op.forward, A_adjoint=op.adjoint,
                                      noise_model=dinv.physics.GaussianNoise(sigma=sigma), device=device)


def _x_init(y, task, op):
    if task == "sr":
        H, W = op.input_size(*y.shape[-2:])
        return F.interpolate(y, size=(H, W), mode="bicubic", align_corners=False)
    if task == "inpaint":
        return y * op.mask.to(y)
    return y


class _Peer:
    name = ""
    tasks: tuple = ()
    options: tuple = ()  # the method options it takes (checked before a sweep runs)
    needs_grad = False

    def __init__(self, model, device):
        self.model = model
        self.device = device
        self.calls = 0
        fwd = model.forward_diffusion

        def counted(*a, **k):
            self.calls += 1
            return fwd(*a, **k)

        model.forward_diffusion = counted

    @classmethod
    def available(cls) -> bool:
        return deepinv_available()

    @classmethod
    def from_pretrained(cls, weights=None, device=None):
        if not deepinv_available():
            raise RestoreKitError(f"{cls.name} needs deepinv: pip install deepinv")
        device = torch.device(device or "cpu")
        return cls(deepinv_denoiser(_load_unet(weights or "diffpir-demo", device), device), device)

    def restore_tensor(self, y, task, operator=None, steps=None, seed=None, progress=None, noise_level=0.0,
                       scale=4, **options):
        if task not in self.tasks:
            raise TaskError(f"{self.name} does not do {task!r}")
        if operator is None:
            raise TaskError(f"{self.name} needs the task's operator")
        sigma = max(float(noise_level), 1e-3)  # as DiffPIR's rho_t floor
        y = y.to(self.device, torch.float32)
        physics = _physics(operator, sigma, self.device)
        self.calls = 0
        torch.manual_seed(0 if seed is None else int(seed))  # deepinv's DiffPIR skips seeding for seed 0
        out = self._run(y, task, operator, physics, int(steps or 20), sigma, seed, options)
        if progress is not None:
            progress(self.calls, self.calls, 0)
        return out.detach().clamp(0, 1)


class DeepinvDiffPIR(_Peer):
    name = "deepinv-diffpir"
    tasks = ("deblur", "sr", "inpaint", "denoise")
    options = ("lambda_", "zeta")

    def _run(self, y, task, op, physics, steps, sigma, seed, options):
        import deepinv as dinv

        from ..methods.diffpir.sampler import TASK_DEFAULTS

        d = TASK_DEFAULTS.get(task, TASK_DEFAULTS["deblur"])
        unknown = set(options) - {"lambda_", "zeta"}
        if unknown:
            raise TaskError(f"{self.name}: unknown options {sorted(unknown)} (lambda_, zeta)")
        s = dinv.sampling.DiffPIR(self.model, data_fidelity=dinv.optim.data_fidelity.L2(), sigma=sigma,
                                  max_iter=steps, zeta=float(options.get("zeta", d["zeta"])),
                                  lambda_=float(options.get("lambda_", d["lambda_"])), device=self.device)
        with torch.no_grad():
            return s(y, physics, x_init=_x_init(y, task, op))


class DeepinvDPS(_Peer):
    name = "deepinv-dps"
    tasks = ("deblur", "sr", "inpaint", "denoise")
    options = ("weight",)

    def _run(self, y, task, op, physics, steps, sigma, seed, options):
        import deepinv as dinv

        unknown = set(options) - {"weight"}
        if unknown:
            raise TaskError(f"{self.name}: unknown options {sorted(unknown)} (weight)")
        s = dinv.sampling.DPS(self.model, num_steps=steps, weight=float(options.get("weight", 1.0)),
                              device=self.device, dtype=torch.float32)
        H, W = op.input_size(*y.shape[-2:])
        with torch.enable_grad():
            return s(y, physics, x_init=(y.shape[0], y.shape[1], H, W), seed=0 if seed is None else int(seed))


PEERS = {c.name: c for c in (DeepinvDiffPIR, DeepinvDPS)}


def get_bench_method(name: str):
    """A peer method of this module, or a registered restorekit method."""
    if name in PEERS:
        return PEERS[name]
    from ..registry import get_method

    return get_method(name)
