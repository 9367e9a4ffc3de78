"""A job (one composed config, one output directory) as members to train, and its outputs.

A job with ``replicas=K`` has K members, seeds ``seed .. seed+K-1``; each member has a run
directory of its own (the job's directory when K = 1, ``replicas/seed=S`` otherwise) with its
TensorBoard run, ``final.pt``, ``metrics.json`` and, while unfinished, ``checkpoint.pt``.
A replica job's directory also holds the aggregate run (mean over its live members, min-max band)
and the aggregate ``metrics.json``.

:func:`prepare` decides what each member directory needs (skip a finished member, resume from a
checkpoint, start clean), :func:`populations` groups members that can train together,
:func:`train` runs the engine on a group, :func:`finish` writes each job's outputs.
Single runs (``initopt.train``) and the population launcher go through the same four steps.
"""

from __future__ import annotations

import errno
import math
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from initopt import engine, hparams, rundir
from initopt.checks import check_runnable, resolve_device, user_error_line
from initopt.config import ConfigError, validate
from initopt.data import Dataset, load_dataset
from initopt.engine import checkpoint
from initopt.engine.loop import METRIC_KEYS
from initopt.models import build_model, parameter_count
from initopt.sinks import PopulationLogs
from initopt.tb import RunLogger
from initopt.threads import choose_threads

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Interrupted(SystemExit):
    """Raised after the checkpoints on SIGINT / SIGTERM: stops the whole process, sweep included."""


def choices(cfg: DictConfig, group_choices: dict | None = None) -> dict[str, str | int | float | bool]:
    """The run's identity for HParams and reports: group options and the main knobs."""
    picked = {g: str((group_choices or {}).get(g, cfg[g].name)) for g in ("model", "init", "optim", "data")}
    return {**picked, "seed": cfg.seed, "lr": cfg.optim.lr, "batch_size": cfg.batch_size, "steps": cfg.steps,
            "momentum_form": cfg.optim.get("form", "")}


@dataclass(eq=False)  # compared and hashed by identity
class MemberRun:
    """One member: its config (the job's with its own seed), directory and where it starts."""

    cfg: DictConfig
    dir: Path
    name: str
    fingerprint: str
    start: str  # "fresh" | "resume" | "finished"
    metrics: dict | None = None  # a finished member's metrics.json
    checkpoint: dict | None = None  # a resuming member's checkpoint, read once (checked, grouped, restored)
    logger: RunLogger | None = None


@dataclass(eq=False)  # compared and hashed by identity
class Job:
    cfg: DictConfig
    output_dir: Path
    run_name: str
    resume_hint: str
    group_choices: dict
    members: list[MemberRun] = field(default_factory=list)
    mode: str = "stacked"  # how its members train: stacked | vmap | sequential
    finished: dict | None = None  # the job's metrics.json when it had finished before
    lock: rundir.RunLock | None = None
    standalone: bool = True  # not part of a -m sweep: writes its own HParams experiment
    sessions: dict = field(default_factory=dict)  # its HParams entries (initopt.hparams.sessions)

    @property
    def experiment(self) -> list | None:
        """A standalone job's own HParams experiment (a sweep's is written by its callback)."""
        return hparams.columns(s.hparams for s in self.sessions.values()) if self.standalone else None

    @property
    def replicated(self) -> bool:
        return self.cfg.replicas > 1

    @property
    def label(self) -> str:
        return self.run_name or "run"


