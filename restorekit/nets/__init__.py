from .guided_unet import FFHQ_10M, IMAGENET_256_UNCOND, GuidedUNet, GuidedUNetConfig

__all__ = ["GuidedUNet", "GuidedUNetConfig", "FFHQ_10M", "IMAGENET_256_UNCOND"]
