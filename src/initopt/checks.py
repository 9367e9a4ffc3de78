"""Start-up checks: every bad input becomes one line naming the key, the value and what is allowed.

:func:`precheck_command_line` reads the command line exactly as Hydra will
(Hydra's own argument parser and override grammar), expands a ``-m`` sweep into
its jobs, composes each one and runs every check on it *before* Hydra starts,
so a typo costs one line and creates no output directory.
"""

from __future__ import annotations

import re
import sys
from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig

from initopt.config import ConfigError, first_line, validate
from initopt.datafiles import check_available, check_split, expected_train_size, min_generated_samples
from initopt.resources import check_population_fits
from initopt.values import Config

CONFIG_MODULE = "initopt.conf"
VERSION_BASE = "1.3"  # as initopt.train's @hydra.main sets it
TASK_NAME = "train"  # Hydra's hydra.job.name for initopt.train's task (the name of its module)


def check_device(name: str) -> None:
    """``device=cuda`` needs a GPU (only then is torch imported: the start-up checks refuse bad
    input without torch's seconds of import); the name itself is checked by ``validate``."""
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device", name, "CUDA is not available here; use cpu or auto")


def check_runnable(cfg: Config, n_train: int) -> None:
    """Checks that need the data's size: the train / held-out split works, and a batch is at
    most the whole training set."""
    check_split(cfg.data)
    if cfg.batch_size > n_train:
        more = ""
        if cfg.data.name in ("moons", "circles") and not cfg.data.limit_train:
            n_min = min_generated_samples(cfg.data.test_fraction, min_train=cfg.batch_size)
            more = f", or data.n_samples >= {n_min}"
        raise ConfigError(
            "batch_size", cfg.batch_size,
            f"at most the training-set size {n_train} (equal to it = full-batch gradient descent){more}",
        )


