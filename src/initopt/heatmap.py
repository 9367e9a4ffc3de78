"""The gradient-norm heat map as a PNG (matplotlib, Agg): parameter tensor x step.

Rows are the parameter tensors in network order (input layer at the top), columns the
logged steps, averaged into at most ``max_columns`` bins of consecutive steps. The colour is
log10 of the L2 norm on a colour bar spanning the positive norms; an exact zero (zero init's
weight gradients) gets its own colour, labelled "exactly 0", instead of stretching the bar;
a non-finite norm is grey.
"""

from __future__ import annotations

import io

import numpy as np

ZERO_COLOUR = (0.0, 0.75, 0.85, 1.0)  # cyan: not in magma
NON_FINITE_COLOUR = (0.6, 0.6, 0.6, 1.0)


def binned_columns(steps: np.ndarray, norms: np.ndarray, max_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean step and mean norm of at most ``max_columns`` bins of consecutive rows (a bin's
    mean is exactly 0 only if all its norms are 0)."""
    if len(steps) <= max_columns:
        return steps.astype(float), norms
    edges = np.linspace(0, len(steps), max_columns + 1).astype(int)
    pairs = list(zip(edges[:-1], edges[1:]))
    return (np.array([steps[a:b].mean() for a, b in pairs]),
            np.stack([norms[a:b].mean(0) for a, b in pairs]))


def grad_norm_heatmap_png(steps: np.ndarray, norms: np.ndarray, names: list[str],
                          max_columns: int = 400, dpi: int = 100) -> tuple[bytes, int, int]:
    """``(png, width, height)`` of the heat map of ``norms`` (n steps x P tensors)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Patch

    cols, grid = binned_columns(np.asarray(steps), np.asarray(norms, dtype=float), max_columns)
    grid = grid.T  # tensors x steps
    positive = grid[np.isfinite(grid) & (grid > 0)]
    lo, hi = (positive.min(), positive.max()) if positive.size else (1e-3, 1.0)
    norm = LogNorm(vmin=lo, vmax=max(hi, lo * 10))
    cmap = plt.get_cmap("magma")
    with np.errstate(divide="ignore", invalid="ignore"):
        rgba = cmap(norm(np.where(grid > 0, grid, lo)))
    rgba[grid == 0] = ZERO_COLOUR
    rgba[~np.isfinite(grid)] = NON_FINITE_COLOUR

    width_in, height_in = 6.4, 1.5 + 0.3 * len(names)  # readable at TensorBoard's card size
    fig, ax = plt.subplots(figsize=(width_in, height_in), dpi=dpi, layout="constrained")
    half = (cols[1] - cols[0]) / 2 if len(cols) > 1 else 0.5
    ax.imshow(rgba, aspect="auto", interpolation="nearest",
              extent=[cols[0] - half, cols[-1] + half, len(names) - 0.5, -0.5])
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.set_xlabel("step")
    ax.set_title("gradient L2 norm per parameter tensor", fontsize=10)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="||g|| (log)")
    if (grid == 0).any():
        fig.legend(handles=[Patch(color=ZERO_COLOUR, label="exactly 0")], loc="outside lower right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue(), int(round(width_in * dpi)), int(round(height_in * dpi))
