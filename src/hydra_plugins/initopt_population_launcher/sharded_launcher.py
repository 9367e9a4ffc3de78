"""The population launcher, sharded over submitit jobs (a SLURM cluster, or local processes).

``python -m initopt.train -m +launcher=population_slurm hydra.launcher.shards=4 hydra.launcher.partition=P ...``
``python -m initopt.train -m +launcher=population_local hydra.launcher.shards=2 ...``

1. Every job is composed, checked and its directory prepared in this process, exactly as by the
   in-process population launcher (it is that launcher, less its training).
2. The members still to train are grouped as there, and the groups packed into
   ``hydra.launcher.shards`` shards by member-steps (:func:`initopt.sweep.shards.pack`; a job never spans
   two shards). Each shard is one submitit job (:class:`initopt.sweep.shards.Shard`) that prepares its
   jobs again in its own process (taking over their locks), trains them as populations and writes
   each job directory as the in-process launcher would.
3. This process prints each shard's submitit job id and log, waits for all of them, and returns each
   job's objective to the sweeper (the final test accuracy, as every initopt launcher does). A shard
   that fails leaves its jobs recorded as failed (rerun the command: finished jobs are skipped,
   checkpointed ones resume); the others go on. submitit's files go to ``hydra.launcher.submitit_folder``
   (``<sweep>/.submitit/<job id>/``).
"""

# No `from __future__ import annotations` here: Hydra's plugin scan runs this module before it is in
# sys.modules, and dataclasses then cannot resolve string annotations.
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from hydra_plugins.initopt_population_launcher.population_launcher import PopulationLauncher

log = logging.getLogger(__name__)


@dataclass
class ShardedLauncherConf:
    _target_: str = "hydra_plugins.initopt_population_launcher.sharded_launcher.ShardedPopulationLauncher"
    cluster: str = "local"  # local (processes on this machine) | slurm; submitit.AutoExecutor's cluster
    shards: int = 2  # submitit jobs; each trains a share of the populations, balanced by member-steps
    member_budget: int = 1024  # most members trained at once in a shard; a larger population is split
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    name: str = "initopt-shard"
    timeout_min: int = 60  # per shard; at the limit (SIGUSR2) a shard checkpoints and is requeued
    max_num_timeout: int = 3  # requeues after a time limit before a shard gives up (preemptions: unlimited)
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem_gb: float = 4
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    comment: str | None = None
    gres: str | None = None
    signal_delay_s: int = 120  # SLURM: SIGUSR2 this long before the time limit
    setup: list = field(default_factory=list)  # SLURM: shell lines before the shard starts (module load ...)
    additional_parameters: dict = field(default_factory=dict)  # SLURM: more sbatch options


ConfigStore.instance().store(group="hydra/launcher", name="population_sharded", node=ShardedLauncherConf,
                             provider="initopt")


