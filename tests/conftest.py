"""Shared helpers: run the real command line, compose the real configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import forked_cli
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _environment(env: dict | None) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}


def run_cli(*args: str, cwd: Path, module: str = "initopt.train", env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m <module> args...`` in ``cwd``, output captured: a new process, forked from one
    that imported torch already (:mod:`forked_cli`; start-up itself is tested with :func:`run_python`)."""
    return forked_cli.run_module(module, list(args), cwd, _environment(env), timeout)


def run_python(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python args...`` in ``cwd`` (e.g. ``-c CODE <its argv>``), output captured."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_environment(env),
                          capture_output=True, text=True, timeout=timeout)


# ``python -c FAULTY_CLI <args>``: initopt.train with an injected fault (seed 1's data cannot be read)
FAULTY_CLI = """
import sys
import initopt.sweep.runner as runner
real = runner.load_data
def load_data(cfg):  # an injected fault: this job's data cannot be read at run time
    if cfg.seed == 1:
        raise OSError("injected: the disk holding the data went away")
    return real(cfg)
runner.load_data = load_data
from initopt.train import main
sys.argv = ["initopt.train", *sys.argv[1:]]
main()
"""


def read_metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def scalar_tags(job_dir: Path) -> dict[str, list]:
    """Every scalar series in a run directory, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(job_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


@pytest.fixture
def compose():
    """Compose the packaged config with overrides, as Hydra does for a job."""
    from initopt.checks import compose_job

    return compose_job


# The `cuda` marker selects GPU tests (`pytest -m cuda`); conftest skips them where no GPU is.


# The test files that take longest (seconds of command-line runs each), longest first: pytest-xdist
# hands whole files to its two workers in collection order, so starting with these leaves the
# short files to fill in at the end instead of one long file running alone (a scheduling hint
# only: nothing depends on the order).
LONGEST_FIRST = ("test_report", "test_launchers", "test_sweep_failures", "test_tensorboard", "test_analytic",
                 "test_resume", "test_population_launcher", "test_config", "test_rundir", "test_sweep",
                 "test_replicas", "test_engine", "test_lstsq", "test_errors", "test_step")


def _file_rank(item) -> int:
    stem = Path(str(item.fspath)).stem
    return LONGEST_FIRST.index(stem) if stem in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    """The longest files first (:data:`LONGEST_FIRST`); tests marked ``cuda`` run where a GPU is,
    and are skipped elsewhere."""
    items.sort(key=_file_rank)  # stable: the order within a file is kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
