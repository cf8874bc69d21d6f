"""Training loops of the mini suite: the ADM DDPM, the CelebA classifier (also adversarially trained, SVCE's
robust classifier) and the attribute oracle.

The DDPM follows DiME's ``celeba-train-diffusion.py`` (AdamW, random horizontal flips, images in [−1,1],
guided-diffusion's hybrid loss, uniform timesteps), with one mini-suite option: ``max_timestep`` restricts
training to the noise levels the methods use, as ACE's ``bdd100k-train-diffusion.py --init_step`` does.
Checkpoints are written atomically in the published formats (plain UNet state dict as ``ddpm-celeba.pt``;
DiME's ``{'feat_extract', 'classifier'}`` dict as ``classifier.pth``), with a JSON log next to them
(``<name>.train.json``: steps, first/final loss and a coarse loss curve, seconds per step, and for the attribute
networks the val accuracy of every attribute, Smiling (31) and Young (39) also at the top level).

Threads: these loops never call ``torch.set_num_threads``; the caller sets it (``cfx.runtime.device.set_threads``
with the cores Snakemake gives the job). Each split is decoded once into an in-memory tensor (the mini datasets
are a few thousand 32 px images).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cfx.data.celeba import CELEBA_ATTRIBUTES
from cfx.data.celeba_dataset import CelebADataset
from cfx.runtime.checkpoints import save_checkpoint_atomic
from cfx.runtime.device import select_device
from cfx.runtime.files import write_json_atomic


def load_split(data_root: Path, split: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split in [−1,1] (N,3,H,W) and their 40 attributes in {0,1} (N,40), in memory."""
    dataset = CelebADataset(data_root, split=split, image_size=image_size, query_label=None)
    if len(dataset) == 0:
        raise ValueError(f"the {split} split of {data_root} is empty")
    items = [dataset[i] for i in tqdm(range(len(dataset)), desc=f"load {split}", leave=False)]
    return torch.stack([x for _, x, _ in items]), torch.stack([y for _, _, y in items])



