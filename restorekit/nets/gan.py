"""GAN-stage networks and losses of the DiffIR RealSR / SRGAN recipes (BasicSR / Real-ESRGAN definitions).

* :class:`UNetDiscriminatorSN` -- Real-ESRGAN's U-Net discriminator with spectral normalisation
  (``torch.nn.utils.spectral_norm``, so the state dict has BasicSR's ``convN.weight_orig/_u/_v`` keys and an
  official ``net_d_*.pth`` loads strictly).
* :class:`VGGFeatureExtractor` / :class:`PerceptualLoss` -- VGG features before ReLU (``conv1_2`` ... ``conv5_4``),
  ImageNet input normalisation, weighted L1/L2/Frobenius distances and the Gram-matrix style term.
  The VGG weights are torchvision's ImageNet file (``vgg19-dcbb9e9d.pth``), found through restorekit.weights.
* :class:`GANLoss` -- vanilla (BCE with logits), lsgan, wgan, wgan_softplus and hinge; ``loss_weight`` applies to
  the generator term only.
* :class:`USMSharp` and :func:`filter2D` -- unsharp masking of the ground truth (radius 50 -> 51x51 Gaussian,
  weight 0.5, threshold 10/255, soft mask).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


class UNetDiscriminatorSN(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True):
        super().__init__()
        self.skip_connection = skip_connection
        f = num_feat
        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        self.conv1 = spectral_norm(nn.Conv2d(f, f * 2, 4, 2, 1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(f * 2, f * 4, 4, 2, 1, bias=False))
        self.conv3 = spectral_norm(nn.Conv2d(f * 4, f * 8, 4, 2, 1, bias=False))
        self.conv4 = spectral_norm(nn.Conv2d(f * 8, f * 4, 3, 1, 1, bias=False))
        self.conv5 = spectral_norm(nn.Conv2d(f * 4, f * 2, 3, 1, 1, bias=False))
        self.conv6 = spectral_norm(nn.Conv2d(f * 2, f, 3, 1, 1, bias=False))
        self.conv7 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv8 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x):
        act = lambda t: F.leaky_relu(t, 0.2)
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        x4 = act(self.conv4(up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))
        if self.skip_connection:
            x6 = x6 + x0
        out = act(self.conv7(x6))
        out = act(self.conv8(out))
        return self.conv9(out)


# ---------------------------------------------------------------------------
# VGG perceptual loss
# ---------------------------------------------------------------------------

_VGG_CFG = {
    "vgg11": [1, 1, 2, 2, 2],
    "vgg13": [2, 2, 2, 2, 2],
    "vgg16": [2, 2, 3, 3, 3],
    "vgg19": [2, 2, 4, 4, 4],
}
_VGG_WIDTHS = [64, 128, 256, 512, 512]
#: torchvision ImageNet weights (file name carries the first 8 hex digits of the SHA-256)
VGG_FILES = {"vgg19": "vgg19-dcbb9e9d.pth", "vgg16": "vgg16-397923af.pth", "vgg13": "vgg13-c768596a.pth",
             "vgg11": "vgg11-bbd30ac9.pth"}


def vgg_layer_names(vgg_type: str) -> list[str]:
    """BasicSR's names of the ``features`` layers (conv1_1, relu1_1, ..., pool5)."""
    names = []
    for b, n in enumerate(_VGG_CFG[vgg_type], start=1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return names


def vgg_features(vgg_type: str) -> nn.Sequential:
    """torchvision's ``vgg*.features`` layout (same indices, so its state dict keys ``<i>.weight`` fit)."""
    layers, cin = [], 3
    for n, width in zip(_VGG_CFG[vgg_type], _VGG_WIDTHS):
        for _ in range(n):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=False)]
            cin = width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def load_vgg_weights(features: nn.Sequential, path, vgg_type: str = "vgg19") -> None:
    """Load a torchvision ImageNet VGG file (``features.*`` + ``classifier.*``) into ``features``.

    The classifier is not part of the feature extractor; any other key is an error."""
    from ..errors import WeightsError
    from ..weights import load_state_dict, load_strict

    sd, _ = load_state_dict(path)
    other = [k for k in sd if not k.startswith(("features.", "classifier."))]
    if other:
        raise WeightsError(f"{path} is not a torchvision {vgg_type} state dict (unexpected keys {other[:3]})")
    load_strict(features, {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}, str(path))


