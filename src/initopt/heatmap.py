"""The gradient-norm heat map as a PNG: parameter tensor x step, drawn as pixels.

Rows are the parameter tensors in network order (input layer at the top), columns the
logged steps, averaged into at most ``max_columns`` bins of consecutive steps. The colour is
log10 of the L2 norm (matplotlib's magma) between the smallest and largest positive norm, with
a colour bar on the right (bottom: smallest, top: largest); an exact zero (zero init's weight
gradients) gets its own colour instead of stretching the bar; a non-finite norm is grey. The
axis values go into the image's description (:func:`heatmap_description`).

Drawn with numpy and encoded with zlib rather than through a matplotlib figure: a figure cost
~0.2-0.4 s a run (layout and text), more than a small run trains; every run writes one.
"""

from __future__ import annotations

import struct
import zlib
from functools import cache

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


ROW_PX, MIN_WIDTH, BAR_PX, GAP_PX = 16, 400, 16, 6


@cache
def _magma() -> np.ndarray:
    """(256, 3) uint8: matplotlib's magma colour map, looked up once per process."""
    from matplotlib import colormaps

    return (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (H, W, 3) uint8: signature, IHDR, one IDAT, IEND."""
    height, width = rgb.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)  # filter 0 a row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def norm_range(norms: np.ndarray) -> tuple[float, float]:
    """The colour scale's ends: the smallest and largest positive finite norm."""
    positive = norms[np.isfinite(norms) & (norms > 0)]
    lo, hi = (float(positive.min()), float(positive.max())) if positive.size else (1e-3, 1.0)
    return lo, max(hi, lo * 10)


def _colours(grid: np.ndarray, lo: float, hi: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = (np.log10(np.clip(grid, lo, hi)) - np.log10(lo)) / (np.log10(hi) - np.log10(lo))
    rgb = _magma()[np.nan_to_num(scaled * 255, nan=0).round().astype(int).clip(0, 255)]
    rgb[grid == 0] = (np.array(ZERO_COLOUR[:3]) * 255).astype(np.uint8)
    rgb[~np.isfinite(grid)] = (np.array(NON_FINITE_COLOUR[:3]) * 255).astype(np.uint8)
    return rgb


def grad_norm_heatmap_png(steps: np.ndarray, norms: np.ndarray, names: list[str],
                          max_columns: int = 400) -> tuple[bytes, int, int]:
    """``(png, width, height)`` of the heat map of ``norms`` (n steps x P tensors)."""
    _, grid = binned_columns(np.asarray(steps), np.asarray(norms, dtype=float), max_columns)
    grid = grid.T  # tensors x steps
    lo, hi = norm_range(grid)
    cells = _colours(grid, lo, hi)
    col_px = max(1, -(-MIN_WIDTH // grid.shape[1]))
    body = np.repeat(np.repeat(cells, ROW_PX, axis=0), col_px, axis=1)
    height = body.shape[0]
    bar = _magma()[np.linspace(255, 0, height).round().astype(int)][:, None, :].repeat(BAR_PX, axis=1)
    gap = np.full((height, GAP_PX, 3), 255, np.uint8)
    image = np.concatenate([body, gap, bar], axis=1)
    return encode_png(image), image.shape[1], image.shape[0]


def heatmap_description(steps: np.ndarray, norms: np.ndarray, names: list[str]) -> str:
    """What the pixels mean: rows, columns and the colour scale's ends."""
    lo, hi = norm_range(np.asarray(norms, dtype=float))
    zero = " Cyan: exactly 0." if (np.asarray(norms) == 0).any() else ""
    return (f"Gradient L2 norm per parameter tensor. Rows, top to bottom: {', '.join(names)}. "
            f"Columns: steps {int(steps[0])} to {int(steps[-1])}. Colour: log10 norm, magma, from {lo:.3g} "
            f"(dark) to {hi:.3g} (bright), the bar on the right.{zero} Grey: not finite.")
