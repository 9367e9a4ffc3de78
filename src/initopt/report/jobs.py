"""Find a sweep's jobs and say which of them the report can use.

A job is a directory holding ``.hydra/``, ``metrics.json``, ``checkpoint.pt`` or the lock file
``.initopt.lock`` (the outermost one: a replica job's ``replicas/seed=S/`` belong to it). A job is

* ``finished``: ``metrics.json`` reads and says ``ok``, ``diverged`` or ``failed``;
* ``running``: no ``metrics.json`` yet, or a ``checkpoint.pt`` (unfinished, resumable) or a
  ``.initopt.lock`` (a process holds it), or a status that is not a final one;
* ``stopped``: one of those, but its ``.initopt.lock`` names a process that is not alive on this
  host (killed, crashed): nothing will finish it until the sweep is rerun;
* ``unreadable``: one of its files does not parse (a truncated ``metrics.json``, say).

Jobs a sweep has not started have no directory; their number comes from the sweep's
``multirun.yaml`` (its sweeper params and command-line overrides, expanded as Hydra's basic
sweeper does: the product of every comma list).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from initopt import yamltext
from initopt.rundir import CHECKPOINT, LOCK, METRICS, SAME_RUN_AS, RunLock  # the run directory's one owner

MARKERS = (".hydra", METRICS, CHECKPOINT, LOCK)
FINAL_STATUSES = ("ok", "diverged", "failed")
REPORTED = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")  # final metrics the table needs


@dataclass
class Job:
    """One job directory as found on disk, before its scalars are read."""

    path: Path
    state: str  # finished | running | stopped | unreadable
    reason: str = ""  # why running / unreadable, for the listing
    metrics: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    number: float = math.inf  # hydra.job.num: the sweep's own order

    def name(self, root: Path) -> str:
        return str(self.path.relative_to(root)) if self.path != root else self.path.name


def _load_yaml(path: Path):
    return yamltext.load_plain(path) if path.exists() else None


def _read_hydra_files(job: Job) -> None:
    """Overrides, composed config and job number from ``.hydra/`` (absent files: left empty)."""
    hydra_dir = job.path / ".hydra"
    job.overrides = [str(o) for o in (_load_yaml(hydra_dir / "overrides.yaml") or [])]
    job.config = _load_yaml(hydra_dir / "config.yaml") or {}
    number = ((_load_yaml(hydra_dir / "hydra.yaml") or {}).get("hydra", {}).get("job", {}) or {}).get("num")
    job.number = float(number) if isinstance(number, int) else math.inf


def classify(path: Path) -> Job:
    """Read one job directory's small files and decide its state."""
    job = Job(path, "finished")
    try:
        _read_hydra_files(job)
    except Exception as err:  # a corrupt YAML file, whatever the parser says
        return Job(path, "unreadable", f".hydra: {_one_line(err)}")
    lock = RunLock(path)
    dead = lock.path.exists() and lock.holder() is not None and not lock.holder_alive()
    if lock.path.exists() and not dead:
        job.state, job.reason = "running", LOCK
    elif (path / CHECKPOINT).exists():
        job.state, job.reason = "running", f"{CHECKPOINT}, not finished"
    elif not (path / METRICS).exists():
        job.state, job.reason = "running", f"no {METRICS} yet"
    if job.state != "finished":
        if dead:  # its lock names a process that is gone: nothing runs it any more
            pid, host = lock.holder()
            job.state, job.reason = "stopped", f"{job.reason}; its process {pid} on {host or 'this host'} is gone"
        return job
    try:
        job.metrics = json.loads((path / METRICS).read_text())
    except (OSError, ValueError) as err:
        return Job(path, "unreadable", f"{METRICS}: {_one_line(err)}", overrides=job.overrides,
                   config=job.config, number=job.number)
    problem = _schema_problem(job.metrics)
    if problem:
        return Job(path, "unreadable", f"{METRICS}: {problem}", overrides=job.overrides, config=job.config,
                   number=job.number)
    status = job.metrics.get("status")
    if status not in FINAL_STATUSES:
        job.state, job.reason = "running", f"status {status!r}"
    return job


