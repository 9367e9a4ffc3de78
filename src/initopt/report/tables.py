"""The summary table: final metrics as mean ± sample sd (ddof = 1) over the seeds that finished,
steps to a target held-out accuracy, run status; rows in the config order."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from initopt.report.collect import Group, Run
from initopt.report.jobs import REPORTED
from initopt.report.stats import SD_LABEL, mean_sd

METRICS = REPORTED


@dataclass
class Row:
    label: str
    seeds: int
    ok: int
    diverged: list[str]  # seeds, with the step
    failed: list[str]
    mean: dict[str, float]
    std: dict[str, float]
    steps_to_target: float  # mean over the runs that reached it
    reached: int


def steps_to_target(run: Run, target: float) -> int | None:
    """First evaluated step whose held-out accuracy is at least ``target``."""
    for entry in run.metrics.get("history", []):
        if entry.get("test_accuracy") is not None and entry["test_accuracy"] >= target:
            return int(entry["step"])
    return None


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (ddof = 1; NaN for one value) of ``values``."""
    if not values:
        return math.nan, math.nan
    mean, sd = mean_sd(values)
    return float(mean), float(sd)


def summarize(group: Group, target: float) -> Row:
    finished = group.finished
    mean, std = {}, {}
    for key in METRICS:
        mean[key], std[key] = _mean_std([r.metrics["final"][key] for r in finished])
    reached = [s for s in (steps_to_target(r, target) for r in finished) if s is not None]
    return Row(
        label=group.label,
        seeds=len(group.runs),
        ok=len(finished),
        diverged=[f"seed {r.seed} at step {r.metrics.get('diverged_step')}"
                  for r in group.runs if r.status == "diverged"],
        failed=[f"seed {r.seed}" for r in group.runs if r.status not in ("ok", "diverged")],
        mean=mean,
        std=std,
        steps_to_target=float(np.mean(reached)) if reached else math.nan,
        reached=len(reached),
    )


def _pm(mean: float, std: float, digits: int = 4) -> str:
    """``m ± sd``, or ``m`` alone where one seed gives no sd (never ``± 0``)."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _status(row: Row) -> str:
    parts = [f"{row.ok}/{row.seeds} ok"]
    if row.diverged:
        parts.append("**diverged**: " + "; ".join(row.diverged))
    if row.failed:
        parts.append("**failed**: " + "; ".join(row.failed))
    return ", ".join(parts)


def markdown_table(rows: list[Row], target: float) -> str:
    head = ("| run | n | train loss | train accuracy | test loss | test accuracy | "
            f"steps to {target:.0%} test acc. | status |")
    lines = [f"Final values: mean ± {SD_LABEL} (n: the seeds that finished ok; n = 1: the one value, no sd).",
             "", head, "|" + "---|" * 8]
    for r in rows:
        reach = "-" if not r.reached else f"{r.steps_to_target:.0f} ({r.reached}/{r.ok})"
        lines.append(f"| {r.label} | {r.ok} | " + " | ".join(_pm(r.mean[k], r.std[k]) for k in METRICS)
                     + f" | {reach} | {_status(r)} |")
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "seeds", "ok", *[f"{k}_{s}" for k in METRICS for s in ("mean", "std")],  # std: ddof 1
                    "steps_to_target_mean", "reached_target", "diverged", "failed"])
        for r in rows:
            w.writerow([r.label, r.seeds, r.ok, *[_cell(v) for k in METRICS for v in (r.mean[k], r.std[k])],
                        r.steps_to_target, r.reached, "; ".join(r.diverged), "; ".join(r.failed)])


def _cell(value: float) -> str | float:
    """A CSV cell: empty where undefined (the sd of one seed, the mean of none)."""
    return "" if math.isnan(value) else value
