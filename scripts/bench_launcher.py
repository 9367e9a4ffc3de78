"""The population launcher's own time per job alone (row 6 of scripts/bench.py, under a minute):

    python scripts/bench_launcher.py [--jobs 600|60]

(N-job sweep - 1-job sweep) / (N - 1) at 2 steps a job, and each sweep's phases.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import launcher_ms_per_job, launcher_per_job_sweeps, print_phases  # beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=600, choices=[60, 600])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweeps = launcher_per_job_sweeps(args.jobs, Path(tmp))
    print(f"launcher's own time per job: {launcher_ms_per_job(sweeps):.1f} ms (target <= 15 ms)")
    print_phases(sweeps)


if __name__ == "__main__":
    main()
