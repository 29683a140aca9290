"""DDPM noise schedules shared by the methods."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class LinearSchedule:
    """Linear betas ``beta_start..beta_end`` over ``T`` steps (DDPM / ADM "linear").

    Two precisions are kept on purpose, mirroring the official DiffPIR code:
    the guided-diffusion model wrapper derives x0 from epsilon with float64
    coefficients, while DiffPIR's own loop (rho_t, the x_{t-1} update) uses
    float32 ``alphas_cumprod``.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    # float32 quantities of the DiffPIR loop --------------------------------
    @property
    def betas(self) -> torch.Tensor:
        return torch.from_numpy(np.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=np.float32))

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)

    @property
    def sqrt_alphas_cumprod(self) -> torch.Tensor:
        return torch.sqrt(self.alphas_cumprod)

    @property
    def sqrt_1m_alphas_cumprod(self) -> torch.Tensor:
        return torch.sqrt(1.0 - self.alphas_cumprod)

    @property
    def reduced_alpha_cumprod(self) -> torch.Tensor:
        """``sigmabar_t = sqrt(1 - abar_t) / sqrt(abar_t)``: equivalent noise std on the image."""
        return self.sqrt_1m_alphas_cumprod / self.sqrt_alphas_cumprod

    # float64 quantities of the guided-diffusion model wrapper ---------------
    def x0_coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(1/abar_t), sqrt(1/abar_t - 1)) in float64 for x0 = a x_t - b eps."""
        betas = np.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=np.float64)
        ac = np.cumprod(1.0 - betas)
        return torch.from_numpy(np.sqrt(1.0 / ac)), torch.from_numpy(np.sqrt(1.0 / ac - 1))
