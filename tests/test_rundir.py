"""One owner of the run directory: what a directory holds decides what a run does with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import read_metrics, run_cli, scalar_tags
from omegaconf import OmegaConf

from initopt import engine, rundir
from initopt.checks import compose_job
from initopt.config import ConfigError
from initopt.data import load_dataset
from initopt.engine import checkpoint

RUN = ["model.hidden=[8]", "steps=30", "eval_every=10", "flush_every=10"]


def test_the_one_list_of_non_run_keys_drives_fingerprints_and_directory_names(tmp_path):
    a, b = compose_job(["threads=1", "device=cpu"]), compose_job(["threads=2", "device=auto"])
    assert rundir.fingerprint(a) == rundir.fingerprint(b)
    assert rundir.fingerprint(a) != rundir.fingerprint(compose_job(["seed=1"]))
    proc = run_cli(*RUN, "threads=1", "progress=false", "seed=2", "hydra.run.dir=x/${hydra.job.override_dirname}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = [p.name for p in (tmp_path / "x").iterdir()]
    assert names == ["eval_every=10,flush_every=10,model.hidden=[8],seed=2,steps=30"]


def test_metrics_json_is_versioned_and_read_back_through_rundir(tmp_path):
    rundir.write_metrics(tmp_path, {"status": "ok", "final": {"test_loss": float("nan")}})
    assert rundir.read_metrics(tmp_path) == {"schema": rundir.SCHEMA, "status": "ok", "final": {"test_loss": None}}
    (tmp_path / rundir.METRICS).write_text('{"status": "o')
    assert rundir.read_metrics(tmp_path) is None


def test_a_second_process_into_the_same_directory_is_refused_in_one_line(tmp_path):
    lock = rundir.RunLock(tmp_path).acquire()
    proc = run_cli(*RUN, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    lock.release()
    assert proc.returncode != 0
    assert f"in use by another process ({os.getpid()}" in proc.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    (tmp_path / rundir.LOCK).write_text(f"{dead.stdout.strip()} {socket.gethostname()}")
    with rundir.RunLock(tmp_path) as lock:
        assert lock.held and (tmp_path / rundir.LOCK).read_text().startswith(str(os.getpid()))
    assert not (tmp_path / rundir.LOCK).exists()


def test_overwrite_never_moves_a_directory_a_live_process_holds(tmp_path):
    """``overwrite=true`` into a sweep (or a run) with a job locked by a running process is refused
    and nothing moves; once that process is gone its lock is stale and the overwrite goes ahead."""
    import socket

    from initopt.checks import precheck_command_line
    from initopt.train import hydra_quoted

    sweep = tmp_path / "sw"
    for seed in (0, 1):
        (sweep / f"seed={seed}").mkdir(parents=True)
        rundir.write_metrics(sweep / f"seed={seed}", {"status": "ok"})
    # a live process, not us: it lives until its stdin closes (no fixed time)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        (sweep / "seed=1" / rundir.LOCK).write_text(f"{holder.pid} {socket.gethostname()}")
        held = f"{sweep / 'seed=1' / rundir.LOCK} is held by process {holder.pid} on {socket.gethostname()}"
        run_dir = hydra_quoted(str(sweep / "seed=1"))
        for argv in (["-m", "seed=0,1", *RUN, "resume=false", "overwrite=true", f"hydra.sweep.dir={sweep}"],
                     [*RUN, "seed=1", "resume=false", "overwrite=true", f"hydra.run.dir={run_dir}"]):
            with pytest.raises(ConfigError) as info:
                precheck_command_line(argv)
            assert str(info.value).startswith("overwrite=True is not allowed: ") and held in str(info.value)
        with pytest.raises(ConfigError):  # the path every launcher's job preparation takes
            rundir.move_aside(sweep / "seed=1")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["sw"]
        assert sorted(p.name for p in sweep.iterdir()) == ["seed=0", "seed=1"]
    finally:
        holder.kill()
        holder.wait()
    moved = rundir.move_aside(sweep)  # the lock's process is gone: a stale lock does not hold
    assert moved.name.startswith("sw.replaced-") and not sweep.exists()


def test_resume_false_into_another_run_is_refused_and_overwrite_moves_it_aside(tmp_path):
    assert run_cli(*RUN, "hydra.run.dir=run", cwd=tmp_path).returncode == 0
    before = (tmp_path / "run/metrics.json").read_text()
    proc = run_cli(*RUN, "seed=3", "resume=false", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 2 and "overwrite=true" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (tmp_path / "run/metrics.json").read_text() == before
    proc = run_cli(*RUN, "seed=3", "resume=false", "overwrite=true", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(moved) == 1 and (moved[0] / "metrics.json").read_text() == before
    assert read_metrics(tmp_path / "run")["choices"]["seed"] == 3
    assert len(list((tmp_path / "run").glob("events.out.tfevents*"))) == 1


@pytest.mark.slow  # multi-process fault test (pytest -m slow, run by .ci/run)
def test_a_rerun_after_a_crash_without_checkpoint_starts_a_clean_tensorboard_run(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "initopt.train", *RUN[:1], "steps=100000", "flush_every=10",
                             "hydra.run.dir=run"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not any((tmp_path / "run").glob("events.out.tfevents*")) or \
            (tmp_path / "run").stat().st_size == 0 or \
            next((tmp_path / "run").glob("events.out.tfevents*")).stat().st_size < 5000:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    rerun = run_cli(*RUN, "hydra.run.dir=run", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(list((tmp_path / "run").glob("events.out.tfevents*"))) == 1
    steps = [e.step for e in scalar_tags(tmp_path / "run")["loss/batch"]]
    assert steps == list(range(1, 31))


def test_a_checkpoint_loads_onto_the_cpu_and_resumes_into_a_population_on_its_device(tmp_path):
    """Generator states must stay CPU ByteTensors (a CUDA-mapped load crashed every GPU resume)."""
    cfg = compose_job(["dtype=float64", "steps=40", "eval_every=20", "optim=adam"])
    data = load_dataset(cfg.data, torch.device("cpu"), torch.float64)
    straight = engine.build(cfg, data, engine.members_of(cfg, [0, 1]))
    straight.fit()
    first = engine.build(cfg, data, engine.members_of(cfg, [0, 1]))
    stop_at = {"step": 0}

    def stop():
        stop_at["step"] += 1
        return stop_at["step"] == 13

    saved = []
    first.fit(stop_requested=stop, save_checkpoint=lambda st: saved.append(
        checkpoint.save(tmp_path / "c.pt", ["fp"], first, members=[1])))
    payload = checkpoint.load(tmp_path / "c.pt", ["fp"])
    member = payload["members"][0]
    tensors = [payload["torch_rng"], member["sampler"]["generator"], *member["params"].values()]
    assert all(t.device.type == "cpu" for t in tensors)
    resumed = engine.build(cfg, data, engine.members_of(cfg, [1]))
    checkpoint.restore(payload, resumed, members=[0])
    assert resumed.state.step == 13
    resumed.fit()
    for name, tensor in resumed.population.member_state_dict(0).items():  # K = 1 vs 2: batched rounding
        torch.testing.assert_close(tensor, straight.population.member_state_dict(1)[name], rtol=1e-10, atol=1e-12)


def test_a_checkpoint_of_another_config_is_a_one_line_error(tmp_path):
    torch.save({"format": checkpoint.FORMAT, "fingerprints": ["other"]}, tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="another config"):
        checkpoint.load(tmp_path / "c.pt", ["mine"])


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    """ENOSPC while writing events: exit 2 with one line, no partial event file, a failure record."""
    import errno

    from initopt import tb, train

    real_write = tb.EventFile.write
    written = {"n": 0}

    def write(self, event):
        written["n"] += 1
        if written["n"] > 40:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real_write(self, event)

    monkeypatch.setattr(tb.EventFile, "write", write)
    cfg = compose_job([*RUN, "steps=200"])
    with pytest.raises(ConfigError, match="the disk is full") as caught:
        train.run(cfg, tmp_path / "run", "run")
    assert len(str(caught.value).splitlines()) == 1
    assert not list((tmp_path / "run").glob("events.out.tfevents*"))
    assert not (tmp_path / "run" / "metrics.json.tmp").exists()
    assert read_metrics(tmp_path / "run")["status"] == "failed"
    assert not (tmp_path / "run" / rundir.LOCK).exists()


@pytest.mark.parametrize("free, full", [(0, True), (10 << 30, False)], ids=["no space left", "space left"])
def test_torchs_save_failing_without_errno_or_message_is_a_full_disk_only_when_the_disk_is_full(
        tmp_path, monkeypatch, free, full):
    """``torch.save`` on a full disk can raise a bare ``RuntimeError`` (its zip writer's
    ``unexpected pos``): the free space of the run's file system tells a full disk from a bug."""
    from initopt import train

    def save(obj, path, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 128")

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(rundir, "free_bytes", lambda where: free)
    cfg = compose_job([*RUN, "steps=20"])
    expected = (ConfigError, "the disk is full") if full else (RuntimeError, "unexpected pos")
    with pytest.raises(expected[0], match=expected[1]):
        train.run(cfg, tmp_path / "run", "run")
    assert not (tmp_path / "run" / rundir.FINAL).exists() and not (tmp_path / "run" / "final.pt.tmp").exists()
    assert read_metrics(tmp_path / "run")["status"] == "failed"


def test_more_replicas_than_open_files_allow_are_refused_before_anything_starts(tmp_path):
    proc = run_cli("replicas=100000", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 2 and "open files" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    proc = run_cli("replicas=1000", "model.hidden=[4096,4096]", "batch_size=256", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 2 and "GiB of memory" in proc.stderr


@pytest.mark.parametrize("hidden, bias", [([8], True), ([64, 64], False), ([512, 256, 10], True)])
def test_the_memory_checks_parameter_count_is_the_built_models(hidden, bias):
    """``resources.parameter_count`` (no torch, no model built) counts what ``build_model`` builds."""
    from initopt.models import build_model, count_parameters
    from initopt.resources import parameter_count

    model_cfg = OmegaConf.create({"hidden": hidden, "bias": bias, "activation": "relu"})
    assert parameter_count(model_cfg, 784, 10) == count_parameters(build_model(model_cfg, 784, 10))
