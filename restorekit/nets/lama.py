"""LaMa's inpainting losses and discriminator, as DiffIR-inpainting trains with them.

* :class:`NLayerDiscriminator` -- pix2pixHD's PatchGAN (``model0`` ... ``model<n+1>``), returning the score map
  and the intermediate activations (for feature matching); official parameter names.
* :class:`NonSaturatingWithR1` -- softplus GAN losses with the R1 gradient penalty on real images, the mask as
  fake target (``mask_as_fake_target``) and mask rescaling to the score-map size (``allow_scale_mask``).
* :func:`feature_matching_loss`, :func:`masked_l1_loss`.
* :class:`ResNetPL` -- the "high receptive field" perceptual loss: MSE between the four stage outputs of ADE20k's
  dilated ResNet-50 encoder (``resnet50dilated``, deep stem, dilation 2 / 4 in layers 3 / 4), summed, times
  ``weight``. Weights: ``ade20k-resnet50dilated-ppm/encoder_epoch_20.pth`` (MIT CSAIL), through
  restorekit.weights, loaded strictly except that missing BatchNorm ``num_batches_tracked`` counters (absent
  from pre-0.4.1 files, unused in eval mode) are set to 0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 4):
        super().__init__()
        self.n_layers = n_layers
        kw, pad = 4, int(np.ceil((4 - 1.0) / 2))
        blocks = [[nn.Conv2d(input_nc, ndf, kw, 2, pad), nn.LeakyReLU(0.2)]]
        nf = ndf
        for _ in range(1, n_layers):
            prev, nf = nf, min(nf * 2, 512)
            blocks.append([nn.Conv2d(prev, nf, kw, 2, pad), nn.BatchNorm2d(nf), nn.LeakyReLU(0.2)])
        prev, nf = nf, min(nf * 2, 512)
        blocks.append([nn.Conv2d(prev, nf, kw, 1, pad), nn.BatchNorm2d(nf), nn.LeakyReLU(0.2)])
        blocks.append([nn.Conv2d(nf, 1, kw, 1, pad)])
        for i, b in enumerate(blocks):
            setattr(self, f"model{i}", nn.Sequential(*b))

    def forward(self, x):
        acts = []
        for i in range(self.n_layers + 2):
            x = getattr(self, f"model{i}")(x)
            acts.append(x)
        return acts[-1], acts[:-1]


def masked_l1_loss(pred, target, mask, weight_known: float, weight_missing: float):
    w = mask * weight_missing + (1 - mask) * weight_known
    return (w * (pred - target).abs()).mean()


def feature_matching_loss(fake_features, target_features, mask=None):
    if mask is None:
        return torch.stack([F.mse_loss(f, t) for f, t in zip(fake_features, target_features)]).mean()
    total = 0
    for f, t in zip(fake_features, target_features):
        m = F.interpolate(mask, size=f.shape[-2:], mode="bilinear", align_corners=False)
        total = total + ((f - t).pow(2) * (1 - m)).mean()
    return total / len(fake_features)


class NonSaturatingWithR1:
    """LaMa's adversarial loss ``kind: r1``. Call :meth:`discriminator_loss` with ``real`` requiring grad
    (the R1 penalty differentiates the real scores with respect to it)."""

    def __init__(self, gp_coef: float = 5, weight: float = 1, mask_as_fake_target: bool = False,
                 allow_scale_mask: bool = False, mask_scale_mode: str = "nearest",
                 extra_mask_weight_for_gen: float = 0, use_unmasked_for_gen: bool = True,
                 use_unmasked_for_discr: bool = True):
        if not (use_unmasked_for_gen or not use_unmasked_for_discr):
            raise ValueError("use_unmasked_for_discr needs use_unmasked_for_gen")
        if not (use_unmasked_for_discr or not mask_as_fake_target):
            raise ValueError("mask_as_fake_target needs use_unmasked_for_discr")
        self.gp_coef, self.weight = gp_coef, weight
        self.mask_as_fake_target, self.allow_scale_mask = mask_as_fake_target, allow_scale_mask
        self.mask_scale_mode, self.extra_mask_weight_for_gen = mask_scale_mode, extra_mask_weight_for_gen
        self.use_unmasked_for_gen, self.use_unmasked_for_discr = use_unmasked_for_gen, use_unmasked_for_discr

    def _mask(self, mask, shape):
        if tuple(shape) != tuple(mask.shape[-2:]):
            if not self.allow_scale_mask:
                raise ValueError(f"mask {tuple(mask.shape[-2:])} does not match the scores {tuple(shape)} "
                                 f"(set allow_scale_mask)")
            if self.mask_scale_mode == "maxpool":
                return F.adaptive_max_pool2d(mask, shape)
            return F.interpolate(mask, size=shape, mode=self.mask_scale_mode)
        return mask

    def generator_loss(self, fake_pred, mask=None):
        loss = F.softplus(-fake_pred)
        if (self.mask_as_fake_target and self.extra_mask_weight_for_gen > 0) or not self.use_unmasked_for_gen:
            m = self._mask(mask, fake_pred.shape[-2:])
            loss = loss * m if not self.use_unmasked_for_gen else loss * (1 + m * self.extra_mask_weight_for_gen)
        return loss.mean() * self.weight

    def discriminator_loss(self, real, real_pred, fake_pred, mask=None):
        real_loss = F.softplus(-real_pred)
        if torch.is_grad_enabled():
            g, = torch.autograd.grad(real_pred.sum(), real, create_graph=True)
            gp = (g.reshape(g.shape[0], -1).norm(2, dim=1) ** 2).mean()
        else:
            gp = 0
        fake_loss = F.softplus(fake_pred)
        if not self.use_unmasked_for_discr or self.mask_as_fake_target:
            m = self._mask(mask, fake_pred.shape[-2:])
            fake_loss = fake_loss * m
            if self.mask_as_fake_target:
                fake_loss = fake_loss + (1 - m) * F.softplus(-fake_pred)
        return (real_loss + gp * self.gp_coef + fake_loss).mean()


# ---------------------------------------------------------------------------
# ResNetPL: ADE20k dilated ResNet-50 encoder
# ---------------------------------------------------------------------------


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResnetDilated(nn.Module):
    """ADE20k's ``resnet50dilated`` encoder (dilate_scale 8); ``forward`` returns the layer1..layer4 outputs."""

    def __init__(self, layers=(3, 4, 6, 3)):
        super().__init__()

        def cbr(cin, cout, stride=1):
            return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)

        self.conv1, self.bn1 = cbr(3, 64, 2), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = cbr(64, 64), nn.BatchNorm2d(64)
        self.conv3, self.bn3 = cbr(64, 128), nn.BatchNorm2d(128)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 128
        # (planes, blocks, stride of the first block, dilation of its 3x3 conv, dilation of the others):
        # ResnetDilated._nostride_dilate turns layer3/4's stride 2 into dilation 1/2 then 2/4
        self.layer1 = self._layer(64, layers[0], 1, 1, 1)
        self.layer2 = self._layer(128, layers[1], 2, 1, 1)
        self.layer3 = self._layer(256, layers[2], 1, 1, 2)
        self.layer4 = self._layer(512, layers[3], 1, 2, 4)

    def _layer(self, planes, blocks, stride, first_dil, dil):
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * 4))
        mods = [Bottleneck(self.inplanes, planes, stride, first_dil, down)]
        self.inplanes = planes * 4
        mods += [Bottleneck(self.inplanes, planes, 1, dil) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs


def ade20k_card():
    from ..weights import ModelCard

    return ModelCard(name="ade20k-resnet50dilated", method="diffir", filename="encoder_epoch_20.pth",
                     description="ADE20k resnet50dilated-ppm encoder (LaMa / DiffIR-inpainting ResNetPL loss)",
                     sources=[("http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet50dilated-ppm/"
                               "encoder_epoch_20.pth")])


class ResNetPL(nn.Module):
    """``weights``: the encoder file, ``None`` to find it through restorekit.weights, ``"random"`` (tests)."""

    def __init__(self, weight: float = 1.0, weights=None):
        super().__init__()
        self.impl = ResnetDilated()
        if weights != "random":
            from ..weights import load_state_dict, load_strict, resolve_card

            path = resolve_card(ade20k_card()) if weights is None else weights
            sd, _ = load_state_dict(path)
            # files saved before PyTorch 0.4.1 have no BatchNorm step counters; they are unused in eval mode
            for k, v in self.impl.state_dict().items():
                if k.endswith("num_batches_tracked") and k not in sd:
                    sd[k] = torch.zeros_like(v)
            load_strict(self.impl, sd, str(path))
        self.impl.eval()
        for p in self.impl.parameters():
            p.requires_grad_(False)
        self.weight = weight
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, pred, target):
        fp = self.impl((pred - self.mean) / self.std)
        ft = self.impl((target - self.mean) / self.std)
        return torch.stack([F.mse_loss(a, b) for a, b in zip(fp, ft)]).sum() * self.weight
