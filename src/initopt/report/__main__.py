"""``python -m initopt.report SWEEP_DIR [--out DIR] [--target-accuracy A]``.

Reads a sweep's job directories (``metrics.json``, Hydra overrides and config, TensorBoard
events; nothing is re-run) and writes into ``--out`` (default ``SWEEP_DIR/report``):
``summary.md`` and ``summary.csv``, ``training_curves.png``, ``weight_gradients.png``,
``grad_norm_heatmaps.png``, ``activations.png``, ``lr_sensitivity.png`` (when the sweep varies
the learning rate) and ``report.md``, one page that puts them together.

Jobs still running (no ``metrics.json``, a ``checkpoint.pt`` or a ``.initopt.lock``) or with
unreadable files are skipped and listed ("3 of 4 jobs finished; 1 running: ..."); the report
is written from the rest (exit 0). Exit 2 when no job is usable. The report is written whole or not
at all: Ctrl-C leaves ``--out`` as it was (one line, exit 130).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from initopt.signals import exit_interrupted

INTERRUPTED = "initopt.report: interrupted: nothing written, {out!r} is as it was; run the same command again"

try:  # Ctrl-C while importing (matplotlib, numpy) is the same one line, not an import traceback
    from initopt.report.build import NothingUsable, build
    from initopt.rundir import creatable_problem
except KeyboardInterrupt:
    exit_interrupted(INTERRUPTED.format(out="--out"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m initopt.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, help="output folder (default: SWEEP_DIR/report)")
    parser.add_argument("--target-accuracy", type=float, default=0.9,
                        help="held-out accuracy for the 'steps to target' column (default 0.9)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"initopt.report: error: SWEEP_DIR={str(args.sweep_dir)!r} is not a folder\n")
    if not 0 < args.target_accuracy <= 1:
        parser.exit(2, f"initopt.report: error: --target-accuracy={args.target_accuracy} is not allowed: "
                       "must be in (0, 1]\n")
    out = args.out or args.sweep_dir / "report"
    problem = creatable_problem(out)  # before reading every event file, not after
    if problem is not None:
        parser.exit(2, f"initopt.report: error: --out={str(out)!r} is not allowed: {problem}; "
                       "choose a folder you can write to\n")
    try:
        page, progress = build(args.sweep_dir, out, args.target_accuracy)
    except NothingUsable as err:
        parser.exit(2, f"initopt.report: error: {err}\n")
    except KeyboardInterrupt:  # build writes a whole report or none (initopt.report.build.staged)
        exit_interrupted(INTERRUPTED.format(out=str(out)))
    print(f"initopt.report: {progress}", file=sys.stderr)
    print(f"wrote {page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from initopt.gcfreeze import exit_without_teardown

    exit_without_teardown(lambda: sys.exit(main()))  # without Python's teardown of torch and matplotlib
