"""Training groups: the members (of one or more jobs) that train together in one engine pass.

Members can share a group when their configs agree on everything but seed, init and optimizer
hyperparameters (:func:`compatibility_key`), they train the same way and start at the same step.
A group over the member budget is split **at job boundaries**, so that every job's members train
in one group and a replica job writes one mean run; a job that alone exceeds the budget is split
into groups of the budget (said in one line), its mean run written once all of its members are done.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from omegaconf import DictConfig

from initopt import engine, rundir
from initopt.compose import JOBS
from initopt.sweep.plan import Job, MemberPlan, ReplicasMode


@dataclass(frozen=True, eq=False)
class TrainingGroup:
    """Members that train together: ``owners[i]`` is the job of ``members[i]``."""

    jobs: tuple[Job, ...]
    members: tuple[MemberPlan, ...]
    owners: tuple[Job, ...]
    start_step: int
    mode: ReplicasMode
    key: tuple = ()  # its compatibility key, mode and start step
    id: int = 0  # its number among the sweep's groups

    def members_of(self, job: Job) -> list[int]:
        """The indices of ``job``'s members in this group."""
        return [i for i, owner in enumerate(self.owners) if owner is job]


def compatibility_key(cfg: DictConfig) -> str:
    """What members must share to train as one group (their configs, less what may differ; read
    from the config's values, :meth:`initopt.compose.JobConfigs.values`)."""
    values = JOBS.values(cfg)
    skip = {"seed", "init", "optim", "replicas", *rundir.NON_RUN_KEYS}
    shared = {k: v for k, v in values.items() if k not in skip}
    shared["optim_family"] = engine.family_of(values.optim)
    shared["device"] = values.device
    return repr(sorted(shared.items()))


def training_groups(jobs: list[Job], member_budget: int = 0) -> list[TrainingGroup]:
    """The members still to train, in groups of at most ``member_budget`` (0: no limit).

    Members of a job whose stacking does not pay (:attr:`ReplicasMode.SEQUENTIAL`) train one at a
    time. A job whose members end in more than one group is marked ``split``.
    """
    batches: dict[tuple, list[tuple[Job, list[MemberPlan]]]] = {}
    singles: list[TrainingGroup] = []
    for job in jobs:
        for member in job.pending:
            if job.mode is ReplicasMode.SEQUENTIAL:
                key = ("sequential", len(singles))
                singles.append(TrainingGroup((job,), (member,), (job,), member.start_step, job.mode, key))
                continue
            key = (compatibility_key(member.cfg), job.mode, member.start_step)
            batch = batches.setdefault(key, [])
            if batch and batch[-1][0] is job:
                batch[-1][1].append(member)
            else:
                batch.append((job, [member]))
    groups = [g for key, batch in batches.items() for g in pack(key, batch, member_budget)] + singles
    mark_split_jobs(groups)
    return [replace(group, id=n) for n, group in enumerate(groups)]


def pack(key: tuple, batch: list[tuple[Job, list[MemberPlan]]], budget: int) -> list[TrainingGroup]:
    """Whole jobs into groups of at most ``budget`` members, in order; a job over the budget alone
    is cut into groups of ``budget`` of its own."""
    parts: list[list[tuple[Job, MemberPlan]]] = [[]]
    for job, members in batch:
        if budget > 0 and len(members) > budget:
            print(f"[{job.plan.label}] {len(members)} members, over hydra.launcher.member_budget={budget}: "
                  f"trained in {-(-len(members) // budget)} groups", file=sys.stderr)
            parts += [[(job, m) for m in members[i:i + budget]] for i in range(0, len(members), budget)]
            parts.append([])
            continue
        if budget > 0 and len(parts[-1]) + len(members) > budget:
            parts.append([])
        parts[-1] += [(job, m) for m in members]
    mode, step = key[1], key[2]
    return [TrainingGroup(tuple(dict.fromkeys(j for j, _ in part)), tuple(m for _, m in part),
                          tuple(j for j, _ in part), step, mode, key) for part in parts if part]


def mark_split_jobs(groups: list[TrainingGroup]) -> None:
    """``job.split``: its members train in more than one group (a job trained one member at a
    time is not split: its members never share a mean run)."""
    seen: set[Job] = set()
    for group in groups:
        for job in group.jobs:
            if job.mode is ReplicasMode.SEQUENTIAL:  # one member a group by design: no mean run
                continue
            if job in seen:
                job.split = True
            seen.add(job)
