"""The population launcher: a sweep trained as a few populations, each job's directory as a separate
run would leave it, and numbers equal to separate runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import read_metrics, run_cli

from initopt.checks import compose_job
from initopt.sweep.plan import prepare_job
from initopt.sweep.runner import run_sweep

SMALL = ["model.hidden=[8]", "steps=30", "eval_every=10", "flush_every=10", "dtype=float64"]


def job_dirs(sweep):
    return {p.name: p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "groups"}


def sweep_both_ways(tmp_path, *grid: str):
    """The same sweep through the population launcher and through Hydra's basic launcher."""
    for name, extra in (("pop", ["+launcher=population"]), ("basic", [])):
        proc = run_cli("-m", *extra, *grid, *SMALL, f"hydra.sweep.dir={name}", cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return job_dirs(tmp_path / "pop"), job_dirs(tmp_path / "basic")


@pytest.mark.parametrize("grid", [
    ["init=he", "optim=sgd,momentum", "optim.lr=0.05,0.2", "seed=0,1"],
    pytest.param(["init=zero,he", "optim=adam", "optim.lr=0.003,0.03", "seed=0,3"], marks=pytest.mark.slow),
], ids=["sgd family", "adam"])
def test_each_job_equals_its_separate_run_and_has_the_same_files(tmp_path, grid):
    pop, basic = sweep_both_ways(tmp_path, *grid)
    assert pop.keys() == basic.keys() and len(pop) == 8
    for name, run in pop.items():
        assert sorted(p.name for p in run.iterdir() if not p.name.startswith("events")) == \
            sorted(p.name for p in basic[name].iterdir() if not p.name.startswith("events"))
        a, b = torch.load(run / "final.pt", weights_only=True), torch.load(basic[name] / "final.pt", weights_only=True)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12)
        ma, mb = read_metrics(run), read_metrics(basic[name])
        assert ma["final"] == pytest.approx(mb["final"], rel=1e-9, abs=1e-12)
        assert ma["population"]["size"] == len(pop) and mb["population"]["size"] == 1


def test_compatible_jobs_share_a_population_and_the_others_run_on_their_own(tmp_path):
    proc = run_cli("-m", "+launcher=population", "optim=sgd,momentum,adam", *SMALL, "model.hidden=[8],[4]",
                   "hydra.sweep.dir=s", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "12 members" not in proc.stderr and "6 members to train in 4 population(s) of 2, 2, 1, 1" in proc.stderr
    runs = job_dirs(tmp_path / "s")
    sizes = {name: read_metrics(run)["population"]["size"] for name, run in runs.items()}
    assert sizes == {name: 1 if "adam" in name else 2 for name in runs}


def test_a_diverged_member_is_recorded_and_the_others_finish(tmp_path):
    proc = run_cli("-m", "+launcher=population", "optim=sgd", "optim.lr=0.1,1e200", *SMALL,
                   "hydra.sweep.dir=s", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {name: read_metrics(run) for name, run in job_dirs(tmp_path / "s").items()}
    bad = next(m for m in runs.values() if m["choices"]["lr"] > 1)
    good = next(m for m in runs.values() if m["choices"]["lr"] == 0.1)
    assert bad["status"] == "diverged" and bad["diverged_step"] >= 1
    assert good["status"] == "ok" and good["steps_done"] == 30


def test_a_failed_job_records_its_error_and_the_sweep_goes_on(tmp_path):
    good = prepare_job(compose_job(SMALL), tmp_path / "good", "good")
    broken_cfg = compose_job([*SMALL, "data=mnist", f"data.root={tmp_path / 'nothing'}"])
    broken = prepare_job(broken_cfg, tmp_path / "broken", "broken")
    outcomes = run_sweep([good, broken], member_budget=0)
    assert isinstance(outcomes[id(broken)], Exception)
    assert read_metrics(tmp_path / "broken")["status"] == "failed"
    assert outcomes[id(good)]["status"] == "ok" and read_metrics(tmp_path / "good")["status"] == "ok"


def test_a_population_over_the_member_budget_is_split_and_says_so(tmp_path):
    proc = run_cli("-m", "+launcher=population", "seed=0,1,2,3,4", "hydra.launcher.member_budget=2", *SMALL,
                   "hydra.sweep.dir=s", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5 members to train in 3 population(s) of 2, 2, 1 (split at hydra.launcher.member_budget=2)" in proc.stderr
    assert all(read_metrics(r)["status"] == "ok" for r in job_dirs(tmp_path / "s").values())


@pytest.mark.slow  # multi-process fault test (pytest -m slow, run by .ci/run)
def test_sigint_checkpoints_every_member_and_a_rerun_resumes_to_the_same_weights(tmp_path):
    grid = ["-m", "+launcher=population", "init=xavier,he", "seed=0,1", "model.hidden=[8]", "steps=4000",
            "eval_every=1000", "flush_every=50", "checkpoint_every=50"]
    straight = run_cli(*grid, "hydra.sweep.dir=straight", cwd=tmp_path, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    proc = subprocess.Popen([sys.executable, "-m", "initopt.train", *grid, "hydra.sweep.dir=cut"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((tmp_path / "cut").glob("*/checkpoint.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    cut = job_dirs(tmp_path / "cut")
    assert all((run / "checkpoint.pt").exists() and not (run / "metrics.json").exists() for run in cut.values())
    assert "hydra.sweep.dir='cut'" in err  # the resume line: the directory a quoted Hydra value
    rerun = run_cli(*grid, "hydra.sweep.dir=cut", cwd=tmp_path, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming at step" in rerun.stdout
    for name, run in cut.items():
        a = torch.load(run / "final.pt", weights_only=True)
        b = torch.load(tmp_path / "straight" / name / "final.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert not (run / "checkpoint.pt").exists()
    again = run_cli(*grid, "hydra.sweep.dir=cut", cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and again.stdout.count("already finished") == 4