class ShardedPopulationLauncher(PopulationLauncher):
    def __init__(self, cluster: str = "local", shards: int = 2, member_budget: int = 1024,
                 submitit_folder: str = ".submitit/%j", max_num_timeout: int = 3, **executor: Any) -> None:
        super().__init__(member_budget)
        if cluster not in ("local", "slurm"):
            _bad_option("hydra.launcher.cluster", cluster, "local or slurm")
        if shards < 1:
            _bad_option("hydra.launcher.shards", shards, "an integer >= 1")
        self.cluster, self.shards, self.folder = cluster, shards, submitit_folder
        self.max_num_timeout, self.executor_options = max_num_timeout, executor

    def train_jobs(self, prepared: list) -> dict:
        """Train the prepared jobs in shards; ``id(job) -> metrics | exception`` as the in-process launcher."""
        from initopt.sweep import shards
        from initopt.sweep.grouping import training_groups
        from initopt.sweep.runner import capped_budget, run_sweep

        idle = [job for job in prepared if not _to_train(job)]
        outcomes = run_sweep(idle, self.member_budget)  # finished before: kept, a replica job's mean written
        live = [job for job in prepared if _to_train(job) and _set_mode(job, outcomes)]
        if not live:
            return outcomes
        groups = training_groups(live, capped_budget(self.member_budget))
        packed = shards.pack(groups, self.shards)
        print(f"population launcher: {sum(len(g.members) for g in groups)} members in {len(groups)} population(s), "
              f"packed into {len(packed)} shard(s) of {', '.join(map(str, shards.loads(groups, packed)))} "
              f"member-steps", file=sys.stderr)
        outcomes.update(self._run_shards(packed))
        return outcomes

    def _run_shards(self, packed: list[list]) -> dict:
        from initopt.sweep import shards

        handed = [job for bin_jobs in packed for job in bin_jobs]
        ours = {shards.holder_of(job.plan.output_dir) for job in handed}  # this process, as its locks name it
        executor = self._executor()
        submitted = []
        try:
            for k, bin_jobs in enumerate(packed, 1):
                task = shards.Shard([shards.JobSpec.of(j) for j in bin_jobs], self.member_budget, k)
                for job in bin_jobs:
                    job.lock = None  # its lock is the shard's to take over; released below, after all shards
                submitted.append((executor.submit(task), bin_jobs))
            for k, (sub, bin_jobs) in enumerate(submitted, 1):
                print(f"population launcher: shard {k}/{len(submitted)} is submitit job {sub.job_id} "
                      f"({len(bin_jobs)} jobs); log: {sub.paths.stdout}", file=sys.stderr)
            return {id(job): got for k, (sub, bin_jobs) in enumerate(submitted, 1)
                    for job, got in _collect(sub, bin_jobs, k).items()}
        except KeyboardInterrupt:
            for sub, _ in submitted:
                sub.cancel(check=False)
            _wait_done([sub for sub, _ in submitted], deadline_s=60)
            raise
        finally:
            holders = ours.union(*(shards.read_holders(sub.paths.folder) for sub, _ in submitted))
            shards.release_after_shards([job.plan.output_dir for job in handed], holders)

    def _executor(self):
        import submitit

        folder = str(self.config.hydra.launcher.submitit_folder) if self.config is not None else self.folder
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster,
                                         slurm_max_num_timeout=self.max_num_timeout)
        options = {k: v for k, v in self.executor_options.items() if v is not None and v != [] and v != {}}
        generic = {k: options.pop(k) for k in ("name", "timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb")
                   if k in options}
        if self.cluster == "slurm":
            generic.update({f"slurm_{k}": v for k, v in options.items()})
        elif options.get("setup"):
            generic["local_setup"] = list(options["setup"])
        executor.update_parameters(nodes=1, tasks_per_node=1, **generic)
        return executor


def _to_train(job) -> bool:
    return job.plan.finished is None and bool(job.pending)


def _set_mode(job, outcomes: dict) -> bool:
    """How the job's members train together (needs its data); a job whose data fails records it."""
    from initopt.sweep.runner import set_mode

    if set_mode(job, outcomes):
        return True
    job.release()  # its failure is recorded (set_mode)
    return False


class ShardFailed(RuntimeError):
    """A job whose shard failed (crashed, killed, out of requeues) or that failed in its shard."""


def _collect(sub, bin_jobs: list, k: int) -> dict:
    """Each job of a shard: its metrics, or the exception it failed with (recorded in its directory)."""
    from initopt import rundir

    try:
        ended = sub.result()
    except Exception as err:  # the shard itself failed: its unfinished jobs are recorded as failed
        line = " ".join(s.strip() for s in str(err).splitlines()[:2]) or type(err).__name__  # submitit's reason
        print(f"population launcher: shard {k} (submitit job {sub.job_id}) failed: {line}\n  its log: "
              f"{sub.paths.stderr}; rerun the same command to resume its jobs", file=sys.stderr)
        got = {}
        for job in bin_jobs:
            done = rundir.finished_metrics(job.plan.output_dir)
            if done is None:
                failure = ShardFailed(f"shard {k} (submitit job {sub.job_id}) failed: {line}")
                _record_quietly(job, failure)
                got[job] = failure
            else:
                got[job] = done
        return got
    got = {}
    for job in bin_jobs:
        outcome = ended.get(str(job.plan.output_dir))
        if outcome is None or outcome.metrics is None:
            got[job] = ShardFailed(outcome.error if outcome is not None else f"shard {k} did not report it")
        else:
            got[job] = outcome.metrics
    failed = sum(isinstance(v, BaseException) for v in got.values())
    print(f"population launcher: shard {k} (submitit job {sub.job_id}) done: {len(got) - failed} jobs finished"
          + (f", {failed} failed" if failed else ""), file=sys.stderr)
    return got


def _record_quietly(job, err: BaseException) -> None:
    from initopt.sweep.outputs import record_failure

    record_failure(job.plan.output_dir, err)


def _wait_done(subs: list, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and not all(s.done() for s in subs):
        time.sleep(0.5)


def _bad_option(key: str, value, allowed: str) -> None:
    from initopt.config import ConfigError

    raise ConfigError(key, value, f"must be {allowed}")
