"""A sweep's populations packed into shards, and what one shard does in its own process.

The sharded launcher (``+launcher=population_local`` / ``population_slurm``) prepares every job
in the launching process, groups the members as the in-process launcher does, packs the groups
into ``shards`` bins and submits each bin as one submitit job running :class:`Shard`.

Packing (:func:`pack`): a *unit* is a set of groups that share a job (a job's members always
train in one shard: a replica job's mean run needs all of them); its cost is its member-steps,
``sum over members of (steps - start step)``. Units go largest first to the least loaded shard
(greedy LPT: within 4/3 of the best split).

Locks: the launcher holds each job's ``.initopt.lock`` from its preparation on; a shard takes
over the locks of its jobs (only from that launcher: the lock names it) while it trains and hands
them back when it stops, finished or not, so a rerun of the sweep is refused for as long as the
launcher or a shard works in a job. Each shard notes the lock holders it used in
``<its submitit folder>/lock_holders``; after every shard has ended the launcher removes the locks
that it or its shards held (a shard killed outright included) and no other.

Faults: SIGTERM (SLURM's preemption) and SIGUSR2 (submitit's signal before the time limit) stop
the shard at the next step; its populations checkpoint (one ``checkpoint.pt`` per member) and the
shard asks submitit to requeue it (:meth:`Shard.checkpoint`): the requeued shard prepares its jobs
again, resuming each member from its checkpoint (bitwise). SIGINT checkpoints and ends the shard.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from initopt import rundir
from initopt.checks import user_error_line
from initopt.sweep.grouping import TrainingGroup
from initopt.sweep.plan import Job, prepare_job

HOLDERS = "lock_holders"  # in a shard's submitit job folder: the lock holders ("pid host") it used


@dataclass
class JobSpec:
    """What a shard needs to prepare a job the launcher prepared: its task config and identity."""

    cfg: DictConfig
    output_dir: Path
    run_name: str
    resume_hint: str
    group_choices: dict
    holder: str  # the launcher, as the job's lock names it (see initopt.rundir.RunLock)

    @classmethod
    def of(cls, job: Job) -> JobSpec:
        # the launcher applied resume / overwrite already: a requeued shard must resume, never move aside
        plan = job.plan
        cfg = OmegaConf.merge(plan.cfg, {"resume": True, "overwrite": False})
        return cls(cfg, plan.output_dir, plan.run_name, plan.resume_hint, dict(plan.group_choices),
                   holder_of(plan.output_dir))


# ------------------------------------------------------------------------------------ packing
def member_steps(group: TrainingGroup) -> int:
    """The steps a group still has to train: members x (steps - start step)."""
    return sum(max(int(m.cfg.steps) - group.start_step, 0) for m in group.members)


def units(groups: list[TrainingGroup]) -> list[tuple[list[Job], int]]:
    """Groups joined where they share a job (a job never spans two shards): ``(jobs, member-steps)``."""
    merged: list[tuple[list[Job], int]] = []
    for group in groups:
        hit = [u for u in merged if any(j in u[0] for j in group.jobs)]
        unit_jobs = [j for u in hit for j in u[0]] + [j for j in group.jobs if not any(j in u[0] for u in hit)]
        merged = [u for u in merged if u not in hit] + [(unit_jobs, sum(u[1] for u in hit) + member_steps(group))]
    return merged


def pack(groups: list[TrainingGroup], shards: int) -> list[list[Job]]:
    """The groups' jobs in at most ``shards`` bins balanced by member-steps (largest unit first to the
    least loaded bin); empty bins are left out."""
    bins: list[tuple[int, list[Job]]] = [(0, []) for _ in range(max(shards, 1))]
    for unit_jobs, cost in sorted(units(groups), key=lambda u: -u[1]):
        k = min(range(len(bins)), key=lambda i: bins[i][0])
        bins[k] = (bins[k][0] + cost, bins[k][1] + unit_jobs)
    return [b for _, b in bins if b]


def loads(groups: list[TrainingGroup], packed: list[list[Job]]) -> list[int]:
    """Each bin's member-steps."""
    return [sum(member_steps(g) for g in groups if g.jobs[0] in bin_jobs) for bin_jobs in packed]


# --------------------------------------------------------------------------------------- locks
def holder_of(run_dir: Path) -> str:
    """Who holds the run directory's lock (``pid host``), or '' when none does."""
    try:
        return (Path(run_dir) / rundir.LOCK).read_text().strip()
    except OSError:
        return ""


def this_process() -> str:
    """This process as a lock holder names it (see :class:`initopt.rundir.RunLock`)."""
    return f"{os.getpid()} {socket.gethostname()}"


