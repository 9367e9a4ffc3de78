"""Gradient-norm heat maps: per group, parameter tensor (input at the top) x iteration (log
scale, log-spaced bins), colour = log of the mean over seeds of ||grad||. Exact zeros (zero
init's weight gradients: every one is 0) are masked out of the colour scale and drawn in one
distinct colour labelled "exactly 0", so the colour bar spans only the positive norms.
"""

from __future__ import annotations

import math

import numpy as np

from initopt.report import style as st
from initopt.report.collect import Group, depth_order
from initopt.report.stats import seed_stats


def grid_of(group: Group, names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(bin centres, tensors x bins array of the mean over seeds of ||grad||; NaN: not recorded)."""
    rows = [seed_stats(group, f"grad_norm/{n}", log=True) for n in names]
    first = next((r for r in rows if r is not None), None)
    if first is None:
        return None
    nan = np.full(len(first.steps), np.nan)
    return first.steps, np.array([r.mean if r is not None and len(r.mean) == len(nan) else nan for r in rows])


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around the bin centres: geometric midpoints (log axis) or arithmetic ones."""
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    if centres[0] > 0:
        mid = np.sqrt(centres[:-1] * centres[1:])
        return np.concatenate([[centres[0] ** 2 / mid[0]], mid, [centres[-1] ** 2 / mid[-1]]])
    mid = (centres[:-1] + centres[1:]) / 2
    return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def _layout(groups: list[Group]) -> list[tuple[int, int]]:
    """Panel (row, column) per group: rows = inits and columns = optimizers for an init x optim
    grid, else four to a row in order."""
    inits = list(dict.fromkeys(g.init for g in groups))
    optims = list(dict.fromkeys(g.optim for g in groups))
    if (len(inits) > 1 and len(optims) > 1 and len(inits) * len(optims) == len(groups)
            and len({(g.init, g.optim) for g in groups}) == len(groups)):
        return [(inits.index(g.init), optims.index(g.optim)) for g in groups]
    cols = min(4, len(groups))
    return [(k // cols, k % cols) for k in range(len(groups))]


def gradient_heatmaps(groups: list[Group], title: str):
    """The figure: one panel per group, colour log10 of mean_seeds ||grad_t|| per tensor t and
    log-spaced step bin; one LogNorm over the positive cells of all panels; exact zeros apart."""
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.patches import Patch

    names = depth_order(sorted({t[len("grad_norm/"):] for g in groups for r in g.runs for t in r.scalars
                                if t.startswith("grad_norm/")}))
    grids = {g.label: grid_of(g, names) for g in groups}
    values = np.concatenate([v.ravel() for _, v in filter(None, grids.values())] or [np.array([np.nan])])
    positive = values[np.isfinite(values) & (values > 0)]
    norm = LogNorm(vmin=positive.min(), vmax=max(positive.max(), positive.min() * 10)) if len(positive) else None
    places = _layout(groups)
    rows, cols = max(p[0] for p in places) + 1, max(p[1] for p in places) + 1
    fig, axes = st.plt().subplots(rows, cols, figsize=(4.6 * cols, (0.2 * len(names) + 1.3) * rows + 1),
                                  squeeze=False, sharex=True, constrained_layout=True)
    mesh = None
    for group, (r, c) in zip(groups, places):
        ax, found = axes[r][c], grids[group.label]
        ax.set_title(group.label, fontsize=9)
        if found is None:
            ax.text(0.5, 0.5, "no gradient norms recorded", ha="center", transform=ax.transAxes)
            continue
        steps, grid = found
        x, y = _edges(steps), np.arange(len(names) + 1) - 0.5
        if norm is not None:
            mesh = ax.pcolormesh(x, y, np.ma.masked_where(~(grid > 0), grid), norm=norm, cmap="magma", rasterized=True)
        # rasterized: in the SVG each mesh is one embedded image, not a path a cell (the study's
        # heat maps: 27.5 MB of SVG, 136,000 paths, ~10 s to write); axes and text stay vectors
        ax.pcolormesh(x, y, np.ma.masked_where(grid != 0, np.zeros_like(grid)), cmap=ListedColormap([st.ZERO_COLOUR]),
                      rasterized=True)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_ylim(len(names) - 0.5, -0.5)
        if steps[0] > 0:
            ax.set_xscale("log")
        if r == max(p[0] for p in places if p[1] == c):
            ax.set_xlabel("iteration (log scale)", fontsize=8)
    used = set(places)
    for r in range(rows):
        for c in range(cols):
            axes[r][c].set_visible((r, c) in used)
    if mesh is not None:
        fig.colorbar(mesh, ax=axes, label=f"||grad|| (L2), mean over seeds; log colour, {_decades(norm)} decades",
                     shrink=min(1.0, 6 / rows + 0.2))
    if (values == 0).any():
        fig.legend(handles=[Patch(color=st.ZERO_COLOUR, label=f"{st.ZERO_LABEL} (every seed, whole bin)")],
                   loc="outside lower center", fontsize=9)
    fig.suptitle(title + "\ngradient norm per parameter tensor (input layer at the top) against iteration",
                 fontsize=10)
    return fig


def _decades(norm) -> str:
    return f"{math.log10(norm.vmax / norm.vmin):.1f}"
