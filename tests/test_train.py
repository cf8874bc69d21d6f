"""Training loops of the mini suite write loadable checkpoints in the published formats and actually learn."""

import json

import pytest
import torch

from cfx.data.synthetic import write_synthetic_celeba
from cfx.models.adm import create_model, load_adm_checkpoint
from cfx.models.classifier import load_celeba_classifier
from cfx.models.diffusion import create_gaussian_diffusion
from cfx.models.oracle import load_oracle
from cfx.train import load_split, train_classifier, train_ddpm, train_oracle

FLAGS = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
             num_heads=2, learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True)
DIFFUSION = {"diffusion_steps": 100, "learn_sigma": True}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_celeba(tmp_path_factory.mktemp("train"), n_identities=12, images_per_identity=4,
                                  image_size=32, seed=0, progress=False)


def _ddpm(data, path, **kw):
    options = dict(model_flags=FLAGS, diffusion_flags=DIFFUSION, steps=3, batch_size=4, lr=1e-3, max_timestep=30,
                   image_size=16, device="cpu")
    return train_ddpm(data, path, **{**options, **kw})


def test_train_ddpm_writes_a_strictly_loadable_seeded_state_dict(data, tmp_path):
    log = _ddpm(data, tmp_path / "ddpm.pt")
    model = load_adm_checkpoint(tmp_path / "ddpm.pt", **FLAGS)
    assert model(torch.zeros(1, 3, 16, 16), torch.tensor([3])).shape == (1, 6, 16, 16)
    on_disk = json.loads((tmp_path / "ddpm.train.json").read_text())
    assert on_disk == log and log["steps"] == 3 and log["max_timestep"] == 30 and log["saved"] == "model"
    assert len(log["loss_curve"]) == 3 and log["seconds_per_step"] > 0
    # same seed → the same weights; the weights moved away from the seeded initialisation
    _ddpm(data, tmp_path / "again.pt")
    first, again = (torch.load(tmp_path / name, weights_only=True) for name in ("ddpm.pt", "again.pt"))
    assert all(torch.equal(first[k], again[k]) for k in first)
    torch.manual_seed(0)
    init = create_model(**FLAGS).state_dict()
    assert max((first[k] - init[k]).abs().max().item() for k in init) > 1e-3
    # with EMA the saved weights are the EMA ones: decay 0.9999 over 3 steps stays within 3e-4 of the start
    ema_log = _ddpm(data, tmp_path / "ema.pt", ema_decay=0.9999)
    ema = torch.load(tmp_path / "ema.pt", weights_only=True)
    assert ema_log["saved"] == "ema"
    assert max((ema[k] - init[k]).abs().max().item() for k in init) < 1e-5
    with pytest.raises(ValueError, match="max_timestep 101 is outside 1..100"):
        _ddpm(data, tmp_path / "bad.pt", max_timestep=101)


def test_train_ddpm_loss_decreases(data, tmp_path):
    log = _ddpm(data, tmp_path / "ddpm.pt", steps=30, batch_size=8, lr=2e-3)
    curve = log["loss_curve"]
    assert sum(curve[-10:]) / 10 < 0.6 * sum(curve[:5]) / 5


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


@pytest.mark.parametrize("kind", ["classifier", "oracle"])
def test_attribute_networks_write_dime_format_and_an_honest_log(data, tmp_path, kind):
    if kind == "classifier":
        arch = dict(growth_rate=8, block_config=[1, 1], num_init_features=16)
        train, load = train_classifier, load_celeba_classifier
    else:
        arch = dict(width=8, feature_dim=16)
        train, load = train_oracle, load_oracle
    log = train(data, tmp_path / f"{kind}.pt", arch=arch, steps=3, batch_size=8, lr=1e-3, image_size=32,
                device="cpu")
    assert set(torch.load(tmp_path / f"{kind}.pt", weights_only=True)) == {"feat_extract", "classifier"}
    model = load(tmp_path / f"{kind}.pt", **arch)
    assert json.loads((tmp_path / f"{kind}.train.json").read_text()) == log
    # the logged val accuracy is what the saved network scores on the val split
    images, attrs = load_split(data, "val", 32)
    with torch.no_grad():
        accuracy = ((model(images) > 0).float() == attrs).float().mean(0)
    assert log["n_val_images"] == len(images) and log["steps"] == 3
    assert log["val_accuracy_Smiling"] == pytest.approx(accuracy[31].item(), abs=1e-4)
    assert log["val_accuracy_Young"] == pytest.approx(accuracy[39].item(), abs=1e-4)
    assert log["val_accuracy"]["Young"] == log["val_accuracy_Young"] and len(log["val_accuracy"]) == 40
    assert log["val_accuracy_mean"] == pytest.approx(accuracy.mean().item(), abs=1e-4)
