"""What a job leaves: each member's final weights and ``metrics.json``, a replica job's aggregate
(``metrics.json`` and its mean run), the one-line summaries, failure records, a full disk in one line."""

from __future__ import annotations

import contextlib
import math
import shutil
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from initopt import engine, rundir
from initopt.checks import user_error_line
from initopt.compose import JOBS
from initopt.config import ConfigError
from initopt.engine.loop import METRIC_KEYS
from initopt.sweep.grouping import TrainingGroup
from initopt.sweep.plan import Job, ReplicasMode
from initopt.tb import RunLogger

if TYPE_CHECKING:
    from initopt.sweep.runner import GroupRun


def choices(cfg: DictConfig, group_choices: dict | None = None) -> dict[str, str | int | float | bool]:
    """The run's identity for HParams and reports: group options and the main knobs (read from
    the config's values, :meth:`initopt.compose.JobConfigs.values`)."""
    cfg = JOBS.values(cfg)
    picked = {g: str((group_choices or {}).get(g, cfg[g].name)) for g in ("model", "init", "optim", "data")}
    return {**picked, "seed": cfg.seed, "lr": cfg.optim.lr, "batch_size": cfg.batch_size, "steps": cfg.steps,
            "momentum_form": cfg.optim.get("form", "")}


# ------------------------------------------------------------------------------- members
def finish_members(run: GroupRun) -> None:
    """Each trained member's run directory: divergence mark, HParams, final.pt, metrics.json;
    then the group's mean runs."""
    group = run.group
    for i, owner in enumerate(group.owners):
        try:
            if owner.error is None:  # else an earlier member's write failed: the job has failed
                finish_member(run, i)
                continue
        except Exception as err:  # a full disk, say: this job fails, the group's other jobs finish
            owner.error = err
        with contextlib.suppress(Exception):  # its event file, closed however far it got
            run.logs.loggers[i].close()
    for aggregate, idx in run.logs.aggregates:
        try:
            if all(run.result.diverged[i] is not None for i in idx):
                aggregate.write_divergence(max(run.result.diverged[i] for i in idx))
            aggregate.finish(run.result.steps_done)
        except Exception as err:
            group.owners[idx[0]].error = group.owners[idx[0]].error or err


def finish_member(run: GroupRun, i: int) -> None:
    """Member ``i`` of a trained group: its divergence mark, HParams, final.pt, metrics.json."""
    group, result, pop = run.group, run.result, run.training.population
    member, owner = group.members[i], group.owners[i]
    logger = run.logs.loggers[i]
    if result.diverged[i] is not None:
        logger.write_divergence(result.diverged[i])
    logger.finish(result.steps_done)
    rundir.write_final(member.dir, pop.member_state_dict(i))
    plan = owner.plan
    metrics = {
        "status": result.status(i), "diverged_step": result.diverged[i], "steps": member.cfg.steps,
        "steps_done": result.steps_done if result.diverged[i] is None else result.diverged[i],
        "wall_time_s": result.wall_time_s, "steps_per_s": result.steps_per_s(), "final": result.final(i),
        "choices": choices(member.cfg, plan.group_choices),
        "hparams": plan.sessions["seeds" if plan.replicated else "run"].hparams,
        "run_name": member.name, "device": str(pop.device),
        "n_parameters": sum(t[0].numel() for t in pop.tensors()), "parameters": pop.names,
        "fingerprint": member.fingerprint, "population": group_note(group, i),
        "history": [{"step": s, **m} for s, m in result.histories[i]],
    }
    rundir.write_metrics(member.dir, metrics)
    (member.dir / rundir.CHECKPOINT).unlink(missing_ok=True)
    owner.results[member] = metrics


def group_note(group: TrainingGroup, i: int) -> dict:
    """``metrics.json``'s ``population``: the group a member trained in and its place there."""
    return {"id": group.id, "size": len(group.members), "index": i,
            "family": engine.family_of(group.members[0].cfg.optim), "jobs": len(group.jobs)}


# ----------------------------------------------------------------------------------- jobs
def finish_job(job: Job) -> dict:
    """The job's metrics.json (for a replica job, the aggregate over its members); prints one line."""
    plan = job.plan
    if job.error is not None:  # writing a member's outputs failed (see finish_members)
        raise job.error
    if plan.finished is not None:
        twin = plan.finished.get(rundir.SAME_RUN_AS)
        where = f"in {twin} (the same config under another name; not retrained)" if twin else \
            f"kept as it is: {plan.output_dir}"
        print(f"[{plan.label}] already finished ({plan.finished.get('status')}); {where}")
        return plan.finished
    if not plan.replicated:
        metrics = job.metrics_of(plan.members[0])
        print_single(job, metrics)
        return metrics
    metrics = aggregate_metrics(job)
    if job.split:
        write_mean_run_of_evaluations(job)
    rundir.write_metrics(plan.output_dir, metrics)
    key = headline_key(metrics["final"])
    print(f"[{plan.label}] {len(plan.members)} replicas ({job.mode.value}): {key.replace('_', ' ')} "
          f"{fmt(metrics['final'][key])} ± {fmt(metrics['final_std'][key])} -> {plan.output_dir}")
    return metrics


def fmt(x: float) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.4g}" if abs(x) < 1e-3 and x else f"{x:.4f}"


