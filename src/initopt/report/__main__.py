"""``python -m initopt.report SWEEP_DIR [--out DIR] [--target-accuracy A]``.

Reads a sweep's job directories (``metrics.json``, Hydra overrides, TensorBoard events;
nothing is re-run) and writes into ``--out`` (default ``SWEEP_DIR/report``):
``summary.md`` and ``summary.csv``, ``training_curves.png``, ``grad_norm_heatmaps.png``,
``activations.png``, ``lr_sensitivity.png`` (when the sweep varies the learning rate) and
``report.md``, one page that puts them together.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from initopt.report import figures
from initopt.report.collect import find_runs, group_runs, varying_keys
from initopt.report.tables import markdown_table, summarize, write_csv

LR_KEYS = ("optim.lr", "lr")


def build(sweep_dir: Path, out: Path, target: float) -> Path:
    runs = find_runs(sweep_dir)
    if not runs:
        raise SystemExit(f"initopt.report: error: {sweep_dir} holds no job with a metrics.json")
    groups = group_runs(runs)
    out.mkdir(parents=True, exist_ok=True)
    rows = [summarize(g, target) for g in groups]
    table = markdown_table(rows, target)
    (out / "summary.md").write_text(table + "\n")
    write_csv(rows, out / "summary.csv")

    pictures = [
        ("Training curves", figures.training_curves(groups, out / "training_curves.png")),
        ("Gradient norm per parameter tensor", figures.gradient_heatmaps(groups, out / "grad_norm_heatmaps.png")),
    ]
    acts = figures.activations_by_depth(groups, out / "activations.png")
    if acts is not None:
        pictures.append(("Activations by depth", acts))
    lr_key = next((k for k in LR_KEYS if k in varying_keys(runs)), None)
    if lr_key is not None:
        lr_png = figures.lr_sensitivity(groups, lr_key, out / "lr_sensitivity.png")
        pictures.append(("Learning-rate sensitivity", lr_png))

    page = [f"# Report: {sweep_dir}", "",
            f"{len(runs)} runs in {len(groups)} groups, varying: {', '.join(varying_keys(runs)) or 'nothing'}; "
            "each row and curve is the mean over its seeds.", "", "## Summary", "", table, ""]
    for title, path in pictures:
        page += [f"## {title}", "", f"![{title}]({path.name})", ""]
    (out / "report.md").write_text("\n".join(page))
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m initopt.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, help="output folder (default: SWEEP_DIR/report)")
    parser.add_argument("--target-accuracy", type=float, default=0.9,
                        help="held-out accuracy for the 'steps to target' column (default 0.9)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"initopt.report: error: SWEEP_DIR={str(args.sweep_dir)!r} is not a folder\n")
    page = build(args.sweep_dir, args.out or args.sweep_dir / "report", args.target_accuracy)
    print(f"wrote {page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