def write_holder(run_dir: Path, holder: str) -> None:
    """Replace the lock's holder in one rename (the lock never disappears in between)."""
    path = Path(run_dir) / rundir.LOCK
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(holder)
    os.replace(tmp, path)


def take_over(run_dir: Path, launcher: str) -> None:
    """A lock the launcher holds becomes this process's, which :func:`initopt.sweep.plan.prepare_job` then takes
    as its own; any other holder is left for ``prepare`` to judge (a live one refuses the job)."""
    if holder_of(run_dir) == launcher:
        write_holder(run_dir, this_process())


class HandBack:
    """A shard's hold on a job's lock: released, the lock goes back to the launcher."""

    def __init__(self, lock: rundir.RunLock, launcher: str):
        self.lock, self.launcher = lock, launcher

    def release(self) -> None:
        if self.lock.held:
            write_holder(self.lock.path.parent, self.launcher)
            self.lock.held = False


def release_after_shards(run_dirs: list[Path], holders: set[str]) -> None:
    """Once no shard runs: remove each lock held by the launcher or one of its shards (never another's)."""
    for run_dir in run_dirs:
        if holder_of(run_dir) in holders:
            (Path(run_dir) / rundir.LOCK).unlink(missing_ok=True)


def read_holders(folder: Path) -> set[str]:
    try:
        return {line.strip() for line in (Path(folder) / HOLDERS).read_text().splitlines() if line.strip()}
    except OSError:
        return set()


# ---------------------------------------------------------------------------------- the shard
@dataclass
class Outcome:
    """One job's end in a shard: its metrics (finished) or its error line."""

    metrics: dict | None = None
    error: str = ""


@dataclass
class Shard:
    """A submitit job's callable: prepare these jobs (taking over their locks from the launcher),
    train them as populations, return ``{job dir: Outcome}``. Checkpointable: on SIGTERM / SIGUSR2
    the populations checkpoint at the next step and the shard is requeued with the same jobs."""

    specs: list[JobSpec]
    member_budget: int
    index: int = 0
    attempts: int = 0

    def __call__(self) -> dict[str, Outcome]:
        import submitit

        from initopt.sweep.runner import Interrupted, run_sweep

        self.attempts += 1
        env = submitit.JobEnvironment()
        self.folder = env.paths.folder
        note_holder(self.folder, this_process())
        print(f"shard {self.index}: attempt {self.attempts}, {len(self.specs)} jobs, {env}", flush=True)
        outcomes: dict[str, Outcome] = {}
        prepared = [job for spec in self.specs if (job := self._prepare(spec, outcomes)) is not None]
        usr_sig = getattr(signal, "SIG" + env.USR_SIG)  # submitit's preemption / time-limit signal
        requeue = signal.signal(usr_sig, _stop_as_sigterm)  # now: stop at the next step, checkpoint
        try:
            trained = run_sweep(prepared, self.member_budget)
        except Interrupted as stop:
            if stop.code == 128 + signal.SIGINT:
                raise
            # checkpointed: let submitit's own handler requeue this shard (it calls self.checkpoint())
            signal.signal(usr_sig, requeue)
            os.kill(os.getpid(), usr_sig)
            raise
        for job in prepared:
            got = trained[id(job)]
            outcomes[str(job.plan.output_dir)] = Outcome(error=user_error_line(got)) if isinstance(got, BaseException) \
                else Outcome(metrics=got)
        return outcomes

    def _prepare(self, spec: JobSpec, outcomes: dict[str, Outcome]) -> Job | None:
        take_over(spec.output_dir, spec.holder)
        try:
            job = prepare_job(spec.cfg, spec.output_dir, spec.run_name, spec.resume_hint, spec.group_choices,
                               standalone=False)
        except Exception as err:  # refused (another process in it) or unreadable: nothing touched
            outcomes[str(spec.output_dir)] = Outcome(error=user_error_line(err))
            return None
        note_holder(self.folder, holder_of(spec.output_dir))  # as this process's lock names it
        job.lock = HandBack(job.lock, spec.holder)
        return job

    def checkpoint(self, *args, **kwargs):
        """submitit's requeue hook: the state is in the members' checkpoint files, so the shard
        itself is requeued unchanged (it resumes from them)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def note_holder(folder: Path, holder: str) -> None:
    """Add a lock holder of this shard to its submitit folder's list (read by :func:`read_holders`)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / HOLDERS, "a") as f:
        f.write(holder + "\n")


def _stop_as_sigterm(signum, frame) -> None:
    """submitit's preemption signal, turned into the stop request the training loop listens to."""
    os.kill(os.getpid(), signal.SIGTERM)
