"""Read a sweep's outputs (never re-run anything): each run's ``metrics.json``, its Hydra
overrides and its TensorBoard scalars, grouped by what varies across the sweep besides the seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

SEED_KEY = "seed"
# Overrides that say how a sweep ran, not what it computed.
NOT_A_CHOICE = ("+experiment", "experiment", "+launcher", "launcher", "device", "progress", "threads",
                "resume", "checkpoint_every", "data.root", "data.download")


@dataclass
class Run:
    """One training run: a job directory (or one replica of a vectorized job)."""

    path: Path
    overrides: dict[str, str]
    metrics: dict
    event_dir: Path | None = None

    @property
    def status(self) -> str:
        return self.metrics.get("status", "missing")

    @property
    def seed(self) -> str:
        return self.overrides.get(SEED_KEY, str(self.metrics.get("choices", {}).get(SEED_KEY, "0")))

    @cached_property
    def scalars(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every scalar series, ``tag -> (steps, values)``, through TensorBoard's own reader."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        directory = self.event_dir or self.path
        if not any(directory.glob("events.out.tfevents*")):
            return {}
        acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
        acc.Reload()
        out = {}
        for tag in acc.Tags()["scalars"]:
            events = acc.Scalars(tag)
            out[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
        return out


@dataclass
class Group:
    """The runs of one configuration, differing only in their seed."""

    label: str
    choice: dict[str, str]
    runs: list[Run] = field(default_factory=list)

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status == "ok"]


def _read_overrides(job: Path) -> dict[str, str]:
    path = job / ".hydra" / "overrides.yaml"
    items = list(OmegaConf.load(path)) if path.exists() else []
    pairs = (item.split("=", 1) for item in items or [] if "=" in item)
    return {k.lstrip("+~"): v for k, v in pairs if k not in NOT_A_CHOICE and k.lstrip("+") not in NOT_A_CHOICE}


def _runs_of_job(job: Path) -> list[Run]:
    metrics = json.loads((job / "metrics.json").read_text())
    overrides = _read_overrides(job)
    replicas = metrics.get("replicas")
    if not replicas:
        return [Run(job, overrides, metrics)]
    # a vectorized job: each replica is a run of its own, named by its seed
    return [Run(job, {**overrides, SEED_KEY: str(r["seed"])}, r, job / r["event_dir"]) for r in replicas]


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every run under ``sweep_dir`` (any depth): directories holding a ``metrics.json``."""
    jobs = sorted({p.parent for p in Path(sweep_dir).rglob("metrics.json") if ".submitit" not in p.parts})
    jobs = [j for j in jobs if not any(o != j and o in j.parents for o in jobs)]  # replicas live inside
    return [run for job in jobs for run in _runs_of_job(job)]


def varying_keys(runs: list[Run]) -> list[str]:
    """Override keys whose value differs between runs, seed excluded, in a stable order."""
    keys = sorted({k for r in runs for k in r.overrides})
    return [k for k in keys if k != SEED_KEY and len({r.overrides.get(k) for r in runs}) > 1]


def group_runs(runs: list[Run]) -> list[Group]:
    """One group per combination of the varying keys, in the order the sweep listed them."""
    keys = varying_keys(runs)
    groups: dict[tuple, Group] = {}
    for run in runs:
        choice = {k: run.overrides.get(k, "-") for k in keys}
        ident = tuple(choice.values())
        label = ",".join(f"{k}={v}" for k, v in choice.items()) or "all runs"
        groups.setdefault(ident, Group(label, choice)).runs.append(run)
    return list(groups.values())
