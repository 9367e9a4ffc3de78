"""The study's figures, from the runs' TensorBoard scalars (matplotlib, Agg backend).

Every curve is the mean over a group's seeds with a band from the lowest to the highest
seed; long per-step series are averaged into at most ``MAX_POINTS`` bins first.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from initopt.report.collect import Group

MAX_POINTS = 400
FLOOR = 1e-12  # what a log scale shows for an exact zero (zero init's weight gradients)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, path: Path, legend_size: int = 8) -> Path:
    """Grid, legend, tight layout; save as PNG and close."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _binned(steps: np.ndarray, values: np.ndarray, n_bins: int = MAX_POINTS):
    """Mean of ``values`` in at most ``n_bins`` equal bins of consecutive steps."""
    if len(steps) <= n_bins:
        return steps, values
    edges = np.linspace(0, len(steps), n_bins + 1).astype(int)
    return (np.array([steps[a:b].mean() for a, b in zip(edges, edges[1:])]),
            np.array([values[a:b].mean() for a, b in zip(edges, edges[1:])]))


def _aligned(group: Group, tag: str):
    """(common steps, values per run on them) of ``tag`` over the group's runs, or None."""
    series = [r.scalars[tag] for r in group.runs if tag in r.scalars]
    if not series:
        return None
    common = series[0][0]
    for steps, _ in series[1:]:
        common = np.intersect1d(common, steps)
    if not len(common):
        return None
    return common, np.stack([vals[np.searchsorted(steps, common)] for steps, vals in series])


def seed_band(group: Group, tag: str):
    """(steps, mean, low, high) of ``tag`` over the group's runs, on the steps all of them have."""
    aligned = _aligned(group, tag)
    if aligned is None:
        return None
    common, stack = aligned
    stack = np.stack([_binned(common, row)[1] for row in stack])
    steps = _binned(common, common.astype(float))[1]
    return steps, stack.mean(0), stack.min(0), stack.max(0)


def _spans_decades(values: np.ndarray) -> bool:
    positive = values[np.isfinite(values) & (values > 0)]
    return len(positive) > 1 and positive.max() / positive.min() > 30


def training_curves(groups: list[Group], path: Path) -> Path:
    """The homework figure: train loss, train accuracy, held-out accuracy, mean gradient norm."""
    plt = _plt()
    panels = [("loss/batch", "training loss (mini-batch)"), ("accuracy/train", "training accuracy"),
              ("accuracy/test", "held-out accuracy"), ("grad_summary/mean_norm", "mean gradient norm")]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (tag, title) in zip(axes.flat, panels):
        everything = []
        for group in groups:
            band = seed_band(group, tag)
            if band is None:
                continue
            steps, mean, low, high = band
            line, = ax.plot(steps, mean, label=f"{group.label} (n={len(group.runs)})")
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, lw=0)
            everything.append(mean)
        if tag == "grad_summary/mean_norm" or (everything and _spans_decades(np.concatenate(everything))):
            ax.set_yscale("symlog" if tag == "grad_summary/mean_norm" else "log",
                          **({"linthresh": FLOOR * 1e3} if tag == "grad_summary/mean_norm" else {}))
        if "accuracy" in tag:
            ax.set_ylim(-0.02, 1.02)
        ax.set(title=title, xlabel="iteration (optimizer step)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("mean over seeds; band: lowest to highest seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _depth_order(tags: list[str], prefix: str) -> list[str]:
    def key(tag):
        name = tag[len(prefix):]
        layer = re.match(r"(fc|act)(\d+)", name)
        kind = 1 if name.endswith(".bias") else 0  # a layer's weight above its bias
        return (1, 0, kind, name) if layer is None else (0, int(layer.group(2)), kind, name)
    return sorted(tags, key=key)


def gradient_heatmaps(groups: list[Group], path: Path) -> Path:
    """Per group: parameter tensor (input at the top) x iteration, log colour of the gradient norm
    (geometric mean over seeds). Vanishing shows as a dark bottom-to-top fade, exploding as bright."""
    plt = _plt()
    from matplotlib.colors import LogNorm

    tags = _depth_order(sorted({t for g in groups for r in g.runs for t in r.scalars
                                if t.startswith("grad_norm/")}), "grad_norm/")
    n = len(groups)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 0.35 * len(tags) * rows + 2 * rows), squeeze=False,
                             constrained_layout=True)
    images = []
    for ax, group in zip(axes.flat, groups):
        bands = [seed_band_log(group, t) for t in tags]
        if not any(b is not None for b in bands):
            ax.set_visible(False)
            continue
        steps = next(b for b in bands if b is not None)[0]
        grid = np.array([b[1] if b is not None else np.full(len(steps), np.nan) for b in bands])
        images.append(ax.imshow(np.clip(grid, FLOOR, None), aspect="auto", interpolation="nearest",
                                norm=LogNorm(vmin=FLOOR, vmax=1), cmap="magma",
                                extent=[steps[0], steps[-1], len(tags) - 0.5, -0.5]))
        ax.set_yticks(range(len(tags)), [t[len("grad_norm/"):] for t in tags], fontsize=7)
        ax.set(title=group.label, xlabel="iteration")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    if images:
        vmax = max(np.nanmax(im.get_array()) for im in images)
        vmin = max(FLOOR, min(np.nanmin(im.get_array()) for im in images))
        for im in images:
            im.set_norm(LogNorm(vmin=vmin, vmax=max(vmax, vmin * 10)))
        fig.colorbar(images[0], ax=axes, label=f"gradient L2 norm (log; exact 0 shown as {FLOOR:g})")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def seed_band_log(group: Group, tag: str):
    """Geometric mean over seeds of a positive series (exact zeros floored), binned."""
    aligned = _aligned(group, tag)
    if aligned is None:
        return None
    common, stack = aligned
    logs = np.log(np.maximum(stack, FLOOR))
    steps, mean_log = _binned(common.astype(float), logs.mean(0))
    return steps, np.exp(mean_log)


