"""A sweep read as its groups: one TensorBoard run per group of jobs that differ only in their seed.

When a ``-m`` sweep ends (every launcher: the Hydra callback :class:`SweepGroups`, registered in
``conf/train.yaml``), and again when a resumed sweep ends, this module reads back every finished
seed run of the sweep with TensorBoard's own reader and writes ``<sweep>/groups/<group>/``:

* the group's name is the job's directory name less its ``seed=S`` (a sweep over seeds only:
  ``all``); a replica job's seeds (``replicas/seed=S``) are members of its job's group;
* every scalar tag of the members, at every step some member has: the mean over the members
  with a finite value there, and for the step and evaluation tags (:func:`initopt.tb.banded_tags`)
  ``seed_band/<tag>/mean|min|max``, as a replica job's ``mean`` run has;
* the gradient-norm heat map of the mean norms, the Custom Scalars layout, the first member's
  histograms (a mean of histograms is none; their description says which seed) and config text,
  and one HParams row per group (``seeds`` ``0..4``, ``seeds_averaged`` 5).

The whole ``groups/`` folder is rewritten each time (built beside it, then swapped in), never
appended to. The sweep's HParams experiment (:mod:`initopt.callbacks`) is extended by the group
rows' values, and a copy goes into ``groups/`` so that ``tensorboard --logdir <sweep>/groups``
has it too. Every run's heat map (members, mean runs, groups) is drawn here, on one colour
scale for the whole sweep: the smallest and largest positive gradient norm of any member.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.text.summary_v2 import text_pb
from torch.utils.tensorboard.summary import custom_scalars

from initopt import rundir, tbread
from initopt.heatmap import norm_range
from initopt.hparams import Column, Session, columns, pooled
from initopt.tb import (
    EventFile,
    ScalarRows,
    band_tag,
    banded_tags,
    heatmap_image,
    layout,
    read_experiment,
    session_end_summary,
    session_start_summary,
    write_experiment,
)
from initopt.tbread import Series

GROUPS_DIR = rundir.GROUPS_DIR
HEATMAP_SUFFIX = ".heatmap"  # the end of the event file holding a sweep run's heat map
SEED_ITEM = re.compile(r"(^|,)seed=-?\d+(?=,|$)")


# ---------------------------------------------------------------------------- reading runs
@dataclass
class RunData:
    """What a run directory holds, read as TensorBoard's ``EventAccumulator`` reads it (which drops the
    events a resumed run superseded, as TensorBoard itself does)."""

    scalars: dict[str, Series]
    histograms: dict[str, list]  # tag -> TensorEvent (step, tensor_proto)

    def grad_norms(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, norms (n, P))`` of ``grad_norm/<name>`` (steps every tensor has)."""
        series = [self.scalars.get(f"grad_norm/{n}") for n in names]
        if any(s is None for s in series):
            return np.zeros(0, np.int64), np.zeros((0, len(names)))
        steps = series[0].steps
        if all(np.array_equal(s.steps, steps) for s in series[1:]):  # as the engine writes them: one row a step
            return steps, np.column_stack([s.values for s in series])
        for s in series[1:]:
            steps = np.intersect1d(steps, s.steps)
        return steps, np.column_stack([s.values[np.searchsorted(s.steps, steps)] for s in series])


def read_runs(run_dirs: list[Path]) -> list[RunData]:
    """Each directory read as TensorBoard reads it (:func:`initopt.tbread.read_runs`: the same series
    as its ``EventAccumulator``, ~50x faster; what this process wrote, from its mirrors)."""
    return [RunData(events.scalars, events.histograms) for events in tbread.read_runs(run_dirs)]


# --------------------------------------------------------------------------- the sweep's runs
@dataclass
class Member:
    """A finished seed run of the sweep: its directory, seed, job directory and metrics.json."""

    dir: Path
    seed: int
    job_dir: Path
    metrics: dict


@dataclass
class Group:
    name: str
    members: list[Member] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(m.seed for m in self.members)

    def session(self) -> Session:
        """The group's HParams row: the first member's values, ``seeds`` for ``seed``."""
        values = {k: v for k, v in self.members[0].metrics.get("hparams", {}).items() if k != "replicas"}
        return Session({**pooled(values, self.seeds), "seeds_averaged": float(len(self.members))})


def group_name(job_name: str) -> str:
    """A job's directory name without its ``seed=S`` item: ``init=he,optim=sgd,seed=3`` ->
    ``init=he,optim=sgd``; ``seed=3`` alone -> ``all``."""
    return SEED_ITEM.sub("", job_name).strip(",") or "all"


def sweep_members(sweep_dir: Path) -> list[Member]:
    """Every finished seed run under ``sweep_dir`` (a job's own run, or a replica job's
    ``replicas/seed=S``), in directory order; ``groups/`` is not searched."""
    members = []
    for path in sorted(sweep_dir.rglob(rundir.METRICS)):
        run_dir = path.parent
        relative = run_dir.relative_to(sweep_dir)
        if relative.parts[:1] == (GROUPS_DIR,):
            continue
        metrics = rundir.finished_metrics(run_dir)
        if metrics is None or "replicas" in metrics:  # unfinished, failed, or a replica job's aggregate
            continue
        replica = run_dir.parent.name == "replicas"
        job_dir = run_dir.parent.parent if replica else run_dir
        members.append(Member(run_dir, int(metrics["choices"]["seed"]), job_dir, metrics))
    return members