@torch.no_grad()
def _optimisation_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, losses: list[float], bar: Any) -> None:
    """One step of every training loop here: gradients of ``loss``, the optimiser's update, the loss recorded in
    ``losses`` and shown on the progress bar."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
    bar.set_postfix(loss=f"{losses[-1]:.4f}")


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, parameter by parameter (guided-diffusion ``update_ema``)."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.mul_(decay).add_(p.detach(), alpha=1 - decay)

def _random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)


def _loss_summary(losses: list[float], points: int = 20) -> dict[str, Any]:
    """First/final loss (mean of the last 10 steps) and a coarse curve: ``points`` means of equal step blocks."""
    if not losses:
        return {"first_loss": None, "final_loss": None, "loss_curve": []}
    block = max(1, len(losses) // points)
    curve = [round(sum(losses[i:i + block]) / len(losses[i:i + block]), 5) for i in range(0, len(losses), block)]
    return {"first_loss": round(losses[0], 5), "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 5),
            "loss_curve_block": block, "loss_curve": curve}


def _per_step(seconds: float, steps: int) -> float | None:
    return round(seconds / steps, 4) if steps else None


def write_training_log(out_path: str | Path, log: dict[str, Any]) -> Path:
    """The training record ``<checkpoint>.train.json`` next to a checkpoint (atomic; settings, losses, time)."""
    return write_json_atomic(Path(out_path).with_suffix(".train.json"), log)


def train_ddpm(data_root: Path, out_path: Path, *, model_flags: dict, diffusion_flags: dict, steps: int,
               batch_size: int, lr: float, max_timestep: int | None = None, ema_decay: float | None = None,
               weight_decay: float = 0.0, seed: int = 0, image_size: int | None = None, split: str = "train",
               device: str = "auto") -> dict[str, Any]:
    """Train the ADM UNet with ``training_losses`` and save its state dict (the EMA weights if ``ema_decay``).

    ``model_flags`` are guided-diffusion's MODEL_FLAGS (``cfx.models.adm.create_model``), ``diffusion_flags`` its
    diffusion flags (``diffusion_steps``/``steps``, ``noise_schedule``, ``learn_sigma``, ...; respacing is ignored).
    Per step: a batch drawn uniformly with replacement, random horizontal flip, ``t ~ U{0, …, max_timestep−1}``
    (all timesteps when None; guided-diffusion's ``UniformSampler`` has weight 1), loss = mean of
    ``training_losses(...)["loss"]``, AdamW (``weight_decay`` 0.0 as guided-diffusion's default; DiME's
    ``celeba-train.sh`` uses 0.05). EMA as guided-diffusion's ``update_ema``: ``ema ← d·ema + (1−d)·θ``."""
    from cfx.models.adm import create_model
    from cfx.models.diffusion import create_gaussian_diffusion

    started = time.time()
    torch.manual_seed(seed)
    dev = select_device(device)
    image_size = int(image_size or model_flags["image_size"])
    if int(model_flags["image_size"]) != image_size:
        raise ValueError(f"image_size {image_size} differs from the UNet flag image_size {model_flags['image_size']}")
    flags = {**model_flags, "use_fp16": False}
    model = create_model(**flags).to(dev).train()
    # training always uses the full schedule (guided-diffusion's image_train.py ignores timestep_respacing)
    diffusion = create_gaussian_diffusion(**{**diffusion_flags, "timestep_respacing": ""})
    t_max = int(max_timestep) if max_timestep else diffusion.num_timesteps
    if not 0 < t_max <= diffusion.num_timesteps:
        raise ValueError(f"max_timestep {max_timestep} is outside 1..{diffusion.num_timesteps} (diffusion steps)")
    images, _ = load_split(Path(data_root), split, image_size)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if ema_decay else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    loop_started = time.time()
    bar = tqdm(range(steps), desc="train ddpm", unit="step")
    for _ in bar:
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        x = _random_flip(images[idx], generator).to(dev)
        t = torch.randint(t_max, (batch_size,), generator=generator).to(dev)
        noise = torch.randn(x.shape, generator=generator).to(dev)
        loss = diffusion.training_losses(model, x, t, noise=noise)["loss"].mean()
        _optimisation_step(optimizer, loss, losses, bar)
        if ema is not None:
            _ema_update(ema, model, ema_decay)
    train_seconds = time.time() - loop_started
    final = (ema if ema is not None else model).cpu().state_dict()
    save_checkpoint_atomic(final, out_path)
    log = {"kind": "ddpm", "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
           "max_timestep": t_max, "num_timesteps": diffusion.num_timesteps, "ema_decay": ema_decay, "seed": seed,
           "saved": "ema" if ema is not None else "model", **_loss_summary(losses),
           "seconds": round(time.time() - started, 1), "seconds_per_step": _per_step(train_seconds, steps),
           "threads": torch.get_num_threads(), "device": str(dev), "n_train_images": len(images)}
    write_training_log(out_path, log)
    return log


DIFFAE_TIMESTEP_SAMPLING = ("uniform", "high_noise")


def diffae_timesteps(t_max: int, n: int, sampling: str, generator: torch.Generator) -> torch.Tensor:
    """n training timesteps in {0, …, t_max−1}: ``uniform`` (DiffAE's ``UniformSampler``) or ``high_noise``
    (P(t) ∝ 2t+1: floor(t_max·√u) for u ~ U[0, 1))."""
    if sampling == "uniform":
        return torch.randint(t_max, (n,), generator=generator)
    return (torch.rand(n, generator=generator, dtype=torch.float64).sqrt() * t_max).long().clamp(max=t_max - 1)


def train_diffae(data_root: Path, out_path: Path, *, flags: dict, steps: int, batch_size: int, lr: float,
                 template: str | None = None, max_timestep: int | None = None, ema_decay: float | None = None,
                 timestep_sampling: str = "uniform", seed: int = 0, image_size: int | None = None,
                 split: str = "train", device: str = "auto") -> dict[str, Any]:
    """Train a DiffAE (``cfx.models.diffae``) and save it in the published Lightning layout (``state_dict`` with
    ``model.*`` and ``ema_model.*``; the EMA copy is the trained weights when ``ema_decay`` is None).

    DiffAE's objective (``diffusion/base.py:training_losses``, ``loss_type: mse``, ε-prediction): per step a batch
    drawn uniformly with replacement, random horizontal flip, z_sem = Enc(x0) inside the graph (encoder and UNet are
    trained together), t ~ U{0, …, max_timestep−1} of T (all when None), loss = MSE(ε_θ(x_t, t, z_sem), ε), Adam as
    upstream's default optimiser (``optimizer: adam``, no weight decay).

    ``timestep_sampling``: ``uniform`` (upstream) or ``high_noise`` (density ∝ t, P(t) = (2t+1)/t_max²; a mini-suite
    deviation): the semantic code is what the UNet needs where x_t carries little of the image, so a briefly trained
    DiffAE learns to use z_sem only when it sees many high-noise steps."""
    from cfx.models.diffae import create_diffae, diffae_flags, lightning_checkpoint
    from cfx.models.diffusion import get_named_beta_schedule

    started = time.time()
    torch.manual_seed(seed)
    dev = select_device(device)
    resolved = diffae_flags(template, **flags)
    image_size = int(image_size or resolved["img_size"])
    if int(resolved["img_size"]) != image_size:
        raise ValueError(f"image_size {image_size} differs from the DiffAE flag img_size {resolved['img_size']}")
    model = create_diffae(template, **flags).to(dev).train()
    num_timesteps = int(resolved["T"])
    t_max = int(max_timestep) if max_timestep else num_timesteps
    if not 0 < t_max <= num_timesteps:
        raise ValueError(f"max_timestep {max_timestep} is outside 1..{num_timesteps} (DiffAE T)")
    if timestep_sampling not in DIFFAE_TIMESTEP_SAMPLING:
        raise ValueError(f"timestep_sampling '{timestep_sampling}' is not one of {', '.join(DIFFAE_TIMESTEP_SAMPLING)}")
    betas = get_named_beta_schedule(str(resolved["beta_scheduler"]), num_timesteps)
    alphas_cumprod = torch.cumprod(torch.tensor(1.0 - betas), 0).float().to(dev)
    images, _ = load_split(Path(data_root), split, image_size)
    if images.shape[1] != int(resolved["in_channels"]):
        images = images.mean(1, keepdim=True) if int(resolved["in_channels"]) == 1 else images
    ema = copy.deepcopy(model).eval().requires_grad_(False) if ema_decay else None
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    loop_started = time.time()
    bar = tqdm(range(steps), desc="train diffae", unit="step")
    for _ in bar:
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        x0 = _random_flip(images[idx], generator).to(dev)
        t = diffae_timesteps(t_max, batch_size, timestep_sampling, generator).to(dev)
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = (model(x_t, t, model.encode(x0)) - noise).pow(2).mean()
        _optimisation_step(optimizer, loss, losses, bar)
        if ema is not None:
            _ema_update(ema, model, ema_decay)
    train_seconds = time.time() - loop_started
    ckpt = lightning_checkpoint(model.cpu())
    if ema is not None:
        ckpt["state_dict"].update({f"ema_model.{k}": v for k, v in ema.cpu().state_dict().items()})
    ckpt["global_step"] = steps
    save_checkpoint_atomic(ckpt, out_path)
    log = {"kind": "diffae", "steps": steps, "batch_size": batch_size, "lr": lr, "max_timestep": t_max,
           "timestep_sampling": timestep_sampling,
           "num_timesteps": num_timesteps, "ema_decay": ema_decay, "seed": seed, "template": template,
           "saved": "ema_model = EMA" if ema is not None else "ema_model = model", **_loss_summary(losses),
           "seconds": round(time.time() - started, 1), "seconds_per_step": _per_step(train_seconds, steps),
           "threads": torch.get_num_threads(), "device": str(dev), "n_train_images": len(images)}
    write_training_log(out_path, log)
    return log


def pgd_l2(model: torch.nn.Module, x: torch.Tensor, attrs: torch.Tensor, *, eps: float, steps: int,
           step_size: float | None = None) -> torch.Tensor:
    """ℓ2 PGD that maximises the 40-attribute BCE of ``model`` around [−1,1] images ``x`` (no random start, as
    the Madry lab's ``robustness`` training default). ``eps`` and ``step_size`` (default 2.5·eps/steps) are in
    [0,1] image units, i.e. ‖δ‖₂ of the image in [0,1]; the model runs in eval mode during the attack."""
    was_training = model.training
    model.eval()
    step_size = 2.5 * eps / steps if step_size is None else step_size
    radius, step = 2 * eps, 2 * step_size  # [−1,1] units
    delta = torch.zeros_like(x)
    for _ in range(steps):
        with torch.enable_grad():
            delta.requires_grad_(True)
            loss = F.binary_cross_entropy_with_logits(model(x + delta), attrs)
            grad = torch.autograd.grad(loss, delta)[0]
        view = (-1,) + (1,) * (x.dim() - 1)
        delta = delta.detach() + step * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
        delta = delta * (radius / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(view)
        delta = (x + delta).clamp(-1, 1) - x
    model.train(was_training)
    return (x + delta).detach()


def _train_attribute_net(model: torch.nn.Module, kind: str, data_root: Path, out_path: Path, save, *, steps: int,
                         batch_size: int, lr: float, seed: int, image_size: int, device: str,
                         adversarial: dict[str, Any] | None = None) -> dict[str, Any]:
    started = time.time()
    torch.manual_seed(seed)
    dev = select_device(device)
    images, attrs = load_split(Path(data_root), "train", image_size)
    val_images, val_attrs = load_split(Path(data_root), "val", image_size)
    model = model.to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    loop_started = time.time()
    bar = tqdm(range(steps), desc=f"train {kind}", unit="step")
    adv = dict(adversarial or {})
    clean_steps = int(adv.pop("clean_steps", 0))
    for step in bar:
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        x = _random_flip(images[idx], generator).to(dev)
        if adv and step >= clean_steps:
            x = pgd_l2(model, x, attrs[idx].to(dev), **adv)
        loss = F.binary_cross_entropy_with_logits(model(x), attrs[idx].to(dev))
        _optimisation_step(optimizer, loss, losses, bar)
    train_seconds = time.time() - loop_started
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(val_images[i:i + 256].to(dev)).cpu() for i in range(0, len(val_images), 256)])
    accuracy = ((logits > 0).float() == val_attrs).float().mean(0)
    robust = {}
    if adv:  # val accuracy under the training attack
        adv_logits = torch.cat([model(pgd_l2(model, val_images[i:i + 256].to(dev), val_attrs[i:i + 256].to(dev),
                                             **adv)).detach().cpu() for i in range(0, len(val_images), 256)])
        robust_accuracy = ((adv_logits > 0).float() == val_attrs).float().mean(0)
        robust = {"adversarial": {**adv, "clean_steps": clean_steps, "norm": 2},
                  "val_robust_accuracy_Smiling": round(float(robust_accuracy[31]), 4),
                  "val_robust_accuracy_Young": round(float(robust_accuracy[39]), 4),
                  "val_robust_accuracy_mean": round(float(robust_accuracy.mean()), 4)}
    majority = torch.maximum(val_attrs.mean(0), 1 - val_attrs.mean(0))  # accuracy of always guessing the majority
    save(model.cpu(), out_path)
    log = {"kind": kind, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, **_loss_summary(losses),
           "val_accuracy_Smiling": round(float(accuracy[31]), 4), "val_accuracy_Young": round(float(accuracy[39]), 4),
           "val_accuracy_mean": round(float(accuracy.mean()), 4),
           "val_majority_baseline_Smiling": round(float(majority[31]), 4),
           "val_majority_baseline_Young": round(float(majority[39]), 4),
           "val_accuracy": {name: round(float(accuracy[i]), 4) for i, name in enumerate(CELEBA_ATTRIBUTES)}, **robust,
           "seconds": round(time.time() - started, 1), "seconds_per_step": _per_step(train_seconds, steps),
           "threads": torch.get_num_threads(), "device": str(dev), "n_train_images": len(images),
           "n_val_images": len(val_images)}
    write_training_log(out_path, log)
    return log


