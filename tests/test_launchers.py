"""The homework grid through Hydra's joblib (local parallel), submitit_local and initopt's population launchers."""

from __future__ import annotations

import itertools

import pytest
from conftest import read_metrics, run_cli

GRID = ["init=zero,normal,xavier,he", "optim=sgd,momentum,adam"]


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "population"])
def test_the_homework_grid_runs_through_the_launcher(tmp_path, launcher):
    proc = run_cli("-m", f"+launcher={launcher}", *GRID, "steps=20", "model.hidden=[8]",
                   "hydra.sweep.dir=grid", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {p.name: read_metrics(p) for p in (tmp_path / "grid").iterdir()
            if p.is_dir() and not p.name.startswith(".")}
    expected = {f"init={i},optim={o}"
                for i, o in itertools.product(["zero", "normal", "xavier", "he"], ["sgd", "momentum", "adam"])}
    assert set(jobs) == expected  # neither the launcher nor the unswept keys are in run names
    assert all(m["status"] == "ok" and m["steps_done"] == 20 for m in jobs.values())
