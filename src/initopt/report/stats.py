"""Statistics over seeds, with ONE definition of the spread used by every table and figure:
the mean m = (1/n) sum x_i and the sample standard deviation
sd = sqrt(sum (x_i - m)^2 / (n - 1)) over the n seeds (ddof = 1), undefined for n = 1.

Figures draw a band from the lowest to the highest seed (:class:`SeedStats` ``low``, ``high``):
unlike mean ± sd it never reaches below the smallest value, so it stays positive on a log axis.

Long per-step series are averaged into at most ``MAX_POINTS`` bins of consecutive steps first,
equal in log(step) (so the first steps, where He's spike lives, keep a point each) or in step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from initopt.report.collect import Group

MAX_POINTS = 300
SD_LABEL = "sample sd (ddof = 1) over n seeds"


def mean_sd(values, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample sd (ddof = 1) along ``axis``; the sd is NaN where n = 1."""
    arr = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore", over="ignore"):  # a diverged seed's inf / nan stays inf / nan
        mean = arr.mean(axis=axis)
        if arr.shape[axis] < 2:
            return mean, np.full_like(mean, np.nan)
        return mean, arr.std(axis=axis, ddof=1)


def bin_index(steps: np.ndarray, log: bool, n_bins: int = MAX_POINTS) -> np.ndarray:
    """Bin of each step: ``n_bins`` equal intervals of log(step - first + 1), or of step."""
    if len(steps) <= n_bins:
        return np.arange(len(steps))
    pos = np.log(steps - steps[0] + 1.0) if log else (steps - steps[0]).astype(float)
    idx = np.minimum((pos / pos[-1] * n_bins).astype(int), n_bins - 1)
    return np.unique(idx, return_inverse=True)[1]


def binned(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Mean of ``values`` in each bin of ``index`` (an all-zero bin stays exactly 0)."""
    counts = np.bincount(index)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.bincount(index, weights=values) / counts


@dataclass
class SeedStats:
    """A curve over steps: mean, sample sd, lowest and highest value over the n seeds of a group."""

    steps: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    n: int
    low: np.ndarray
    high: np.ndarray


def aligned(series: list[tuple[np.ndarray, np.ndarray]]):
    """(steps all series have, one row of values per series on them), or None."""
    if not series:
        return None
    common = series[0][0]
    for steps, _ in series[1:]:
        common = np.intersect1d(common, steps)
    if not len(common):
        return None
    return common, np.stack([vals[np.searchsorted(steps, common)] for steps, vals in series])


def seed_stats(group: Group, tag: str, log: bool = False) -> SeedStats | None:
    """Mean and sample sd over the group's runs of ``tag`` on the steps they all have, binned."""
    found = aligned([s for s in (r.series(tag) for r in group.runs) if s is not None])
    if found is None:
        return None
    steps, stack = found
    index = bin_index(steps, log)
    stack = np.stack([binned(row, index) for row in stack])
    mean, sd = mean_sd(stack)
    return SeedStats(binned(steps.astype(float), index), mean, sd, len(stack), stack.min(0), stack.max(0))
