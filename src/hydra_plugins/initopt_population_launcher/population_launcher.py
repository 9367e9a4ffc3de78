"""A Hydra launcher that trains a whole sweep as a few vectorized populations, in one process.

``python -m initopt.train -m init=zero,normal,xavier,he optim=sgd,momentum,adam seed=0,1,2,3,4 +launcher=population``

1. Each job is composed (once per distinct set of structural overrides, see ``compose.py``; the
   ``population`` sweeper leaves it to the launcher) and validated and its directory prepared as
   Hydra's basic launcher does
   (``run_job``: the same ``.hydra/`` files, job directory and name), with the job's own checks:
   a finished job is kept, a checkpointed one resumes, a job whose checks fail records its error.
2. The members of all jobs that can share (same model shape, data, batch size, steps, schedule,
   dtype, device, optimizer family and starting step; see :func:`initopt.sweep.grouping.compatibility_key`)
   become one population each; one larger than ``hydra.launcher.member_budget`` is split, and
   the split is printed. Jobs that cannot share run as populations of their own, in the same process.
3. Each population trains in one engine pass; every job's directory ends exactly as a separate run
   would leave it (TensorBoard run, ``final.pt``, ``metrics.json`` noting the population).

SIGINT / SIGTERM checkpoint the population in training (one checkpoint per member directory) and
stop the sweep; rerunning the same command resumes it and skips the finished jobs.
"""


# No `from __future__ import annotations` here: Hydra's plugin scan runs this module before it is in
# sys.modules, and dataclasses then cannot resolve string annotations.
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.initopt_population_launcher.population_launcher.PopulationLauncher"
    member_budget: int = 1024  # most members trained at once; a larger population is split


ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf,
                             provider="initopt")


def _prepare_job(cfg: DictConfig):
    """Hydra's task function for phase 1: the job's checks and directory, no training yet."""
    from initopt.sweep.plan import prepare_job
    from initopt.train import resume_command

    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    hint = resume_command(output_dir, True, hc.sweep.dir)
    return prepare_job(cfg, output_dir, hc.job.override_dirname, hint, dict(hc.runtime.choices), standalone=False)


class PopulationLauncher(Launcher):
    def __init__(self, member_budget: int = 1024) -> None:
        super().__init__()
        self.member_budget = member_budget
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from initopt.compose import JobComposer

        self.config, self.hydra_context = config, hydra_context
        self.composer = JobComposer(hydra_context.config_loader, config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from initopt.sweep.runner import run_sweep

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Preparing {len(job_overrides)} jobs for the population launcher")
        returns: list[JobReturn] = []
        try:
            for i, o in enumerate(job_overrides):
                returns.append(self._prepare(list(o), initial_job_idx + i))
                refuse_if_in_use(returns[-1])
        except BaseException:  # Ctrl-C or a refusal while preparing: no prepared job keeps its lock
            release_prepared(returns)
            raise
        prepared = [r.return_value for r in returns if r.status == JobStatus.COMPLETED]
        outcomes = run_sweep(prepared, self.member_budget)
        for ret in returns:
            finish_return(ret, outcomes)
        return returns

    def _prepare(self, overrides: list[str], idx: int) -> JobReturn:
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        sweep_config = self.composer.compose(overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        return run_job(hydra_context=self.hydra_context, task_function=_prepare_job, config=sweep_config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


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


def finish_return(ret: JobReturn, outcomes: dict) -> None:
    """The job's outcome into the sweep's summary (a failed job: one line and its metrics.json); the
    return marked completed so that Hydra does not re-raise it (the summary's exit code says it)."""
    from initopt.checks import user_error_line
    from initopt.sweep import outputs, summary

    output_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir)
    if ret.status == JobStatus.COMPLETED:
        outcome = outcomes[id(ret.return_value)]
    else:  # refused while preparing (its checks, its directory, its checkpoint)
        outcome = failure_of(ret)
        outputs.record_failure(output_dir, outcome)
        print(f"[{ret.hydra_cfg.hydra.job.override_dirname}] failed: {user_error_line(outcome)}", file=sys.stderr)
    summary.record(output_dir, outcome)
    ret.status = JobStatus.COMPLETED
    ret.return_value = None if isinstance(outcome, BaseException) else outcome.get("final", {}).get("test_accuracy")


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
