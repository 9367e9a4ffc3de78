"""The gradient-norm heat map as a PNG: parameter tensor x step, drawn as pixels, with axes.

Rows are the parameter tensors in network order (input layer at the top, their names on the
left), columns the steps on a log axis (:func:`log_columns`: a pixel column covers an equal
step ratio, so step 1 is as wide as steps 100-199; ticks at 1, 10, 100, ... below). The colour is
log10 of the L2 norm (matplotlib's magma) on a given scale ``(lo, hi)`` (a sweep's: every run
of the sweep on the same one; by default the norms' own range), printed at the ends of the
colour bar on the right; an exact zero (zero init's weight gradients) gets its own colour
instead of stretching the bar; a non-finite norm is grey. The axis values also go into the
image's description (:func:`heatmap_description`).

Pixels with numpy, text with Pillow's default font (matplotlib's dependency): a matplotlib
figure cost ~0.2-0.4 s a run (layout and text), more than a small run trains.
"""

from __future__ import annotations

import struct
import zlib
from functools import cache, lru_cache

import numpy as np

from initopt.cache import cache_dir, keep

ZERO_COLOUR = (0.0, 0.75, 0.85, 1.0)  # cyan: not in magma
NON_FINITE_COLOUR = (0.6, 0.6, 0.6, 1.0)


def log_columns(steps: np.ndarray, norms: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(edges, grid)``: ``width`` pixel columns of equal log-step width from the first step to
    one past the last; column j is the mean of the rows whose step interval ``[s_i, s_i+1)``
    meets ``[edges[j], edges[j+1])`` (a step wider than a pixel fills several columns; the mean
    is exactly 0 only if all its norms are 0). ``grid`` is ``(width, P)``."""
    steps = np.asarray(steps, dtype=float)
    ends = np.append(steps[1:], steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1.0))
    first = max(steps[0], 1.0)
    edges = np.geomspace(first, ends[-1], width + 1)
    lo = np.searchsorted(ends, edges[:-1], side="right")  # first row ending after the column starts
    hi = np.searchsorted(steps, edges[1:], side="left")  # rows starting before the column ends
    hi = np.maximum(hi, lo + 1)
    # the sums over [lo, hi) of every column in one call: reduceat over the pairs (lo, hi), a
    # zero row appended so that hi may be the end (the odd entries, hi to the next lo, are dropped)
    norms = np.asarray(norms, dtype=float)
    padded = np.vstack([norms, np.zeros((1, norms.shape[1]))])
    sums = np.add.reduceat(padded, np.column_stack([lo, hi]).ravel(), axis=0)[::2]
    return edges, sums / (hi - lo)[:, None]


ROW_PX, WIDTH, BAR_PX, GAP_PX, PAD = 16, 400, 16, 6, 4


@cache
def _magma() -> np.ndarray:
    """(256, 3) uint8: matplotlib's magma colour map, looked up once and kept in the cache
    folder (``INITOPT_CACHE``, default ~/.cache/initopt): importing matplotlib takes ~0.2 s, as
    long as a small run trains. An unreadable copy is looked up again; an unwritable folder skipped."""
    path = cache_dir() / "magma.npy"
    try:
        table = np.load(path)
        if table.shape == (256, 3) and table.dtype == np.uint8:
            return table
    except (OSError, ValueError):
        pass
    from matplotlib import colormaps

    table = (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    keep(path, lambda partial: np.save(partial, table))
    return table


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (H, W, 3) uint8: signature, IHDR, one IDAT, IEND. zlib's
    fastest level: a sweep writes one image a run (a 533 x 144 heat map: 1.3 ms and 11 KB, where
    level 6 takes 3.7 ms for 9 KB)."""
    height, width = rgb.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)  # filter 0 a row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + chunk(b"IEND", b""))


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


@cache
def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _text_width(draw, text: str) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=_font())
    return int(right - left)


def _decade_ticks(first: float, last: float) -> list[int]:
    """1, 10, 100, ... within ``[first, last]`` (at least the two ends)."""
    ticks = [10**d for d in range(0, 10) if first <= 10**d <= last]
    return ticks or [int(first), int(last)]


