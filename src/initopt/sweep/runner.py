"""Training groups run: each group -> an engine pass, its sinks (TensorBoard runs) and checkpoints.

:func:`run_sweep` is the population launcher's core: a sweep's prepared jobs trained group by group
in one process. Jobs whose setup fails (e.g. their data cannot be read) record their error and drop
out; a group that fails records the error in each of its jobs; the others go on. SIGINT / SIGTERM
checkpoint the group in training and stop the sweep (rerun to resume).

Process-wide torch settings (threads, deterministic algorithms) are set for each group and
restored after it (:func:`runtime_settings`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from initopt import engine, rundir
from initopt.checks import check_device, check_runnable, user_error_line
from initopt.compose import JOBS
from initopt.config import ConfigError
from initopt.data import Dataset, load_dataset
from initopt.engine import checkpoint
from initopt.models import build_model
from initopt.resources import FILE_MARGIN, open_file_limit, parameter_count
from initopt.signals import StopSignals
from initopt.sinks import PopulationLogs, optim_scalars
from initopt.sweep import outputs
from initopt.sweep.grouping import TrainingGroup, training_groups
from initopt.sweep.plan import Job, ReplicasMode, Start
from initopt.tb import RunLogger
from initopt.threads import choose_threads

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# cuBLAS reads this once, when CUDA initialises; its deterministic workspace setting.
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"


class Interrupted(SystemExit):
    """Raised after the checkpoints on SIGINT / SIGTERM: stops the whole process, sweep included."""


# ------------------------------------------------------------------------------------ data
def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is refused
    (:func:`initopt.checks.check_device`)."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


_DATA_CACHE: dict[tuple, Dataset] = {}


def load_data(cfg: DictConfig) -> Dataset:
    """The job's dataset on its device (loaded once per process for identical data configs)."""
    values = JOBS.values(cfg)
    device = resolve_device(values.device)
    key = (repr(values.data), str(device), values.dtype)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # keep one dataset resident at a time
        _DATA_CACHE[key] = load_dataset(cfg.data, device, DTYPES[values.dtype])
    data = _DATA_CACHE[key]
    check_runnable(values, n_train=len(data.x_train))
    return data


_MODES: dict[tuple, ReplicasMode] = {}


def replicas_mode(cfg: DictConfig, data: Dataset) -> ReplicasMode:
    """How a job's members train together: the configured replicas_mode, auto decided by size
    (one probe model per process for each model, mode, batch size and data shape)."""
    values = JOBS.values(cfg)
    key = (repr(values.model), values.replicas_mode, values.batch_size, data.n_features, data.n_outputs)
    if key not in _MODES:
        probe = build_model(cfg.model, data.n_features, data.n_outputs)
        _MODES[key] = ReplicasMode(engine.forward_mode(cfg.replicas_mode, probe, cfg.batch_size))
    return _MODES[key]


def plan_training(job: Job) -> None:
    """How ``job``'s members train (its data read, :func:`replicas_mode`), and each resuming
    member's checkpoint checked against the config's model, before any grouping: a bad file fails
    its own job only."""
    cfg = job.plan.cfg
    data = load_data(cfg)
    job.mode = replicas_mode(cfg, data)
    if not job.checkpoints:
        return
    expected = {name: (tuple(p.shape), DTYPES[cfg.dtype])
                for name, p in build_model(cfg.model, data.n_features, data.n_outputs).named_parameters()}
    for member, saved in job.checkpoints.items():
        check_checkpoint_tensors(member.dir / rundir.CHECKPOINT, saved, expected)


def check_checkpoint_tensors(path, saved: dict, expected: dict[str, tuple[tuple, torch.dtype]]) -> None:
    """Every member state of a checkpoint (format 3, see :mod:`initopt.engine.checkpoint`): each
    parameter tensor, and each optimizer state tensor kept per parameter (momentum buffer, Adam
    moments), has the config's model's shape and dtype; else a one-line error naming the file."""
    def refuse(what: str):
        return ConfigError("checkpoint", str(path), f"{what}; it does not fit this config's model "
                           "(delete it to start over, or resume with the config that wrote it)")

    for member in saved.get("members") or []:
        params = member.get("params") if isinstance(member, dict) else None
        if not isinstance(params, dict) or set(params) != set(expected):
            raise refuse(f"holds tensors {sorted(params or {})}, the model has {sorted(expected)}")
        per_param = [list(zip(expected, v)) for v in (member.get("optimizer") or {}).values()
                     if isinstance(v, list) and len(v) == len(expected)]
        for name, tensor in [*params.items(), *(pair for state in per_param for pair in state)]:
            shape, dtype = expected[name]
            if not torch.is_tensor(tensor) or tuple(tensor.shape) != shape or tensor.dtype != dtype:
                got = f"{tuple(tensor.shape)} {tensor.dtype}" if torch.is_tensor(tensor) else type(tensor).__name__
                raise refuse(f"tensor '{name}' is {got}, the model's is {shape} {dtype}")