# --------------------------------------------------------------------------------- prepare
def prepare(cfg: DictConfig, output_dir: Path, run_name: str = "", resume_hint: str = "",
            group_choices: dict | None = None, standalone: bool = True) -> Job:
    """Check the config and the directory, take its lock and decide where each member starts.

    Refused in one line (:class:`ConfigError`): another process in the directory; a finished run of
    another config; ``resume=false`` where a run is, unless ``overwrite=true`` (which moves the old
    run to ``<dir>.replaced-<time>`` first).
    """
    validate(cfg)
    output_dir = Path(output_dir)
    job = Job(cfg, output_dir, run_name, resume_hint, group_choices or {}, standalone=standalone)
    job.sessions = hparams.sessions(cfg, job.group_choices, run_name)
    if not cfg.resume and rundir.holds_a_run(output_dir):
        if not cfg.overwrite:
            raise ConfigError("resume", False, f"{output_dir} holds a run; resume=true continues it, "
                              "overwrite=true moves it aside and starts anew")
        _move_old_run_aside(output_dir)
    job.lock = rundir.RunLock(output_dir).acquire()
    try:
        _plan_members(job)
    except BaseException:
        job.lock.release()
        raise
    return job


def _move_old_run_aside(output_dir: Path) -> None:
    """``overwrite=true``: the old run goes to ``<dir>.replaced-<time>`` in one rename; Hydra's
    record of this run (``.hydra/``) comes back into the fresh directory."""
    moved = rundir.move_aside(output_dir)
    output_dir.mkdir(parents=True)
    if (moved / ".hydra").is_dir():
        (moved / ".hydra").rename(output_dir / ".hydra")
    print(f"overwrite=true: the old run in {output_dir} was moved to {moved}", file=sys.stderr)


def _plan_members(job: Job) -> None:
    cfg, fp = job.cfg, rundir.fingerprint(job.cfg)
    state = rundir.classify(job.output_dir, fp)
    if state == "foreign":
        raise ConfigError("hydra.run.dir", str(job.output_dir),
                          "holds a finished run of another config; choose a new directory (or overwrite=true)")
    if state == "finished" and cfg.resume:
        job.finished = rundir.read_metrics(job.output_dir)
        return
    seeds = [cfg.seed + r for r in range(cfg.replicas)]
    for seed in seeds:
        member_cfg = OmegaConf.merge(cfg, {"seed": seed, "replicas": 1}) if job.replicated else cfg
        member_dir = job.output_dir / "replicas" / f"seed={seed}" if job.replicated else job.output_dir
        name = f"{job.run_name},seed={seed}" if job.replicated else job.run_name
        job.members.append(_plan_member(member_cfg, member_dir, name))
    if job.replicated:
        rundir.clear_stale(job.output_dir, keep_replicas=True)


def _plan_member(cfg: DictConfig, member_dir: Path, name: str) -> MemberRun:
    fp = rundir.fingerprint(cfg)
    state = rundir.classify(member_dir, fp)
    if state == "foreign":
        raise ConfigError("hydra.run.dir", str(member_dir), "holds a finished run of another config")
    if state == "finished":
        return MemberRun(cfg, member_dir, name, fp, "finished", rundir.read_metrics(member_dir))
    if state == "resumable":
        saved = checkpoint.load(member_dir / rundir.CHECKPOINT, [fp])  # a bad checkpoint fails now, in one line
        return MemberRun(cfg, member_dir, name, fp, "resume", checkpoint=saved)
    if state == "stale":
        rundir.clear_stale(member_dir)
    return MemberRun(cfg, member_dir, name, fp, "fresh")


# ----------------------------------------------------------------------------- populations
@dataclass(eq=False)
class Population:
    """Members (of one or more jobs) that train together: same shapes, data, schedule, family, step."""

    jobs: list[Job]
    members: list[MemberRun]
    owners: list[Job]
    start_step: int
    id: int = 0  # its number among the sweep's populations


def _start_step(member: MemberRun) -> int:
    if member.start != "resume":
        return 0
    return int(member.checkpoint["loop"]["step"])


