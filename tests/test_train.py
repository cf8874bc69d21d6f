"""Training loops of the mini suite write loadable checkpoints in the published formats."""

import json

import pytest
import torch

from cfx.data.synthetic import write_synthetic_celeba
from cfx.models.adm import create_model, load_adm_checkpoint
from cfx.models.classifier import load_celeba_classifier
from cfx.models.diffusion import create_gaussian_diffusion
from cfx.train import train_classifier, train_ddpm

FLAGS = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
             num_heads=2, learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_celeba(tmp_path_factory.mktemp("train"), n_identities=12, images_per_identity=4,
                                  image_size=32, seed=0, progress=False)


def test_train_ddpm_writes_a_strictly_loadable_state_dict(data, tmp_path):
    log = train_ddpm(data, tmp_path / "ddpm.pt", model_flags=FLAGS, diffusion_flags={"diffusion_steps": 100,
                     "learn_sigma": True}, steps=3, batch_size=4, lr=1e-3, max_timestep=30, image_size=16,
                     device="cpu")
    model = load_adm_checkpoint(tmp_path / "ddpm.pt", **FLAGS)
    assert model(torch.zeros(1, 3, 16, 16), torch.tensor([3])).shape == (1, 6, 16, 16)
    assert json.loads((tmp_path / "ddpm.train.json").read_text())["steps"] == 3 == log["steps"]
    assert log["max_timestep"] == 30


def test_ddpm_loss_decreases_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = create_model(**FLAGS)
    diffusion = create_gaussian_diffusion(steps=100, learn_sigma=True)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    t = torch.tensor([5, 10, 20, 30])
    noise = torch.randn_like(x)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = diffusion.training_losses(model, x, t, noise=noise)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_train_classifier_writes_dime_format_and_log(data, tmp_path):
    arch = dict(growth_rate=8, block_config=[1, 1], num_init_features=16)
    log = train_classifier(data, tmp_path / "clf.pt", arch=arch, steps=3, batch_size=8, lr=1e-3, image_size=32,
                           device="cpu")
    model = load_celeba_classifier(tmp_path / "clf.pt", **arch)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 40)
    assert set(log["val_accuracy"]) >= {"Smiling", "Young"} and 0 <= log["val_accuracy"]["Smiling"] <= 1
