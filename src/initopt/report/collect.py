"""Turn a sweep's finished jobs into runs and group them (never re-runs anything): each run's
``metrics.json``, its Hydra overrides and config, and its TensorBoard scalars, grouped by what
varies across the sweep besides the seed, in the config's order (init zero, normal, xavier, he,
then optimizers sgd, momentum, adam; other values numerically or in the sweep's own order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from initopt.report.jobs import Job
from initopt.rundir import NON_RUN_KEYS

SEED_KEY = "seed"
INIT_ORDER = ("zero", "normal", "xavier", "he")
OPTIM_ORDER = ("sgd", "momentum", "adam")
FIRST_KEYS = ("init", "optim")
# Overrides that say how a sweep ran, not what it computed: the run directory's list, plus the
# replica count (its seeds are grouped like a seed sweep's) and when records were written.
NOT_A_CHOICE = (*NON_RUN_KEYS, "replicas", "flush_every")
WEIGHT_MEAN = "grad_summary/mean_weight_norm"  # derived: mean over the weight tensors' gradient norms


@dataclass
class Run:
    """One training run: a job directory (or one replica of a vectorized job)."""

    path: Path
    overrides: dict[str, str]
    metrics: dict
    config: dict
    scalars: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.metrics.get("status", "missing")

    @property
    def seed(self) -> str:
        return self.overrides.get(SEED_KEY, str(self.config.get(SEED_KEY, self.metrics.get("choices", {})
                                                                .get(SEED_KEY, "0"))))

    def series(self, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(steps, values)`` of a scalar tag, or of the derived ``WEIGHT_MEAN``:
        (1 / L) * sum over the L weight tensors of ||grad W_l||, on the steps all of them have."""
        if tag != WEIGHT_MEAN:
            return self.scalars.get(tag)
        parts = [v for t, v in self.scalars.items() if t.startswith("grad_norm/") and t.endswith(".weight")]
        if not parts:
            return None
        common = parts[0][0]
        for steps, _ in parts[1:]:
            common = np.intersect1d(common, steps)
        return common, np.mean([vals[np.searchsorted(steps, common)] for steps, vals in parts], axis=0)


def read_scalars(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar series in ``directory``, ``tag -> (steps, values)``, as TensorBoard's
    ``EventAccumulator`` reads them, through :func:`initopt.tbread.read_run_events` (the same series,
    tested against it; the accumulator checks each record's CRC in pure Python: ~0.3 s a study run)."""
    from initopt.tbread import read_run_events

    return {tag: (series.steps, series.values.astype(float))
            for tag, series in read_run_events(directory).scalars.items()}


def choices_of(job: Job) -> dict[str, str]:
    """The job's overrides as ``key -> value``, less those that do not change what it computes."""
    pairs = (item.split("=", 1) for item in job.overrides if "=" in item)
    out = {}
    for key, value in pairs:
        key = key.lstrip("+~")
        if key not in NOT_A_CHOICE and not key.startswith("hydra."):
            out[key] = value
    return out


def _scalars_of(directory: Path, metrics: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A run's scalars; none at all from a run that trained to its end (ok or diverged) means
    its event files are missing or unreadable. A failed run may have none."""
    scalars = read_scalars(directory)
    if not scalars and metrics.get("status") in ("ok", "diverged"):
        raise ValueError(f"no TensorBoard scalars read from {directory.name}")
    return scalars


def runs_of(job: Job) -> list[Run]:
    """The runs of a finished job, scalars read; a vectorized job gives one run per replica."""
    overrides = choices_of(job)
    replicas = job.metrics.get("replicas")
    if not replicas:
        return [Run(job.path, overrides, job.metrics, job.config, _scalars_of(job.path, job.metrics))]
    return [Run(job.path / r["event_dir"], {**overrides, SEED_KEY: str(r["seed"])}, r, job.config,
                _scalars_of(job.path / r["event_dir"], r)) for r in replicas]


def varying_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (seed excluded): init and optim first,
    then the others in the order the first job lists them."""
    choices = [choices_of(j) for j in jobs]
    keys: list[str] = []
    for c in choices:
        keys += [k for k in c if k not in keys]
    varying = [k for k in keys if k != SEED_KEY and len({c.get(k) for c in choices}) > 1]
    return [k for k in FIRST_KEYS if k in varying] + [k for k in varying if k not in FIRST_KEYS]


@dataclass
class Group:
    """The runs of one configuration, differing only in their seed."""

    label: str
    choice: dict[str, str]
    runs: list[Run] = field(default_factory=list)

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status == "ok"]

    def _component(self, key: str) -> str:
        if key in self.choice:
            return self.choice[key]
        cfg = self.runs[0].config.get(key)
        if isinstance(cfg, dict) and "name" in cfg:
            return str(cfg["name"])
        return str(self.runs[0].metrics.get("choices", {}).get(key, "-"))

    @property
    def init(self) -> str:
        return self._component("init")

    @property
    def optim(self) -> str:
        return self._component("optim")

    @property
    def rest(self) -> tuple:
        """The varying choices besides init and optimizer (what a colour and line style leave open)."""
        return tuple((k, v) for k, v in self.choice.items() if k not in FIRST_KEYS)


def _rank(key: str, value: str, seen: list[str]):
    """Sort key of one value: the config order for init / optim, numbers by value, else sweep order."""
    fixed = {"init": INIT_ORDER, "optim": OPTIM_ORDER}.get(key, ())
    if value in fixed:
        return (0, fixed.index(value), 0.0)
    try:
        return (1, 0, float(value))
    except ValueError:
        return (2, seen.index(value) if value in seen else len(seen), 0.0)


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    """One group per combination of ``keys``, rows in the config order."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        choice = {k: run.overrides.get(k, "-") for k in keys}
        label = ",".join(f"{k}={v}" for k, v in choice.items()) or "all runs"
        groups.setdefault(tuple(choice.values()), Group(label, choice)).runs.append(run)
    seen = {k: list(dict.fromkeys(g.choice[k] for g in groups.values())) for k in keys}
    return sorted(groups.values(), key=lambda g: [_rank(k, g.choice[k], seen[k]) for k in keys])


def depth_order(names: list[str]) -> list[str]:
    """Parameter / layer names input first (fc1, fc2, ..., then the rest), a weight above its bias."""
    def key(name):
        layer = re.match(r"(fc|act)(\d+)", name)
        kind = 1 if name.endswith(".bias") else 0
        return (1, 0, kind, name) if layer is None else (0, int(layer.group(2)), kind, name)
    return sorted(names, key=key)