def compatibility_key(cfg: DictConfig) -> str:
    """What members must share to train as one population (their configs, less what may differ)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in ("seed", "init", "optim", "replicas", *rundir.NON_RUN_KEYS):
        plain.pop(key, None)
    plain["optim_family"] = engine.family_of(cfg.optim)
    plain["device"] = cfg.device
    return repr(sorted(plain.items()))


def populations(jobs: list[Job], member_budget: int = 0) -> list[Population]:
    """Group the members still to train; members of a job whose stacking does not pay (see
    :func:`engine.forward_mode`) train one at a time; a group over ``member_budget`` is split."""
    groups: dict[tuple, Population] = {}
    singles: list[Population] = []
    for job in jobs:
        for member in job.members:
            if member.start == "finished":
                continue
            step = _start_step(member)
            if job.mode == "sequential":
                singles.append(Population([job], [member], [job], step))
                continue
            key = (compatibility_key(member.cfg), job.mode, step)
            group = groups.setdefault(key, Population([], [], [], step))
            if job not in group.jobs:
                group.jobs.append(job)
            group.members.append(member)
            group.owners.append(job)
    grouped = [*groups.values(), *singles]
    parts = [part for group in grouped for part in _split(group, member_budget)]
    for n, part in enumerate(parts):
        part.id = n
    return parts


def _split(group: Population, budget: int) -> list[Population]:
    if budget <= 0 or len(group.members) <= budget:
        return [group]
    parts = []
    for i in range(0, len(group.members), budget):
        members, owners = group.members[i:i + budget], group.owners[i:i + budget]
        jobs = list(dict.fromkeys(owners))
        parts.append(Population(jobs, members, owners, group.start_step))
    return parts


# ----------------------------------------------------------------------------------- train
_DATA_CACHE: dict[tuple, Dataset] = {}


def load_data(cfg: DictConfig) -> Dataset:
    """The job's dataset on its device (loaded once per process for identical data configs)."""
    device = resolve_device(cfg.device)
    key = (repr(OmegaConf.to_container(cfg.data, resolve=True)), str(device), cfg.dtype)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # keep one dataset resident at a time
        _DATA_CACHE[key] = load_dataset(cfg.data, device, DTYPES[cfg.dtype])
    data = _DATA_CACHE[key]
    check_runnable(cfg, n_train=len(data.x_train))
    return data


def mode_of(cfg: DictConfig, data: Dataset) -> str:
    """How a job's members train together: the configured replicas_mode, auto decided by size."""
    probe = build_model(cfg.model, data.n_features, data.n_outputs)
    return engine.forward_mode(cfg.replicas_mode, probe, cfg.batch_size)


def set_threads_and_determinism(cfg: DictConfig, members: int) -> None:
    """Threads for a population of ``members`` copies of ``cfg``'s model (see initopt.threads)."""
    import os

    data = load_data(cfg)
    sized = OmegaConf.merge(cfg, {"replicas": members})
    torch.set_num_threads(choose_threads(sized, parameter_count(cfg.model, data.n_features, data.n_outputs)))
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def _open_loggers(group: Population, param_names: list[str], effective_lr: list[float]) -> PopulationLogs:
    """Each member's run (its HParams entry and config as text when fresh); a replica job's mean run."""
    resume_step = group.start_step + 1 if group.start_step else None
    for member, owner in zip(group.members, group.owners):
        member.logger = RunLogger(member.dir, param_names, resume_step)
        first = member is owner.members[0]
        experiment = owner.experiment if first and not owner.replicated else None
        member.logger.write_run_info(owner.sessions["seeds" if owner.replicated else "run"],
                                     OmegaConf.to_yaml(member.cfg), experiment)
    aggregates = []
    for job in group.jobs:
        if job.replicated and job.mode != "sequential":
            idx = [i for i, owner in enumerate(group.owners) if owner is job]
            mean_run = RunLogger(job.output_dir / rundir.MEAN_RUN, param_names, resume_step, banded=True)
            mean_run.write_run_info(job.sessions["mean"], OmegaConf.to_yaml(job.cfg), job.experiment)
            aggregates.append((mean_run, idx))
    return PopulationLogs([m.logger for m in group.members], aggregates, effective_lr)


def _save_checkpoints(group: Population, training: engine.Training):
    def save(state) -> None:
        for i, member in enumerate(group.members):
            checkpoint.save(member.dir / rundir.CHECKPOINT, [member.fingerprint], training.population,
                            training.optimizer, state, members=[i])
    return save