def vgg_card(vgg_type: str = "vgg19"):
    from ..weights import ModelCard

    fname = VGG_FILES[vgg_type]
    return ModelCard(name=f"{vgg_type}-imagenet", method="diffir", filename=fname,
                     description=f"torchvision ImageNet {vgg_type} (perceptual loss of the DiffIR GAN stage)",
                     sources=[f"https://download.pytorch.org/models/{fname}"])


class VGGFeatureExtractor(nn.Module):
    """Features named in ``layer_name_list`` (e.g. ``conv5_4``: before its ReLU); frozen, eval mode.

    ``weights``: a torchvision VGG file, ``None`` to fetch it through restorekit.weights, or ``"random"``
    (tests)."""

    def __init__(self, layer_name_list, vgg_type: str = "vgg19", use_input_norm: bool = True,
                 range_norm: bool = False, weights=None, remove_pooling: bool = False, pooling_stride: int = 2):
        super().__init__()
        self.layer_name_list = list(layer_name_list)
        self.use_input_norm, self.range_norm = use_input_norm, range_norm
        names = vgg_layer_names(vgg_type)
        unknown = [n for n in self.layer_name_list if n not in names]
        if unknown:
            raise ValueError(f"unknown {vgg_type} layers {unknown}; known: {names}")
        full = vgg_features(vgg_type)
        if weights != "random":
            if weights is None:
                from ..weights import resolve_card

                weights = resolve_card(vgg_card(vgg_type))
                from ..errors import WeightsError
                from ..weights import sha256_file

                prefix = VGG_FILES[vgg_type].rsplit("-", 1)[1].split(".")[0]
                if not sha256_file(weights).startswith(prefix):
                    raise WeightsError(f"{weights}: SHA-256 does not start with {prefix} (torchvision's published "
                                       f"prefix); the file is corrupt or another version")
            load_vgg_weights(full, weights, vgg_type)
        last = max(names.index(n) for n in self.layer_name_list)
        mods = {}
        for name, layer in zip(names[: last + 1], list(full)[: last + 1]):
            if name.startswith("pool"):
                if remove_pooling:
                    continue
                layer = nn.MaxPool2d(2, pooling_stride)
            mods[name] = layer
        self.vgg_net = nn.Sequential()
        for name, layer in mods.items():
            self.vgg_net.add_module(name, layer)
        self.vgg_net.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True):
        super().train(mode)
        self.vgg_net.eval()  # always frozen
        return self

    def forward(self, x):
        if self.range_norm:
            x = (x + 1) / 2
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        out = {}
        for name, layer in self.vgg_net.named_children():
            x = layer(x)
            if name in self.layer_name_list:
                out[name] = x
        return out


class PerceptualLoss(nn.Module):
    """BasicSR's PerceptualLoss: returns (perceptual, style); either is ``None`` when its weight is 0."""

    def __init__(self, layer_weights: dict, vgg_type: str = "vgg19", use_input_norm: bool = True,
                 range_norm: bool = False, perceptual_weight: float = 1.0, style_weight: float = 0.0,
                 criterion: str = "l1", weights=None):
        super().__init__()
        if criterion not in ("l1", "l2", "fro"):
            raise ValueError(f"perceptual criterion {criterion!r} is not l1, l2 or fro")
        self.layer_weights = dict(layer_weights)
        self.perceptual_weight, self.style_weight, self.criterion = perceptual_weight, style_weight, criterion
        self.vgg = VGGFeatureExtractor(list(self.layer_weights), vgg_type, use_input_norm, range_norm, weights)

    def _dist(self, a, b):
        if self.criterion == "fro":
            return torch.norm(a - b, p="fro")
        return F.l1_loss(a, b) if self.criterion == "l1" else F.mse_loss(a, b)

    @staticmethod
    def gram(x):
        n, c, h, w = x.shape
        f = x.reshape(n, c, h * w)
        return f @ f.transpose(1, 2) / (c * h * w)

    def forward(self, x, gt):
        fx, fg = self.vgg(x), self.vgg(gt.detach())
        percep = style = None
        if self.perceptual_weight > 0:
            percep = sum(self._dist(fx[k], fg[k]) * self.layer_weights[k] for k in fx) * self.perceptual_weight
        if self.style_weight > 0:
            style = sum(self._dist(self.gram(fx[k]), self.gram(fg[k])) * self.layer_weights[k]
                        for k in fx) * self.style_weight
        return percep, style