def sweep_groups(sweep_dir: Path, members: list[Member]) -> list[Group]:
    groups: dict[str, Group] = {}
    for member in members:
        name = group_name(member.job_dir.relative_to(sweep_dir).as_posix())
        groups.setdefault(name, Group(name)).members.append(member)
    return list(groups.values())


# ------------------------------------------------------------------------------ the means
@dataclass
class SeedStats:
    """One tag over a group's members: at each step, mean, min and max over the finite values."""

    steps: np.ndarray
    walltimes: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def seed_stats(series: list[Series]) -> SeedStats:
    """Mean (and min, max) over the members that have a finite value at a step; steps where none
    has one are left out (every member had diverged)."""
    return seed_stats_of_tags([series])[0]


def seed_stats_of_tags(tags: list[list[Series]]) -> list[SeedStats]:
    """:func:`seed_stats` of several tags whose series have the same steps member by member (a
    run writes its step tags in one row a step), computed together: (tags, steps, members) arrays
    reduced over members, the last axis, as one tag's (steps, members) array is (the same sums)."""
    first = tags[0]
    steps = np.unique(np.concatenate([s.steps for s in first]))
    table = np.full((len(tags), len(steps), len(first)), np.nan)
    walls = np.full_like(table, np.nan)
    for j, s in enumerate(first):
        rows = np.searchsorted(steps, s.steps)
        table[:, rows, j] = [series[j].values for series in tags]
        walls[:, rows, j] = [series[j].walltimes for series in tags]
    finite = np.isfinite(table)
    keep = finite.any(axis=2)
    masked = np.where(finite, table, np.nan)
    with np.errstate(all="ignore"):
        mean, low, high = np.nanmean(masked, axis=2), np.nanmin(masked, axis=2), np.nanmax(masked, axis=2)
        wall = np.nanmean(walls, axis=2)
    return [SeedStats(steps[k], wall[i][k], mean[i][k], low[i][k], high[i][k]) for i, k in enumerate(keep)]


def group_means(runs: list[RunData]) -> dict[str, SeedStats]:
    """Every scalar tag any member has, except bands (a member has none); the tags whose members
    have the same steps computed together (:func:`seed_stats_of_tags`)."""
    tags = sorted({t for r in runs for t in r.scalars if not t.startswith("seed_band/")})
    alike: dict[tuple, list[str]] = defaultdict(list)
    for t in tags:
        alike[tuple(r.scalars[t].steps.tobytes() if t in r.scalars else None for r in runs)].append(t)
    stats = {}
    for same in alike.values():
        series = [[r.scalars[t] for r in runs if t in r.scalars] for t in same]
        stats.update(zip(same, seed_stats_of_tags(series)))
    return {t: stats[t] for t in tags}