def headline_key(final: dict) -> str:
    """What a finished run's line reports: its test accuracy, or for a regression (no accuracy,
    e.g. ``data=lstsq``) its test loss."""
    accuracy = final.get("test_accuracy")
    return "test_accuracy" if accuracy is not None and math.isfinite(accuracy) else "test_loss"


def print_single(job: Job, metrics: dict) -> None:
    status = metrics["status"] if metrics["diverged_step"] is None else f"diverged at step {metrics['diverged_step']}"
    key = headline_key(metrics["final"])
    print(f"[{job.plan.label}] {status}: {key.replace('_', ' ')} {fmt(metrics['final'][key])} "
          f"({metrics['steps_per_s']:.0f} steps/s) -> {job.plan.output_dir}")


def aggregate_metrics(job: Job) -> dict:
    """Mean and sample standard deviation (ddof 1) over the members that finished ok."""
    plan = job.plan
    records = [job.metrics_of(m) for m in plan.members]
    finals = [r["final"] for r in records if r["status"] == "ok"]
    mean = {k: float(np.mean([f[k] for f in finals])) if finals else math.nan for k in METRIC_KEYS}
    std = {k: float(np.std([f[k] for f in finals], ddof=1)) if len(finals) > 1 else math.nan for k in METRIC_KEYS}
    walls = [r["wall_time_s"] for r in records]
    wall = sum(walls) if job.mode is ReplicasMode.SEQUENTIAL else max(walls)
    seeds = [m.cfg.seed for m in plan.members]
    steps = plan.cfg.steps
    return {
        "status": "ok" if all(r["status"] == "ok" for r in records) else "diverged",
        "replicas_mode": job.mode.value, "seeds": seeds, "steps": steps, "steps_done": steps,
        "wall_time_s": wall, "steps_per_s": steps / wall if wall else math.nan,
        "replica_steps_per_s": len(seeds) * steps / wall if wall else math.nan,
        "final": mean, "final_std": std, "choices": choices(plan.cfg, plan.group_choices), "run_name": plan.run_name,
        "device": records[0]["device"], "fingerprint": rundir.fingerprint(plan.cfg),
        "replicas": [{"seed": m.cfg.seed, "status": r["status"], "diverged_step": r["diverged_step"],
                      "final": r["final"], "history": r["history"],
                      "event_dir": str(m.dir.relative_to(plan.output_dir))} for m, r in zip(plan.members, records)],
    }


def write_mean_run_of_evaluations(job: Job) -> None:
    """The mean run of a job whose members trained in several groups, written once all are done:
    at each evaluation step the mean, min and max over the members alive there (the per-step
    curves stay in each member's own run)."""
    plan = job.plan
    records = [job.metrics_of(m) for m in plan.members]
    mean_dir = plan.output_dir / rundir.MEAN_RUN
    shutil.rmtree(mean_dir, ignore_errors=True)  # a mean run left by an earlier, interrupted grouping
    mean_run = RunLogger(mean_dir, records[0]["parameters"], banded=True)
    mean_run.write_run_info(plan.sessions["mean"], JOBS.config_yaml(plan.cfg), plan.experiment)
    rows: dict[int, list[list[float]]] = {}
    for r in records:
        for entry in r["history"]:
            if r["diverged_step"] is None or entry["step"] < r["diverged_step"]:
                rows.setdefault(entry["step"], []).append([entry[k] for k in METRIC_KEYS])
    for step in sorted(rows):
        table = np.array(rows[step])
        mean_run.write_eval(step, dict(zip(METRIC_KEYS, table.mean(0))), low=dict(zip(METRIC_KEYS, table.min(0))),
                            high=dict(zip(METRIC_KEYS, table.max(0))))
    diverged = [r["diverged_step"] for r in records]
    if all(d is not None for d in diverged):
        mean_run.write_divergence(max(diverged))
    mean_run.finish(max(r["steps_done"] for r in records))


# -------------------------------------------------------------------------------- failures
def as_user_error(job: Job, err: BaseException) -> BaseException:
    """A full disk becomes one line (what, where, what to do), and the unfinished members' partial
    outputs go, so nothing half-written stays (a member with a checkpoint keeps it and its events:
    rerunning resumes there)."""
    full = rundir.disk_full(err, job.plan.output_dir)
    if full is None:
        return err
    for member in job.pending:
        (member.dir / rundir.FINAL).unlink(missing_ok=True)  # weights without metrics.json: not finished
        if not (member.dir / rundir.CHECKPOINT).exists():
            rundir.clear_stale(member.dir)
    if job.plan.replicated:
        rundir.clear_stale(job.plan.output_dir, keep_replicas=True)
    where = getattr(full, "filename", None) or job.plan.output_dir
    cause = getattr(full, "strerror", None) or next((w for w in rundir.DISK_FULL_WORDS if w in str(full)),
                                                    rundir.DISK_FULL_WORDS[0])
    return ConfigError("hydra.run.dir", str(job.plan.output_dir),
                       f"the disk is full ({cause} writing {where}); free some space and rerun")


def record_failure(output_dir: Path, err: BaseException) -> None:
    """A failing job leaves its own record (never over a finished run's); the sweep goes on."""
    if rundir.finished_metrics(output_dir) is None:
        try:
            rundir.write_metrics(output_dir, {"status": "failed", "error": user_error_line(err),
                                              "traceback": "".join(traceback.format_exception(err))})
        except OSError:  # a full disk: the error line on stderr is all there is room for
            pass
