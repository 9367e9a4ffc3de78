"""The population launcher's own time per job alone (row 6 of scripts/bench.py, under a minute):

    python scripts/bench_launcher.py [--jobs 600|60]

(N-job sweep - 1-job sweep) / (N - 1) at 2 steps a job, and each sweep's phases.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import launcher_phases, print_phases  # beside this script

GRID = ["init=zero,normal,xavier,he", "optim=sgd,momentum,adam", "model.hidden=[64,64]", "steps=2",
        "eval_every=100", "act_every=0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=600, choices=[60, 600])
    args = parser.parse_args()
    many = [*GRID, "seed=0,1,2,3,4"] if args.jobs == 60 else \
        [*GRID, "optim.lr=0.003,0.01,0.03,0.1,0.3", "seed=0,1,2,3,4,5,6,7,8,9"]
    with tempfile.TemporaryDirectory() as tmp:
        sweeps = {"1 job, 2 steps": launcher_phases(["init=he", "optim=sgd", *GRID[2:]], Path(tmp) / "p1"),
                  f"{args.jobs} jobs, 2 steps": launcher_phases(many, Path(tmp) / "p2")}
    a, b = sweeps.values()
    print(f"launcher's own time per job: {(b['wall'] - a['wall']) / (b['jobs'] - a['jobs']) * 1e3:.1f} ms "
          f"(target <= 15 ms)")
    print_phases(sweeps)


if __name__ == "__main__":
    main()
