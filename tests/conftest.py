import json

import pytest
import torch
from safetensors.torch import save_file

from restorekit.nets import GuidedUNet, GuidedUNetConfig

TINY = GuidedUNetConfig(image_size=32, model_channels=16, out_channels=6, num_res_blocks=1, attention_resolutions="8",
                        channel_mult=(1, 2, 2), num_head_channels=16, norm_groups=8)


def randomised(net: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Give every parameter (also the zero-initialised output convs) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return net


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A tiny guided-diffusion checkpoint in restorekit's safetensors format."""
    net = randomised(GuidedUNet(TINY))
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_file(net.state_dict(), str(path), metadata={"unet_config": json.dumps(TINY.to_dict())})
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTOREKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RESTOREKIT_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
