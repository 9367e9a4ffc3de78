"""CUDA paths (skipped without a GPU): training on the device, and what repeats bitwise there."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from conftest import read_metrics, run_cli

pytestmark = pytest.mark.cuda

ARGS = ["data=digits", "model.hidden=[64,32]", "optim=adam", "steps=300", "eval_every=100"]


def test_a_run_on_cuda_finishes_and_says_so(tmp_path):
    proc = run_cli(*ARGS, "device=cuda", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_metrics(tmp_path / "run")
    assert m["status"] == "ok" and m["device"].startswith("cuda")


def test_deterministic_cuda_runs_repeat_bitwise(tmp_path):
    for name in ("a", "b"):
        proc = run_cli(*ARGS, "device=cuda", "deterministic=true", f"hydra.run.dir={name}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    wa = torch.load(tmp_path / "a/final.pt", weights_only=True)
    wb = torch.load(tmp_path / "b/final.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert read_metrics(tmp_path / "a")["final"] == read_metrics(tmp_path / "b")["final"]


def test_cuda_and_cpu_agree_to_float_tolerance(tmp_path):
    for device in ("cpu", "cuda"):
        proc = run_cli(*ARGS, f"device={device}", "dtype=float64", f"hydra.run.dir={device}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = read_metrics(tmp_path / "cpu")["final"], read_metrics(tmp_path / "cuda")["final"]
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key


def test_resume_on_cuda_ends_bitwise_as_a_run_never_stopped(tmp_path):
    args = [*ARGS, "device=cuda", "deterministic=true", "steps=600", "checkpoint_every=200", "compile=off"]
    assert run_cli(*args, "hydra.run.dir=straight", cwd=tmp_path).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "initopt.train", *args, "steps=600", "hydra.run.dir=cut"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (tmp_path / "cut/checkpoint.pt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert run_cli(*args, "hydra.run.dir=cut", cwd=tmp_path).returncode == 0
    a = torch.load(tmp_path / "straight/final.pt", weights_only=True)
    b = torch.load(tmp_path / "cut/final.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optim", ["optim=momentum", "optim=adam"])
def test_the_captured_step_equals_the_eager_one_on_cuda(optim):
    from initopt import engine
    from initopt.checks import compose_job
    from initopt.data import load_dataset

    results = []
    for mode in ("off", "on"):
        cfg = compose_job(["dtype=float64", "steps=50", "eval_every=50", optim, f"compile={mode}", "device=cuda"])
        data = load_dataset(cfg.data, torch.device("cuda"), torch.float64)
        training = engine.build(cfg, data, engine.members_of(cfg, [0, 1, 2]))
        training.fit()
        results.append(training.population)
    for name in results[0].names:
        torch.testing.assert_close(results[1].params[name], results[0].params[name], rtol=1e-10, atol=1e-12)


def test_the_compiled_step_runs_as_a_cuda_graph(capsys):
    """compile=on equal to off also holds when nothing was captured: Inductor's counters say
    whether it skipped CUDA graphs (mutated inputs that are not static addresses, say)."""
    from torch._dynamo.utils import counters

    from initopt import engine
    from initopt.checks import compose_job
    from initopt.data import load_dataset

    torch._dynamo.reset()
    counters.clear()
    cfg = compose_job(["steps=30", "eval_every=30", "optim=adam", "compile=on", "device=cuda", "act_every=0"])
    data = load_dataset(cfg.data, torch.device("cuda"), torch.float32)
    engine.build(cfg, data, engine.members_of(cfg, [0, 1, 2])).fit()
    assert "falling back" not in capsys.readouterr().out
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
