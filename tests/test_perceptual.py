"""DiME's VGG-19 perceptual features: loaded from a local torchvision checkpoint, never downloaded."""

import pytest
import torch
from torchvision.models import vgg19

from cfx.models.perceptual import load_vgg19_perceptual


def test_loads_local_weights_and_normalises_like_dime(tmp_path):
    torch.manual_seed(0)
    reference = vgg19(weights=None).eval()
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(reference.state_dict(), path)
    net = load_vgg19_perceptual(18, path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = reference.features[:18](((x + 1) / 2 - mean) / std)
    assert net(x).shape == (2, 256, 8, 8)  # relu3_4 at 1/4 resolution
    assert torch.allclose(net(x), expected, atol=1e-5)
    assert not any(p.requires_grad for p in net.parameters())


def test_missing_weights_say_where_and_how_to_turn_off(tmp_path):
    with pytest.raises(FileNotFoundError, match="l_perc: 0"):
        load_vgg19_perceptual(18, tmp_path / "nope.pth")