# ------------------------------------------------------------------------------- writing
def _write_rows(events: EventFile, columns_by_tag: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Tags sharing the same steps go into one event per step (:class:`initopt.tb.ScalarRows`)."""
    by_steps: dict[bytes, list[str]] = defaultdict(list)
    for tag, (steps, _, _) in columns_by_tag.items():
        by_steps[steps.tobytes()].append(tag)
    for tags in by_steps.values():
        steps, walls, _ = columns_by_tag[tags[0]]
        table = np.column_stack([columns_by_tag[t][2] for t in tags])
        ScalarRows(events, tags).write(steps, walls, table)


def _band_rows(means: dict[str, SeedStats], params: list[str]) -> dict[str, tuple]:
    """``seed_band/<tag>/mean|min|max`` of the banded tags (:func:`initopt.tb.banded_tags`)."""
    rows = {}
    for tag in (t for t in banded_tags(params) if t in means):
        s = means[tag]
        for stat, values in (("mean", s.mean), ("min", s.low), ("max", s.high)):
            rows[band_tag(tag, stat)] = (s.steps, s.walltimes, values)
    return rows


def _histograms(run: RunData, seed: int) -> list[tuple[Summary, int]]:
    """The first member's histograms, said to be one seed's (a mean of histograms is none)."""
    from tensorboard.plugins.histogram import metadata as histogram_metadata

    out = []
    for tag, events in run.histograms.items():
        meta = histogram_metadata.create_summary_metadata(
            display_name=tag, description=f"seed {seed} of the group (histograms are not averaged)")
        out += [(Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=e.tensor_proto)]), e.step)
                for e in events]
    return out


def _mean_heatmap(means: dict[str, SeedStats], params: list[str], scale) -> Summary | None:
    tags = [f"grad_norm/{n}" for n in params]
    if not all(t in means and len(means[t].steps) for t in tags):
        return None
    steps = means[tags[0]].steps
    norms = np.column_stack([means[t].mean[np.searchsorted(means[t].steps, steps)] for t in tags])
    return heatmap_image(steps, norms, params, scale)


def write_group_run(logdir: Path, group: Group, runs: list[RunData], params: list[str],
                    scale: tuple[float, float]) -> None:
    """One group's run in ``logdir`` (see the module doc)."""
    events = EventFile(logdir)

    def write(summary: Summary, step: int) -> None:
        events.write(Event(wall_time=time.time(), step=int(step), summary=summary))

    write(custom_scalars(layout(params, banded=True)), 0)
    write(session_start_summary(group.session()), 0)
    write(text_pb("config", _config_text(group)), 0)
    means = group_means(runs)
    _write_rows(events, {**{t: (s.steps, s.walltimes, s.mean) for t, s in means.items()},
                         **_band_rows(means, params)})
    for summary, step in _histograms(runs[0], group.members[0].seed):
        write(summary, step)
    last = max((int(s.steps[-1]) for s in means.values() if len(s.steps)), default=0)
    heatmap = _mean_heatmap(means, params, scale)
    if heatmap is not None:
        write(heatmap, last)
    write(session_end_summary(any(m.metrics.get("status") == "ok" for m in group.members)), last)
    events.close()


def _config_text(group: Group) -> str:
    config = group.members[0].job_dir / ".hydra" / "config.yaml"
    text = config.read_text() if config.exists() else ""
    seeds = ", ".join(map(str, group.seeds))
    return (f"Mean over seeds {seeds}: {len(group.members)} runs. The config of the first "
            f"(seed {group.members[0].seed}):\n\n```yaml\n{text}```")


def write_run_heatmap(run_dir: Path, run: RunData, params: list[str], scale: tuple[float, float]) -> None:
    """A sweep run's heat map on the sweep's scale, in an event file of its own (replacing an
    earlier one), at the run's last step."""
    for old in run_dir.glob(f"events.out.tfevents*{HEATMAP_SUFFIX}"):
        old.unlink()
    steps, norms = run.grad_norms(params)
    if not len(steps):
        return
    events = EventFile(run_dir, suffix=HEATMAP_SUFFIX)
    events.write(Event(wall_time=time.time(), step=int(steps[-1]), summary=heatmap_image(steps, norms, params, scale)))
    events.close()


def extended_experiment(sweep_dir: Path, rows: list[dict]) -> list[Column]:
    """The sweep's experiment with the group rows' values added to the domains (or, where no
    experiment was written, e.g. another sweeper, the columns of the members and groups)."""
    current = read_experiment(sweep_dir)
    if current is None:
        return columns(rows)
    domains = {c.name: set(c.values) for c in current}
    for values in rows:
        for name, value in values.items():
            domains.setdefault(name, set()).add(value)
    merged = columns({name: v} for name, vals in domains.items() for v in vals)
    order = [c.name for c in current] + [c.name for c in merged if c.name not in {x.name for x in current}]
    by_name = {c.name: c for c in merged}
    return [by_name[n] for n in order]


def write_groups(sweep_dir: Path) -> list[Group]:
    """Every group run of the sweep (rewritten), every run's heat map on the sweep's scale, and
    the experiment extended by the group rows. Returns the groups."""
    sweep_dir = Path(sweep_dir)
    members = sweep_members(sweep_dir)
    if not members:
        return []
    params = list(members[0].metrics.get("parameters") or [])
    mean_runs = sorted({m.job_dir / rundir.MEAN_RUN for m in members if (m.job_dir / rundir.MEAN_RUN).is_dir()})
    dirs = [m.dir for m in members]
    read = dict(zip([*dirs, *mean_runs], read_runs([*dirs, *mean_runs])))
    tbread.drop_mirrors(sweep_dir)  # of runs that are no member (failed jobs, replica jobs' own)
    runs, mean_data = {d: read[d] for d in dirs}, {d: read[d] for d in mean_runs}
    all_norms = [run.grad_norms(params)[1] for run in runs.values()]
    scale = norm_range(np.concatenate(all_norms)) if all_norms else (1e-3, 1.0)
    groups = sweep_groups(sweep_dir, members)
    building = sweep_dir / f".{GROUPS_DIR}.partial-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    for group in groups:
        write_group_run(building / group.name, group, [runs[m.dir] for m in group.members], params, scale)
    for run_dir, run in [*runs.items(), *mean_data.items()]:
        write_run_heatmap(run_dir, run, params, scale)
    experiment = extended_experiment(sweep_dir, [g.session().hparams for g in groups])
    created = time.time()
    write_experiment(building, experiment, created)
    final = sweep_dir / GROUPS_DIR
    old = sweep_dir / f".{GROUPS_DIR}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    building.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    write_experiment(sweep_dir, experiment, created)  # the same experiment in both: either may be read
    return groups


class SweepGroups(Callback):
    """On multirun end (also of a resumed sweep): the group runs and the sweep's heat maps."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        groups = write_groups(sweep_dir)
        if groups:
            print(f"{len(groups)} group runs (mean over seeds) in {sweep_dir / GROUPS_DIR}; "
                  f"look with: python -m initopt.board {sweep_dir}", file=sys.stderr)
