"""Optuna's sweeper (hydra-optuna-sweeper, the ``optuna`` extra) feeding the population launcher:
each batch of trials trains as one population, each trial's objective is its job's final held-out
accuracy, and the report's lr-sensitivity figure reads the trials' jobs."""

from __future__ import annotations

import math

import pytest
import yaml
from conftest import read_metrics, run_cli

TINY = ["model.hidden=[8]", "steps=60", "eval_every=30", "flush_every=30", "act_every=0", "hist_every=0"]


def test_a_diverged_job_has_no_objective_so_a_sweeper_records_a_failed_trial():
    from hydra_plugins.initopt_population_launcher.population_launcher import PopulationLauncher

    assert PopulationLauncher.objective({"final": {"test_accuracy": 0.75}}) == 0.75
    assert PopulationLauncher.objective({"final": {"test_accuracy": math.nan}}) is None  # diverged, this run
    assert PopulationLauncher.objective({"final": {"test_accuracy": None}}) is None  # diverged, read back


@pytest.mark.slow  # a third-party sweeper end to end (pytest -m slow, run by .ci/run)
def test_each_batch_of_trials_trains_as_one_population_and_returns_its_objective(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra: pip install -e '.[optuna]'")
    proc = run_cli("-m", "+experiment=tune_lr", "optim=momentum", *TINY, "hydra.sweeper.n_trials=4",
                   "hydra.sweeper.n_jobs=2", "hydra.sweep.dir=tune", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("2 members to train in 1 population(s) of 2") == 2  # two batches, a population each
    assert "setup plugin" not in proc.stdout + proc.stderr  # alembic's import chatter silenced
    jobs = [p for p in (tmp_path / "tune").iterdir() if (p / "metrics.json").exists()]
    assert len(jobs) == 4
    lrs = [read_metrics(j)["choices"]["lr"] for j in jobs]
    assert len(set(lrs)) == 4 and all(1e-4 <= lr <= 1.0 for lr in lrs)  # the log-scale range of tune_lr.yaml
    accuracies = {lr: read_metrics(j)["final"]["test_accuracy"] for lr, j in zip(lrs, jobs)}
    best = yaml.safe_load((tmp_path / "tune" / "optimization_results.yaml").read_text())
    assert math.isclose(best["best_value"], max(accuracies.values()), rel_tol=1e-12)
    best_lr = next(lr for lr in lrs if math.isclose(lr, best["best_params"]["optim.lr"], rel_tol=1e-12))
    assert accuracies[best_lr] == max(accuracies.values())  # the trial Optuna names best is a best job

    from initopt.report.build import build

    build(tmp_path / "tune", tmp_path / "report", 0.9)
    assert (tmp_path / "report" / "lr_sensitivity.png").stat().st_size > 0
