"""The runner: process-wide torch settings belong to the group in training, and a failure in a
group is recorded in each of its jobs, each naming its own directory."""

from __future__ import annotations

import errno

import torch
from conftest import read_metrics

from initopt import engine
from initopt.checks import compose_job
from initopt.sweep import runner
from initopt.sweep.plan import prepare_job
from initopt.train import run

SMALL = ["model.hidden=[8]", "steps=5", "eval_every=5", "dtype=float64"]


def test_a_group_trains_with_its_settings_and_restores_them_afterwards(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    seen = {}
    fit = engine.Training.fit

    def observed_fit(self, *args, **kwargs):
        seen.update(threads=torch.get_num_threads(), deterministic=torch.are_deterministic_algorithms_enabled())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(engine.Training, "fit", observed_fit)
    assert not torch.are_deterministic_algorithms_enabled()
    run(compose_job([*SMALL, "deterministic=true", f"threads={before + 1}"]), tmp_path / "run")
    assert seen == {"threads": before + 1, "deterministic": True}
    assert torch.get_num_threads() == before
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_full_disk_in_a_shared_group_names_each_jobs_own_directory(tmp_path, monkeypatch, capsys):
    jobs = [prepare_job(compose_job([*SMALL, f"seed={s}"]), tmp_path / name, name)
            for s, name in ((0, "first"), (1, "second"))]

    def full_disk(group, stop, label=""):
        assert len(group.jobs) == 2  # the two jobs share one group
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "train_group", full_disk)
    outcomes = runner.run_sweep(jobs, member_budget=0)
    printed = capsys.readouterr().err
    for job, name in zip(jobs, ("first", "second")):
        own = str(tmp_path / name)
        assert str(outcomes[id(job)]).startswith(f"hydra.run.dir={own!r} is not allowed: the disk is full")
        assert read_metrics(tmp_path / name)["error"].startswith(f"hydra.run.dir={own!r}")
        assert f"[{name}] failed: hydra.run.dir={own!r}" in printed