def _restore(group: Population, training: engine.Training) -> None:
    for i, member in enumerate(group.members):
        if member.start == "resume":
            checkpoint.restore(member.checkpoint, training.population, training.optimizer, training.state,
                               members=[i])
            member.checkpoint = None  # restored: its memory can go


def progress_bar(total: int, done: int, label: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=label, disable=not (enabled and sys.stderr.isatty()), leave=False)


def train(group: Population, stop, label: str = "") -> tuple[engine.Training, engine.Result, PopulationLogs]:
    """One engine pass over a population; checkpoints go to each member's directory."""
    lead = group.members[0].cfg
    set_threads_and_determinism(lead, len(group.members))
    data = load_data(lead)
    members = [engine.Member(m.cfg.seed, m.cfg.init, m.cfg.optim) for m in group.members]
    training = engine.build(lead, data, members, group.jobs[0].mode)
    _restore(group, training)
    logs = _open_loggers(group, training.population.names, [float(v) for v in training.optimizer.hyper["lr"]])
    if group.start_step:
        print(f"[{label or group.jobs[0].label}] resuming at step {group.start_step}")
    bar_label = label or (group.jobs[0].label if len(group.members) == 1 else f"{len(group.members)} members")
    with progress_bar(lead.steps, training.state.step, bar_label, bool(lead.progress)) as bar:
        result = training.fit(logs, bar, stop.requested, _save_checkpoints(group, training))
    return training, result, logs


def interrupted(group: Population, result: engine.Result, logs: PopulationLogs, stop) -> Interrupted:
    logs.close()
    hints = dict.fromkeys(job.resume_hint for job in group.jobs)
    where = ", ".join(str(m.dir) for m in group.members[:3]) + (" ..." if len(group.members) > 3 else "")
    print(f"interrupted at step {result.steps_done}; checkpoints saved in {where}. Resume with:\n  "
          + "\n  ".join(h for h in hints if h), file=sys.stderr)
    return Interrupted(stop.exit_code)


# ---------------------------------------------------------------------------------- finish
def finish_members(group: Population, training: engine.Training, result: engine.Result,
                   logs: PopulationLogs) -> None:
    """Each trained member's run directory: divergence mark, HParams, final.pt, metrics.json."""
    pop = training.population
    for i, member in enumerate(group.members):
        owner = group.owners[i]
        picked = {**choices(member.cfg, owner.group_choices)}
        final = result.final(i)
        if result.diverged[i] is not None:
            member.logger.write_divergence(result.diverged[i])
        member.logger.finish(result.steps_done)
        torch.save(pop.member_state_dict(i), member.dir / rundir.FINAL)
        member.metrics = {
            "status": result.status(i), "diverged_step": result.diverged[i], "steps": member.cfg.steps,
            "steps_done": result.steps_done if result.diverged[i] is None else result.diverged[i],
            "wall_time_s": result.wall_time_s, "steps_per_s": result.steps_per_s(), "final": final,
            "choices": picked, "hparams": owner.sessions["seeds" if owner.replicated else "run"].hparams,
            "run_name": member.name, "device": str(pop.device),
            "n_parameters": sum(t[0].numel() for t in pop.tensors()), "parameters": pop.names,
            "fingerprint": member.fingerprint, "population": _population_note(group, i),
            "history": [{"step": s, **m} for s, m in result.histories[i]],
        }
        rundir.write_metrics(member.dir, member.metrics)
        (member.dir / rundir.CHECKPOINT).unlink(missing_ok=True)
        member.start = "finished"
    for aggregate, idx in logs.aggregates:
        if all(result.diverged[i] is not None for i in idx):
            aggregate.write_divergence(max(result.diverged[i] for i in idx))
        aggregate.finish(result.steps_done)


def _population_note(group: Population, i: int) -> dict:
    return {"id": group.id, "size": len(group.members), "index": i,
            "family": engine.family_of(group.members[0].cfg.optim), "jobs": len(group.jobs)}


