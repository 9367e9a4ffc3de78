"""A sweep fails like a single run: a failing job says so in one line and in its metrics.json, the
others finish, the sweep ends in one summary line and a documented exit code; Ctrl-C and full
disks leave no lock and no half-written file; a checkpoint that does not fit fails only its job."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAULTY_CLI, read_metrics, run_cli

from initopt import engine, rundir
from initopt.checks import compose_job
from initopt.engine import checkpoint
from initopt.groupruns import GROUPS_DIR
from initopt.sweep import runner
from initopt.sweep.plan import prepare_job
from initopt.sweep.runner import run_sweep

SMALL = ["model.hidden=[8]", "steps=30", "eval_every=10", "flush_every=10"]
LONG = ["model.hidden=[8]", "steps=10000000", "eval_every=1000000", "flush_every=1000000", "log_every=0",
        "act_every=0", "param_every=0", "hist_every=0"]

def wait_for(condition, what: str, proc: subprocess.Popen, deadline_s: float = 600):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return
        assert proc.poll() is None, f"exited ({proc.returncode}) before {what}: {proc.communicate()[1][-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def locks(where: Path) -> list[Path]:
    return list(where.rglob(rundir.LOCK))


# ------------------------------------------------------------------- one summary line
@pytest.mark.parametrize("launcher", [[], ["+launcher=population"]], ids=["basic", "population"])
def test_a_job_failing_at_run_time_ends_the_sweep_in_one_summary_line_and_exit_3(tmp_path, launcher):
    proc = subprocess.run([sys.executable, "-c", FAULTY_CLI, "-m", *launcher, "seed=0,1,2", *SMALL,
                           "hydra.sweep.dir=sw"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary = [line for line in proc.stderr.splitlines() if line.startswith("sweep:")]
    assert len(summary) == 1 and summary[0].startswith("sweep: 3 jobs: 2 ok, 1 failed (")
    assert "seed=1: " in summary[0] and "the disk holding the data went away" in summary[0]
    assert [line for line in proc.stderr.splitlines() if line.startswith("[seed=1] failed: ")]
    assert read_metrics(tmp_path / "sw/seed=1")["status"] == "failed"
    assert all(read_metrics(tmp_path / f"sw/seed={s}")["status"] == "ok" for s in (0, 2))


@pytest.mark.slow  # multi-process fault test (pytest -m slow, run by .ci/run)
def test_a_second_sweep_into_a_running_sweeps_directory_gets_one_line_and_exit_2(tmp_path):
    grid = ["-m", "init=xavier,he", *LONG, "hydra.sweep.dir=sw"]
    first = subprocess.Popen([sys.executable, "-m", "initopt.train", *grid, "+launcher=population"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(locks(tmp_path / "sw")) == 2, "the first sweep's locks", first)
        for launcher in ([], ["+launcher=population"]):
            second = run_cli(*grid, *launcher, cwd=tmp_path)
            assert second.returncode == 2, second.stderr[-3000:]
            assert "Traceback" not in second.stderr
            assert "in use by another process" in second.stderr.strip().splitlines()[-1]
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 130, err[-3000:]
    for job in ("init=xavier", "init=he"):  # the first sweep's runs are its own: checkpointed, resumable
        assert (tmp_path / "sw" / job / rundir.CHECKPOINT).exists()
        assert not (tmp_path / "sw" / job / rundir.METRICS).exists()
    assert not locks(tmp_path / "sw")


# ------------------------------------------------------------------------------ Ctrl-C
@pytest.mark.slow  # multi-process fault test (pytest -m slow, run by .ci/run)
def test_ctrl_c_while_the_population_launcher_prepares_jobs_exits_130_and_leaves_no_lock(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "initopt.train", "-m", "+launcher=population",
                             "seed=range(0,60)", *SMALL, "hydra.sweep.dir=sw"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: bool(locks(tmp_path / "sw")) if (tmp_path / "sw").is_dir() else False, "the first lock", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert not locks(tmp_path / "sw")
    assert not list((tmp_path / "sw").rglob("*.tmp"))


# --------------------------------------------------------------- checkpoint contents
def test_a_checkpoint_with_a_tensor_of_the_wrong_shape_fails_only_its_job_and_is_named(tmp_path):
    cfg = compose_job(SMALL)
    wider = compose_job([*SMALL, "model.hidden=[16]"])
    training = engine.build(wider, runner.load_data(wider))
    bad_file = tmp_path / "bad" / rundir.CHECKPOINT
    bad_file.parent.mkdir()
    checkpoint.save(bad_file, [rundir.fingerprint(cfg)], training, members=[0])  # another model's tensors
    good = prepare_job(cfg, tmp_path / "good", "good")
    bad = prepare_job(cfg, tmp_path / "bad", "bad")
    outcomes = run_sweep([good, bad], member_budget=0)
    assert isinstance(outcomes[id(bad)], Exception)
    line = str(outcomes[id(bad)])
    assert str(bad_file) in line and "fc1.weight" in line.replace('"', "'") and "(16, 2)" in line
    assert read_metrics(tmp_path / "bad")["status"] == "failed"
    assert outcomes[id(good)]["status"] == "ok" and read_metrics(tmp_path / "good")["status"] == "ok"


# --------------------------------------------------------------------------- full disk
def full_disk_in(job_dir: Path, name: str, real):
    """torch.save that, for ``job_dir/name``, writes half a file and fails as torch does on a full disk:
    a RuntimeError around the OSError."""
    def save(obj, path, *args, **kwargs):
        if Path(path).parent == job_dir and Path(path).name == name:
            Path(path).write_bytes(b"half a file")
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") \
                from OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, path, *args, **kwargs)
    return save


def disk_full_metrics(job_dir: Path, real):
    def write_metrics(run_dir, payload):
        if Path(run_dir) == job_dir:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(run_dir) / rundir.METRICS))
        return real(run_dir, payload)
    return write_metrics


def disk_full_events(job_dir: Path, real):
    def finish(self, step):
        if self.events.path.parent == job_dir:
            raise RuntimeError("No space left on device")
        return real(self, step)
    return finish


@pytest.mark.parametrize("writer", ["final weights", "checkpoint", "metrics", "event file"])
def test_a_full_disk_in_one_writer_fails_that_job_only_and_leaves_no_partial_file(tmp_path, monkeypatch, writer):
    from initopt import tb

    cfg = compose_job([*SMALL, "checkpoint_every=10"])
    full = tmp_path / "full"
    if writer == "final weights":
        monkeypatch.setattr(torch, "save", full_disk_in(full, "final.pt.tmp", torch.save))
    elif writer == "checkpoint":
        monkeypatch.setattr(torch, "save", full_disk_in(full, "checkpoint.pt.tmp", torch.save))
    elif writer == "metrics":
        monkeypatch.setattr(rundir, "write_metrics", disk_full_metrics(full, rundir.write_metrics))
    else:
        monkeypatch.setattr(tb.RunLogger, "finish", disk_full_events(full, tb.RunLogger.finish))
    ok = prepare_job(cfg, tmp_path / "ok", "ok")
    failing = prepare_job(compose_job([*SMALL, "checkpoint_every=10", "seed=1"]), full, "full")
    outcomes = run_sweep([ok, failing], member_budget=0)
    err = outcomes[id(failing)]
    assert isinstance(err, Exception) and "the disk is full" in str(err) and str(full) in str(err)
    assert outcomes[id(ok)]["status"] == "ok" and read_metrics(tmp_path / "ok")["status"] == "ok"
    assert not list(full.glob("*.tmp")) and not (full / rundir.FINAL).exists()
    if writer != "checkpoint":  # no half-written run: its events are gone too (or it resumes from a checkpoint)
        assert (full / rundir.CHECKPOINT).exists() or not list(full.glob(rundir.EVENTS_GLOB))
    if writer != "metrics":  # where there is room, the failure is recorded
        assert read_metrics(full)["status"] == "failed" and "the disk is full" in read_metrics(full)["error"]


# ------------------------------------------------------------------- a job is its config
def test_widening_a_sweep_finds_finished_jobs_by_config_and_the_report_counts_each_once(tmp_path):
    from initopt.report.jobs import find_jobs

    first = run_cli("-m", "init=xavier,he", "seed=0", *SMALL, "hydra.sweep.dir=S", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    job_dirs = {p.name for p in (tmp_path / "S").iterdir() if p.is_dir() and p.name != GROUPS_DIR}
    assert job_dirs == {"init=xavier", "init=he"}
    wider = run_cli("-m", "+launcher=population", "init=xavier,he", "seed=0,1", *SMALL, "hydra.sweep.dir=S",
                    cwd=tmp_path)
    assert wider.returncode == 0, wider.stderr[-3000:]
    for init in ("xavier", "he"):  # the new name for seed 0 points at the run trained before, not retrained
        renamed = tmp_path / "S" / f"init={init},seed=0"
        assert read_metrics(renamed)[rundir.SAME_RUN_AS] == str((tmp_path / "S" / f"init={init}").resolve())
        assert not list(renamed.glob(rundir.EVENTS_GLOB)) and not (renamed / rundir.FINAL).exists()
        assert read_metrics(tmp_path / "S" / f"init={init},seed=1")["status"] == "ok"
    assert "2 members to train" in wider.stderr and wider.stdout.count("not retrained") == 2
    jobs = [j for j in find_jobs(tmp_path / "S") if j.state == "finished"]
    assert len(jobs) == 4 and len({j.metrics["fingerprint"] for j in jobs}) == 4
    assert {j.path.name for j in jobs} == {"init=xavier", "init=he", "init=xavier,seed=1", "init=he,seed=1"}


def test_resuming_a_sweep_with_steps_changed_fails_that_job_in_one_line_naming_the_key(tmp_path):
    before = compose_job(["model.hidden=[8]", "steps=30", "seed=0"])
    training = engine.build(before, runner.load_data(before))
    job_dir = tmp_path / "S" / "seed=0"
    job_dir.mkdir(parents=True)  # an interrupted job of the sweep, as the saver leaves it
    checkpoint.save(job_dir / rundir.CHECKPOINT, [rundir.fingerprint(before)], training, members=[0],
                    configs=[rundir.run_config(before)])
    proc = run_cli("-m", "seed=0,1", "model.hidden=[8]", "steps=40", "eval_every=10", "hydra.sweep.dir=S",
                   cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("[seed=0] failed: ")]
    assert "steps: 30 there, 40 here" in line and str(job_dir.resolve() / rundir.CHECKPOINT) in line
    assert (job_dir / rundir.CHECKPOINT).exists()  # left for the user
    assert read_metrics(tmp_path / "S" / "seed=1")["status"] == "ok"


@pytest.mark.slow  # multi-process fault test (pytest -m slow, run by .ci/run); in process: test_engine.py
def test_a_member_interrupted_in_a_mixed_population_resumes_under_the_basic_launcher(tmp_path):
    grid = ["-m", "optim=sgd,momentum", "model.hidden=[8]", "steps=2000", "eval_every=500", "flush_every=50",
            "hydra.sweep.dir=S"]
    pop = subprocess.Popen([sys.executable, "-m", "initopt.train", *grid, "+launcher=population"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # both members train in one population (sgd is momentum's family); stop it once training has begun
        jobs = [tmp_path / "S" / j for j in ("optim=sgd", "optim=momentum")]
        wait_for(lambda: all(list(j.glob(rundir.EVENTS_GLOB)) for j in jobs), "the population's event files", pop)
        pop.send_signal(signal.SIGINT)
        _, err = pop.communicate(timeout=300)
    finally:
        pop.kill()
    assert pop.returncode == 130, err[-3000:]
    assert (tmp_path / "S" / "optim=sgd" / rundir.CHECKPOINT).exists()
    resumed = run_cli(*grid, cwd=tmp_path, timeout=600)  # Hydra's basic launcher: each member alone
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for job in ("optim=sgd", "optim=momentum"):
        metrics = read_metrics(tmp_path / "S" / job)
        assert metrics["status"] == "ok" and metrics["steps_done"] == 2000