def train_classifier(data_root: Path, out_path: Path, *, arch: dict, steps: int, batch_size: int, lr: float,
                     seed: int = 0, image_size: int = 128, device: str = "auto") -> dict[str, Any]:
    """Train the 40-attribute DenseNet classifier (BCE with logits) and save DiME's classifier format."""
    from cfx.models.classifier import DenseNetClassifier, save_celeba_classifier

    torch.manual_seed(seed)
    return _train_attribute_net(DenseNetClassifier(**arch), "classifier", data_root, out_path, save_celeba_classifier,
                                steps=steps, batch_size=batch_size, lr=lr, seed=seed, image_size=image_size,
                                device=device)


def train_robust_classifier(data_root: Path, out_path: Path, *, arch: dict, steps: int, batch_size: int, lr: float,
                            adversarial: dict[str, Any], seed: int = 0, image_size: int = 128,
                            init_checkpoint: Path | None = None, device: str = "auto") -> dict[str, Any]:
    """Adversarially train the 40-attribute DenseNet classifier (SVCE's mini stand-in for the robust ResNet-50):
    each batch is replaced by its ℓ2 PGD adversarial example (:func:`pgd_l2`; ``adversarial``: ``eps``, ``steps``,
    optional ``step_size`` and ``clean_steps``, the first steps trained on clean batches), as Madry et al.'s
    adversarial training; from ``init_checkpoint`` (a classifier in DiME's format: adversarial fine-tuning) or
    from scratch. Saved in DiME's classifier format, so every classifier loader reads it."""
    from cfx.models.classifier import DenseNetClassifier, load_celeba_classifier, save_celeba_classifier

    if not adversarial or "eps" not in adversarial or "steps" not in adversarial:
        raise ValueError("a robust_classifier needs train.adversarial with eps and steps (e.g. {eps: 0.5, steps: 2})")
    torch.manual_seed(seed)
    if init_checkpoint is not None:
        model = load_celeba_classifier(init_checkpoint, **arch).train()
    else:
        model = DenseNetClassifier(**arch)
    log = _train_attribute_net(model, "robust_classifier", data_root, out_path, save_celeba_classifier, steps=steps,
                               batch_size=batch_size, lr=lr, seed=seed, image_size=image_size, device=device,
                               adversarial=adversarial)
    log["init"] = str(init_checkpoint) if init_checkpoint is not None else None
    write_training_log(out_path, log)
    return log


