"""Shared test fixtures: a tiny random ADM UNet. Shared helpers that are not fixtures (fake dataset roots, tiny
networks and settings, the workflow in a temporary folder) are in tests/factories/."""

import pytest
import torch

from cfx.models.adm import create_model


@pytest.fixture(scope="module")
def tiny_unet():
    """A 16 px learned-sigma ADM UNet with small random weights (outputs stay in a sane range)."""
    torch.manual_seed(0)
    unet = create_model(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                        attention_resolutions="8", num_heads=2, learn_sigma=True, resblock_updown=True,
                        use_scale_shift_norm=True).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(0.3)
    return unet
