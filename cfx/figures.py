"""Figures: the per-experiment grid (original | counterfactual | difference) for one method, SVCE's radii figure and
the summary figure of a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cfx.io.tree import iter_instances  # noqa: E402
from cfx.methods import results_folder  # noqa: E402
from cfx.runtime.files import atomic_path


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def grid_figure(tree_root: Path, method: str, out_path: Path, *, n_images: int = 8, title: str = "") -> Path:
    """Save a 3-row grid: originals, counterfactuals and |x − x'| (amplified to the grid's maximum)."""
    found = iter_instances(Path(tree_root), results_folder(method))
    instances = sorted(found, key=lambda inst: inst["stem"])[:n_images]
    if not instances:
        raise ValueError(f"no instances of method '{method}' under {tree_root}")
    originals = [_rgb(inst["original_path"]) for inst in instances]
    cfs = [_rgb(inst["cf_path"]) for inst in instances]
    diffs = [np.abs(o - c).mean(axis=2) for o, c in zip(originals, cfs, strict=True)]
    scale = max(float(d.max()) for d in diffs) or 1.0
    n = len(instances)
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n + 0.8, 4.3), squeeze=False)
    for k, inst in enumerate(instances):
        info = inst["info"]
        axes[0, k].imshow(originals[k])
        axes[0, k].set_title(f"{inst['stem'][-4:]}: {info['pred']}→{info['cf_pred']}", fontsize=7)
        axes[1, k].imshow(cfs[k])
        axes[2, k].imshow(diffs[k] / scale, cmap="magma", vmin=0, vmax=1)
        for row in range(3):
            axes[row, k].set_xticks([])
            axes[row, k].set_yticks([])
    for row, label in enumerate(["original", "counterfactual", "|difference|"]):
        axes[row, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out_path


def table_figure(table_csv: Path, out_path: Path, *, title: str = "") -> Path:
    """One panel per metric of a table CSV (:mod:`cfx.tables`): bars per method grouped by task, the published
    value as a black tick where the suite has one, "n/a" where the metric is not applicable; ↑/↓ in each panel
    title says which direction is better."""
    import pandas as pd

    df = pd.read_csv(table_csv)
    if df.empty:
        raise ValueError(f"{table_csv} has no rows")
    metrics = list(dict.fromkeys(df["metric"]))
    tasks = list(dict.fromkeys(df["task"]))
    methods = list(dict.fromkeys(df["method"]))
    columns = min(4, len(metrics))
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False)
    width = 0.8 / len(methods)
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes.flat, metrics, strict=False):
        sub = df[df["metric"] == metric]
        for m, method in enumerate(methods):
            for t, task in enumerate(tasks):
                row = sub[(sub["method"] == method) & (sub["task"] == task)]
                if row.empty:
                    continue
                x = t - 0.4 + width * (m + 0.5)
                value = row["value"].iloc[0]
                if pd.isna(value):
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                else:
                    ax.bar(x, value, width, color=colours(m), label=method if t == 0 else None)
                published = row["published"].iloc[0]
                if not pd.isna(published):
                    ax.plot([x - width / 2, x + width / 2], [published, published], color="black", lw=2)
        arrow = "↑" if bool(sub["higher_is_better"].iloc[0]) else "↓"
        unit = sub["unit"].dropna().iloc[0] if not sub["unit"].dropna().empty else ""
        ax.set_title(f"{metric} {arrow}" + (f" ({unit})" if unit else ""), fontsize=9)
        ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    legend: dict[str, Any] = {}  # method -> bar handle, from any panel (a metric may be n/a for every method)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    if df["published"].notna().any():
        handles.append(plt.Line2D([], [], color="black", lw=2))
        labels.append("published")
    if labels:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    stand_ins = sorted({s for s in df["stand_ins"].dropna() if s})
    subtitle = "mini stand-in networks: see the table's stand_ins column" if stand_ins else ""
    header_bottom = _draw_header(fig, title or Path(table_csv).stem, subtitle)
    fig.tight_layout(rect=(0, 0.06, 1, header_bottom))
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return out_path


def _draw_header(fig: plt.Figure, title: str, subtitle: str = "", *, gap_points: float = 4.0) -> float:
    """Draw ``title`` at the top of ``fig`` and ``subtitle`` (if any) below it, each placed from the measured height
    of the text above (a fixed figure fraction overlaps on short figures); return the figure fraction under both,
    the top of the rect to lay the panels out in."""
    renderer = fig.canvas.get_renderer()
    gap = gap_points / 72 / fig.get_figheight()  # points -> figure fraction

    def bottom(text: plt.Text) -> float:
        return float(text.get_window_extent(renderer).transformed(fig.transFigure.inverted()).y0)

    # in_layout=False: tight_layout would reserve the title's height a second time under the rect's top
    below = bottom(fig.suptitle(title, fontsize=10, y=1 - gap, va="top", in_layout=False))
    if subtitle:
        below = bottom(fig.text(0.5, below - gap / 2, subtitle, ha="center", va="top", fontsize=7, color="dimgray"))
    return below - gap


def _radius_trees(tree_root: Path, method: str) -> list[tuple[float, dict[str, dict]]]:
    """(radius, {stem: instance}) for the evaluated folder and every ``radius_*`` folder next to it, by radius."""
    base = results_folder(method)
    folders = [base] + sorted(f"{base}/{p.name}" for p in (Path(tree_root) / "Results" / base).glob("radius_*")
                              if p.is_dir())
    trees = {}
    for folder in folders:
        instances = {inst["stem"]: inst for inst in iter_instances(Path(tree_root), folder)}
        if not instances:
            continue
        radius = next(iter(instances.values()))["info"].get("radius")
        if radius is None:
            raise ValueError(f"{tree_root}/Results/{folder} has Info files without a radius (not SVCE's format)")
        trees[radius] = instances
    return sorted(trees.items())


def svce_figure(tree_root: Path, out_path: Path, *, method: str = "svce", n_images: int = 8,
                stems: list[str] | None = None, class_names: list[str] | None = None, title: str = "") -> Path:
    """SVCE's figure (``utils/visual_counterfactual_generation.py:_plot_counterfactuals``), one row per instance
    (an image with its target; upstream: the targets of one image): the original titled with the target's
    confidence before, the counterfactual of every radius titled with it after, and per radius the channel-summed
    difference original − counterfactual in a symmetric ``seismic`` map (upstream ``_plot_diff_image``)."""
    trees = _radius_trees(Path(tree_root), method)
    if not trees:
        raise ValueError(f"no SVCE instances under {tree_root}/Results/{results_folder(method)}")
    common = set.intersection(*(set(instances) for _, instances in trees))
    chosen = [s for s in (stems or sorted(common)) if s in common][:n_images]
    if not chosen:
        raise ValueError(f"none of the stems {stems} has a counterfactual at every radius under {tree_root}")

    def name(label: int) -> str:
        return class_names[label] if class_names and 0 <= label < len(class_names) else str(label)

    n_radii = len(trees)
    fig, axes = plt.subplots(len(chosen), 1 + 2 * n_radii, figsize=(1.5 * (1 + 2 * n_radii), 1.75 * len(chosen)),
                             squeeze=False)
    for row, stem in enumerate(chosen):
        first = trees[0][1][stem]
        original = _rgb(first["original_path"])
        target = first["info"]["target"]
        axes[row, 0].imshow(original)
        axes[row, 0].set_title(f"{stem[-4:]} {name(target)}: {first['info']['p_target_original']:.2f}",
                               fontsize=6)
        for col, (radius, instances) in enumerate(trees):
            inst = instances[stem]
            cf = _rgb(inst["cf_path"])
            axes[row, 1 + col].imshow(cf)
            axes[row, 1 + col].set_title(f"ε={radius:g} {name(target)}: {inst['info']['p_target']:.2f}",
                                         fontsize=6)
            diff = (original - cf).sum(axis=2)
            bound = float(np.abs(diff).max()) or 1.0
            axes[row, 1 + n_radii + col].imshow(diff, cmap="seismic", vmin=-bound, vmax=bound)
            axes[row, 1 + n_radii + col].set_title(f"x − x', ε={radius:g}", fontsize=6)
        for ax in axes[row]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out_path