def train_oracle(data_root: Path, out_path: Path, *, arch: dict, steps: int, batch_size: int, lr: float,
                 seed: int = 1, image_size: int = 128, device: str = "auto") -> dict[str, Any]:
    """Train the mini 40-attribute oracle and save it in the ``{'feat_extract','classifier'}`` format."""
    from cfx.models.oracle import AttributeOracle, save_oracle

    torch.manual_seed(seed)
    return _train_attribute_net(AttributeOracle(**arch), "oracle", data_root, out_path, save_oracle, steps=steps,
                                batch_size=batch_size, lr=lr, seed=seed, image_size=image_size, device=device)


def train_identity(data_root: Path, out_path: Path, *, arch: dict, steps: int, batch_size: int, lr: float,
                   seed: int = 2, image_size: int = 128, device: str = "auto") -> dict[str, Any]:
    """Train the mini identity network: the oracle architecture as a classifier over the train split's
    identities (cross-entropy). Its features stand in for VGGFace2's in FVA and FS; evaluated on the val split,
    whose identities it never saw, by verification accuracy (same identity ⇔ cosine > 0.5, balanced pairs)."""
    from cfx.data.celeba_dataset import CelebADataset
    from cfx.models.oracle import AttributeOracle, save_oracle

    started = time.time()
    torch.manual_seed(seed)
    dev = select_device(device)
    splits = {}
    for split in ("train", "val"):
        dataset = CelebADataset(Path(data_root), split=split, image_size=image_size, query_label=None)
        identities = dataset.frame["identity"].to_numpy().copy()
        if len(dataset) == 0 or (identities < 0).any():
            raise ValueError(f"the {split} split of {data_root} is empty or lacks identities (identity_CelebA.txt)")
        images = torch.stack([dataset[i][1] for i in tqdm(range(len(dataset)), desc=f"load {split}", leave=False)])
        splits[split] = (images, torch.as_tensor(identities))
    images, identities = splits["train"]
    classes, targets = torch.unique(identities, return_inverse=True)
    model = AttributeOracle(num_attributes=len(classes), **arch).to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    loop_started = time.time()
    bar = tqdm(range(steps), desc="train identity", unit="step")
    for _ in bar:
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        x = _random_flip(images[idx], generator).to(dev)
        loss = F.cross_entropy(model(x), targets[idx].to(dev))
        _optimisation_step(optimizer, loss, losses, bar)
    train_seconds = time.time() - loop_started
    model.eval()
    val_images, val_ids = splits["val"]
    with torch.no_grad():
        features = torch.cat([model.feat_extract(val_images[i:i + 256].to(dev)).cpu()
                              for i in range(0, len(val_images), 256)])
    save_oracle(model.cpu(), out_path)
    log = {"kind": "identity", "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
           **_loss_summary(losses), "n_identities": int(len(classes)),
           "val_verification_accuracy": round(_verification_accuracy(features, val_ids, seed), 4),
           "seconds": round(time.time() - started, 1), "seconds_per_step": _per_step(train_seconds, steps),
           "threads": torch.get_num_threads(), "device": str(dev), "n_train_images": len(images),
           "n_val_images": len(val_images)}
    write_training_log(out_path, log)
    return log