def grad_norm_heatmap_png(steps: np.ndarray, norms: np.ndarray, names: list[str],
                          scale: tuple[float, float] | None = None, width: int = WIDTH) -> tuple[bytes, int, int]:
    """``(png, width, height)`` of the heat map of ``norms`` (n steps x P tensors) on the colour
    scale ``scale`` (default :func:`norm_range` of ``norms``)."""
    norms = np.asarray(norms, dtype=float)
    lo, hi = scale or norm_range(norms)
    edges, grid = log_columns(np.asarray(steps), norms, width)
    body = np.repeat(_colours(grid.T, lo, hi), ROW_PX, axis=0)  # tensors x pixel columns
    frame, left, top = _frame(tuple(names), float(lo), float(hi), float(edges[0]), float(edges[-2]),
                              float(edges[-1]), width)
    canvas = frame.copy()
    canvas[top:top + body.shape[0], left:left + width] = body
    return encode_png(canvas), canvas.shape[1], canvas.shape[0]


@lru_cache(maxsize=32)
def _frame(names: tuple[str, ...], lo: float, hi: float, first: float, last_tick: float, last: float,
           width: int) -> tuple[np.ndarray, int, int]:
    """Everything around the pixels (title, tensor names, step ticks, colour bar and its ends) and
    where the pixels go: ``(canvas, left, top)``. The runs of a sweep share names, scale and steps,
    so the text (~5 ms an image with Pillow) is drawn once for all of them."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = int(probe.textbbox((0, 0), "0", font=_font())[3]) + 2
    label_w = max(_text_width(probe, n) for n in names) + 2 * PAD
    bar_label = [f"{hi:.3g}", f"{lo:.3g}"]
    right_w = GAP_PX + BAR_PX + PAD + max(_text_width(probe, t) for t in bar_label) + PAD
    top, bottom = line + PAD, 2 * line + 2 * PAD
    h_body = ROW_PX * len(names)
    canvas = np.full((top + h_body + bottom, label_w + width + right_w, 3), 255, np.uint8)
    bar = _magma()[np.linspace(255, 0, h_body).round().astype(int)][:, None, :].repeat(BAR_PX, axis=1)
    x_bar = label_w + width + GAP_PX
    canvas[top:top + h_body, x_bar:x_bar + BAR_PX] = bar
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    ink = (0, 0, 0)
    draw.text((PAD, 1), "gradient L2 norm per tensor, log colour", fill=ink, font=_font())
    for r, name in enumerate(names):
        draw.text((label_w - PAD - _text_width(draw, name), top + r * ROW_PX + (ROW_PX - line) // 2 + 1),
                  name, fill=ink, font=_font())
    log_first, log_span = np.log(first), np.log(last) - np.log(first)
    y_axis = top + h_body
    for tick in _decade_ticks(first, last_tick):
        x = label_w + int(round((np.log(tick) - log_first) / log_span * width)) if log_span > 0 else label_w
        draw.line([(x, y_axis), (x, y_axis + PAD)], fill=ink)
        text = str(tick)
        draw.text((min(max(x - _text_width(draw, text) // 2, label_w), label_w + width - _text_width(draw, text)),
                   y_axis + PAD), text, fill=ink, font=_font())
    draw.text((label_w, y_axis + PAD + line), "step (log scale)", fill=ink, font=_font())
    draw.text((x_bar + BAR_PX + PAD, top), bar_label[0], fill=ink, font=_font())
    draw.text((x_bar + BAR_PX + PAD, top + h_body - line), bar_label[1], fill=ink, font=_font())
    frame = np.asarray(image).copy()
    frame.flags.writeable = False  # shared between calls: each copies it
    return frame, label_w, top


def heatmap_description(steps: np.ndarray, norms: np.ndarray, names: list[str],
                        scale: tuple[float, float] | None = None) -> str:
    """What the pixels mean: rows, columns and the colour scale's ends."""
    norms = np.asarray(norms, dtype=float)
    lo, hi = scale or norm_range(norms)
    zero = " Cyan: exactly 0." if (norms == 0).any() else ""
    return (f"Gradient L2 norm per parameter tensor. Rows, top to bottom: {', '.join(names)}. "
            f"Columns: steps {int(steps[0])} to {int(steps[-1])} on a log axis. Colour: log10 norm, magma, "
            f"from {lo:.3g} (dark) to {hi:.3g} (bright), the bar on the right (the same scale for every "
            f"run of a sweep).{zero} Grey: not finite.")
