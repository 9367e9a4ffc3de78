"""The least-squares experiment: runs of ``+experiment=lstsq`` (trained by the framework) over
the closed forms of :mod:`initopt.analytic`.

For a run with data ``lstsq`` (``X' = U diag(sigmas) V^T``, the engine's loss
``L(w) = ||X' w - y'||^2``, no 1/2), from ``w0 = 0``:

* the **closed-form curve** ``L_t = ||X' w_t - y'||^2 - L*`` with ``w_t`` from
  :func:`~initopt.analytic.closed_form.gd_least_squares_trajectory` (GD) or
  :func:`~initopt.analytic.closed_form.momentum_least_squares_trajectory` (EMA momentum: per singular
  value, the state ``(a, x)`` multiplied by ``R``), ``L*`` the least-squares minimum;
* the **closed-form rate** ``rho``: ``max_i |1 - 2 eta s_i^2|`` (GD), ``max_i |eig R_i|`` (momentum);
  the loss is a sum of squares of the error, so ``ln L_t`` falls by ``2 ln rho`` a step once the
  slowest mode dominates;
* the **measured curve**: the run's ``loss/batch`` (full batch: the training loss), whose step s is
  taken at the weights after s - 1 updates, i.e. ``L_{s-1}``.

Nothing is re-run: the data are regenerated from the run's config (a pure function of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from initopt.analytic import closed_form as cf
from initopt.data import least_squares_problem
from initopt.report import style as st
from initopt.report.collect import read_scalars

MEASURED_TAG = "loss/batch"


@dataclass
class RateRun:
    """One run of the experiment beside its closed forms (index t = updates done, t = 0..T)."""

    label: str
    optim: dict
    measured: np.ndarray  # L_t - L*, from the run's event file
    closed_form: np.ndarray  # L_t - L*, from the closed forms
    rate: float  # rho: the slowest mode's contraction a step

    @property
    def log_slope(self) -> float:
        """``2 ln rho``: the closed-form slope of ``ln (L_t - L*)`` per step."""
        return 2.0 * math.log(self.rate)


def ema_parameters(optim: dict) -> tuple[float, float]:
    """(eta, beta) of the homework's EMA form for a momentum config: heavy ball with ``lr`` is
    the EMA form with ``eta = lr / beta`` (:func:`~initopt.analytic.closed_form.heavy_ball_equivalent`)."""
    beta = float(optim["beta"])
    eta = float(optim["lr"]) / beta if optim["form"] == "heavy_ball" else float(optim["lr"])
    return eta, beta


def closed_form_rate(optim: dict, sigmas) -> float:
    """rho: ``max_i |1 - 2 eta s_i^2|`` for sgd, ``max_i rho(R_i)`` for momentum."""
    if optim["name"] == "sgd":
        return cf.gd_rate(float(optim["lr"]), sigmas)
    if optim["name"] == "momentum":
        eta, beta = ema_parameters(optim)
        return cf.momentum_rate(eta, beta, sigmas)
    raise ValueError(f"optim={optim['name']}: the closed forms cover sgd and momentum")


def closed_form_losses(config: dict, steps: int) -> tuple[np.ndarray, float]:
    """``(L_t - L* for t = 0..steps, L*)`` of a run's config, through the analytic module."""
    data = least_squares_problem(OmegaConf.create(config["data"]))
    n = len(data.x_train)
    x, y = data.x_train.double().numpy() / math.sqrt(n), data.y_train.double().numpy() / math.sqrt(n)
    optim = config["optim"]
    if optim["name"] == "sgd":
        path = cf.gd_least_squares_trajectory(x, y, float(optim["lr"]), steps)
    else:
        eta, beta = ema_parameters(optim)
        path = cf.momentum_least_squares_trajectory(x, y, eta, beta, steps)
    w = np.vstack([np.zeros(x.shape[1]), path])
    best = float(np.sum((x @ cf.least_squares_solution(x, y) - y) ** 2))
    return np.sum((w @ x.T - y) ** 2, axis=1) - best, best


