"""Activations by depth: the std of each hidden layer's output against the layer index, at
initialization (one line per init: the optimizer has not acted yet) and at the last recorded
step (one line per group). He keeps the std flat with ReLU, Xavier loses a factor about
1/sqrt(2) per layer, small normal vanishes, large normal explodes, zero init is exactly 0.
Replica runs record activations at initialization only: they get no "last step" line.
"""

from __future__ import annotations

import numpy as np

from initopt.report import style as st
from initopt.report.collect import Group, Run, depth_order
from initopt.report.style import Styles

PREFIX = "activation_std/"


def _profile(runs: list[Run], tags: list[str], pick) -> tuple[np.ndarray, list[int]]:
    """Mean over ``runs`` of the value ``pick`` selects per tag (index into the series), and the
    steps it was taken at."""
    rows, steps = [], []
    for run in runs:
        series = [run.scalars.get(t) for t in tags]
        if any(s is None for s in series):
            continue
        rows.append([s[1][pick] for s in series])
        steps.append(int(series[0][0][pick]))
    return (np.mean(rows, axis=0) if rows else np.full(len(tags), np.nan)), steps


def _starts(groups: list[Group], tags: list[str]) -> list[tuple[Group, np.ndarray, list[int]]]:
    """The profile at initialization once per distinct start: groups that differ only in what
    acts after step 0 (the optimizer, its lr) and have the same numbers share one line."""
    starts: dict[tuple, tuple[Group, np.ndarray, list[int]]] = {}
    for group in groups:
        mean, steps = _profile(group.runs, tags, 0)
        starts.setdefault((group.init, *np.round(mean, 12).tolist()), (group, mean, steps))
    return list(starts.values())


def activations_by_depth(groups: list[Group], styles: Styles, title: str):
    """The figure (None without activation records): std of act_l against l, the mean over seeds,
    at step 0 (a line per distinct start) and at the last recorded step (a line per group)."""
    tags = depth_order(sorted({t for g in groups for r in g.runs for t in r.scalars if t.startswith(PREFIX)}))
    if not tags:
        return None
    fig, (at_init, at_end, legend_ax) = st.plt().subplots(1, 3, figsize=(14, 4.8), sharey=True,
                                                          width_ratios=(1, 1, 0.8), constrained_layout=True)
    depth = np.arange(1, len(tags) + 1)
    drawn, init_steps, end_steps, init_only = [], set(), set(), []
    for first, mean, steps in _starts(groups, tags):
        init_steps.update(steps)
        at_init.plot(depth, mean, **{**styles.kwargs(first, sparse=True), "linestyle": "-"})
        drawn.append(mean)
    for group in groups:
        mean, steps = _profile(group.runs, tags, -1)
        if not steps or max(steps) <= min(init_steps or {0}):
            init_only.append(group.label)
            continue
        end_steps.update(steps)
        at_end.plot(depth, mean, **styles.kwargs(group, sparse=True))
        drawn.append(mean)
    at_init.set_title(f"at initialization (step {_steps(init_steps)}); one line per init", fontsize=10)
    if end_steps:
        at_end.set_title(f"at the last recorded step (step {_steps(end_steps)})", fontsize=10)
    else:
        at_end.set_title("no later step recorded", fontsize=10)
        at_end.text(0.5, 0.5, "these runs (replicas) record\nactivations at initialization only",
                    ha="center", va="center", transform=at_end.transAxes)
    for ax in (at_init, at_end):
        ax.set(xlabel="hidden layer (depth)", xticks=depth)
        ax.grid(alpha=0.3)
    at_init.set_ylabel("std of the layer's output (mean over seeds)")
    st.log_axis(at_init, np.concatenate(drawn))
    note = st.seeds_note(groups).split("\n")[0]
    if init_only and end_steps:
        note += "\nactivations at init only (replicas): " + ", ".join(init_only)
    styles.legend(legend_ax, note)
    fig.suptitle(title + "\nactivations by depth", fontsize=10)
    return fig


def _steps(steps: set[int]) -> str:
    return "?" if not steps else str(min(steps)) if len(steps) == 1 else f"{min(steps)} to {max(steps)}"