def _verification_accuracy(features: torch.Tensor, identities: torch.Tensor, seed: int, n_pairs: int = 2000) -> float:
    """Accuracy of ``cosine > 0.5`` (the FVA rule) on balanced same/different-identity pairs."""
    generator = torch.Generator().manual_seed(seed)
    features = F.normalize(features, dim=1)
    first = torch.randint(len(features), (n_pairs,), generator=generator)
    same = identities.unsqueeze(0) == identities[first].unsqueeze(1)
    same[torch.arange(n_pairs), first] = False
    correct = []
    for k in range(n_pairs):
        pool = torch.nonzero(same[k] if k % 2 == 0 else ~same[k] & (torch.arange(len(features)) != first[k])).flatten()
        if len(pool) == 0:
            continue
        other = pool[torch.randint(len(pool), (1,), generator=generator)].item()
        cosine = float(features[first[k]] @ features[other])
        correct.append((cosine > 0.5) == (k % 2 == 0))
    return float(sum(correct) / len(correct)) if correct else float("nan")


def ldm_class_labels(attrs: torch.Tensor, classes: dict, generator: torch.Generator) -> torch.Tensor:
    """One conditioning class per image for the mini LDM: a query attribute drawn uniformly from ``classes``
    ({query_label: [class if absent, class if present]}) and the image's value of it."""
    queries = sorted(int(q) for q in classes)
    table = torch.tensor([[int(c) for c in (classes.get(q, classes.get(str(q))))] for q in queries])
    pick = torch.randint(len(queries), (attrs.shape[0],), generator=generator)
    values = attrs[torch.arange(attrs.shape[0]), torch.tensor(queries)[pick]].long()
    return table[pick, values]


