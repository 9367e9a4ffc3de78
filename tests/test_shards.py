"""The sharded population launcher, for real: submitit's local executor runs each shard as its own
process tree (controller + task), as SLURM would run it on a node.

Each sharded sweep is compared job by job with the same sweep through the in-process population
launcher (float64; weights and metrics to 1e-10): after a clean run, after a shard killed with
SIGKILL and the sweep rerun, and after a shard SIGTERM'd (SLURM's preemption) and requeued.
Tests wait for conditions on disk (a lock taken by a shard, a checkpoint written), never a fixed time.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, run_cli, scalar_tags

from initopt import rundir
from initopt.checks import compose_job
from initopt.groupruns import GROUPS_DIR
from initopt.sweep import shards
from initopt.sweep.grouping import training_groups
from initopt.sweep.plan import prepare_job

# 8 jobs: 2 inits x 2 optimizer families x (a single run, a 2-replica job); tiny net, float64.
GRID = ["init=xavier,he", "optim=sgd,adam", "replicas=1,2", "model.hidden=[8]", "dtype=float64",
        "eval_every=50", "flush_every=50", "hist_every=100", "param_every=50", "act_every=50"]
QUICK = [*GRID, "steps=100"]
# long enough that a shard is still training when the test signals it (first checkpoint at step 20)
LONG = [*GRID, "steps=1000", "checkpoint_every=20"]
SHARDED = ["+launcher=population_local", "hydra.launcher.shards=2", "hydra.launcher.timeout_min=30"]
TIMING = ("wall_time_s", "steps_per_s", "replica_steps_per_s", "population")
DEADLINE_S = 600


def sweep(tmp: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    proc = run_cli("-m", *args, f"hydra.sweep.dir={name}", cwd=tmp, timeout=DEADLINE_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def start_sweep(tmp: Path, name: str, *args: str) -> subprocess.Popen:
    log = open(tmp / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "initopt.train", "-m", *args, f"hydra.sweep.dir={name}"],
                            cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def job_dirs(sweep_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in sweep_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name != GROUPS_DIR}


def files(run: Path) -> list[str]:
    """A job directory's files, event files by their folder only (their names hold time and host; a
    resumed run adds one)."""
    return sorted({str(p.relative_to(run).parent / "events") if p.name.startswith("events.out") else
                   str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and ".hydra" not in p.parts
                   and not p.name.endswith(".log")})


def assert_close_tree(a, b, where: str) -> None:
    """Nested dicts / lists equal, numbers to 1e-10 (relative or absolute)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_close_tree(a[key], b[key], f"{where}: {key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-10, abs_tol=1e-10), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_jobs(got: Path, want: Path, scalars: bool = False) -> None:
    """Every job directory of ``got`` equals ``want``'s: files, final.pt, metrics (less timings)."""
    a, b = job_dirs(got), job_dirs(want)
    assert a.keys() == b.keys() and len(a) == 8
    for name in a:
        assert files(a[name]) == files(b[name]), name
        for final in a[name].rglob(rundir.FINAL):
            mine = torch.load(final, weights_only=True)
            theirs = torch.load(b[name] / final.relative_to(a[name]), weights_only=True)
            assert mine.keys() == theirs.keys()
            for key in mine:
                assert mine[key].dtype == torch.float64
                torch.testing.assert_close(mine[key], theirs[key], rtol=1e-10, atol=1e-10)
        for metrics in a[name].rglob(rundir.METRICS):
            mine, theirs = read_metrics(metrics.parent), read_metrics(b[name] / metrics.parent.relative_to(a[name]))
            assert mine["status"] == "ok"
            assert_close_tree({k: v for k, v in mine.items() if k not in TIMING},
                              {k: v for k, v in theirs.items() if k not in TIMING}, str(metrics))
        for run in {p.parent for p in a[name].rglob("events.out*")} if scalars else ():
            mine, theirs = scalar_tags(run), scalar_tags(b[name] / run.relative_to(a[name]))
            assert mine.keys() == theirs.keys() and mine, run
            for tag in mine:  # TensorBoard stores float32 values
                assert [e.step for e in mine[tag]] == [e.step for e in theirs[tag]], (run, tag)
                assert [e.value for e in mine[tag]] == \
                    pytest.approx([e.value for e in theirs[tag]], rel=1e-6, abs=1e-9, nan_ok=True), (run, tag)
    assert not list(got.rglob(rundir.LOCK)), "a lock was left behind"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The LONG sweep through the in-process population launcher (the fault tests compare with it)."""
    tmp = tmp_path_factory.mktemp("reference")
    sweep(tmp, "ref", "+launcher=population", *LONG)
    return tmp / "ref"


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, deadline_s: float = DEADLINE_S):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = condition()
        if got:
            return got
        assert proc is None or proc.poll() is None, f"the sweep ended before {what}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def ended_at_exit(launcher: subprocess.Popen):
    """The sweep and the shard processes a test signals (appended to the list it yields), ended by
    their ids if the test stops early, so that no frozen shard outlives it."""
    started: list[int] = []
    try:
        yield started
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def training_shards(sweep_dir: Path, launcher_pid: int) -> dict[int, list[Path]]:
    """Shard processes that hold job locks and have checkpointed there: ``pid -> job dirs``."""
    held: dict[int, list[Path]] = {}
    for lock in sweep_dir.glob(f"*/{rundir.LOCK}"):
        pid = shards.holder_of(lock.parent).partition(" ")[0]
        if pid.isdigit() and int(pid) != launcher_pid and list(lock.parent.rglob(rundir.CHECKPOINT)):
            held.setdefault(int(pid), []).append(lock.parent)
    return held


# ------------------------------------------------------------------------------------------ tests
def test_packing_keeps_each_job_in_one_shard_and_balances_member_steps(tmp_path):
    def job(name: str, overrides: list[str]):
        return prepare_job(compose_job(["model.hidden=[4]", *overrides]), tmp_path / name, name)

    prepared = [job("a", ["optim=sgd", "steps=300", "replicas=3"]), job("b", ["optim=adam", "steps=100"]),
                job("c", ["optim=adam", "steps=200"]), job("d", ["optim=momentum", "steps=300"]),
                job("e", ["optim=adam", "steps=200", "seed=4"])]
    groups = training_groups(prepared)  # sgd family 300 steps (4 members), adam 100, adam 200 (2)
    packed = shards.pack(groups, 2)
    assert sorted(shards.loads(groups, packed)) == [500, 1200]  # largest first: 1200 | 400 + 100
    assert sorted(sorted(j.plan.run_name for j in b) for b in packed) == [["a", "d"], ["b", "c", "e"]]
    assert len(shards.pack(groups, 8)) == 3  # never an empty shard
    for j in prepared:
        j.release()


@pytest.mark.slow  # real submitit subprocesses (pytest -m slow, run by .ci/run)
def test_sharded_sweep_equals_the_in_process_launcher_job_by_job(tmp_path):
    sweep(tmp_path, "ref", "+launcher=population", *QUICK)
    proc = sweep(tmp_path, "sharded", *SHARDED, *QUICK)
    assert_same_jobs(tmp_path / "sharded", tmp_path / "ref", scalars=True)
    assert (tmp_path / "sharded" / GROUPS_DIR).is_dir()  # the sweep's end callback ran once all shards were done
    ids = [line.split("is submitit job ")[1].split()[0] for line in proc.stderr.splitlines()
           if "is submitit job" in line]
    assert len(ids) == 2 and "packed into 2 shard(s)" in proc.stderr
    for job_id in ids:  # submitit's own files for each shard: its pickled task, result and logs
        folder = tmp_path / "sharded" / ".submitit" / job_id
        assert list(folder.glob("*_result.pkl")) and list(folder.glob("*.out"))
    logs = [p.read_text() for p in (tmp_path / "sharded" / ".submitit").rglob("*.err")]
    # one optimizer family a shard: each trained one population of 6 members (2 runs + 2 x 2 replicas)
    assert sorted(log.count("6 members to train in 1 population(s)") for log in logs) == [1, 1]


@pytest.mark.slow  # minutes: real submitit subprocesses killed and rerun (pytest -m slow, .ci/run)
def test_a_killed_shard_fails_its_jobs_others_finish_and_the_rerun_completes_equal(tmp_path, reference):
    launcher = start_sweep(tmp_path, "s", *SHARDED, *LONG)
    with ended_at_exit(launcher) as started:
        held = wait_for(lambda: (h := training_shards(tmp_path / "s", launcher.pid)) and len(h) == 2 and h,
                        "both shards training", launcher)
        started += held
        for pid in held:
            os.kill(pid, signal.SIGSTOP)  # frozen mid-training, locks held
        holders = {run: shards.holder_of(run) for run in job_dirs(tmp_path / "s").values()}
        assert all(holders.values())  # every job is held: by a shard, or by the launcher until its shard takes it
        refused = run_cli("-m", "+launcher=population", *LONG, "hydra.sweep.dir=s", cwd=tmp_path, timeout=DEADLINE_S)
        assert refused.returncode != 0 and "in use by another process" in refused.stderr, refused.stderr[-3000:]
        assert {run: shards.holder_of(run) for run in holders} == holders  # nothing taken over
        victim, survivor = sorted(held)
        os.kill(victim, signal.SIGKILL)
        os.kill(survivor, signal.SIGCONT)
        assert launcher.wait(timeout=DEADLINE_S) != 0  # the sweep reports the failed jobs
    log = (tmp_path / "s.log").read_text()
    assert "failed" in log and "rerun the same command" in log, log[-3000:]
    for run in held[victim]:
        assert read_metrics(run)["status"] == "failed" and list(run.rglob(rundir.CHECKPOINT))
    for run in held[survivor]:
        assert read_metrics(run)["status"] == "ok"
    assert not list((tmp_path / "s").rglob(rundir.LOCK)), "a lock was left behind"

    rerun = sweep(tmp_path, "s", *SHARDED, *LONG)
    assert rerun.stdout.count("already finished") >= len(held[survivor])
    assert_same_jobs(tmp_path / "s", reference)


@pytest.mark.slow  # minutes: real submitit subprocesses killed and rerun (pytest -m slow, .ci/run)
def test_a_sigtermed_shard_checkpoints_is_requeued_and_resumes_bitwise(tmp_path, reference):
    launcher = start_sweep(tmp_path, "s", *SHARDED, *LONG)
    with ended_at_exit(launcher) as started:
        held = wait_for(lambda: training_shards(tmp_path / "s", launcher.pid), "a shard training", launcher)
        pid = next(iter(held))
        started.append(pid)
        os.kill(pid, signal.SIGSTOP)  # the signal is then delivered mid-training, whatever the machine's speed
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)
        assert launcher.wait(timeout=DEADLINE_S) == 0, (tmp_path / "s.log").read_text()[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "s" / ".submitit").rglob("*.out"))
    logs += "".join(p.read_text() for p in (tmp_path / "s" / ".submitit").rglob("*.err"))
    assert "attempt 2" in logs and "resuming at step" in logs, logs[-3000:]
    assert_same_jobs(tmp_path / "s", reference)