def validate_once(cfg: DictConfig) -> None:
    """:func:`initopt.config.validate`, once per read-only config (:meth:`initopt.compose.JobConfigs.derived`):
    the command-line checks validate every job of a sweep before the launcher prepares it (the
    launcher's job configs are the same objects, :data:`initopt.compose.JOBS`)."""
    from initopt.compose import JOBS

    JOBS.derived(cfg, "validated", validate)


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no data loaded: schema ranges, device, data files, batch size (read
    from the config's values, :meth:`initopt.compose.JobConfigs.values`)."""
    from initopt.compose import JOBS

    validate_once(cfg)
    cfg = JOBS.values(cfg)
    check_device(cfg.device)
    check_available(cfg.data)
    n_train = expected_train_size(cfg.data)
    check_runnable(cfg, n_train)
    check_population_fits(cfg, cfg.replicas, n_train)


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
def group_options(group: str) -> list[str] | None:
    """The options of config group ``group`` (None when it is not a group)."""
    folder = files(CONFIG_MODULE) / group
    if not re.fullmatch(r"[A-Za-z_]\w*", group) or not folder.is_dir():
        return None
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _parse_problem(override: str, hydra_message: str) -> str:
    """What is wrong with an override Hydra's grammar rejects, in words."""
    outside_quotes = re.sub(r"'[^']*'|\"[^\"]*\"", "", override)
    odd = next((c for c in outside_quotes if not (c.isascii() and c.isprintable())), None)
    if odd is not None:
        what = f"{odd!r}, not ASCII" if odd.isprintable() else "a control character"
        return f"it contains {what} (U+{ord(odd):04X}), which Hydra's override grammar takes only inside quotes"
    token = re.search(r"(?:input|at) '(.*?)'", hydra_message)
    where = "the end" if token is None or token.group(1) == "<EOF>" else repr(token.group(1))
    return f"Hydra's override grammar cannot read it (unexpected {where})"


def check_overrides_parse(overrides: list[str]) -> None:
    """Each override must parse under Hydra's grammar; else one line saying which, what is
    wrong, and the allowed options when it sets a config group."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as err:
            key, equals, value = override.partition("=")
            group = key.lstrip("+~").split("@")[0]
            options = group_options(group)
            allowed = f"{group} is one of " + ", ".join(options) if options else \
                "quote a value with special characters: key='...'"
            if not equals:
                raise ConfigError("override", override, f"not key=value; {allowed}") from None
            raise ConfigError(key, value, f"{_parse_problem(override, str(err))}; {allowed}") from None


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
    """The output directory must be creatable (:func:`initopt.rundir.creatable_problem`)."""
    from initopt.rundir import creatable_problem

    problem = creatable_problem(Path(directory))
    if problem is not None:
        raise ConfigError(key, directory, f"{problem}; choose a directory you can write to")


def _override_value(overrides: list[str], key: str) -> str | None:
    """The value Hydra reads for ``key`` (quotes and escapes undone: ``key='a=b,c'`` -> ``a=b,c``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = [o.value() for o in OverridesParser.create().parse_overrides(overrides) if o.key_or_group == key]
    return str(values[-1]) if values else None


def _check_output_dir(overrides: list[str], multirun: bool, cfg: DictConfig) -> None:
    """A chosen directory: writable; not another config's finished run; with ``resume=false``
    empty, or moved aside first when ``overwrite=true`` (before Hydra writes anything into it)."""
    from initopt import rundir

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    chosen = _override_value(overrides, key)
    check_writable(key, chosen or ("multirun" if multirun else "outputs"))
    if not chosen:
        return
    path = Path(chosen)
    occupied = any(path.iterdir()) if multirun and path.is_dir() else rundir.holds_a_run(path)
    if not cfg.resume and occupied:
        if not cfg.overwrite:
            raise ConfigError("resume", False, f"{chosen} holds a run; resume=true continues it, "
                              "overwrite=true moves it aside and starts anew")
        print(f"overwrite=true: the old run in {chosen} was moved to {rundir.move_aside(path)}", file=sys.stderr)
        return
    if not multirun and cfg.resume:
        fp = rundir.fingerprint(cfg)
        state = rundir.classify(path, fp) if cfg.replicas == 1 else "empty"
        if state == "foreign":
            raise ConfigError(key, chosen, "holds a finished run of another config; choose a new directory "
                              "(or resume=false overwrite=true)")
        if state == "resumable":  # its checkpoint must load (torch imported only for this)
            from initopt.engine import checkpoint

            checkpoint.load(path / rundir.CHECKPOINT, [fp], [rundir.run_config(cfg)])


# the population launchers' own options: key -> (lowest allowed integer, what it is)
LAUNCHER_INTEGERS = {
    "member_budget": (0, "the most members trained at once (0 = no budget)"),
    "shards": (1, "the processes or SLURM jobs the sweep is spread over"),
    "timeout_min": (1, "minutes a shard may run before it checkpoints and is requeued"),
    "max_num_timeout": (0, "requeues after a time limit before a shard gives up"),
}
CLUSTERS = ("local", "slurm")


def check_launcher_options(master: DictConfig) -> None:
    """The population launchers' options, before any job: ``member_budget`` an integer >= 0
    (0 = no budget); the sharded launcher's ``shards`` >= 1, ``timeout_min`` >= 1,
    ``max_num_timeout`` >= 0 and ``cluster`` one of :data:`CLUSTERS`."""
    launcher = master.hydra.get("launcher") or {}
    for key, (lowest, meaning) in LAUNCHER_INTEGERS.items():
        if key not in launcher or (key != "member_budget" and "cluster" not in launcher):
            continue
        value = launcher[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ConfigError(f"hydra.launcher.{key}", value, f"an integer >= {lowest}: {meaning}")
    if "cluster" in launcher and "shards" in launcher and launcher.cluster not in CLUSTERS:
        raise ConfigError("hydra.launcher.cluster", launcher.cluster,
                          f"one of {', '.join(CLUSTERS)} (processes on this machine, or SLURM jobs)")


def compose_master(argv_overrides: list[str], multirun: bool, config_name: str = "train"):
    """The command line's config as Hydra will compose it first (``hydra.mode`` added as Hydra
    adds it), and the loader that composed it."""
    from hydra import version
    from hydra.core.utils import JobRuntime
    from hydra.types import RunMode

    from initopt import hydra_compat

    version.setbase(VERSION_BASE)
    # Always initopt.train's name: Hydra's compose API (``initialize_config_module``) leaves "app"
    # in this process-wide singleton, and the .hydra/ files written later would carry it.
    JobRuntime.instance().set("name", TASK_NAME)
    overrides = list(argv_overrides)
    if not any(o.startswith("hydra.mode=") for o in overrides):
        overrides.append(f"hydra.mode={'MULTIRUN' if multirun else 'RUN'}")
    loader = hydra_compat.config_loader(f"pkg://{CONFIG_MODULE}")
    mode = RunMode.MULTIRUN if multirun else RunMode.RUN
    return loader, loader.load_configuration(config_name, overrides, run_mode=mode)


def job_configs(argv_overrides: list[str], multirun: bool, config_name: str = "train"):
    """Every job's task config (``-m``: all of the sweep's jobs, as the basic sweeper expands it
    with ``hydra.sweeper.params``), each composed once into :data:`initopt.compose.JOBS`."""
    from initopt.compose import JOBS, sweep_jobs, task_part

    loader, master = compose_master(argv_overrides, multirun, config_name)
    check_launcher_options(master)
    if not multirun:
        yield task_part(master)
        return
    for job in sweep_jobs(loader, master):
        yield JOBS.task_config(loader, master, job)[0]


def precheck_command_line(argv: list[str]) -> bool:
    """Raise on the first job of the command line that Hydra would fail or that a check rejects;
    return whether the command runs jobs (False: it only shows help, the config or Hydra's information)."""
    from initopt import hydra_compat

    args = hydra_compat.args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion:
        return False
    if args.config_path or args.config_dir:  # another search path: leave it all to Hydra
        return True
    check_overrides_parse(args.overrides)
    for i, cfg in enumerate(job_configs(args.overrides, args.multirun, args.config_name or "train")):
        check_config(cfg)
        if i == 0:
            _check_output_dir(args.overrides, args.multirun, cfg)
    return True
