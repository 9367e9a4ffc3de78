"""Start-up checks: every bad input becomes one line naming the key, the value and what is allowed.

:func:`precheck_command_line` reads the command line exactly as Hydra will
(Hydra's own argument parser and override grammar), expands a ``-m`` sweep into
its jobs, composes each one and runs every check on it *before* Hydra starts,
so a typo costs one line and creates no output directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from initopt.config import ConfigError, first_line, validate
from initopt.data import check_available, expected_train_size

CONFIG_MODULE = "initopt.conf"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "CUDA is not available here; use cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError("device", name, "one of auto, cpu, cuda")
    return torch.device(name)


def check_runnable(cfg: DictConfig, n_train: int) -> None:
    """Checks that need the data's size: a batch can be at most the whole training set."""
    if cfg.batch_size > n_train:
        raise ConfigError(
            "batch_size", cfg.batch_size,
            f"at most the training-set size {n_train} (equal to it = full-batch gradient descent)",
        )


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no data loaded: schema ranges, device, data files, batch size."""
    validate(cfg)
    resolve_device(cfg.device)
    check_available(cfg.data)
    check_runnable(cfg, expected_train_size(cfg.data))


# ---------------------------------------------------------------------------- errors
def _omegaconf_cause(err: BaseException):
    from omegaconf.errors import OmegaConfBaseException

    while err is not None:
        if isinstance(err, OmegaConfBaseException):
            return err
        err = err.__cause__ or err.__context__
    return None


def user_error_line(err: BaseException) -> str:
    """One line for a user: what key, what value, what is allowed."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(err, ConfigError):
        return str(err)
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, option = err.missing_cfg_file.rpartition("/")
        allowed = ", ".join(sorted(o for o in err.options if not o.endswith("_schema")))
        return f"{group}={option} is not allowed: unknown option for '{group}'; one of {allowed}"
    cause = _omegaconf_cause(err)
    if cause is not None and getattr(cause, "full_key", None):
        line = f"{cause.full_key}: {first_line(cause)}"
        fields = getattr(getattr(cause, "object_type", None), "__dataclass_fields__", None)
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and fields:
            line += "; allowed: " + ", ".join(fields)
        return line
    return first_line(err)


# ---------------------------------------------------------------------- command line
def _job_override_lists(overrides: list[str], multirun: bool) -> list[list[str]]:
    """Override lists of the jobs Hydra would launch (BasicSweeper's expansion), thinned
    to jobs that together use every swept value at least once.

    Composing costs ~0.1 s, so a 60-job grid is not composed 60 times; the checks are
    per key, and the few that combine keys run again in each job before it trains.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if not multirun:
        return [overrides]
    return covering_jobs([job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch])


def covering_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """The jobs, in order, that add an override no earlier kept job has: together they use
    every swept value at least once."""
    seen: set[str] = set()
    covering = []
    for job in jobs:
        if not seen.issuperset(job):
            covering.append(job)
            seen.update(job)
    return covering


def compose_job(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose one job's config the way Hydra will, without Hydra's own keys."""
    from hydra import compose, initialize_config_module

    task_overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=config_name, overrides=task_overrides)


def check_writable(key: str, directory: str) -> None:
    """The output directory must be creatable: its nearest existing ancestor a writable folder."""
    path = Path(directory).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(key, directory, f"{existing} is a file, not a folder; choose another directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, directory, f"{existing} is not writable; choose a directory you can write to")


def _override_value(overrides: list[str], key: str) -> str | None:
    values = [o.split("=", 1)[1] for o in overrides if o.startswith(key + "=")]
    return values[-1] if values else None


def _check_output_dir(overrides: list[str], multirun: bool, cfg: DictConfig) -> None:
    from initopt.resume import check_can_continue

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    chosen = _override_value(overrides, key)
    check_writable(key, chosen or ("multirun" if multirun else "outputs"))
    if chosen and not multirun and cfg.resume:
        check_can_continue(cfg, Path(chosen))


def precheck_command_line(argv: list[str]) -> None:
    """Raise on the first job of the command line that Hydra would fail or that a check rejects."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion:
        return
    if args.config_path or args.config_dir:  # another search path: leave it all to Hydra
        return
    config_name = args.config_name or "train"
    jobs = _job_override_lists(args.overrides, args.multirun)
    for i, job in enumerate(jobs):
        cfg = compose_job(job, config_name)
        check_config(cfg)
        if i == 0:
            _check_output_dir(args.overrides, args.multirun, cfg)
