"""A sweep's jobs started as Hydra's ``run_job`` starts them, for a launcher that trains them later
in the same process (the population launcher).

Hydra's ``run_job`` per job deep-copies the whole config twice, points logging at the job's
``train.log`` (a new file handler each job) and dumps the config to YAML three times: ~50-100 ms a
job, more than a small job trains. :class:`JobStarter` leaves each job's directory as ``run_job``
does (the test: byte-equal ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``):

* the job's task config is :data:`initopt.compose.JOBS`'s (composed once in this process);
* ``hydra.yaml``: Hydra's node differs between jobs of one base (one set of config-group choices)
  in five values only (:data:`PER_JOB`), so the YAML of everything else is made once per base,
  and per job only those five are dumped (by OmegaConf, at the same indentation) and put in place;
* logging is configured once for the whole launch; each job's ``train.log`` gets the job's own
  lines (:meth:`JobStarter.log`), formatted as Hydra's job logging formats them.

Where a job needs more of Hydra's machinery (a ``hydra.sweep.subdir`` other than
``${hydra.job.override_dirname}``, a callback that watches each job start and end, a
``train.log`` named otherwise) it is started the general way: its whole config composed and set
as the current ``HydraConfig`` while its task function runs, as ``run_job`` does.
The working directory is never changed (``hydra.job.chdir`` would change it per job while all
jobs run in one process); every path a job uses is absolute.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, env_override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from initopt import yamltext
from initopt.compose import JOBS, raw

DEFAULT_SUBDIR = "${hydra.job.override_dirname}"
DEFAULT_LOG_FILE = "${hydra.runtime.output_dir}/${hydra.job.name}.log"
# what Hydra's node changes from job to job (within one set of config-group choices)
PER_JOB = (("overrides", "task"), ("job", "override_dirname"), ("job", "id"), ("job", "num"), ("runtime", "output_dir"))


@dataclass
class Started:
    """A started job: what its task function got and where its directory is."""

    ret: JobReturn
    output_dir: Path
    log_file: Path | None
    name: str = ""  # the job's run name (Hydra's override_dirname), as its failure line shows it
    lines: list[str] = field(default_factory=list)  # its train.log lines, written at the end


def yaml_at(path: tuple[str, ...], value) -> str:
    """The YAML of ``hydra.<path>`` as it appears in ``hydra.yaml`` (as ``OmegaConf.to_yaml`` writes
    it: :func:`initopt.yamltext.plain_yaml`): its lines, at its indentation. A value written on its
    key's line without a dump (:func:`initopt.yamltext.int_scalar`: a job's number and id) is."""
    scalar = yamltext.int_scalar(value) if path[-1].isidentifier() else None
    if scalar is not None:
        return f"{'  ' * len(path)}{path[-1]}: {scalar}\n"
    nested = value
    for key in reversed(path):
        nested = {key: nested}
    return yamltext.plain_yaml({"hydra": nested}).split("\n", len(path))[len(path)]


def _layout(node: dict) -> list[tuple[tuple[str, ...], str | None]]:
    """``hydra.yaml`` of one base as pieces in document order: (path, its YAML), None where a job's own
    value goes."""
    parents = {path[0] for path in PER_JOB}
    pieces = []
    for key, value in node.items():
        if key not in parents or not value:
            pieces.append(((key,), yaml_at((key,), value)))
            continue
        pieces.append(((key,), f"  {key}:\n"))
        for sub, sub_value in value.items():
            pieces.append(((key, sub), None if (key, sub) in PER_JOB else yaml_at((key, sub), sub_value)))
    return pieces


def _watches_jobs(callbacks) -> bool:
    return any(type(c).on_job_start is not Callback.on_job_start or type(c).on_job_end is not Callback.on_job_end
               for c in getattr(callbacks, "callbacks", []))


class JobStarter:
    """Start each job of one launch: directory, ``.hydra/`` files, task function (no training)."""

    def __init__(self, hydra_context, master: DictConfig) -> None:
        self.loader, self.callbacks, self.master = hydra_context.config_loader, hydra_context.callbacks, master
        raw = OmegaConf.to_container(master.hydra, resolve=False)
        log_file = (raw.get("job_logging") or {}).get("handlers", {}).get("file", {}).get("filename")
        self.fast = (raw["sweep"]["subdir"] == DEFAULT_SUBDIR and log_file in (None, DEFAULT_LOG_FILE)
                     and not _watches_jobs(self.callbacks))
        self.sweep_dir = str(master.hydra.sweep.dir) if self.fast else None
        self.formatter = _file_formatter(master)
        self._layouts: dict[int, tuple[dict, list]] = {}  # id(base) -> its Hydra node, hydra.yaml's pieces

    def start(self, overrides: list[str], idx: int, task_function) -> Started:
        return self._start_fast(overrides, idx, task_function) if self.fast else \
            self._start_general(overrides, idx, task_function)

    # --------------------------------------------------------------- the fast way
    def _hydra_node(self, base) -> tuple[dict, list]:
        if id(base) not in self._layouts:
            node = OmegaConf.to_container(base.cfg.hydra, resolve=False, enum_to_str=True)  # plain data
            self._layouts[id(base)] = node, _layout(node)
        return self._layouts[id(base)]

    def _start_fast(self, overrides: list[str], idx: int, task_function) -> Started:
        base, task_overrides, dirname = JOBS.job_hydra(self.loader, self.master, overrides)
        task_cfg, _ = JOBS.task_config(self.loader, self.master, overrides)
        output_dir = Path(os.path.abspath(os.path.join(self.sweep_dir, dirname)))
        node, pieces = self._hydra_node(base)
        own = dict(zip(PER_JOB, (task_overrides, dirname, str(idx), idx, str(output_dir))))
        hydra_yaml = "hydra:\n" + "".join(yaml_at(path, own[path]) if text is None else text
                                           for path, text in pieces)
        ret = JobReturn(overrides=task_overrides, cfg=task_cfg, working_dir=os.getcwd())
        self._write_hydra_files(node.get("output_subdir"), output_dir, task_cfg, hydra_yaml, task_overrides)
        with env_override(node["job"].get("env_set") or {}):
            _run_task(ret, task_function, task_cfg, output_dir, dirname, base.choices)
        log_file = output_dir / f"{node['job']['name']}.log" if self.formatter else None
        return Started(ret, output_dir, log_file, dirname)

    # ------------------------------------------------------------ the general way
    def _start_general(self, overrides: list[str], idx: int, task_function) -> Started:
        config = JOBS.compose(self.loader, self.master, overrides)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        hydra_config = HydraConfig.instance()
        previous = hydra_config.cfg
        hydra_config.set_config(config)
        output_dir = Path(os.path.abspath(os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = str(output_dir)
        hydra_config.set_config(config)
        try:
            task_cfg, choices = JOBS.task_config(self.loader, self.master, overrides)
            overrides_task = raw(config.hydra.overrides.task)
            ret = JobReturn(overrides=overrides_task, cfg=task_cfg, hydra_cfg=hydra_config.cfg, working_dir=os.getcwd())
            self._write_hydra_files(config.hydra.output_subdir, output_dir, task_cfg,
                                    OmegaConf.to_yaml(hydra_config.cfg), overrides_task)
            with env_override(hydra_config.cfg.hydra.job.env_set):
                self.callbacks.on_job_start(config=config, task_function=task_function)
                _run_task(ret, task_function, task_cfg, output_dir, config.hydra.job.override_dirname, choices)
                self.callbacks.on_job_end(config=config, job_return=ret)
            log_file = OmegaConf.select(config, "hydra.job_logging.handlers.file.filename")
            return Started(ret, output_dir, Path(log_file) if log_file and self.formatter else None,
                           str(config.hydra.job.override_dirname))
        finally:
            hydra_config.cfg = previous

    # ------------------------------------------------------------------- shared
    @staticmethod
    def _write_hydra_files(output_subdir, output_dir: Path, task_cfg: DictConfig, hydra_yaml: str,
                           task_overrides: list[str]) -> None:
        """``config.yaml``, ``hydra.yaml``, ``overrides.yaml`` as ``run_job`` writes them."""
        output_dir.mkdir(parents=True, exist_ok=True)
        if output_subdir is None:
            return
        folder = output_dir / str(output_subdir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in (("config.yaml", JOBS.config_yaml(task_cfg)), ("hydra.yaml", hydra_yaml),
                           ("overrides.yaml", yamltext.plain_yaml(list(task_overrides)))):
            (folder / name).write_text(text, encoding="utf-8")

    def remember(self, started: Started, logger: logging.Logger, message: str) -> None:
        """A line for the job's train.log (written at :meth:`close`), formatted as Hydra's job logging would."""
        if started.log_file is not None:
            record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, None, None)
            started.lines.append(self.formatter.format(record) + "\n")

    @staticmethod
    def close(started: Started) -> None:
        """Write the job's train.log lines (one open per job)."""
        if started.log_file is not None and started.lines:
            started.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(started.log_file, "a", encoding="utf-8") as f:
                f.writelines(started.lines)
            started.lines.clear()


def _run_task(ret: JobReturn, task_function, task_cfg, output_dir: Path, run_name: str, choices: dict) -> None:
    """The job's task function, as ``run_job`` calls it: an exception fails the job, not the launch."""
    try:
        ret.return_value = task_function(task_cfg, output_dir, run_name, choices)
        ret.status = JobStatus.COMPLETED
    except Exception as err:
        ret.return_value = err
        ret.status = JobStatus.FAILED
    ret.task_name = JobRuntime.instance().get("name")


def _file_formatter(master: DictConfig) -> logging.Formatter | None:
    """The formatter of Hydra's job-logging file handler (None: no train.log)."""
    logging_cfg = OmegaConf.to_container(master.hydra.job_logging, resolve=False) or {}
    handler = (logging_cfg.get("handlers") or {}).get("file")
    if not handler:
        return None
    spec = (logging_cfg.get("formatters") or {}).get(handler.get("formatter"), {})
    return logging.Formatter(spec.get("format"), spec.get("datefmt"))
