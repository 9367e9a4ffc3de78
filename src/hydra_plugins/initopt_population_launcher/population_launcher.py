"""A Hydra launcher that trains a whole sweep as a few vectorized populations, in one process.

``python -m initopt.train -m init=zero,normal,xavier,he optim=sgd,momentum,adam seed=0,1,2,3,4 +launcher=population``

1. **Prepare**: each job's config is taken from :data:`initopt.compose.JOBS` (composed once per
   process, per distinct set of config-group choices; the ``population`` sweeper leaves it to the
   launcher), its directory started as Hydra's basic launcher does (the same ``.hydra/`` files,
   job directory and name, :class:`initopt.jobstart.JobStarter`, without Hydra's per-job logging
   set-up) and its own checks run: a finished job is kept, a checkpointed one resumes, a job whose
   checks fail records its error.
2. **Train**: the members of all jobs that can share (same model shape, data, batch size, steps, schedule,
   dtype, device, optimizer family and starting step; see :func:`initopt.sweep.grouping.compatibility_key`)
   become one population each; one larger than ``hydra.launcher.member_budget`` is split, and
   the split is printed. Jobs that cannot share run as populations of their own, in the same process.
3. Each population trains in one engine pass; every job's directory ends exactly as a separate run
   would leave it (TensorBoard run, ``final.pt``, ``metrics.json`` noting the population).

A job that fails (its checks, its data, a write) gets one line and ``status: failed`` in its
``metrics.json``; the others go on, and the sweep ends in one summary line and exit 3
(:mod:`initopt.sweep.summary`; the sharded launcher's jobs too, through :meth:`PopulationLauncher.train`).
A job directory in use by another live process stops the sweep before anything trains (exit 2).

SIGINT / SIGTERM checkpoint the population in training (one checkpoint per member directory) and
stop the sweep; rerunning the same command resumes it and skips the finished jobs.

Each job's ``train.log`` holds its own lines (its launch line and its outcome). With
``INITOPT_PHASE_TIMES=<file.json>`` in the environment the launcher writes the seconds it spent
in each phase there (``scripts/bench.py`` reads it).
"""


# No `from __future__ import annotations` here: Hydra's plugin scan runs this module before it is in
# sys.modules, and dataclasses then cannot resolve string annotations.
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from initopt.hydra_compat import basic_sweeper

BasicSweeper, BasicSweeperConf = basic_sweeper()
log = logging.getLogger(__name__)
PHASE_TIMES = "INITOPT_PHASE_TIMES"  # env var: a JSON file for the launcher's seconds per phase


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.initopt_population_launcher.population_launcher.PopulationLauncher"
    member_budget: int = 1024  # most members trained at once; a larger population is split (0 = no budget)


ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf,
                             provider="initopt")


class PhaseClock:
    """Seconds per phase of one launch, written as JSON where ``INITOPT_PHASE_TIMES`` says (else nothing)."""

    def __init__(self) -> None:
        self.path = os.environ.get(PHASE_TIMES)
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()
        self.launch_started = time.time()  # epoch: the bench's start-up is this less the process start

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now

    def write(self, jobs: int) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps({"launch_started": self.launch_started, "jobs": jobs,
                                                   "seconds": self.seconds}))


def _prepare_job(sweep_dir: str):
    """The job's task function for phase 1: its checks and directory, no training yet."""
    def prepare(cfg: DictConfig, output_dir: Path, run_name: str, choices: dict):
        from initopt.sweep.plan import prepare_job
        from initopt.train import resume_command

        hint = resume_command(output_dir, True, sweep_dir)
        return prepare_job(cfg, output_dir, run_name, hint, choices, standalone=False)
    return prepare


def _outcome_line(outcome, objective) -> str:
    """``finished: test accuracy 0.9000`` or ``failed: <cause>`` for the job's train.log."""
    if outcome is None or isinstance(outcome, BaseException):
        from initopt.checks import user_error_line

        return f"failed: {user_error_line(outcome) if outcome is not None else 'not trained'}"
    accuracy = objective(outcome)
    return "finished" + ("" if accuracy is None else f": test accuracy {accuracy:.4f}")


