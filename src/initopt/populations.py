"""A sweep's prepared jobs trained as populations, in one process (the population launcher's core).

Jobs whose setup fails (e.g. their data cannot be read) record their error and drop out; a
population that fails records the error in each of its jobs; the others go on. SIGINT / SIGTERM
checkpoint the population in training and stop the sweep (rerun to resume).
"""

from __future__ import annotations

import sys

from initopt import job as jobs
from initopt.resources import FILE_MARGIN, open_file_limit
from initopt.signals import StopSignals


def train_sweep(prepared: list[jobs.Job], member_budget: int) -> dict[int, dict | BaseException]:
    """``id(job) -> metrics`` (or the exception that failed it) for every prepared job."""
    outcomes: dict[int, dict | BaseException] = {}
    live = [job for job in prepared if _set_mode(job, outcomes)]
    try:
        groups = jobs.populations(live, capped_budget(member_budget))
        _announce(groups, member_budget)
        with StopSignals() as stop:
            for n, group in enumerate(groups, 1):
                _train_group(group, stop, f"population {n}/{len(groups)}: {len(group.members)} members", outcomes)
        for job in live:
            if id(job) not in outcomes:
                outcomes[id(job)] = _finish(job)
    finally:
        for job in prepared:
            jobs.release(job)
    return outcomes


def capped_budget(member_budget: int) -> int:
    """The member budget, at most what the open-file limit allows (an event file per member, and
    one per replica job's aggregate run)."""
    cap = (open_file_limit() - FILE_MARGIN) // 2
    return min(member_budget, cap) if member_budget > 0 else cap


def _set_mode(job: jobs.Job, outcomes: dict) -> bool:
    if job.finished is not None or not job.members:
        return True
    try:
        job.mode = jobs.mode_of(job.cfg, jobs.load_data(job.cfg))
        return True
    except Exception as err:
        _fail([job], err, outcomes)
        return False


def _announce(groups: list[jobs.Population], budget: int) -> None:
    sizes = [len(g.members) for g in groups]
    if not sizes:
        return
    split = f" (split at hydra.launcher.member_budget={budget})" \
        if budget and any(s == budget for s in sizes) and len(sizes) > 1 else ""
    print(f"population launcher: {sum(sizes)} members to train in {len(sizes)} population(s) of "
          f"{', '.join(map(str, sizes))}{split}", file=sys.stderr)


def _train_group(group: jobs.Population, stop, label: str, outcomes: dict) -> None:
    pending = [j for j in group.jobs if id(j) not in outcomes]
    if not pending:
        return
    try:
        training, result, logs = jobs.train(group, stop, label)
    except Exception as err:
        _fail(pending, err, outcomes)
        return
    if result.interrupted:
        raise jobs.interrupted(group, result, logs, stop)
    jobs.finish_members(group, training, result, logs)


def _finish(job: jobs.Job) -> dict | BaseException:
    try:
        return jobs.finish_job(job)
    except Exception as err:
        _fail([job], err, {})
        return err


def _fail(failed: list[jobs.Job], err: BaseException, outcomes: dict) -> None:
    for job in failed:
        err = jobs.as_user_error(job, err)
        jobs.record_failure(job.output_dir, err)
        outcomes[id(job)] = err
        print(f"[{job.label}] failed: {jobs.user_error_line(err)}", file=sys.stderr)
