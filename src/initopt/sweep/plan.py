"""The plan of a job (one composed config, one output directory): its members and where each starts.

A job with ``replicas=K`` has K members, seeds ``seed .. seed+K-1``; each member has a run
directory of its own (the job's directory when K = 1, ``replicas/seed=S`` otherwise) with its
TensorBoard run, ``final.pt``, ``metrics.json`` and, while unfinished, ``checkpoint.pt``.
A replica job's directory also holds the aggregate run (``mean/``) and the aggregate ``metrics.json``.

:func:`prepare_job` checks the config and the directory (lock, refusals, ``overwrite=true``) and
plans each member: :attr:`Start.FINISHED` (kept), :attr:`Start.RESUME` (from its checkpoint) or
:attr:`Start.FRESH`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from initopt import hparams, rundir
from initopt.checks import validate_once
from initopt.compose import JOBS, frozen
from initopt.config import ConfigError
from initopt.engine import checkpoint


class Start(Enum):
    """Where a member starts."""

    FRESH = "fresh"
    RESUME = "resume"  # from its checkpoint
    FINISHED = "finished"  # done before: kept as it is


class ReplicasMode(Enum):
    """How a job's members train together (``replicas_mode``, ``auto`` decided by size)."""

    STACKED = "stacked"
    VMAP = "vmap"
    SEQUENTIAL = "sequential"  # one member at a time


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class MemberPlan:
    """One member: its config (the job's with its own seed), directory and where it starts."""

    cfg: DictConfig
    dir: Path
    name: str
    fingerprint: str
    start: Start
    start_step: int = 0  # the checkpoint's step for a resuming member
    stored_metrics: dict | None = None  # a finished member's metrics.json


@dataclass(frozen=True, eq=False)
class JobPlan:
    """A job's config, identity (name, HParams sessions) and its members' plans."""

    cfg: DictConfig
    output_dir: Path
    run_name: str
    resume_hint: str
    group_choices: dict
    standalone: bool  # not part of a -m sweep: writes its own HParams experiment
    sessions: dict  # its HParams entries (initopt.hparams.sessions)
    members: tuple[MemberPlan, ...] = ()
    finished: dict | None = None  # the job's metrics.json when it had finished before

    @property
    def experiment(self) -> list | None:
        """A standalone job's own HParams experiment (a sweep's is written by its callback)."""
        return hparams.columns(s.hparams for s in self.sessions.values()) if self.standalone else None

    @property
    def replicated(self) -> bool:
        return JOBS.values(self.cfg).replicas > 1

    @property
    def label(self) -> str:
        return self.run_name or "run"


@dataclass(eq=False)  # compared and hashed by identity
class Job:
    """A planned job while it runs: its directory lock, how its members train, the checkpoints
    of its resuming members (read once: checked at planning, restored, then dropped) and the
    metrics of the members trained in this process."""

    plan: JobPlan
    lock: rundir.RunLock | None = None
    mode: ReplicasMode = ReplicasMode.STACKED
    checkpoints: dict[MemberPlan, dict] = field(default_factory=dict)
    results: dict[MemberPlan, dict] = field(default_factory=dict)
    split: bool = False  # its members train in more than one group (see initopt.sweep.grouping)
    error: BaseException | None = None  # writing its outputs failed (initopt.sweep.outputs)

    @property
    def pending(self) -> list[MemberPlan]:
        """Its members still to train."""
        return [m for m in self.plan.members if m.start is not Start.FINISHED and m not in self.results]

    def metrics_of(self, member: MemberPlan) -> dict | None:
        """A member's metrics: trained now, or stored from before."""
        return self.results.get(member, member.stored_metrics)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def prepare_job(cfg: DictConfig, output_dir: Path, run_name: str = "", resume_hint: str = "",
                group_choices: dict | None = None, standalone: bool = True) -> Job:
    """Check the config and the directory, take its lock and decide where each member starts.

    Refused in one line (:class:`ConfigError`): another process in the directory; a finished run of
    another config; ``resume=false`` where a run is, unless ``overwrite=true`` (which moves the old
    run to ``<dir>.replaced-<time>`` first).
    """
    cfg = frozen(cfg)  # read-only from here on: what is derived from it (values, fingerprint) once
    validate_once(cfg)
    output_dir = Path(output_dir)
    group_choices = group_choices or {}
    if not cfg.resume and rundir.holds_a_run(output_dir):
        if not cfg.overwrite:
            raise ConfigError("resume", False, f"{output_dir} holds a run; resume=true continues it, "
                              "overwrite=true moves it aside and starts anew")
        move_old_run_aside(output_dir)
    lock = rundir.RunLock(output_dir).acquire()
    try:
        checkpoints: dict[MemberPlan, dict] = {}
        plan = plan_job(cfg, output_dir, run_name, resume_hint, group_choices, standalone, checkpoints)
    except BaseException:
        lock.release()
        raise
    return Job(plan, lock, checkpoints=checkpoints)


