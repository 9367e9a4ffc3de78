"""Hydra callback for ``-m`` sweeps: TensorBoard's HParams experiment and the run names.

Registered in ``conf/train.yaml`` under ``hydra.callbacks``. On multirun start, before any
job runs, :class:`SweepHParams` reads the sweep with Hydra's own override parser (the
command line's overrides plus the basic sweeper's ``hydra.sweeper.params``, where the
experiment configs put their sweeps) and

1. names the jobs by the swept keys only: a key that has one value for every job (e.g.
   ``steps=1500``) joins ``hydra.job.config.override_dirname.exclude_keys``, through a Hydra
   override that every job's config is composed with; so the job directories, which are the
   TensorBoard run names, read ``init=he,optim=adam``;
2. reads every job's config (at most :data:`MAX_COMPOSED`; beyond that, jobs that together
   use every swept value) from :data:`initopt.compose.JOBS`, where the start-up checks composed
   them (once per distinct set of config-group choices, the plain values applied to a copy), and
   writes the HParams experiment into the sweep directory: every column's domain is the set of
   values the jobs give it (:func:`initopt.hparams.columns`).

Other sweepers (Optuna, Ax, ...) expand sweeps their own way: this callback leaves them alone
and TensorBoard then builds the columns from the runs' own values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from initopt.checks import covering_jobs
from initopt.compose import JOBS, expands_like_basic_sweeper, sweep_jobs, sweep_overrides
from initopt.hparams import Value, columns, sessions
from initopt.tb import write_experiment

EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"
MAX_COMPOSED = 1024  # beyond this, jobs that together use every swept value (each costs a config copy)


def fixed_keys(overrides: list[Override]) -> list[str]:
    """Keys every job gets the same value for: the last override of the key (the one the basic
    sweeper keeps, e.g. a command line's ``seed=0`` over an experiment's ``seed: 0,1,2``) is not
    a sweep."""
    last = {o.key_or_group: o.is_sweep_override() for o in overrides}
    return sorted(k for k, swept in last.items() if not swept)


def _quoted(key: str) -> str:
    return "'" + key.replace("\\", "\\\\").replace("'", "\\'") + "'"


def name_runs_by_swept_keys(config: DictConfig, overrides: list[Override]) -> None:
    """Leave keys that do not vary out of the job names (nothing changes when nothing is swept)."""
    if not any(o.is_sweep_override() for o in overrides):
        return
    current = list(config.hydra.job.config.override_dirname.exclude_keys)
    keys = current + [k for k in fixed_keys(overrides) if k not in current]
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.overrides.hydra.append(f"{EXCLUDE_KEYS}=[{','.join(map(_quoted, keys))}]")
        config.hydra.job.config.override_dirname.exclude_keys = keys


def job_overrides(loader, config: DictConfig) -> list[list[str]]:
    """Every job's override list, as the basic sweeper expands the sweep (thinned beyond
    :data:`MAX_COMPOSED` to jobs that together use every swept value)."""
    jobs = sweep_jobs(loader, config)
    return jobs if len(jobs) <= MAX_COMPOSED else covering_jobs(jobs)


def job_hparams(loader, config: DictConfig, job: list[str]) -> list[dict[str, Value]]:
    """The HParams values of one job's runs (one, or a replica job's seeds and mean)."""
    cfg, choices = JOBS.task_config(loader, config, job)
    return [s.hparams for s in sessions(cfg, choices, "").values()]


class SweepHParams(Callback):
    """On multirun start: run names by swept keys, and the sweep's HParams experiment."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.global_hydra import GlobalHydra

        if not expands_like_basic_sweeper(config):
            return
        loader = GlobalHydra.instance().config_loader()
        name_runs_by_swept_keys(config, sweep_overrides(loader, config))
        runs = [hp for job in job_overrides(loader, config) for hp in job_hparams(loader, config, job)]
        write_experiment(Path(config.hydra.sweep.dir), columns(runs))