# -------------------------------------------------------------------------- runtime settings
def prepare_cuda_determinism(jobs: list[Job]) -> None:
    """Before anything touches CUDA: cuBLAS's deterministic workspace when a job asks for
    ``deterministic=true`` (too late, and left alone, once CUDA is initialised)."""
    if any(job.plan.cfg.deterministic for job in jobs) and not torch.cuda.is_initialized():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)


@contextmanager
def runtime_settings(cfg: DictConfig, members: int, n_weights: int) -> Iterator[None]:
    """torch's threads for a group of ``members`` copies of ``cfg``'s model (:mod:`initopt.threads`)
    and deterministic algorithms when ``cfg.deterministic``; both restored on exit."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(choose_threads(OmegaConf.merge(cfg, {"replicas": members}), n_weights))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        # Only when changed: the call imports torch._inductor (seconds) even to set False.
        if cfg.deterministic:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


# ---------------------------------------------------------------------------- one group
@dataclass
class GroupRun:
    """A trained (or interrupted) group: its engine, result and open sinks."""

    group: TrainingGroup
    training: engine.Training
    result: engine.Result
    logs: PopulationLogs


def member_of(cfg: DictConfig) -> engine.Member:
    """A member's seed, init and optimizer settings, read from its config's values once
    (:meth:`initopt.compose.JobConfigs.values`; building and initializing each member reads them)."""
    values = JOBS.values(cfg)
    return engine.Member(values.seed, values.init, values.optim)


def train_group(group: TrainingGroup, stop: StopSignals, label: str = "") -> GroupRun:
    """One engine pass over a group; checkpoints go to each member's directory."""
    lead = group.members[0].cfg
    data = load_data(lead)
    n_weights = parameter_count(lead.model, data.n_features, data.n_outputs)
    with runtime_settings(lead, len(group.members), n_weights):
        members = [member_of(m.cfg) for m in group.members]
        training = engine.build(lead, data, members, group.mode.value)
        restore_checkpoints(group, training)
        logs = open_sinks(group, training.population.names, optim_scalars(training.optimizer.hyper))
        first_job = group.jobs[0].plan.label
        if group.start_step:
            print(f"[{label or first_job}] resuming at step {group.start_step}")
        bar_label = label or (first_job if len(group.members) == 1 else f"{len(group.members)} members")
        with progress_bar(lead.steps, training.state.step, bar_label, bool(lead.progress)) as bar:
            result = training.fit(logs, bar, stop.requested, checkpoint_saver(group, training))
    return GroupRun(group, training, result, logs)


def restore_checkpoints(group: TrainingGroup, training: engine.Training) -> None:
    """Each resuming member from its checkpoint (then dropped: its memory can go)."""
    for i, (member, owner) in enumerate(zip(group.members, group.owners)):
        if member.start is Start.RESUME:
            saved = owner.checkpoints.pop(member)
            checkpoint.restore(saved, training, members=[i])


def open_sinks(group: TrainingGroup, param_names: list[str], optim: list[tuple[float, float]]) -> PopulationLogs:
    """Each member's run (its HParams entry and config as text when fresh); the mean run of each
    replica job trained whole in this group. ``optim``: each member's (torch lr, steady step).
    A sweep's runs leave their heat maps to the sweep's end (one colour scale, initopt.groupruns)."""
    resume_step = group.start_step + 1 if group.start_step else None
    loggers = []
    for member, owner in zip(group.members, group.owners):
        plan = owner.plan
        logger = RunLogger(member.dir, param_names, resume_step, heatmap=plan.standalone,
                           hist_tensors=member.cfg.get("hist_tensors"), mirror=not plan.standalone)
        first = member is plan.members[0]
        experiment = plan.experiment if first and not plan.replicated else None
        logger.write_run_info(plan.sessions["seeds" if plan.replicated else "run"], JOBS.config_yaml(member.cfg),
                              experiment)
        loggers.append(logger)
    aggregates = []
    for job in group.jobs:
        if job.plan.replicated and job.mode is not ReplicasMode.SEQUENTIAL and not job.split:
            mean_run = RunLogger(job.plan.output_dir / rundir.MEAN_RUN, param_names, resume_step, banded=True,
                                 heatmap=job.plan.standalone, mirror=not job.plan.standalone)
            mean_run.write_run_info(job.plan.sessions["mean"], JOBS.config_yaml(job.plan.cfg), job.plan.experiment)
            aggregates.append((mean_run, group.members_of(job)))
    return PopulationLogs(loggers, aggregates, optim)