def finish_job(job: Job) -> dict:
    """The job's metrics.json (for a replica job, the aggregate over its members); prints one line."""
    if job.finished is not None:
        print(f"[{job.label}] already finished ({job.finished.get('status')}); kept as it is: {job.output_dir}")
        return job.finished
    if not job.replicated:
        metrics = job.members[0].metrics
        _print_single(job, metrics)
        return metrics
    metrics = _aggregate_metrics(job)
    rundir.write_metrics(job.output_dir, metrics)
    print(f"[{job.label}] {len(job.members)} replicas ({job.mode}): test accuracy "
          f"{_fmt(metrics['final']['test_accuracy'])} ± {_fmt(metrics['final_std']['test_accuracy'])} "
          f"-> {job.output_dir}")
    return metrics


def _fmt(x: float) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.4f}"


def _print_single(job: Job, metrics: dict) -> None:
    status = metrics["status"] if metrics["diverged_step"] is None else f"diverged at step {metrics['diverged_step']}"
    print(f"[{job.label}] {status}: test accuracy {_fmt(metrics['final']['test_accuracy'])} "
          f"({metrics['steps_per_s']:.0f} steps/s) -> {job.output_dir}")


def _aggregate_metrics(job: Job) -> dict:
    """Mean and sample standard deviation (ddof 1) over the members that finished ok."""
    records = [m.metrics for m in job.members]
    finals = [r["final"] for r in records if r["status"] == "ok"]
    mean = {k: float(np.mean([f[k] for f in finals])) if finals else math.nan for k in METRIC_KEYS}
    std = {k: float(np.std([f[k] for f in finals], ddof=1)) if len(finals) > 1 else math.nan for k in METRIC_KEYS}
    walls = [r["wall_time_s"] for r in records]
    wall = sum(walls) if job.mode == "sequential" else max(walls)
    seeds = [m.cfg.seed for m in job.members]
    return {
        "status": "ok" if all(r["status"] == "ok" for r in records) else "diverged",
        "replicas_mode": job.mode, "seeds": seeds, "steps": job.cfg.steps, "steps_done": job.cfg.steps,
        "wall_time_s": wall, "steps_per_s": job.cfg.steps / wall if wall else math.nan,
        "replica_steps_per_s": len(seeds) * job.cfg.steps / wall if wall else math.nan,
        "final": mean, "final_std": std, "choices": choices(job.cfg, job.group_choices), "run_name": job.run_name,
        "device": records[0]["device"], "fingerprint": rundir.fingerprint(job.cfg),
        "replicas": [{"seed": m.cfg.seed, "status": r["status"], "diverged_step": r["diverged_step"],
                      "final": r["final"], "history": r["history"],
                      "event_dir": str(m.dir.relative_to(job.output_dir))} for m, r in zip(job.members, records)],
    }


def as_user_error(job: Job, err: BaseException) -> BaseException:
    """A full disk becomes one line (what, where, what to do), and the unfinished members' partial
    outputs go, so nothing half-written stays (a member with a checkpoint keeps it and its events:
    rerunning resumes there)."""
    if not (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)):
        return err
    for member in job.members:
        if member.start != "finished" and not (member.dir / rundir.CHECKPOINT).exists():
            rundir.clear_stale(member.dir)
    if job.replicated:
        rundir.clear_stale(job.output_dir, keep_replicas=True)
    where = getattr(err, "filename", None) or job.output_dir
    return ConfigError("hydra.run.dir", str(job.output_dir),
                       f"the disk is full ({err.strerror} writing {where}); free some space and rerun")


def record_failure(output_dir: Path, err: BaseException) -> None:
    """A failing job leaves its own record (never over a finished run's); the sweep goes on."""
    if rundir.finished_metrics(output_dir) is None:
        try:
            rundir.write_metrics(output_dir, {"status": "failed", "error": user_error_line(err),
                                              "traceback": traceback.format_exc()})
        except OSError:  # a full disk: the error line on stderr is all there is room for
            pass


def release(job: Job) -> None:
    if job.lock is not None:
        job.lock.release()

