"""Counterfactual methods: one self-contained module per method, one ``generate`` entry point each.

Every method takes the same arguments — ``generate(images, labels, *, models, config, generators,
targets=None, progress=False) -> MethodOutput`` — with images in [−1,1], ``models`` a dict of the networks
it needs, ``config`` its hyper-parameters under the upstream names, and one ``torch.Generator`` per image.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the workflow imports this module while planning, without torch
    import torch

METHODS = {"dime": "cfx.methods.dime", "ace": "cfx.methods.ace", "svce": "cfx.methods.svce", "gcd": "cfx.methods.gcd",
           "ldce": "cfx.methods.ldce"}
# Results/<name> folder each method's generation rule writes, and the one its metrics read (ACE: the attack
# writes pre-explanations, the ace_postprocess rule the explanations the papers evaluate).
GENERATED_RESULTS = {"dime": "dime", "ace": "ace/pre-explanation", "svce": "svce", "gcd": "gcd", "ldce": "ldce"}
EVALUATED_RESULTS = {"dime": "dime", "ace": "ace/explanation", "svce": "svce", "gcd": "gcd", "ldce": "ldce"}
OUTPUT_FORMAT = {"dime": ("jpg", "dime"), "ace": ("png", "ace"), "svce": ("png", "svce"),  # extension, Info format
                 "gcd": ("png", "dime"), "ldce": ("png", "dime")}
# Methods that search without the experiment's DDPM (it is neither an input nor loaded; GCD uses a DiffAE, LDCE
# its latent diffusion model)
NO_DDPM = frozenset({"svce", "gcd", "ldce"})
# The network a method brings besides the experiment's: the key of its suite entry naming a models entry, which is
# also its checkpoint role in generation (GCD's DiffAE, LDCE's latent diffusion model)
OWN_MODEL_KEY = {"gcd": "diffae", "ldce": "ldm"}


# Whether a method's results depend on its batch size, from its config (torch-free, for planning): ACE's PGD / GD
# classification loss is averaged over the batch (ACE core/attacks_and_models.py), so its l1 weight relative to it
# changes with the batch, unless batch_reference fixes the divisor (CW sums its loss); LDCE's binary log-likelihood
# is a batch mean too, which its per-image norm matching (enforce_same_norms, on in every shipped config) cancels.
# Every other method works per image with per-image random streams.
BATCH_DEPENDENT = {
    "ace": lambda config: config.get("attack_method", "PGD") != "CW" and config.get("batch_reference") is None,
    "ldce": lambda config: not config.get("enforce_same_norms", True),
}


# Methods whose suite entries may not have variants: their further rules (GCD's direction search and BB-LIG) are
# written for the method's own name
NO_VARIANTS = {"gcd": "GCD's direction and BB-LIG rules"}


def implementation(name: str) -> str:
    """The method behind a suite method name: the name itself, or for a variant ``<method>_<label>`` (a second row of
    the same method with other settings or networks, e.g. ``ldce_txt``: LDCE conditioned on text prompts) its
    method. A variant writes its own ``Results/<name>`` folder."""
    if name in METHODS:
        return name
    base = name.split("_", 1)[0]
    if "_" not in name or base not in METHODS:
        raise KeyError(f"unknown method '{name}'; known methods: {', '.join(sorted(METHODS))}, or a variant "
                       f"<method>_<label> of one (e.g. ldce_txt)")
    if base in NO_VARIANTS:
        raise ValueError(f"method '{name}' would be a variant of {base}, which cannot have variants yet: "
                         f"{NO_VARIANTS[base]} is written for '{base}' only")
    return base


def generated_results(name: str) -> str:
    """The ``Results/`` folder generation of ``name`` writes (a variant's own name in place of its method's)."""
    base = implementation(name)
    return GENERATED_RESULTS[base].replace(base, name, 1)


def evaluated_results(name: str) -> str:
    """The ``Results/`` folder the metrics of ``name`` read."""
    base = implementation(name)
    return EVALUATED_RESULTS[base].replace(base, name, 1)


def results_folder(name: str) -> str:
    """:func:`evaluated_results`, or ``name`` itself for a name that is no method (trees of other tools)."""
    try:
        return evaluated_results(name)
    except (KeyError, ValueError):
        return name


def output_format(name: str) -> tuple[str, str]:
    """(image extension, Info format) of ``name``'s trees."""
    return OUTPUT_FORMAT[implementation(name)]


def own_model_key(name: str | None) -> str | None:
    """The suite key naming the network ``name`` brings (:data:`OWN_MODEL_KEY`), or None."""
    return OWN_MODEL_KEY.get(implementation(name)) if name else None


def batch_size_matters(name: str, config: dict[str, Any]) -> bool:
    """Whether ``name``'s counterfactuals depend on its ``batch_size`` (:data:`BATCH_DEPENDENT`). Where they do, the
    batch size is a generation setting like any other (a change regenerates the chunk); where they do not, changing
    it re-runs nothing."""
    rule = BATCH_DEPENDENT.get(implementation(name))
    return bool(rule and rule(config or {}))


def uses_ddpm(method: str | None) -> bool:
    """Whether generation with ``method`` loads the experiment's DDPM (None: a step of DiME/ACE's kind)."""
    return method is None or implementation(method) not in NO_DDPM


@dataclass
class MethodOutput:
    """What a method returns for a batch (tensors on the input's device)."""

    counterfactuals: torch.Tensor
    noise: torch.Tensor
    preds: torch.Tensor
    targets: torch.Tensor
    cf_preds: torch.Tensor
    info: list[dict[str, Any]] = field(default_factory=list)
    # further results of the same images written next to the evaluated ones, Results/<method>/<name>/ (SVCE: the
    # counterfactuals of the other radii); the module's ``variant_names(config)`` lists the names
    variants: dict[str, MethodOutput] = field(default_factory=dict)


def check_inputs(method: str, config: dict[str, Any], defaults: dict[str, Any], images: torch.Tensor,
                 generators: list[torch.Generator]) -> dict[str, Any]:
    """The config merged over the method's defaults; unknown keys and a generator count that does not match
    the batch are errors naming them."""
    unknown = set(config) - set(defaults)
    if unknown:
        raise KeyError(f"unknown {method} config keys {sorted(unknown)}; known: {sorted(defaults)}")
    if len(generators) != images.shape[0]:
        raise ValueError(f"{len(generators)} generators for {images.shape[0]} images")
    return {**defaults, **config}


def get_method(name: str) -> ModuleType:
    """The module implementing method ``name`` (a variant's: its method's, :func:`implementation`)."""
    return importlib.import_module(METHODS[implementation(name)])
