"""Shared test fixtures: a tiny random ADM UNet and a trivially editable classifier."""

import pytest
import torch

from cfx.models.adm import create_model


class RedClassifier(torch.nn.Module):
    """logit = 10 · mean of the red channel (a 'smile' any method can edit)."""

    def forward(self, x):
        return 10 * x[:, 0].mean(dim=(1, 2))


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
