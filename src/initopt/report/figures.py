"""The study's line figures, from the runs' TensorBoard scalars (matplotlib, Agg backend):
training curves, the gradient norm of each weight tensor, learning-rate sensitivity.

Every line is the mean over a group's seeds, its band from the lowest to the highest seed (positive
on a log axis wherever every seed is); every panel over iterations uses the same log step axis,
step 0 (initialization) at its left end (the first steps, where He's gradient spike lives, keep a
point each; later steps are averaged into log-spaced bins); sparse series (evaluations) have a
marker at every point.
"""

from __future__ import annotations

import numpy as np

from initopt.report import style as st
from initopt.report.collect import WEIGHT_MEAN, Group, depth_order
from initopt.report.stats import seed_stats
from initopt.report.style import Styles

SPARSE = 60  # a curve with at most this many points gets markers


def draw(ax, groups: list[Group], styles: Styles, tag: str, log_x: bool, log_y: bool = False) -> list:
    """Mean line and min-max band of ``tag`` per group on ``ax``; returns the drawn means."""
    drawn, bands = [], []
    for group in groups:
        stats = seed_stats(group, tag, log=log_x)
        if stats is None:
            continue
        sparse = len(stats.steps) <= SPARSE
        kw = styles.kwargs(group, sparse=sparse)
        if not sparse and log_x:
            kw["markevery"] = styles.mark_indices(group, stats.steps)
        ax.plot(stats.steps, stats.mean, label=styles.label(group), **kw)
        if stats.n > 1:
            ax.fill_between(stats.steps, stats.low, stats.high, color=kw["color"], alpha=0.15, lw=0)
            bands += [stats.low, stats.high]
        drawn.append(stats.mean)
    if log_x and drawn:
        st.step_axis(ax)
    if log_y and drawn:
        means = np.concatenate(drawn)
        st.log_axis(ax, means)
        shown = np.concatenate([means, *bands])
        positive = shown[np.isfinite(shown) & (shown > 0)]
        if ax.get_yscale() == "log" and len(positive):  # lines and bands, all positive, inside the axes
            ax.set_ylim(positive.min() / 1.5, positive.max() * 1.5)
    return drawn


def _spans_decades(values: list) -> bool:
    if not values:
        return False
    v = np.concatenate(values)
    positive = v[np.isfinite(v) & (v > 0)]
    return len(positive) > 1 and positive.max() / positive.min() > 30


def training_curves(groups: list[Group], styles: Styles, title: str):
    """The homework figure: mini-batch loss, training and held-out accuracy, the mean gradient
    norm over all parameter tensors (1/T) sum_t ||g_t|| (the homework's), and the mean over the
    weight tensors only, where zero init is exactly 0 (only the output bias learns)."""
    fig, axes = st.plt().subplots(2, 3, figsize=(15, 8.5), sharex=True, constrained_layout=True)
    panels = [("loss/batch", "training loss (mini-batch)"),
              ("accuracy/train", "training accuracy (full training set)"),
              ("accuracy/test", "held-out accuracy"),
              ("grad_summary/mean_norm", "mean gradient norm, all tensors (weights and biases)"),
              (WEIGHT_MEAN, "mean gradient norm, weight tensors only")]
    for ax, (tag, name) in zip(axes.flat, panels):
        means = draw(ax, groups, styles, tag, log_x=True,
                     log_y=tag.startswith("grad_summary") or (tag == "loss/batch" and _loss_spans(groups)))
        if "accuracy" in tag:
            ax.set_ylim(-0.02, 1.02)
        if not means:
            ax.text(0.5, 0.5, f"no {tag} recorded", ha="center", transform=ax.transAxes)
        st.step_axis(ax)  # every panel, drawn or not: one shared log step axis
        ax.tick_params(labelbottom=True)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    styles.legend(axes.flat[5], st.seeds_note(groups) + "\nper-step curves: log-spaced bin means")
    fig.suptitle(title, fontsize=10)
    return fig


def _loss_spans(groups: list[Group]) -> bool:
    return _spans_decades([r.scalars["loss/batch"][1] for g in groups for r in g.runs if "loss/batch" in r.scalars])


def weight_gradients(groups: list[Group], styles: Styles, title: str):
    """One panel per weight tensor W_l: ||grad W_l|| against iteration (log-log). Zero init's
    weight gradients are exactly 0 at every step (drawn at "exactly 0"); normal(0.01)'s are small."""
    names = depth_order(sorted({t[len("grad_norm/"):] for g in groups for r in g.runs for t in r.scalars
                                if t.startswith("grad_norm/") and t.endswith(".weight")}))
    if not names:
        return None
    cols = min(4, len(names) + 1)
    rows = -(-(len(names) + 1) // cols)
    height = max(3.4 * rows, 0.19 * styles.legend_lines() + 1.0)  # the legend's panel holds it all
    fig, axes = st.plt().subplots(rows, cols, figsize=(4.2 * cols, height), squeeze=False, constrained_layout=True)
    for ax, name in zip(axes.flat, names):
        draw(ax, groups, styles, f"grad_norm/{name}", log_x=True, log_y=True)
        ax.set_title(f"||grad {name}||")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names) + 1:]:
        ax.set_visible(False)
    styles.legend(axes.flat[len(names)], st.seeds_note(groups))
    fig.suptitle(title + "\ngradient L2 norm of each weight tensor", fontsize=10)
    return fig


def lr_sensitivity(groups: list[Group], lr_key: str, title: str):
    """Final held-out accuracy against the learning rate (log x): mean, bars from the lowest to the
    highest seed that finished; a line per remaining choice; a missing point: no seed finished."""
    styles = Styles(groups, ignore=(lr_key,))
    lines: dict[str, list[tuple[float, float, float, Group]]] = {}
    for group in groups:
        accs = [r.metrics["final"]["test_accuracy"] for r in group.finished]
        mean = float(np.mean(accs)) if accs else np.nan
        low, high = (min(accs), max(accs)) if accs else (np.nan, np.nan)
        lines.setdefault(styles.label(group), []).append((float(group.choice[lr_key]), mean, low, high, group))
    fig, (ax, legend_ax) = st.plt().subplots(1, 2, figsize=(10, 4.8), width_ratios=(3, 1.3), constrained_layout=True)
    for pts in lines.values():
        pts.sort(key=lambda p: p[0])
        x, m, low, high = (np.array([p[i] for p in pts]) for i in range(4))
        kw = styles.kwargs(pts[0][4], sparse=True)
        bars = np.nan_to_num(np.stack([m - low, high - m]))
        ax.errorbar(x, m, yerr=bars, capsize=3, **{k: v for k, v in kw.items() if k != "markevery"})
    ax.set(xscale="log", xlabel=f"learning rate ({lr_key})", ylabel="final held-out accuracy", ylim=(-0.02, 1.02),
           title="learning-rate sensitivity")
    ax.grid(alpha=0.3)
    styles.legend(legend_ax, "mean over the n finished seeds,\nbar: lowest to highest seed;\n"
                  "no bar: n = 1; no point: diverged")
    fig.suptitle(title, fontsize=10)
    return fig