def checkpoint_saver(group: TrainingGroup, training: engine.Training):
    """The engine's checkpoint callback: one checkpoint per member directory."""
    def save(_state) -> None:
        for i, (member, owner) in enumerate(zip(group.members, group.owners)):
            if owner.error is not None:
                continue
            try:
                checkpoint.save(member.dir / rundir.CHECKPOINT, [member.fingerprint], training, members=[i],
                                configs=[rundir.run_config(member.cfg)])
            except Exception as err:  # a full disk: this job fails at the end, the others train on
                owner.error = err
    return save


def progress_bar(total: int, done: int, label: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=label, disable=not (enabled and sys.stderr.isatty()), leave=False)


def interrupted(run: GroupRun, stop: StopSignals) -> Interrupted:
    """Close the sinks, say where the checkpoints are and how to resume; the exception to raise."""
    run.logs.close()
    members = run.group.members
    hints = dict.fromkeys(job.plan.resume_hint for job in run.group.jobs)
    where = ", ".join(str(m.dir) for m in members[:3]) + (" ..." if len(members) > 3 else "")
    print(f"interrupted at step {run.result.steps_done}; checkpoints saved in {where}. Resume with:\n  "
          + "\n  ".join(h for h in hints if h), file=sys.stderr)
    return Interrupted(stop.exit_code)


# ---------------------------------------------------------------------------- the sweep
def run_sweep(prepared: list[Job], member_budget: int) -> dict[int, dict | BaseException]:
    """``id(job) -> metrics`` (or the exception that failed it) for every prepared job."""
    outcomes: dict[int, dict | BaseException] = {}
    prepare_cuda_determinism(prepared)
    live = [job for job in prepared if set_mode(job, outcomes)]
    try:
        groups = training_groups(live, capped_budget(member_budget))
        announce(groups, member_budget)
        with StopSignals() as stop:
            for n, group in enumerate(groups, 1):
                train_and_finish(group, stop, f"population {n}/{len(groups)}: {len(group.members)} members",
                                 outcomes)
        for job in live:
            if id(job) not in outcomes:
                outcomes[id(job)] = finish_or_fail(job)
    finally:
        for job in prepared:
            job.release()
    return outcomes


def capped_budget(member_budget: int) -> int:
    """The member budget, at most what the open-file limit allows (an event file per member, and
    one per replica job's aggregate run)."""
    cap = (open_file_limit() - FILE_MARGIN) // 2
    return min(member_budget, cap) if member_budget > 0 else cap


def set_mode(job: Job, outcomes: dict) -> bool:
    """Decide how ``job``'s members train; False (its failure recorded) when its data cannot be read."""
    if job.plan.finished is not None or not job.plan.members:
        return True
    try:
        plan_training(job)
        return True
    except Exception as err:
        fail([job], err, outcomes)
        return False


def announce(groups: list[TrainingGroup], budget: int) -> None:
    sizes = [len(g.members) for g in groups]
    if not sizes:
        return
    keys = [g.key for g in groups]
    split = f" (split at hydra.launcher.member_budget={budget})" if budget and len(set(keys)) < len(keys) else ""
    print(f"population launcher: {sum(sizes)} members to train in {len(sizes)} population(s) of "
          f"{', '.join(map(str, sizes))}{split}", file=sys.stderr)


def train_and_finish(group: TrainingGroup, stop: StopSignals, label: str, outcomes: dict) -> None:
    pending = [j for j in group.jobs if id(j) not in outcomes]
    if not pending:
        return
    try:
        run = train_group(group, stop, label)
    except Exception as err:
        fail(pending, err, outcomes)
        return
    if run.result.interrupted:
        raise interrupted(run, stop)
    outputs.finish_members(run)


def finish_or_fail(job: Job) -> dict | BaseException:
    try:
        return outputs.finish_job(job)
    except Exception as err:
        return fail([job], err, {})[0]


def fail(failed: list[Job], err: BaseException, outcomes: dict) -> list[BaseException]:
    """Each failed job's own error (a full disk named in its own directory), recorded and printed."""
    errors = []
    for job in failed:
        job_err = outputs.as_user_error(job, err)
        outputs.record_failure(job.plan.output_dir, job_err)
        outcomes[id(job)] = job_err
        errors.append(job_err)
        print(f"[{job.plan.label}] failed: {user_error_line(job_err)}", file=sys.stderr)
    return errors
