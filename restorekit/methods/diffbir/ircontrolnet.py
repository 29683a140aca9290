"""IRControlNet on diffusers: a ControlNetModel whose condition is the VAE latent of the stage-1 image,
concatenated with the noisy latent at the input convolution (no hint encoder), as DiffBIR's ControlNet."""

from __future__ import annotations

import torch
from diffusers import ControlNetModel, UNet2DConditionModel


class _NoHintEncoder(torch.nn.Module):
    """Stands in for ControlNetModel's hint encoder: the condition already went in through conv_in."""

    def forward(self, cond):
        return 0.0


class IRControlNet(ControlNetModel):
    """``forward(sample, timestep, encoder_hidden_states, cond_latent)`` -> (down residuals, mid residual).

    ``in_channels`` is the noisy latent's channels plus the condition latent's (4 + 4 for Stable Diffusion).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controlnet_cond_embedding = _NoHintEncoder()

    def forward(self, sample, timestep, encoder_hidden_states, cond_latent, conditioning_scale: float = 1.0,
                return_dict: bool = False, **kwargs):
        x = torch.cat([sample, cond_latent.to(sample.dtype)], dim=1)
        return super().forward(x, timestep, encoder_hidden_states, controlnet_cond=cond_latent,
                               conditioning_scale=conditioning_scale, return_dict=return_dict, **kwargs)

    @classmethod
    def from_unet_config(cls, unet: UNet2DConditionModel, cond_channels: int = 4) -> IRControlNet:
        """An IRControlNet shaped like ``unet`` (DiffBIR initialises it from the UNet's weights)."""
        c = unet.config
        net = cls(in_channels=c.in_channels + cond_channels, down_block_types=c.down_block_types,
                  block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
                  cross_attention_dim=c.cross_attention_dim, attention_head_dim=c.attention_head_dim,
                  use_linear_projection=c.use_linear_projection, norm_num_groups=c.norm_num_groups,
                  upcast_attention=c.upcast_attention)
        return net

    @torch.no_grad()
    def init_from_unet(self, unet: UNet2DConditionModel) -> None:
        """DiffBIR's ``load_controlnet_from_unet``: copy matching weights; conv_in gets zero columns for the condition."""
        own = self.state_dict()
        src = unet.state_dict()
        for k, v in own.items():
            if k in src and src[k].shape == v.shape:
                v.copy_(src[k])
            elif k in src and k == "conv_in.weight":
                v.zero_()
                v[:, : src[k].shape[1]] = src[k]