def activations_by_depth(groups: list[Group], path: Path) -> Path | None:
    """Std of each hidden layer's output against depth: at initialization (solid) and at the
    last recorded step (dashed). He keeps it flat with ReLU, Xavier halves the variance per
    layer, small normal vanishes, large normal explodes."""
    tags = _depth_order(sorted({t for g in groups for r in g.runs for t in r.scalars
                                if t.startswith("activation_std/")}), "activation_std/")
    if not tags:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    depth = np.arange(1, len(tags) + 1)
    for group in groups:
        first, last = [], []
        for tag in tags:
            vals = [r.scalars[tag] for r in group.runs if tag in r.scalars]
            first.append(np.mean([v[1][0] for v in vals]) if vals else np.nan)
            last.append(np.mean([v[1][-1] for v in vals]) if vals else np.nan)
        line, = ax.plot(depth, np.maximum(first, FLOOR), "o-", label=f"{group.label}, at init")
        ax.plot(depth, np.maximum(last, FLOOR), "x--", color=line.get_color(), alpha=0.7,
                label=f"{group.label}, last step")
    ax.set(yscale="log", xlabel="hidden layer (depth)", ylabel="std of the layer's output",
           title="activations by depth (mean over seeds)")
    ax.set_xticks(depth)
    return _finish(fig, ax, path, legend_size=7)


def lr_sensitivity(groups: list[Group], lr_key: str, path: Path) -> Path:
    """Final held-out accuracy against the learning rate (log x), a line per remaining choice."""
    plt = _plt()
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for group in groups:
        rest = ",".join(f"{k}={v}" for k, v in group.choice.items() if k != lr_key) or "all runs"
        accs = [r.metrics["final"]["test_accuracy"] for r in group.finished]
        mean = float(np.mean(accs)) if accs else np.nan
        std = float(np.std(accs)) if accs else np.nan
        lines.setdefault(rest, []).append((float(group.choice[lr_key]), mean, std))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in lines.items():
        pts.sort()
        x, m, s = map(np.array, zip(*pts))
        ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=label)
    ax.set(xscale="log", xlabel=f"learning rate ({lr_key})", ylabel="final held-out accuracy",
           ylim=(-0.02, 1.02), title="learning-rate sensitivity (mean ± std over seeds; gaps: diverged)")
    return _finish(fig, ax, path)