def _schema_problem(metrics) -> str:
    """What keeps a parsed ``metrics.json`` from being reported ('' when nothing does)."""
    if not isinstance(metrics, dict):
        return "not a JSON object"
    runs = metrics.get("replicas") or [metrics]
    if metrics.get("status") == "ok" and not all(isinstance(r, dict) and isinstance(r.get("final"), dict)
                                                 and set(REPORTED) <= r["final"].keys() for r in runs):
        return f"no final {'/'.join(REPORTED)}"
    return ""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Every job under ``sweep_dir`` (any depth), in the sweep's order (``hydra.job.num``, then path)."""
    sweep_dir = Path(sweep_dir)
    found = {p.parent for marker in MARKERS for p in sweep_dir.rglob(marker)
             if ".submitit" not in p.parts}
    outermost = [d for d in found if not any(parent in found for parent in d.parents)]  # not within another
    jobs = sorted((classify(d) for d in outermost), key=lambda j: (j.number, str(j.path)))
    return one_per_config(jobs)


def one_per_config(jobs: list[Job]) -> list[Job]:
    """Each config's finished run once: a job found finished under another directory name
    (``metrics.json``'s ``same_run_as``, see :func:`initopt.sweep.plan.point_to_twin`) is left out
    for the run it names; of finished runs with the same config fingerprint the first in the sweep's
    order is kept."""
    kept, seen = [], set()
    for job in jobs:
        fp = job.metrics.get("fingerprint") if job.state == "finished" else None
        if job.state == "finished" and job.metrics.get(SAME_RUN_AS):
            twin = Path(job.metrics[SAME_RUN_AS])
            if any(j.path.resolve() == twin.resolve() for j in jobs):
                continue  # the run it names is in this report
        if fp and job.metrics.get("status") in ("ok", "diverged"):
            if fp in seen:
                continue
            seen.add(fp)
        kept.append(job)
    return kept


def expected_jobs(sweep_dir: Path) -> int | None:
    """How many jobs the sweeps under ``sweep_dir`` launch, from their ``multirun.yaml``
    (None when there is none or it cannot be expanded, e.g. a range or another sweeper)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    total = 0
    files = sorted(Path(sweep_dir).rglob("multirun.yaml"))
    if not files:
        return None
    parser = OverridesParser.create()
    for path in files:
        try:
            conf = OmegaConf.load(path)
            params = OmegaConf.select(conf, "hydra.sweeper.params") or {}
            task = list(OmegaConf.select(conf, "hydra.overrides.task") or [])
            items = [f"{k}={v}" for k, v in params.items()] + [str(t) for t in task]
            sizes: dict[str, int] = {}
            for override in parser.parse_overrides(items):
                if override.is_sweep_override() and not override.is_discrete_sweep():
                    return None
                sizes[override.get_key_element()] = (len(list(override.sweep_string_iterator()))
                                                      if override.is_sweep_override() else 1)
        except Exception:  # an unparsable multirun.yaml: the count is simply not known
            return None
        total += math.prod(sizes.values())
    return total


@dataclass
class Inventory:
    """The jobs of a sweep by state, and the sentence that says so."""

    jobs: list[Job]
    expected: int | None
    root: Path

    def of(self, state: str) -> list[Job]:
        return [j for j in self.jobs if j.state == state]

    @property
    def not_started(self) -> int:
        return max(0, (self.expected or 0) - len(self.jobs))

    def sentence(self) -> str:
        """E.g. ``3 of 4 jobs finished; 1 running: init=he (no metrics.json yet)``."""
        total = len(self.jobs) + self.not_started
        failed = sum(j.metrics.get("status") == "failed" for j in self.of("finished"))
        parts = [f"{len(self.of('finished'))} of {total} jobs finished" + (f" ({failed} failed)" if failed else "")]
        for state in ("running", "stopped", "unreadable"):
            jobs = self.of(state)
            if jobs:
                parts.append(f"{len(jobs)} {state}: "
                             + ", ".join(f"{j.name(self.root)} ({j.reason})" for j in jobs))
        if self.not_started:
            parts.append(f"{self.not_started} not started")
        return "; ".join(parts)


def inventory(sweep_dir: Path) -> Inventory:
    """The sweep's jobs, classified, and how many it launches in all."""
    return Inventory(find_jobs(sweep_dir), expected_jobs(sweep_dir), Path(sweep_dir))
