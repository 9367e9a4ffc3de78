"""The homework's least squares trained by the framework, GD and EMA momentum each at its optimal
step size, the measured loss drawn over the closed forms::

    python scripts/lstsq_rates.py OUT_DIR [--steps 300]

Runs ``python -m initopt.train +experiment=lstsq`` twice (into OUT_DIR/sgd and
OUT_DIR/momentum; a finished run is kept, not redone) with step sizes from
:mod:`initopt.analytic`: GD at ``eta* = 1 / (s_max^2 + s_min^2)``, momentum (beta 0.1) at the centre
``1 / (2 s_max s_min)`` of its optimal interval (rate ``sqrt(1 - beta)`` there). Writes
OUT_DIR/lstsq_rates.png and .svg and prints each run's closed-form rate beside the measured slope.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from initopt.analytic import closed_form as cf
from initopt.report.lstsq import fitted_log_slope, load_run, rates_figure
from initopt.report.style import save

SIGMAS = (3.0, 0.3)  # conf/data/lstsq.yaml
BETA = 0.1  # conf/optim/momentum.yaml


def optimal_runs(sigmas=SIGMAS, beta: float = BETA) -> dict[str, list[str]]:
    """The two runs' overrides, each at its optimal step size."""
    return {"sgd": ["optim=sgd", f"optim.lr={cf.gd_optimal_eta(sigmas)!r}"],
            "momentum": ["optim=momentum", f"optim.beta={beta!r}",
                         f"optim.lr={cf.momentum_central_optimal_eta(beta, sigmas)!r}"]}


def train(out: Path, steps: int) -> list[Path]:
    """Train both runs through the framework's command line; their directories."""
    dirs = []
    for name, overrides in optimal_runs().items():
        run_dir = out / name
        done = subprocess.run([sys.executable, "-m", "initopt.train", "+experiment=lstsq", *overrides,
                               f"steps={steps}", "progress=false", f"hydra.run.dir='{run_dir}'"])
        if done.returncode:
            sys.exit(f"lstsq_rates: error: training {name} failed (exit {done.returncode}); see its message above")
        dirs.append(run_dir)
    return dirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    if args.steps < 20:
        parser.exit(2, f"lstsq_rates: error: --steps={args.steps} is not allowed: at least 20\n")
    runs = [load_run(d) for d in train(args.out, args.steps)]
    window = (args.steps // 2, args.steps - 1)
    save(rates_figure(runs, window, "least squares, singular values 3 and 0.3, trained by initopt "
                                    "(full batch, float64, w0 = 0) over the closed forms"),
         args.out / "lstsq_rates.png")
    for run in runs:
        measured = fitted_log_slope(run.measured, *window)
        print(f"{run.label:>24}: lr {run.optim['lr']:.6g}, rho {run.rate:.6f}, 2 ln rho {run.log_slope:.6f}, "
              f"fitted slope of ln L over steps {window[0]}-{window[1]} {measured:.6f} "
              f"({measured / run.log_slope - 1:+.2%})")
    print(f"wrote {args.out / 'lstsq_rates.png'} and .svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
