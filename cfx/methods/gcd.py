"""GCD: Global Counterfactual Directions (Sobieski & Biecek, ECCV 2024; ``sobieskibj/gcd``).

Three parts (docs/upstream/ldce_gcd_svce.md §2):

* **Direction search** (:func:`search_directions`, ``gcd/src/strategies/single_image_gmc_mlp_proxy_training.py``):
  around one source image's semantic code z_src = Enc(x) (x_T = its DDIM inversion, kept fixed), each iteration
  renders ``n_steps_dae × dae_batch_size`` uniform-norm perturbations z_src + r·u (‖u‖ = 1, r ~ U(0, max_norm)),
  records the classifier's logits and LPIPS(x, render) of the REAL renders, appends them to a proxy data set that
  accumulates across iterations, trains a fresh MLP proxy z − z_src ↦ (logits, LPIPS) on all of it (early
  stopping), takes g-directions (normalised gradients of the counterfactual loss through the proxy, for each loss
  weighting) and h-directions (eigenvectors of the proxy loss's Hessian, largest |λ| first), and line-searches
  every direction with real renders.
* **Direction transfer** (:func:`transfer`, ``gcd/src/direction_transfer.py``): a direction moves any other image's
  z_sem; the counterfactual is the render of the flipping candidate with the smallest |step|.
* **BB-LIG** (:func:`bblig`, ``bblig/src/experiment/sig.py``): latent integrated gradients along the direction's
  path from the image to the first render whose own-class probability is below ``thr_prob``; gradients by autograd
  or by finite differences along the path (truly black-box). Upstream logs them only to wandb; here they are
  returned as arrays (and :func:`save_bblig` writes ``.npz`` + a figure).

**Sign convention (one, everywhere).** Every direction d is a unit vector such that moving z_src + s·d with s > 0
decreases the counterfactual loss L, i.e. moves AWAY from the source image's predicted class (to first order).
Upstream mixes two conventions (docs/upstream/ldce_gcd_svce.md §2.10 P-G7): the search moves z − s·g with g = ∇L,
BB-LIG moves z + σ·α·d with d "increasing the target probability". Here a g-direction is d = −∇L/‖∇L‖, an
h-direction is the eigenvector oriented so that d·∇L ≤ 0, and an image whose predicted class differs from the
source's moves along −d.

The counterfactual loss (``losses/counterfactual_loss_from_general_components.py``) is
L_w(z) = w_cls·σ_src·logit_q(z) + w_lpips·lpips(z), σ_src = +1 if the source is predicted positive for the query
label q, −1 otherwise (evaluated on the proxy's outputs).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cfx.methods import MethodOutput, check_inputs

DEFAULTS: dict[str, Any] = {
    # direction search (CelebA-HQ config of gcd/configs/single_image_gmc_mlp_proxy_training,
    # docs/upstream/ldce_gcd_svce.md §2.3)
    "n_iters": 52,
    "n_steps_dae": 8,
    "dae_batch_size": 128,
    "max_norm": 1.0,
    "n_steps_proxy": 1024,
    "proxy_hidden": [256, 128, 64],
    "proxy_batch_size": 128,
    "n_val_batches": 1,
    "val_loss_history_length": 5,
    "proxy_lr": 1e-3,
    "proxy_weight_cls": 1.0,
    "proxy_weight_lpips": 3.0,
    "line_search_weight_cls_list": [1.0, 0.05],
    "line_search_weight_lpips_list": [0.0, 1.0],
    "n_hessian_eigenvecs": 6,
    "min_max_step_size": [1e-4, 3.0],
    "line_search_batch_size": 128,
    "T_encode": 250,
    "T_render": 100,
    "query_label": 0,
    # direction transfer (direction_transfer.py)
    "transfer_batch_size": 128,
    "transfer_min_max_step_size": [-3.0, 3.0],
    # BB-LIG (bblig/configs/sig.yaml)
    "bblig_n_steps": 128,
    "bblig_path_length": 128,
    "bblig_max_step_size": 3.0,
    "bblig_thr_prob": 0.01,
    "bblig_approx_grad": False,
}


# ----------------------------------------------------------------------------------------------------------------
# Perturbations and the proxy
# ----------------------------------------------------------------------------------------------------------------

def uniform_norm_perturbations(z_src: torch.Tensor, n: int, max_norm: float,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` codes z_src + r·u, u uniform on the unit sphere, r ~ U(0, max_norm) (``dae.py:make_batch_latent_sem``,
    ``distribution: uniform_norm``). ``z_src``: (1, D) or (D,); returns (n, D) on z_src's device."""
    z_src = z_src.reshape(1, -1)
    u = torch.randn(n, z_src.shape[1], generator=generator, dtype=torch.float32)
    u = u / u.norm(dim=1, keepdim=True)
    r = torch.rand(n, 1, generator=generator, dtype=torch.float32) * max_norm
    return z_src + (r * u).to(z_src.device, z_src.dtype)


