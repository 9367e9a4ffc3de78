"""K replicas in one process equal K separate runs with those seeds."""

from __future__ import annotations

import pytest
import torch
from conftest import read_metrics, run_cli, scalar_tags

from initopt.checks import compose_job
from initopt.data import load_dataset
from initopt.loop import fit, new_state
from initopt.optim import build_optimizer
from initopt.replicas import StackedModel, fit_replicas, new_replica_state, replica_strategy
from initopt.train import _seeded_model, _settings

OPTIMS = [
    ["optim=sgd"],
    ["optim=momentum", "optim.form=ema"],
    ["optim=momentum", "optim.form=heavy_ball", "optim.lr=0.01"],
    ["optim=adam", "optim.fused=false"],
    ["optim=adam", "optim.fused=true"],
]


def separate_and_stacked(overrides: list[str], seeds: list[int], batched_mlp: bool):
    cfg = compose_job(["dtype=float64", "steps=60", "eval_every=20", "log_every=0", *overrides])
    data = load_dataset(cfg.data, torch.device("cpu"), torch.float64)
    settings = _settings(cfg)
    singles = []
    for seed in seeds:
        model = _seeded_model(cfg, data, seed)
        opt = build_optimizer(model.parameters(), cfg.optim)
        settings.seed = seed
        result = fit(model, opt, data, settings, state=new_state(data, settings))
        singles.append((model.state_dict(), result.history))
    stacked = StackedModel([_seeded_model(cfg, data, s) for s in seeds], batched_mlp=batched_mlp)
    opt = build_optimizer(stacked.parameters(), cfg.optim)
    result = fit_replicas(stacked, opt, data, settings, new_replica_state(data, settings, seeds))
    return singles, stacked, result


@pytest.mark.parametrize("batched_mlp", [True, False], ids=["stacked", "vmap"])
@pytest.mark.parametrize("optim", OPTIMS, ids=lambda o: " ".join(o))
def test_each_replica_equals_a_separate_run_with_its_seed(optim, batched_mlp):
    seeds = [0, 1, 5]
    singles, stacked, result = separate_and_stacked(optim, seeds, batched_mlp)
    for r, (weights, history) in enumerate(singles):
        for name, tensor in stacked.replica_state_dict(r).items():
            torch.testing.assert_close(tensor, weights[name], rtol=1e-10, atol=1e-12)
        for (s1, m1), (s2, m2) in zip(history, result.histories[r]):
            assert s1 == s2 and m1 == pytest.approx(m2, rel=1e-9, abs=1e-12)


def test_ten_class_data_and_full_batch_work_the_same_way():
    singles, stacked, result = separate_and_stacked(
        ["data=digits", "model.hidden=[16]", "batch_size=1347", "optim=adam"], [0, 3], batched_mlp=True)
    for r, (weights, _) in enumerate(singles):
        for name, tensor in stacked.replica_state_dict(r).items():
            torch.testing.assert_close(tensor, weights[name], rtol=1e-10, atol=1e-12)


def test_auto_vectorizes_small_networks_and_runs_big_ones_one_after_another():
    assert replica_strategy("auto", 4_417, 64, is_mlp=True) == "stacked"
    assert replica_strategy("auto", 4_417, 64, is_mlp=False) == "vmap"
    assert replica_strategy("auto", 669_706, 256, is_mlp=True) == "sequential"
    assert replica_strategy("vmap", 669_706, 256, is_mlp=True) == "vmap"


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
    finals = [r["final"]["test_accuracy"] for r in m["replicas"]]
    assert m["final"]["test_accuracy"] == pytest.approx(sum(finals) / 3)
    for r in m["replicas"]:
        tags = scalar_tags(replica_job / "job" / r["event_dir"])
        assert [e.step for e in tags["grad_norm/fc1.weight"]] == list(range(1, 41))
        assert tags["activation_std/act1"][0].step == 0
    agg = scalar_tags(replica_job / "job/mean")
    band = [f"replica_band/{t}/{s}" for t in ("loss/batch", "grad_norm/fc1.weight", "accuracy/test")
            for s in ("mean", "min", "max")]
    assert {"loss/batch", *band} <= agg.keys()
    lo, mean, hi = (agg[f"replica_band/loss/batch/{s}"][-1].value for s in ("min", "mean", "max"))
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
