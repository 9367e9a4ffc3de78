"""K replicas in one process: per-replica and aggregate outputs, equal to the single runs.

(That every member of a population equals a separate torch.optim run is tests/test_engine.py.)"""

from __future__ import annotations

import pytest
import torch
from conftest import read_metrics, run_cli, scalar_tags

from initopt.engine import forward_mode
from initopt.models import MLP


def test_auto_stacks_small_networks_and_runs_big_ones_one_after_another():
    toy, big = MLP(2, [64, 64], 1, "relu", True), MLP(784, [512, 256, 256, 128], 10, "relu", True)
    assert forward_mode("auto", toy, 64) == "stacked"
    assert forward_mode("auto", big, 256) == "sequential"
    assert forward_mode("vmap", big, 256) == "vmap"


def test_sequential_replicas_resume_without_retraining_finished_members(tmp_path):
    """Bug: replicas_mode=sequential interrupted during replica 2 retrained replica 1 from scratch."""
    args = ["replicas=2", "replicas_mode=sequential", "model.hidden=[8]", "steps=30", "eval_every=10",
            "hydra.run.dir=job"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    first = tmp_path / "job/replicas/seed=0"
    before = (first / "metrics.json").read_text(), sorted(p.name for p in first.iterdir())
    # as if interrupted during replica 2: its outputs and the job's own metrics are not there yet
    (tmp_path / "job/metrics.json").unlink()
    for path in (tmp_path / "job/replicas/seed=1").iterdir():
        path.unlink()
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ((first / "metrics.json").read_text(), sorted(p.name for p in first.iterdir())) == before
    assert len(list(first.glob("events.out.tfevents*"))) == 1
    assert read_metrics(tmp_path / "job")["seeds"] == [0, 1]


@pytest.fixture(scope="module")
def replica_job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rep")
    proc = run_cli("replicas=3", "seed=4", "model.hidden=[8]", "steps=40", "eval_every=20",
                   "hydra.run.dir=job", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("seed=5", "model.hidden=[8]", "steps=40", "eval_every=20", "hydra.run.dir=single", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp


def test_a_replica_job_writes_per_replica_and_aggregate_results(replica_job):
    m = read_metrics(replica_job / "job")
    assert m["seeds"] == [4, 5, 6] and m["replicas_mode"] == "stacked"
    assert m["schema"] == 2
    finals = [r["final"]["test_accuracy"] for r in m["replicas"]]
    assert m["final"]["test_accuracy"] == pytest.approx(sum(finals) / 3)
    for r in m["replicas"]:
        tags = scalar_tags(replica_job / "job" / r["event_dir"])
        assert [e.step for e in tags["grad_norm/fc1.weight"]] == list(range(1, 41))
        assert tags["activation_std/act1"][0].step == 0
    agg = scalar_tags(replica_job / "job/mean")
    band = [f"seed_band/{t}/{s}" for t in ("loss/batch", "grad_norm/fc1.weight", "accuracy/test")
            for s in ("mean", "min", "max")]
    assert {"loss/batch", *band} <= agg.keys()
    lo, mean, hi = (agg[f"seed_band/loss/batch/{s}"][-1].value for s in ("min", "mean", "max"))
    assert lo <= mean <= hi and mean == agg["loss/batch"][-1].value


def test_a_replica_matches_the_single_run_with_its_seed_end_to_end(replica_job):
    single = read_metrics(replica_job / "single")
    replica = next(r for r in read_metrics(replica_job / "job")["replicas"] if r["seed"] == 5)
    assert replica["final"] == pytest.approx(single["final"], rel=1e-4)  # float32, batched products
    a = torch.load(replica_job / "single/final.pt", weights_only=True)
    b = torch.load(replica_job / "job/replicas/seed=5/final.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_the_report_reads_replicas_like_a_seed_sweep(replica_job):
    proc = run_cli(str(replica_job / "job"), module="initopt.report", cwd=replica_job)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (replica_job / "job/report/summary.md").read_text()
    assert "3/3 ok" in table
