"""Official DiffBIR / Stable Diffusion checkpoints (ldm naming) -> diffusers modules.

The key mapping itself is diffusers' (``diffusers.loaders.single_file_utils``):
``convert_controlnet_checkpoint`` for the IRControlNet (stand-alone ControlNet
state dicts, or ``control_model.*`` only), ``convert_ldm_unet_checkpoint`` /
``convert_ldm_vae_checkpoint`` for SD 2.1-base; the OpenCLIP text tower is
mapped by :mod:`.text` (transformers 5 naming). :func:`controlnet_to_ldm` and
:func:`unet_to_ldm` / :func:`vae_to_ldm` are the inverses (export, and the round-trip tests).
"""

from __future__ import annotations


# Stable Diffusion 2.1-base as diffusers configures it (stabilityai/stable-diffusion-2-1-base)
SD21_UNET = dict(sample_size=64, in_channels=4, out_channels=4,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=1024,
                 attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
SD21_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                scaling_factor=0.18215)
SD21_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                 num_hidden_layers=23, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)


def controlnet_from_ldm(sd: dict, config: dict) -> dict:
    """DiffBIR ControlNet state dict (any version) -> diffusers IRControlNet state dict."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    if any(k.startswith("control_model.") for k in sd):
        sd = {k[len("control_model."):]: v for k, v in sd.items() if k.startswith("control_model.")}
    out = convert_controlnet_checkpoint(sd, dict(config))
    return {k: v for k, v in out.items() if v is not None}


_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def _rename(sd, out, src_prefix, dst_prefix, pairs=()):
    for k, v in sd.items():
        if k.startswith(src_prefix + "."):
            rest = k[len(src_prefix) + 1:]
            for a, b in pairs:
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
                    break
            out[f"{dst_prefix}.{rest}"] = v


def _down_and_mid_to_ldm(sd: dict, out: dict, config: dict) -> int:
    """Encoder half (input_blocks) and middle block, shared by the UNet and the ControlNet; returns #input blocks."""
    n_levels = len(config["block_out_channels"])
    lpb = config["layers_per_block"]
    idx = 1
    for b in range(n_levels):
        for j in range(lpb):
            _rename(sd, out, f"down_blocks.{b}.resnets.{j}", f"input_blocks.{idx}.0", _RESNET)
            _rename(sd, out, f"down_blocks.{b}.attentions.{j}", f"input_blocks.{idx}.1")
            idx += 1
        if b < n_levels - 1:
            _rename(sd, out, f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{idx}.0.op")
            idx += 1
    _rename(sd, out, "mid_block.resnets.0", "middle_block.0", _RESNET)
    _rename(sd, out, "mid_block.attentions.0", "middle_block.1")
    _rename(sd, out, "mid_block.resnets.1", "middle_block.2", _RESNET)
    return idx


def _copy(sd: dict, out: dict, maps: dict) -> None:
    for d, l in maps.items():
        for p in ("weight", "bias"):
            if f"{d}.{p}" in sd:
                out[f"{l}.{p}"] = sd[f"{d}.{p}"]


def controlnet_to_ldm(sd: dict, config: dict) -> dict:
    """diffusers IRControlNet state dict -> DiffBIR's ldm naming (``input_blocks``, ``zero_convs``, ...)."""
    out = {}
    _copy(sd, out, {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                    "conv_in": "input_blocks.0.0", "controlnet_mid_block": "middle_block_out.0"})
    n_in = _down_and_mid_to_ldm(sd, out, config)
    for i in range(n_in):
        _rename(sd, out, f"controlnet_down_blocks.{i}", f"zero_convs.{i}.0")
    return out


def unet_to_ldm(sd: dict, config: dict) -> dict:
    """diffusers UNet2DConditionModel state dict -> ldm naming (without the ``model.diffusion_model.`` prefix)."""
    out = {}
    _copy(sd, out, {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"})
    _down_and_mid_to_ldm(sd, out, config)
    n_levels = len(config["block_out_channels"])
    lpb = config["layers_per_block"]
    for b in range(n_levels):
        for j in range(lpb + 1):
            i = b * (lpb + 1) + j
            _rename(sd, out, f"up_blocks.{b}.resnets.{j}", f"output_blocks.{i}.0", _RESNET)
            has_attn = any(k.startswith(f"up_blocks.{b}.attentions.{j}.") for k in sd)
            _rename(sd, out, f"up_blocks.{b}.attentions.{j}", f"output_blocks.{i}.1")
            if j == lpb and b < n_levels - 1:
                _rename(sd, out, f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{i}.{2 if has_attn else 1}.conv")
    return out


_VAE_RESNET = [("conv_shortcut", "nin_shortcut")]
_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def vae_to_ldm(sd: dict, config: dict) -> dict:
    """diffusers AutoencoderKL state dict -> ldm naming (without the ``first_stage_model.`` prefix)."""
    out = {}
    _copy(sd, out, {f"{part}.{a}": f"{part}.{b}" for part in ("encoder", "decoder")
                    for a, b in (("conv_in", "conv_in"), ("conv_out", "conv_out"), ("conv_norm_out", "norm_out"))})
    _copy(sd, out, {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"})
    n = len(config["down_block_types"])
    for i in range(n):
        for j in range(config.get("layers_per_block", 2) + 1):
            _rename(sd, out, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", _VAE_RESNET)
            _rename(sd, out, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{n - 1 - i}.block.{j}", _VAE_RESNET)
        _rename(sd, out, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
        _rename(sd, out, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n - 1 - i}.upsample.conv")
    for part in ("encoder", "decoder"):
        for k in (0, 1):
            _rename(sd, out, f"{part}.mid_block.resnets.{k}", f"{part}.mid.block_{k + 1}", _VAE_RESNET)
        attn = {}
        _rename(sd, attn, f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1")
        for k, v in attn.items():
            for a, b in _VAE_ATTN:
                k = k.replace(f".attn_1.{a}.", f".attn_1.{b}.")
            out[k] = v[..., None, None] if v.ndim == 2 else v  # ldm uses 1x1 convs
    return out


def sd_from_ldm(ckpt: dict, unet_config: dict | None = None, vae_config: dict | None = None,
                text_encoder=None) -> tuple[dict, dict, dict | None]:
    """(UNet, VAE, text encoder) diffusers state dicts from an SD 2.x ldm checkpoint (``v2-1_512-ema-pruned.ckpt``)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from .text import openclip_text_to_transformers

    unet = convert_ldm_unet_checkpoint(ckpt, dict(unet_config or SD21_UNET))
    vae = {}
    if any(k.startswith("first_stage_model.") for k in ckpt):
        vae = convert_ldm_vae_checkpoint(ckpt, dict(vae_config or SD21_VAE))
    text = None
    if text_encoder is not None and any(k.startswith("cond_stage_model.model.") for k in ckpt):
        text = openclip_text_to_transformers(ckpt, text_encoder, "the checkpoint")[0]
    return unet, vae, text