class PopulationLauncher(Launcher):
    def __init__(self, member_budget: int = 1024) -> None:
        super().__init__()
        self.member_budget = member_budget
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.outcomes: dict[int, dict | BaseException] = {}  # id(JobReturn) -> its metrics or error

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        clock = PhaseClock()
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        clock.lap("set-up")
        started = self.prepare(job_overrides, initial_job_idx, clock)
        returns = self.train(started)
        clock.lap("train")
        self.record_outcomes(started)
        clock.lap("write")
        clock.write(len(job_overrides))
        return returns

    def prepare(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, clock: PhaseClock):
        """Phase 1: each job's directory, ``.hydra/`` files and checks (see :mod:`initopt.jobstart`)."""
        from initopt.jobstart import JobStarter

        starter = JobStarter(self.hydra_context, self.config)
        self.starter = starter
        clock.lap("compose")
        task = _prepare_job(str(self.config.hydra.sweep.dir))
        log.info(f"Preparing {len(job_overrides)} jobs for the population launcher")
        started = []
        try:
            for i, overrides in enumerate(job_overrides):
                line = f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}"
                log.info(line)
                job = starter.start(list(overrides), initial_job_idx + i, task)
                starter.remember(job, log, line)
                started.append(job)
                refuse_if_in_use(job.ret)
        except BaseException:  # Ctrl-C or a refusal while preparing: no prepared job keeps its lock
            release_prepared([job.ret for job in started])
            raise
        clock.lap("prepare")
        return started

    def train(self, started: list) -> list[JobReturn]:
        """Phase 2: the prepared jobs trained as populations; each return holds its test accuracy (None
        for a failed job: its outcome goes to the sweep's summary, :mod:`initopt.sweep.summary`)."""
        prepared = [s.ret.return_value for s in started if s.ret.status == JobStatus.COMPLETED]
        outcomes = self.train_jobs(prepared)
        for job in started:
            self.outcomes[id(job.ret)] = finish_return(job, outcomes, self.objective)
        return [job.ret for job in started]

    def train_jobs(self, prepared: list) -> dict:
        """``id(job) -> metrics | exception`` for the prepared jobs (the sharded launcher trains them elsewhere)."""
        from initopt.sweep.runner import run_sweep

        return run_sweep(prepared, self.member_budget)

    @staticmethod
    def objective(metrics: dict) -> float | None:
        """What the sweeper gets for a job: its final held-out accuracy; None for a diverged job (nan,
        which Optuna's sweeper cannot take: None makes it a failed trial and the study goes on)."""
        value = metrics.get("final", {}).get("test_accuracy")
        return value if value is not None and math.isfinite(value) else None

    def record_outcomes(self, started) -> None:
        """Each job's outcome line in its own train.log (after its launch line)."""
        for job in started:
            self.starter.remember(job, log, _outcome_line(self.outcomes.get(id(job.ret)), self.objective))
            self.starter.close(job)


def refuse_if_in_use(ret: JobReturn) -> None:
    """Another live process works in this job's directory (a second sweep into one directory):
    the sweep stops in one line, exit 2, before any job trains."""
    from initopt.checks import user_error_line
    from initopt.rundir import DirectoryInUse
    from initopt.sweep.summary import EXIT_USAGE

    if ret.status == JobStatus.FAILED and isinstance(failure_of(ret), DirectoryInUse):
        print(f"initopt.train: error: {user_error_line(failure_of(ret))}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def failure_of(ret: JobReturn) -> BaseException:
    """The exception a failed job's task raised (Hydra re-raises it on ``return_value``)."""
    try:
        _ = ret.return_value
    except Exception as err:
        return err
    raise AssertionError("the job did not fail")


def release_prepared(returns: list[JobReturn]) -> None:
    """The prepared jobs' locks, and any taken by a job whose preparation was cut short."""
    from initopt.rundir import release_held_locks

    for ret in returns:
        if ret.status == JobStatus.COMPLETED:
            ret.return_value.release()
    release_held_locks()


def finish_return(started, outcomes: dict, objective) -> dict | BaseException:
    """A started job's (:class:`initopt.jobstart.Started`) outcome, returned and recorded in the
    sweep's summary (a failed job: one line and its metrics.json); the return marked completed with
    ``objective(metrics)`` (None for a failed job) so that Hydra does not re-raise it (the
    summary's exit code says it)."""
    from initopt.checks import user_error_line
    from initopt.sweep import outputs, summary

    ret, output_dir = started.ret, started.output_dir
    if ret.status == JobStatus.COMPLETED:
        outcome = outcomes[id(ret.return_value)]
    else:  # refused while preparing (its checks, its directory, its checkpoint)
        outcome = failure_of(ret)
        outputs.record_failure(output_dir, outcome)
        print(f"[{started.name or output_dir}] failed: {user_error_line(outcome)}", file=sys.stderr)
    summary.record(output_dir, outcome)
    ret.status = JobStatus.COMPLETED
    ret.return_value = None if isinstance(outcome, BaseException) else objective(outcome)
    return outcome


@dataclass
class PopulationSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.initopt_population_launcher.population_launcher.PopulationSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="population", node=PopulationSweeperConf,
                             provider="initopt")


class PopulationSweeper(BasicSweeper):
    """Hydra's basic sweeper, less its composing of every job before the launch: the population
    launcher composes and checks each job itself (and records a job that fails, the sweep going on)."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        return None
