"""CUDA paths (skipped without a GPU): training on the device, and what repeats bitwise there."""

from __future__ import annotations

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