@torch.no_grad()
def _latent_moments(ldm, images: torch.Tensor, dev: torch.device,
                    batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each (2, N, C, h, w): the first stage's posterior of every image (index 0) and of its mirror
    image (1); a VQ first stage has std 0. Unscaled (``scale_factor`` is applied by the caller)."""
    means, stds = [], []
    for flipped in (False, True):
        m_parts, s_parts = [], []
        for start in range(0, len(images), batch):
            x = images[start:start + batch].to(dev)
            encoded = ldm.first_stage_model.encode(x.flip(-1) if flipped else x)
            mean = getattr(encoded, "mean", encoded)
            m_parts.append(mean)
            s_parts.append(getattr(encoded, "std", torch.zeros_like(mean)))
        means.append(torch.cat(m_parts))
        stds.append(torch.cat(s_parts))
    return torch.stack(means), torch.stack(stds)


def train_ldm(data_root: Path, out_path: Path, *, config: dict, classes: dict, autoencoder: dict, diffusion: dict,
              seed: int = 0, image_size: int | None = None, split: str = "train",
              device: str = "auto") -> dict[str, Any]:
    """Train a small class-conditional latent diffusion model (``cfx.models.ldm``) in two stages, as LDM does,
    and save it in the published Lightning layout (``state_dict`` with ``first_stage_model.*``, ``model.*``,
    ``cond_stage_model.*``).

    1. The KL autoencoder (``ldm/models/autoencoder.py:AutoencoderKL.training_step``, optimiser 0): ℓ1
       reconstruction of a posterior sample + ``kl_weight``·KL (``autoencoder``: steps, batch_size, lr, kl_weight).
       LDM's LPIPS and patch discriminator are left out (no offline VGG weights; README.md "Deviations from upstream").
    2. The latent ε-prediction UNet and the class embedder (``LatentDiffusion.p_losses``, ``loss_type`` l2,
       ``cond_stage_trainable``), first stage frozen: z = scale·sample(E(x)), t ~ U{0, …, max_timestep−1}, the
       class of a query attribute (:func:`ldm_class_labels`) replaced by the null class (the embedder's last) with
       probability ``p_uncond`` (classifier-free training, as LDCE's null class 1000 needs); AdamW
       (``diffusion``: steps, batch_size, lr, max_timestep, p_uncond)."""
    from cfx.models.ldm import build_ldm, save_ldm_checkpoint

    started = time.time()
    torch.manual_seed(seed)
    dev = select_device(device)
    ldm = build_ldm(config).to(dev)
    images, attrs = load_split(Path(data_root), split, int(image_size or 32))
    generator = torch.Generator().manual_seed(seed)
    first_stage = ldm.first_stage_model.train()
    opt = torch.optim.Adam(first_stage.parameters(), lr=float(autoencoder["lr"]), betas=(0.5, 0.9))
    ae_losses, ae_steps, kl_weight = [], int(autoencoder["steps"]), float(autoencoder.get("kl_weight", 1e-6))
    ae_started = time.time()
    for _ in (bar := tqdm(range(ae_steps), desc="train ldm autoencoder", unit="step")):
        idx = torch.randint(len(images), (int(autoencoder["batch_size"]),), generator=generator)
        x = _random_flip(images[idx], generator).to(dev)
        posterior = first_stage.encode(x)
        rec = first_stage.decode(posterior.sample())
        loss = (rec - x).abs().mean() + kl_weight * posterior.kl().mean() / x[0].numel()
        _optimisation_step(opt, loss, ae_losses, bar)
    ae_seconds = time.time() - ae_started
    first_stage.eval().requires_grad_(False)
    with torch.no_grad():
        sample = images[torch.randint(len(images), (min(256, len(images)),), generator=generator)].to(dev)
        if ldm.scale_by_std:  # LatentDiffusion.on_train_batch_start: scale_factor = 1 / std of the first latents
            ldm.scale_factor.fill_(1.0 / float(ldm.encode_first_stage(sample).std() / ldm.scale_factor))
        z_std = float(ldm.encode_first_stage(sample).std())
        rec_l1 = float((ldm.decode_first_stage(ldm.encode_first_stage(sample)) - sample).abs().mean())

    params = [*ldm.model.parameters(), *ldm.cond_stage_model.parameters()]
    opt = torch.optim.AdamW(params, lr=float(diffusion["lr"]))
    n_classes = int(ldm.cond_stage_model.n_classes)
    t_max = int(diffusion.get("max_timestep") or ldm.num_timesteps)
    if not 0 < t_max <= ldm.num_timesteps:
        raise ValueError(f"max_timestep {t_max} is outside 1..{ldm.num_timesteps} (LDM timesteps)")
    p_uncond = float(diffusion.get("p_uncond", 0.1))
    alphas_cumprod = ldm.alphas_cumprod.to(dev)
    losses, steps, batch_size = [], int(diffusion["steps"]), int(diffusion["batch_size"])
    ldm.model.train()
    dm_started = time.time()
    # the frozen encoder's posterior of every image and of its mirror image, computed once; each step samples it
    moments = _latent_moments(ldm, images, dev)
    for _ in (bar := tqdm(range(steps), desc="train ldm diffusion", unit="step")):
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        flip = (torch.rand(batch_size, generator=generator) < 0.5).long()
        mean, std = moments[0][flip, idx], moments[1][flip, idx]
        labels = ldm_class_labels(attrs[idx], classes, generator)
        labels[torch.rand(batch_size, generator=generator) < p_uncond] = n_classes - 1
        z0 = ldm.scale_factor * (mean + std * torch.randn(mean.shape, generator=generator).to(dev))
        t = torch.randint(t_max, (batch_size,), generator=generator).to(dev)
        noise = torch.randn(z0.shape, generator=generator).to(dev)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(ldm.apply_model(z_t, t, ldm.get_learned_conditioning(labels.to(dev))), noise)
        _optimisation_step(opt, loss, losses, bar)
    dm_seconds = time.time() - dm_started
    save_ldm_checkpoint(ldm.cpu().eval(), out_path, global_step=ae_steps + steps)
    log = {"kind": "ldm", "seed": seed, "classes": {str(k): v for k, v in classes.items()},
           "scale_factor": float(ldm.scale_factor),
           "autoencoder": {**autoencoder, **_loss_summary(ae_losses),
                           "seconds_per_step": _per_step(ae_seconds, ae_steps),
                           "latent_std_scaled": round(z_std, 4), "reconstruction_l1": round(rec_l1, 4)},
           "diffusion": {**diffusion, "max_timestep": t_max, "num_timesteps": int(ldm.num_timesteps),
                         **_loss_summary(losses), "seconds_per_step": _per_step(dm_seconds, steps)},
           "seconds": round(time.time() - started, 1), "threads": torch.get_num_threads(), "device": str(dev),
           "n_train_images": len(images)}
    write_training_log(out_path, log)
    return log