def move_old_run_aside(output_dir: Path) -> None:
    """``overwrite=true``: the old run goes to ``<dir>.replaced-<time>`` in one rename; Hydra's
    record of this run (``.hydra/``) comes back into the fresh directory."""
    moved = rundir.move_aside(output_dir)
    output_dir.mkdir(parents=True)
    if (moved / ".hydra").is_dir():
        (moved / ".hydra").rename(output_dir / ".hydra")
    print(f"overwrite=true: the old run in {output_dir} was moved to {moved}", file=sys.stderr)


def plan_job(cfg: DictConfig, output_dir: Path, run_name: str, resume_hint: str, group_choices: dict,
             standalone: bool, checkpoints: dict[MemberPlan, dict]) -> JobPlan:
    """The job's plan; the checkpoints of resuming members are read (and checked) into ``checkpoints``."""
    sessions = hparams.sessions(cfg, group_choices, run_name)
    plan = JobPlan(cfg, output_dir, run_name, resume_hint, group_choices, standalone, sessions)
    state = rundir.classify(output_dir, rundir.fingerprint(cfg))
    if state == "foreign":
        raise ConfigError("hydra.run.dir", str(output_dir),
                          "holds a finished run of another config; choose a new directory (or overwrite=true)")
    if state == "finished" and cfg.resume:
        return replace(plan, finished=rundir.read_metrics(output_dir))
    if state == "empty" and cfg.resume and not standalone:
        twin = rundir.finished_twin(output_dir.parent, rundir.fingerprint(cfg), output_dir)
        if twin is not None:
            return replace(plan, finished=point_to_twin(output_dir, twin))
    members = []
    for seed in range(cfg.seed, cfg.seed + cfg.replicas):
        member_cfg = OmegaConf.merge(cfg, {"seed": seed, "replicas": 1}) if plan.replicated else cfg
        member_dir = output_dir / "replicas" / f"seed={seed}" if plan.replicated else output_dir
        name = f"{run_name},seed={seed}" if plan.replicated else run_name
        known = None if plan.replicated else state  # a run of one member: its directory is the job's
        members.append(plan_member(member_cfg, member_dir, name, checkpoints, known))
    if plan.replicated:
        rundir.clear_stale(output_dir, keep_replicas=True)
    return replace(plan, members=tuple(members))


def point_to_twin(output_dir: Path, twin: Path) -> dict:
    """A sweep's job already finished under another directory name (the same config, e.g. before
    the sweep was widened): not retrained; its ``metrics.json`` is the twin's with ``same_run_as``
    naming where the run (events, weights) is. The report counts the config once."""
    metrics = {**rundir.read_metrics(twin), rundir.SAME_RUN_AS: str(twin)}
    metrics.pop("schema", None)
    rundir.write_metrics(output_dir, metrics)
    return metrics


def plan_member(cfg: DictConfig, member_dir: Path, name: str, checkpoints: dict[MemberPlan, dict],
                state: str | None = None) -> MemberPlan:
    """Where one member starts; a resuming member's checkpoint goes into ``checkpoints``.
    ``state``: the directory's :func:`initopt.rundir.classify` for this config, when known."""
    fp = rundir.fingerprint(cfg)
    state = state or rundir.classify(member_dir, fp)
    if state == "foreign":
        raise ConfigError("hydra.run.dir", str(member_dir), "holds a finished run of another config")
    if state == "finished":
        return MemberPlan(cfg, member_dir, name, fp, Start.FINISHED, stored_metrics=rundir.read_metrics(member_dir))
    if state == "resumable":
        # a bad checkpoint fails now, in one line (a config mismatch names the keys that differ)
        saved = checkpoint.load(member_dir / rundir.CHECKPOINT, [fp], [rundir.run_config(cfg)])
        member = MemberPlan(cfg, member_dir, name, fp, Start.RESUME, start_step=checkpoint.start_step(saved))
        checkpoints[member] = saved
        return member
    if state == "stale":
        rundir.clear_stale(member_dir)
    return MemberPlan(cfg, member_dir, name, fp, Start.FRESH)

