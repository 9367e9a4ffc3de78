"""The report reads a sweep's own outputs; its numbers are the jobs' numbers."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import read_metrics, run_cli


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    proc = run_cli("-m", "init=zero,he", "optim.lr=0.05,0.2", "seed=0,1", "optim=sgd", "model.hidden=[8,8]",
                   "steps=60", "eval_every=20", "act_every=10", "hydra.sweep.dir=sw", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli(str(tmp / "sw"), "--out", str(tmp / "rep"), "--target-accuracy", "0.6",
                   module="initopt.report", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "sw", tmp / "rep"


def test_the_report_writes_its_files(sweep):
    _, rep = sweep
    for name in ("summary.md", "summary.csv", "training_curves.png", "grad_norm_heatmaps.png",
                 "activations.png", "lr_sensitivity.png", "report.md"):
        assert (rep / name).stat().st_size > 100, name
    page = (rep / "report.md").read_text()
    assert "![Training curves](training_curves.png)" in page and "| run |" in page


def test_table_values_are_the_mean_and_std_over_seeds_of_the_jobs_metrics(sweep):
    sw, rep = sweep
    rows = {r["run"]: r for r in csv.DictReader(open(rep / "summary.csv"))}
    assert set(rows) == {f"init={i},optim.lr={lr}" for i in ("zero", "he") for lr in ("0.05", "0.2")}
    for label, row in rows.items():
        init, lr = (part.split("=")[1] for part in label.split(","))
        jobs = [_job(sw, init, lr, s) for s in (0, 1)]
        acc = [j["final"]["test_accuracy"] for j in jobs]
        assert float(row["test_accuracy_mean"]) == pytest.approx(np.mean(acc))
        assert float(row["test_accuracy_std"]) == pytest.approx(np.std(acc, ddof=1))
        loss = [j["final"]["train_loss"] for j in jobs]
        assert float(row["train_loss_mean"]) == pytest.approx(np.mean(loss))
        assert row["seeds"] == "2" and row["ok"] == "2"


def _job(sw, init, lr, seed):
    want = {f"init={init}", f"optim.lr={lr}", f"seed={seed}"}
    matches = [p for p in sw.iterdir() if p.is_dir() and want <= set(p.name.split(","))]
    assert len(matches) == 1, matches
    return read_metrics(matches[0])


def test_steps_to_target_is_the_first_eval_reaching_it(sweep):
    sw, rep = sweep
    rows = {r["run"]: r for r in csv.DictReader(open(rep / "summary.csv"))}
    hits = []
    for s in (0, 1):
        history = _job(sw, "he", "0.2", s)["history"]
        hits += [next(h["step"] for h in history if h["test_accuracy"] >= 0.6)] if any(
            h["test_accuracy"] >= 0.6 for h in history) else []
    row = rows["init=he,optim.lr=0.2"]
    assert int(row["reached_target"]) == len(hits)
    if hits:
        assert float(row["steps_to_target_mean"]) == pytest.approx(np.mean(hits))


def test_diverged_runs_are_marked(tmp_path):
    proc = run_cli("-m", "optim=sgd", "optim.lr=0.1,1e4", "steps=200", "hydra.sweep.dir=sw", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli(str(tmp_path / "sw"), module="initopt.report", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "sw/report/summary.md").read_text()
    diverged_line = next(line for line in table.splitlines() if "optim.lr=10000" in line)
    assert "**diverged**: seed 0 at step" in diverged_line and "0/1 ok" in diverged_line


def test_an_empty_folder_is_a_clear_error(tmp_path):
    proc = run_cli(str(tmp_path), module="initopt.report", cwd=tmp_path)
    assert proc.returncode != 0 and "no job with a metrics.json" in proc.stderr