class GANLoss(nn.Module):
    def __init__(self, gan_type: str = "vanilla", real_label_val: float = 1.0, fake_label_val: float = 0.0,
                 loss_weight: float = 1.0):
        super().__init__()
        if gan_type not in ("vanilla", "lsgan", "wgan", "wgan_softplus", "hinge"):
            raise ValueError(f"GAN type {gan_type!r} is not vanilla, lsgan, wgan, wgan_softplus or hinge")
        self.gan_type, self.loss_weight = gan_type, loss_weight
        self.real_label_val, self.fake_label_val = real_label_val, fake_label_val

    def forward(self, pred, target_is_real: bool, is_disc: bool = False):
        t = self.gan_type
        if t == "hinge":
            if is_disc:
                loss = F.relu(1 + (-pred if target_is_real else pred)).mean()
            else:
                loss = -pred.mean()
        elif t == "wgan":
            loss = -pred.mean() if target_is_real else pred.mean()
        elif t == "wgan_softplus":
            loss = F.softplus(-pred).mean() if target_is_real else F.softplus(pred).mean()
        else:
            label = torch.full_like(pred, self.real_label_val if target_is_real else self.fake_label_val)
            loss = F.binary_cross_entropy_with_logits(pred, label) if t == "vanilla" else F.mse_loss(pred, label)
        return loss if is_disc else loss * self.loss_weight


# ---------------------------------------------------------------------------
# USM sharpening
# ---------------------------------------------------------------------------


def gaussian_kernel_1d(ksize: int, sigma: float = 0.0) -> np.ndarray:
    """OpenCV's ``getGaussianKernel`` for ksize > 7 (sigma <= 0 -> 0.3 ((ksize - 1) / 2 - 1) + 0.8)."""
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    k = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def filter2D(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Reflect-pad by k // 2 and convolve each channel; ``kernel`` is (1, k, k) (shared) or (B, k, k)."""
    k = kernel.shape[-1]
    if k % 2 != 1:
        raise ValueError("filter2D needs an odd kernel size")
    b, c, h, w = img.shape
    x = F.pad(img, (k // 2,) * 4, mode="reflect")
    ph, pw = x.shape[-2:]
    if kernel.shape[0] == 1:
        return F.conv2d(x.reshape(b * c, 1, ph, pw), kernel.reshape(1, 1, k, k)).reshape(b, c, h, w)
    kk = kernel.reshape(b, 1, k, k).repeat(1, c, 1, 1).reshape(b * c, 1, k, k)
    return F.conv2d(x.reshape(1, b * c, ph, pw), kk, groups=b * c).reshape(b, c, h, w)


class USMSharp(nn.Module):
    def __init__(self, radius: int = 50, sigma: float = 0.0):
        super().__init__()
        if radius % 2 == 0:
            radius += 1
        k1 = gaussian_kernel_1d(radius, sigma)
        self.register_buffer("kernel", torch.from_numpy(np.outer(k1, k1)).float()[None])

    def forward(self, img, weight: float = 0.5, threshold: float = 10):
        blur = filter2D(img, self.kernel)
        residual = img - blur
        mask = ((residual.abs() * 255) > threshold).float()
        soft = filter2D(mask, self.kernel)
        sharp = (img + weight * residual).clamp(0, 1)
        return soft * sharp + (1 - soft) * img
