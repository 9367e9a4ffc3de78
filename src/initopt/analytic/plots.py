"""Figures: spectral radius against learning rate (real / complex regions shaded), and
closed-form trajectories against autograd's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from initopt.analytic import closed_form as cf
from initopt.analytic import simulate as sim

SIGMAS = (3.0, 0.3)
BETA = 0.1


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_spectral_radius(path: Path, sigmas=SIGMAS, beta: float = BETA) -> Path:
    """rho against eta for GD (|1 - 2 eta s^2|) and EMA momentum (max |eig R_i|), one line per s."""
    plt = _plt()
    fig, (ax_gd, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    eta = np.linspace(0, 1.25 * cf.gd_max_stable_eta(sigmas), 600)
    for s, c in zip(sigmas, colors):
        ax_gd.plot(eta, [abs(cf.gd_factor(e, s)) for e in eta], color=c, label=f"s = {s:g}")
    ax_gd.plot(eta, [cf.gd_rate(e, sigmas) for e in eta], "k--", lw=1, label="max (the rate)")
    ax_gd.axvline(cf.gd_max_stable_eta(sigmas), color="r", lw=0.8, label="edge 1/s_max^2")
    ax_gd.axvline(cf.gd_optimal_eta(sigmas), color="g", lw=0.8, label="eta* = 1/(s_l^2 + s_s^2)")
    ax_gd.set(ylim=(0, 1.5), xlabel="learning rate eta", ylabel="|1 - 2 eta s^2|",
              title="gradient descent")

    eta_max = 1.5 * cf.momentum_max_stable_eta(beta, sigmas)
    eta = np.geomspace(1e-4 / max(sigmas) ** 2, eta_max, 800)
    for s, c in zip(sigmas, colors):
        ax_m.plot(eta, [cf.momentum_spectral_radius(e, beta, s) for e in eta], color=c, label=f"s = {s:g}")
        lo, hi = cf.momentum_complex_eta_range(beta, s)
        ax_m.axvspan(lo, min(hi, eta_max), color=c, alpha=0.12, label=f"complex eigenvalues, s = {s:g}")
    ax_m.plot(eta, [cf.momentum_rate(e, beta, sigmas) for e in eta], "k--", lw=1, label="max (the rate)")
    ax_m.axvline(cf.momentum_max_stable_eta(beta, sigmas), color="r", lw=0.8, label="edge (2-b)/(b s_max^2)")
    ax_m.axhline(np.sqrt(1 - beta), color="gray", lw=0.6, ls=":")
    ax_m.set(xscale="log", ylim=(0, 1.5), xlabel="learning rate eta", ylabel="spectral radius of R",
             title=f"EMA momentum, beta = {beta:g} (unshaded: real eigenvalues)")
    for ax in (ax_gd, ax_m):
        ax.axhline(1, color="k", lw=0.6)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_trajectories(path: Path, sigmas=SIGMAS, beta: float = BETA, steps: int = 120) -> Path:
    """|w_t - w*| per mode: closed form (lines) against autograd with the trainer's optimizers (dots)."""
    plt = _plt()
    X, y = np.diag(sigmas), np.ones(len(sigmas))
    w_star = cf.least_squares_solution(X, y)
    eta_gd = cf.gd_optimal_eta(sigmas)
    eta_m, _ = cf.momentum_optimal_eta(beta, sigmas)
    runs = {
        f"GD, eta* = {eta_gd:.3g}": (cf.gd_least_squares_trajectory(X, y, eta_gd, steps),
                                    sim.gd_least_squares(X, y, eta_gd, steps)),
        f"momentum b = {beta:g}, eta = {eta_m:.3g}": (
            cf.momentum_least_squares_trajectory(X, y, eta_m, beta, steps),
            sim.momentum_least_squares(X, y, eta_m, beta, steps)),
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    t = np.arange(1, steps + 1)
    for ax, (title, (closed, auto)) in zip(axes, runs.items()):
        for i, s in enumerate(sigmas):
            line, = ax.plot(t, np.abs(closed[:, i] - w_star[i]), label=f"closed form, s = {s:g}")
            ax.plot(t[::4], np.abs(auto[::4, i] - w_star[i]), "o", ms=3, color=line.get_color(),
                    label=f"autograd, s = {s:g}")
        ax.set(yscale="log", xlabel="step t", title=title)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("|w_t - w*| per singular direction")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(directory: str | Path) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    return [plot_spectral_radius(out / "spectral_radius.png"), plot_trajectories(out / "trajectories.png")]