def load_run(run_dir: Path) -> RateRun:
    """A finished run of the experiment: its measured and closed-form curves and its rate."""
    config = OmegaConf.to_container(OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml"), resolve=True)
    if config["data"]["name"] != "lstsq":
        raise ValueError(f"{run_dir}: data={config['data']['name']}, not the least-squares problem (data=lstsq)")
    scalars = read_scalars(Path(run_dir))
    if MEASURED_TAG not in scalars:
        raise ValueError(f"{run_dir}: no {MEASURED_TAG} recorded (log_every=1 records it every step)")
    step, loss = scalars[MEASURED_TAG]
    closed, best = closed_form_losses(config, int(step.max()))
    measured = np.full(len(closed), np.nan)
    measured[step - 1] = loss - best  # step s: the loss at the weights after s - 1 updates
    optim = config["optim"]
    label = f"{optim['name']}" + (f" ({optim['form']}, beta {optim['beta']:g})" if optim["name"] == "momentum" else "")
    return RateRun(label, optim, measured, closed, closed_form_rate(optim, config["data"]["sigmas"]))


def fitted_log_slope(losses: np.ndarray, first: int, last: int) -> float:
    """Least-squares slope of ``ln losses[t]`` against t over ``first <= t <= last``."""
    t = np.arange(first, last + 1)
    return float(np.polyfit(t, np.log(losses[first : last + 1]), 1)[0])


def rates_figure(runs: list[RateRun], window: tuple[int, int], title: str):
    """Left: measured ``L_t - L*`` (markers) over the closed-form curve (line) and the rate line
    ``c rho^(2t)`` (black dashes; its level c alone fitted to the measured loss in ``window``), log y.
    Right: the fitted slope of ``ln L`` in a sliding window against ``2 ln rho``."""
    fig, (ax, ax_slope) = st.plt().subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    colours = st.EXTRA_COLOURS
    for run, colour in zip(runs, colours):
        t = np.arange(len(run.closed_form))
        ax.plot(t, run.closed_form, color=colour, lw=1.4, label=f"{run.label}: closed form")
        ax.plot(t[::2], run.measured[::2], "o", ms=3, mfc="none", color=colour,
                label=f"{run.label}: trained by initopt (every 2nd step)")
        inside = np.arange(window[0], window[1] + 1)
        level = np.mean(np.log(run.measured[inside]) - inside * run.log_slope)
        ax.plot(t, np.exp(level + t * run.log_slope), "--", color="black", lw=1,
                label=f"rate rho^2t, rho = {run.rate:.4f} (level fitted)")
        centres, slopes = sliding_slopes(run.measured, width=40)
        ax_slope.plot(centres, slopes, color=colour, lw=1.4, label=f"{run.label}: measured")
        ax_slope.axhline(run.log_slope, color=colour, ls="--", lw=1, label=f"2 ln rho = {run.log_slope:.4f}")
    ax.set(yscale="log", xlabel="iteration t (updates done)", ylabel="training loss L_t - L*",
           title="loss: trained (markers) over the closed form (lines)")
    ax_slope.axvspan(*window, color="0.9", zorder=0, label="window of the test's fit")
    ax_slope.set(xlabel="iteration t (window centre)", ylabel="slope of ln L (least squares, 40 steps)",
                 title="slope of ln L against 2 ln rho")
    for a in (ax, ax_slope):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def sliding_slopes(losses: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres and fitted ``ln L`` slopes of windows of ``width`` steps, every ``width // 4`` steps."""
    finite = np.flatnonzero(np.isfinite(losses) & (losses > 0))
    starts = range(int(finite.min()), int(finite.max()) - width + 1, max(1, width // 4))
    return (np.array([s + width / 2 for s in starts]),
            np.array([fitted_log_slope(losses, s, s + width) for s in starts]))