class ProxyMLP(nn.Module):
    """``proxies/general_multicomponent_mlp.py:GeneralMulticomponentMLP``: Linear layers ``shapes`` with sigmoid
    activations between them (none after the last); outputs the first K units as logits and σ(last) as LPIPS."""

    def __init__(self, shapes: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(shapes) - 1):
            layers.append(nn.Linear(shapes[i], shapes[i + 1]))
            if i + 2 < len(shapes):
                layers.append(nn.Sigmoid())
        self.model = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(z)
        return out[:, :-1], torch.sigmoid(out[:, -1])


def proxy_loss(pred: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor],
               weight_cls: float = 1.0, weight_lpips: float = 3.0) -> torch.Tensor:
    """``losses/general_multicomponent_proxy_loss.py``: w_cls·MSE(logits) + w_lpips·MSE(lpips)."""
    return weight_cls * F.mse_loss(pred[0], target[0]) + weight_lpips * F.mse_loss(pred[1], target[1])


@dataclass
class ProxyTrainer:
    """The proxy's data and training (``GeneralMulticomponentMLP.run_epoch``/``prepare_train_val_data``).

    :meth:`add` shuffles new data, splits it into batches of ``batch_size``, appends ``n_val_batches`` batches to
    the validation set and the rest to the training set; both ACCUMULATE across outer iterations (upstream never
    clears them). :meth:`fit` trains a fresh MLP (``reinit``) with AdamW, one pass over the shuffled training batches
    per epoch, and stops after the first epoch whose mean validation loss exceeds the mean of the previous
    ≤ ``history`` validation losses."""

    shapes: list[int]
    batch_size: int = 128
    n_val_batches: int = 1
    history: int = 5
    lr: float = 1e-3
    weight_cls: float = 1.0
    weight_lpips: float = 3.0
    seed: int = 0
    train_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    val_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    model: ProxyMLP | None = None
    fits: int = 0

    def add(self, z: torch.Tensor, logits: torch.Tensor, lpips: torch.Tensor) -> None:
        """Add (z − z_src, logits (N, K), lpips (N,)) to the accumulated data."""
        if not (z.shape[0] == logits.shape[0] == lpips.shape[0]):
            raise ValueError(f"proxy data of different lengths: {z.shape[0]}, {logits.shape[0]}, {lpips.shape[0]}")
        rng = random.Random(f"{self.seed}/add/{len(self.train_batches) + len(self.val_batches)}")
        perm = torch.tensor(rng.sample(range(z.shape[0]), z.shape[0]))
        data = [t.detach().float().cpu()[perm] for t in (z, logits.reshape(z.shape[0], -1), lpips.reshape(-1))]
        batches = list(zip(*(t.split(self.batch_size) for t in data), strict=True))
        rng.shuffle(batches)
        self.val_batches += batches[:self.n_val_batches]
        self.train_batches += batches[self.n_val_batches:]

    def _loss(self, model: ProxyMLP, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        z, logits, lpips = batch
        return proxy_loss(model(z), (logits, lpips), self.weight_cls, self.weight_lpips)

    def fit(self, max_epochs: int) -> dict[str, Any]:
        """Train a new proxy on all data so far; returns {'epochs', 'val_losses', 'train_size'}."""
        if not self.train_batches or not self.val_batches:
            raise ValueError("the proxy needs at least one training and one validation batch: render more "
                             "perturbations per iteration (n_steps_dae × dae_batch_size > proxy_batch_size)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 100_003 + self.fits)
            model = ProxyMLP(self.shapes)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr)
        rng = random.Random(f"{self.seed}/fit/{self.fits}")
        history: list[float] = []
        val_losses: list[float] = []
        for _epoch in range(max_epochs):
            model.train()
            rng.shuffle(self.train_batches)
            for batch in self.train_batches:
                optimizer.zero_grad()
                self._loss(model, batch).backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                val = sum(self._loss(model, b).item() for b in self.val_batches) / len(self.val_batches)
            val_losses.append(val)
            history = history[-self.history:]
            stop = bool(history) and val > sum(history) / len(history)
            history.append(val)
            if stop:
                break
        self.model = model.eval()
        self.fits += 1
        return {"epochs": len(val_losses), "val_losses": val_losses,
                "train_size": sum(b[0].shape[0] for b in self.train_batches)}


# ----------------------------------------------------------------------------------------------------------------
# Directions
# ----------------------------------------------------------------------------------------------------------------

def counterfactual_loss(logits: torch.Tensor, lpips: torch.Tensor, query: int, source_positive: bool,
                        weight_cls: float, weight_lpips: float) -> torch.Tensor:
    """L = w_cls·σ_src·logit_q + w_lpips·lpips per sample, σ_src = +1 for a positive source, −1 otherwise
    (``CounterfactualLossFromGeneralComponents.forward``)."""
    sign = 1.0 if source_positive else -1.0
    return weight_cls * sign * logits[:, query] + weight_lpips * lpips.reshape(-1)


def proxy_loss_fn(proxy: ProxyMLP, query: int, source_positive: bool, weight_cls: float,
                  weight_lpips: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """z (D,) centred at z_src ↦ the scalar counterfactual loss through the proxy."""
    def loss(z: torch.Tensor) -> torch.Tensor:
        logits, lpips = proxy(z.reshape(1, -1))
        return counterfactual_loss(logits, lpips, query, source_positive, weight_cls, weight_lpips).sum()
    return loss


def gradient_direction(loss_fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, float]:
    """g-direction at z: d = −∇L(z)/‖∇L(z)‖ (z + s·d decreases L) and ‖∇L(z)‖ (upstream ``get_grads_dict``
    saves F.normalize(∇L) and moves z − s·g: the same candidates)."""
    z = z.detach().clone().requires_grad_(True)
    grad = torch.autograd.grad(loss_fn(z), z)[0]
    norm = float(grad.norm())
    if norm == 0.0:
        raise ValueError("the counterfactual loss has zero gradient at the source code: no g-direction")
    return -grad / norm, norm


def hessian_directions(loss_fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                       k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h-directions at z: the eigenvectors of H = ∇²L(z) with the ``k`` largest |λ| (``get_grads_dict``), oriented
    so that d·∇L(z) ≤ 0 (ties: largest-magnitude entry positive). Returns (directions (k, D), eigenvalues (k,),
    H). Upstream runs the general ``torch.linalg.eig`` and keeps real parts; H is symmetric, so here
    ``eigh`` on (H + Hᵀ)/2 gives the same real spectrum with orthonormal vectors."""
    z = z.detach().clone()
    hessian = torch.autograd.functional.hessian(loss_fn, z).reshape(z.numel(), z.numel())
    eigvals, eigvecs = torch.linalg.eigh((hessian + hessian.T) / 2)
    order = eigvals.abs().argsort(descending=True)[:k]
    vals, vecs = eigvals[order], eigvecs[:, order].T.clone()
    zg = z.clone().requires_grad_(True)
    grad = torch.autograd.grad(loss_fn(zg), zg)[0].reshape(-1)
    for i in range(vecs.shape[0]):
        dot = float(vecs[i] @ grad)
        tie = abs(dot) <= 1e-12 * max(float(grad.norm()), 1e-30)
        if (not tie and dot > 0) or (tie and vecs[i][vecs[i].abs().argmax()] < 0):
            vecs[i] = -vecs[i]
    return vecs, vals, hessian


# ----------------------------------------------------------------------------------------------------------------
# Line search
# ----------------------------------------------------------------------------------------------------------------

def first_flip(step_sizes: torch.Tensor, flipped: torch.Tensor) -> int | None:
    """Index of the smallest |step| whose candidate flipped (ties: the positive step), or None."""
    flipped = flipped.reshape(-1).bool()
    if not flipped.any():
        return None
    steps = step_sizes.reshape(-1).tolist()
    return min((i for i in range(len(steps)) if flipped[i]), key=lambda i: (abs(steps[i]), steps[i] < 0))


def flipped_from_logits(logits_q: torch.Tensor, source_positive: bool) -> torch.Tensor:
    """A candidate is a counterfactual when the probability of the source's class drops below 0.5."""
    p = torch.sigmoid(logits_q)
    return p < 0.5 if source_positive else p > 0.5


@dataclass
class Scorer:
    """The 'components' of GCD (``losses/counterfactual_loss_general_components.py``): the classifier's logits and
    LPIPS(source, render) of renders in [0, 1]. ``classifier`` takes [−1, 1] images and returns (B,) or (B, K)
    logits; ``lpips`` takes two [−1, 1] batches and returns per-image distances (any shape with B entries)."""

    classifier: Callable[[torch.Tensor], torch.Tensor]
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    source01: torch.Tensor
    batch_size: int = 128

    @torch.no_grad()
    def __call__(self, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, dist = [], []
        src = self.source01 * 2 - 1
        for chunk in images01.split(self.batch_size):
            x = chunk * 2 - 1
            out = self.classifier(x)
            logits.append(out.reshape(x.shape[0], -1).float())
            dist.append(self.lpips(src.expand_as(x), x).reshape(x.shape[0]).float())
        return torch.cat(logits), torch.cat(dist)


def line_search(z_src: torch.Tensor, directions: torch.Tensor, step_sizes: torch.Tensor,
                render: Callable[[torch.Tensor], torch.Tensor], score: Callable[[torch.Tensor], tuple],
                query: int, source_positive: bool) -> dict[str, Any]:
    """Render z_src + s·d for every direction d (rows of ``directions``) and step s; returns per-candidate
    ``steps``, ``logit``, ``lpips``, ``flipped`` (n_dirs, n_steps), ``images`` (n_dirs·n_steps, C, H, W) and, per
    direction, ``first_flip`` (the index of the first flipping step, or None) (``post_proxy_loop``)."""
    n_dirs, n_steps = directions.shape[0], step_sizes.numel()
    s = step_sizes.reshape(1, -1, 1).to(z_src)
    z = (z_src.reshape(1, 1, -1) + s * directions.reshape(n_dirs, 1, -1).to(z_src)).reshape(n_dirs * n_steps, -1)
    images = render(z)
    logits, lpips = score(images)
    logit_q = logits[:, query].reshape(n_dirs, n_steps)
    flipped = flipped_from_logits(logit_q, source_positive)
    return {"steps": step_sizes.reshape(-1).cpu(), "logit": logit_q.cpu(),
            "lpips": lpips.reshape(n_dirs, n_steps).cpu(), "flipped": flipped.cpu(), "images": images,
            "first_flip": [first_flip(step_sizes, flipped[i].cpu()) for i in range(n_dirs)]}


# ----------------------------------------------------------------------------------------------------------------
# Direction search
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Direction:
    """A found direction (unit vector in z_sem space, oriented by the module's sign convention)."""

    vector: torch.Tensor
    kind: str  # "g" or "h"
    iteration: int
    weight_cls: float
    weight_lpips: float
    source_pred: int  # the source's predicted label for the query (1 positive, 0 negative)
    query: int
    first_flip_step: float | None  # smallest line-search step that flipped the source (None: none did)
    norm_or_eigval: float  # ‖∇L‖ before normalisation (g) or the eigenvalue (h)

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.vector.detach().cpu().float(), "kind": self.kind, "iteration": self.iteration,
                "weight_cls": self.weight_cls, "weight_lpips": self.weight_lpips, "source_pred": self.source_pred,
                "query": self.query, "first_flip_step": self.first_flip_step, "norm_or_eigval": self.norm_or_eigval}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Direction:
        return cls(vector=d["direction"], kind=d["kind"], iteration=int(d["iteration"]),
                   weight_cls=float(d["weight_cls"]), weight_lpips=float(d["weight_lpips"]),
                   source_pred=int(d["source_pred"]), query=int(d["query"]),
                   first_flip_step=None if d["first_flip_step"] is None else float(d["first_flip_step"]),
                   norm_or_eigval=float(d["norm_or_eigval"]))


def choose_direction(directions: list[Direction]) -> Direction:
    """The stated rule: the g-direction that flips the source at the smallest line-search step (ties: the later
    iteration, whose proxy saw more data); if no g-direction flips, any direction that does; else the last
    iteration's first g-direction (w_cls = 1, w_lpips = 0)."""
    for pool in ([d for d in directions if d.kind == "g"], directions):
        flipping = [d for d in pool if d.first_flip_step is not None]
        if flipping:
            return min(flipping, key=lambda d: (d.first_flip_step, -d.iteration))
    last = max(d.iteration for d in directions)
    return next(d for d in directions if d.iteration == last and d.kind == "g")


def search_directions(image: torch.Tensor, *, dae: Any, scorer: Scorer, config: dict[str, Any],
                      generator: torch.Generator, progress: bool = False,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """GCD's direction search for ONE source image in [−1, 1] (1, C, H, W) (``SingleImageGMCMLPProxyTraining.run``).

    ``dae``: a :class:`cfx.models.diffae.DiffAE`; ``scorer``: a :class:`Scorer` whose source is this image.
    Returns {'directions': [Direction], 'chosen': Direction, 'iterations': per-iteration records (proxy fit,
    line-search flips), 'z_src', 'x_T', 'source_pred'}."""
    cfg = {**DEFAULTS, **config}
    query = int(cfg["query_label"])
    z_src = dae.encode(image)
    x_T = dae.encode_stochastic(image, z_src)
    logits0, _ = scorer(((image + 1) / 2).clamp(0, 1))
    source_positive = bool(torch.sigmoid(logits0[0, query]) > 0.5)
    pairs = list(zip(cfg["line_search_weight_cls_list"], cfg["line_search_weight_lpips_list"], strict=True))
    n_dirs = len(pairs) + int(cfg["n_hessian_eigenvecs"])
    chunk = int(cfg["line_search_batch_size"]) // n_dirs
    if chunk < 1:
        raise ValueError(f"line_search_batch_size {cfg['line_search_batch_size']} < {n_dirs} directions")
    steps = torch.linspace(float(cfg["min_max_step_size"][0]), float(cfg["min_max_step_size"][1]), chunk)
    n_outputs = logits0.shape[1] + 1
    trainer = ProxyTrainer([z_src.shape[1], *[int(h) for h in cfg["proxy_hidden"]], n_outputs],
                           batch_size=int(cfg["proxy_batch_size"]), n_val_batches=int(cfg["n_val_batches"]),
                           history=int(cfg["val_loss_history_length"]), lr=float(cfg["proxy_lr"]),
                           weight_cls=float(cfg["proxy_weight_cls"]), weight_lpips=float(cfg["proxy_weight_lpips"]),
                           seed=int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator)))

    def render(z: torch.Tensor) -> torch.Tensor:
        return dae.render(x_T, z)

    directions: list[Direction] = []
    iterations: list[dict[str, Any]] = []
    zero = torch.zeros(z_src.shape[1])
    for it in range(int(cfg["n_iters"])):
        # the iteration's renders of every DAE step are split into batches together (upstream: prepare_train_val_data
        # at epoch 0 on the whole strategy buffer), so n_val_batches counts per iteration, not per DAE step
        step_data: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for _ in range(int(cfg["n_steps_dae"])):
            z = uniform_norm_perturbations(z_src, int(cfg["dae_batch_size"]), float(cfg["max_norm"]), generator)
            logits, lpips = scorer(render(z))
            step_data.append((z - z_src, logits, lpips))
        trainer.add(*(torch.cat(parts) for parts in zip(*step_data, strict=True)))
        fit = trainer.fit(int(cfg["n_steps_proxy"]))
        proxy = trainer.model
        found: list[tuple[torch.Tensor, str, float, float, float]] = []
        for w_cls, w_lpips in pairs:
            d, norm = gradient_direction(proxy_loss_fn(proxy, query, source_positive, w_cls, w_lpips), zero)
            found.append((d, "g", float(w_cls), float(w_lpips), norm))
        if int(cfg["n_hessian_eigenvecs"]) > 0:
            vecs, vals, _ = hessian_directions(proxy_loss_fn(proxy, query, source_positive, 1.0, 0.0), zero,
                                               int(cfg["n_hessian_eigenvecs"]))
            found += [(v, "h", 1.0, 0.0, float(lam)) for v, lam in zip(vecs, vals, strict=True)]
        result = line_search(z_src, torch.stack([f[0] for f in found]).to(z_src), steps, render, scorer, query,
                             source_positive)
        for (d, kind, w_cls, w_lpips, value), idx in zip(found, result["first_flip"], strict=True):
            directions.append(Direction(d.detach().cpu(), kind, it, w_cls, w_lpips, int(source_positive), query,
                                        None if idx is None else float(steps[idx]), value))
        iterations.append({"iteration": it, "proxy_epochs": fit["epochs"], "proxy_val_loss": fit["val_losses"][-1],
                           "proxy_train_size": fit["train_size"],
                           "line_search_flips": result["flipped"].sum(1).tolist(),
                           "first_flip_steps": [None if i is None else float(steps[i]) for i in result["first_flip"]]})
        if log is not None:
            log(f"GCD iteration {it}: proxy {fit['epochs']} epochs on {fit['train_size']} codes, val loss "
                f"{fit['val_losses'][-1]:.4g}; first flips {iterations[-1]['first_flip_steps']}")
    return {"directions": directions, "chosen": choose_direction(directions), "iterations": iterations,
            "z_src": z_src.cpu(), "x_T": x_T.cpu(), "source_pred": int(source_positive)}


def save_direction(direction: Direction, path: str | Path) -> Path:
    """Write a direction (``torch.save`` of plain tensors and numbers: loads weights-only)."""
    from cfx.runtime.checkpoints import save_checkpoint_atomic

    return save_checkpoint_atomic(direction.to_dict(), path)


def load_direction(path: str | Path) -> Direction:
    """Read :func:`save_direction`'s file; anything else is an error naming the file and the missing keys."""
    from cfx.runtime.checkpoints import load_checkpoint

    data = load_checkpoint(path, "GCD direction")
    needed = {"direction", "kind", "iteration", "weight_cls", "weight_lpips", "source_pred", "query",
              "first_flip_step", "norm_or_eigval"}
    if not isinstance(data, dict) or needed - set(data):
        have = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not a cfx GCD direction (needs keys {sorted(needed)}; has {have})")
    return Direction.from_dict(data)


# ----------------------------------------------------------------------------------------------------------------
# Transfer and the method entry point
# ----------------------------------------------------------------------------------------------------------------

def orientation(pred: torch.Tensor, direction: Direction) -> torch.Tensor:
    """+1 where an image's predicted label equals the direction's source label (move along d), −1 otherwise."""
    return torch.where(pred.long() == direction.source_pred, 1.0, -1.0)


@torch.no_grad()
def transfer(images: torch.Tensor, direction: Direction, *, dae: Any, classifier: Callable, config: dict[str, Any],
             progress: bool = False) -> dict[str, Any]:
    """Apply a direction to images in [−1, 1] (``direction_transfer.py``): z = Enc(x), x_T = inversion, candidates
    z + σ·s·d for s = linspace(*transfer_min_max_step_size, transfer_batch_size), σ = :func:`orientation`; the CF
    of an image is the flipping candidate with the smallest |s| (ties: s > 0) or, if none flips, the candidate of
    the largest s. Returns 'counterfactuals' ([−1, 1]), 'x_T', 'preds', 'cf_preds', 'steps' (NaN where none
    flipped), 'flipped', 'p_own' (probability of the image's own predicted class at the CF)."""
    cfg = {**DEFAULTS, **config}
    query = direction.query
    lo, hi = (float(v) for v in cfg["transfer_min_max_step_size"])
    steps = torch.linspace(lo, hi, int(cfg["transfer_batch_size"]))
    z = dae.encode(images)
    x_T = dae.encode_stochastic(images, z, progress)
    logits = _query_logits(classifier, images, query)
    preds = (torch.sigmoid(logits) > 0.5).long()
    sign = orientation(preds, direction).to(z)
    d = direction.vector.to(z).reshape(1, -1)
    cfs, cf_preds, out_steps, flips, p_own = [], [], [], [], []
    for i in range(images.shape[0]):
        cand = z[i:i + 1] + sign[i] * steps.to(z).reshape(-1, 1) * d
        imgs = dae.render(x_T[i:i + 1], cand, progress) * 2 - 1
        lq = _query_logits(classifier, imgs, query)
        flipped = flipped_from_logits(lq, bool(preds[i]))
        idx = first_flip(steps, flipped.cpu())
        pick = idx if idx is not None else int(steps.argmax())
        cfs.append(imgs[pick])
        cf_preds.append(int(torch.sigmoid(lq[pick]) > 0.5))
        out_steps.append(float(steps[pick]) if idx is not None else math.nan)
        flips.append(idx is not None)
        p = float(torch.sigmoid(lq[pick]))
        p_own.append(p if preds[i] == 1 else 1 - p)
    return {"counterfactuals": torch.stack(cfs), "x_T": x_T, "preds": preds, "cf_preds": torch.tensor(cf_preds),
            "steps": out_steps, "flipped": flips, "p_own": p_own}


def _query_logits(classifier: Callable, images: torch.Tensor, query: int) -> torch.Tensor:
    out = classifier(images)
    return out if out.dim() == 1 else out.reshape(images.shape[0], -1)[:, query]


def generate(images: torch.Tensor, labels: torch.Tensor, *, models: dict[str, Any], config: dict[str, Any],
             generators: list[torch.Generator], targets: torch.Tensor | None = None,
             progress: bool = False) -> MethodOutput:
    """GCD counterfactuals of a batch of [−1, 1] images by direction transfer (the method's common entry point).

    ``models``: ``diffae`` (:class:`cfx.models.diffae.DiffAE`), ``classifier`` ([−1, 1] → (B,) query logit or
    (B, K)), ``direction`` (a :class:`Direction`, or ``config['direction']`` = a path for :func:`load_direction`).
    Binary task: the target is 1 − prediction, as DiME. ``noise`` is x_T (the DDIM inversion); ``info[k]['bkl']``
    = 1 − p(target | x') = the own-class probability at the CF. Deterministic: the generators are not used (GCD's
    transfer draws nothing)."""
    cfg = check_inputs("GCD", {k: v for k, v in config.items() if k != "direction"}, DEFAULTS, images, generators)
    direction = models.get("direction")
    if direction is None:
        if "direction" not in config:
            raise KeyError("GCD generate needs models['direction'] or config['direction'] (a direction file)")
        direction = load_direction(config["direction"])
    out = transfer(images, direction, dae=models["diffae"], classifier=models["classifier"], config=cfg,
                   progress=progress)
    preds = out["preds"].to(images.device)
    info = [{"bkl": p, "step": s, "flipped": f, "p_own": p, "direction_kind": direction.kind}
            for s, f, p in zip(out["steps"], out["flipped"], out["p_own"], strict=True)]
    return MethodOutput(counterfactuals=out["counterfactuals"].to(images.device), noise=out["x_T"].to(images.device),
                        preds=preds, targets=1 - preds, cf_preds=out["cf_preds"].to(images.device), info=info)


# ----------------------------------------------------------------------------------------------------------------
# BB-LIG
# ----------------------------------------------------------------------------------------------------------------

def path_gradients(path: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor],
                   approx_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the scalar output f along a path of images (L, C, H, W) and the outputs f(path) (L,)
    (``sig.py:get_grads``): autograd (L gradients), or finite differences (f(x_{j+1}) − f(x_j)) / (x_{j+1} − x_j)
    per pixel, 0 where the pixel did not change (L − 1 gradients; the classifier is only queried)."""
    if approx_grad:
        with torch.no_grad():
            out = f(path)
        df = (out[1:] - out[:-1]).view(-1, *[1] * (path.dim() - 1))
        dx = path[1:] - path[:-1]
        grads = torch.where(dx == 0, torch.zeros_like(dx), df / torch.where(dx == 0, torch.ones_like(dx), dx))
        return grads, out
    with torch.enable_grad():
        x = path.detach().clone().requires_grad_(True)
        out = f(x)
        grads = torch.autograd.grad(out.sum(), x)[0]
    return grads, out.detach()


def latent_integrated_gradients(path: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor],
                                approx_grad: bool = False) -> tuple[torch.Tensor, float]:
    """BB-LIG of one image (``sig.py:get_sig``): path[0] = the image, path[-1] = the baseline;
    SIG = (x_0 − x_base) ⊙ mean_j ∇f(x_j), completeness error = ΣSIG − (f(x_0) − f(x_last)). A path whose ends are
    equal (no baseline found) gives SIG = 0 and error = inf. Returns (SIG (C, H, W), error)."""
    orig, base = path[0], path[-1]
    if torch.equal(orig, base):
        return torch.zeros_like(orig), math.inf
    grads, out = path_gradients(path, f, approx_grad)
    sig = (orig - base) * grads.mean(0)
    return sig, float(sig.sum() - (out[0] - out[-1]))


def _quantise(images01: torch.Tensor) -> torch.Tensor:
    """uint8 and back, as torchvision's ``convert_image_dtype`` in ``sig.py`` (×(256 − 1e-3), truncation; ÷255)."""
    return (images01.clamp(0, 1) * (256 - 1e-3)).to(torch.uint8).float() / 255


def bblig(image: torch.Tensor, direction: Direction, *, dae: Any, classifier: Callable,
          config: dict[str, Any] | None = None) -> dict[str, Any]:
    """BB-LIG of one [−1, 1] image (1, C, H, W) along a direction (``bblig/src/experiment/sig.py:run``).

    1. z = Enc(x), x_T = inversion; the image moves z + σ·α·d, α = linspace(0, max_step, n_steps), σ =
       :func:`orientation` (away from its own predicted class); 2. the baseline is the first render whose own-class
    probability is < thr_prob; 3. a new path α' = linspace(0, α_baseline, path_length) is rendered and quantised to
    uint8; 4. :func:`latent_integrated_gradients` of the query logit w.r.t. the [0, 1] path images.
    Returns 'sig' (C, H, W), 'map' (H, W; Σ over channels), 'error', 'baseline' and 'image' ([0, 1]),
    'baseline_step' (None when no baseline was found), 'probs' (own-class probability along the first path)."""
    cfg = {**DEFAULTS, **(config or {})}
    query = direction.query
    z = dae.encode(image)
    x_T = dae.encode_stochastic(image, z)
    p0 = torch.sigmoid(_query_logits(classifier, image, query))[0]
    pred = int(p0 > 0.5)
    sign = float(orientation(torch.tensor([pred]), direction)[0])
    d = direction.vector.to(z).reshape(1, -1)
    alphas = torch.linspace(0.0, float(cfg["bblig_max_step_size"]), int(cfg["bblig_n_steps"]))
    with torch.no_grad():
        imgs = dae.render(x_T, z + sign * alphas.to(z).reshape(-1, 1) * d)
        p = torch.sigmoid(_query_logits(classifier, imgs * 2 - 1, query))
    p_own = p if pred == 1 else 1 - p
    under = (p_own < float(cfg["bblig_thr_prob"])).cpu()
    base_idx = int(under.int().argmax())  # upstream: argmax of an all-False vector = 0 → baseline = original
    length = int(cfg["bblig_path_length"])
    if base_idx == 0:
        path = _quantise(((image + 1) / 2).expand(length, *image.shape[1:]))
    else:
        a = torch.linspace(0.0, float(alphas[base_idx]), length)
        with torch.no_grad():
            path = _quantise(dae.render(x_T, z + sign * a.to(z).reshape(-1, 1) * d))

    def f(x01: torch.Tensor) -> torch.Tensor:
        return _query_logits(classifier, x01 * 2 - 1, query)

    sig, error = latent_integrated_gradients(path, f, bool(cfg["bblig_approx_grad"]))
    return {"sig": sig.cpu(), "map": sig.sum(0).cpu(), "error": error, "image": path[0].cpu(),
            "baseline": path[-1].cpu(), "baseline_step": None if base_idx == 0 else float(alphas[base_idx]),
            "probs": p_own.cpu()}


def normalize_attribution(attr: np.ndarray, sign: str = "absolute_value", outlier_perc: float = 2.0) -> np.ndarray:
    """Captum ``visualization._normalize_attr``: keep one sign (or |·|), divide by the value above which
    ``outlier_perc`` % of the (cumulative) attribution mass lies, clip to [−1, 1] (BB-LIG's figures)."""
    if sign == "positive":
        attr = np.clip(attr, 0, None)
    elif sign == "negative":
        attr = -np.clip(attr, None, 0)
    elif sign == "absolute_value":
        attr = np.abs(attr)
    elif sign != "all":
        raise ValueError(f"sign must be positive, negative, absolute_value or all, got {sign!r}")
    values = np.sort(np.abs(attr).flatten())
    cums = np.cumsum(values)
    if cums.size == 0 or cums[-1] == 0:
        return np.zeros_like(attr)
    threshold = values[np.where(cums >= cums[-1] * 0.01 * (100 - outlier_perc))[0][0]]
    return np.clip(attr / threshold, -1, 1) if threshold > 0 else np.zeros_like(attr)


def save_bblig(result: dict[str, Any], out_stem: str | Path, title: str = "") -> tuple[Path, Path]:
    """Write ``{stem}.npz`` (sig, map, image, baseline, probs, error, baseline_step) and ``{stem}.png`` (image,
    baseline, |map| and signed map). Returns both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(result[k]) for k in ("sig", "map", "image", "baseline", "probs")}
    step = result["baseline_step"]
    np.savez_compressed(stem.with_suffix(".npz"), **arrays, error=np.float64(result["error"]),
                        baseline_step=np.float64(np.nan if step is None else step))

    def show(img: np.ndarray) -> np.ndarray:
        return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)

    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
    gray = arrays["image"].shape[0] == 1
    axes[0].imshow(show(arrays["image"]), cmap="gray" if gray else None, vmin=0, vmax=1)
    axes[0].set_title("image")
    axes[1].imshow(show(arrays["baseline"]), cmap="gray" if gray else None, vmin=0, vmax=1)
    axes[1].set_title("baseline" if step is not None else "no baseline found")
    axes[2].imshow(normalize_attribution(arrays["map"]), cmap="Blues", vmin=0, vmax=1)
    axes[2].set_title("|BB-LIG|")
    axes[3].imshow(normalize_attribution(arrays["map"], "all"), cmap="bwr", vmin=-1, vmax=1)
    axes[3].set_title(f"BB-LIG (err {result['error']:.2g})")
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png = stem.with_suffix(".png")
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return stem.with_suffix(".npz"), png
