"""Slow: the published qualitative results of DESIGN.md's reference table, with this project's code.

Run with ``pytest -m slow`` (6m24s in CI on 2 cores on 2026-12-03, 4 minutes of it the Fashion-MNIST optimizers). Each
test runs an experiment config as a real ``-m`` sweep (one seed, to keep the time) and reads the jobs' ``metrics.json``.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from conftest import read_metrics, run_cli

pytestmark = pytest.mark.slow
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.exists(), reason="apt install dataset-fashion-mnist")


def sweep(tmp: Path, experiment: str, *overrides: str) -> dict[str, dict]:
    proc = run_cli("-m", f"+experiment={experiment}", "seed=0", *overrides, "hydra.sweep.dir=sw",
                   cwd=tmp, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {p.name: read_metrics(p) for p in (tmp / "sw").iterdir() if p.is_dir() and p.name != "groups"}


def job(jobs: dict[str, dict], **choice) -> dict:
    want = [f"{k}={v}" for k, v in choice.items()]
    (name,) = [n for n in jobs if all(w in n.split(",") for w in want)]
    return jobs[name]


def test_dlai_initialization_zeros_stuck_at_ln2_and_he_fits_circles(tmp_path):
    """Published: zeros 50% / 50% with the loss at ln 2; He 99.3% / 96%; randn*10 83% / 86%."""
    jobs = sweep(tmp_path, "dlai_init")
    zero, he = job(jobs, init="zero")["final"], job(jobs, init="he")["final"]
    assert zero["train_accuracy"] == pytest.approx(0.5) and zero["test_accuracy"] == pytest.approx(0.5)
    assert zero["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert he["train_accuracy"] >= 0.95 and he["test_accuracy"] >= 0.93
    large = job(jobs, init="normal10")["final"]
    assert large["train_loss"] > he["train_loss"]  # the exploded start costs it


def test_dlai_optimizers_adam_far_ahead_of_gd_and_momentum_on_moons(tmp_path):
    """Published (train accuracy): GD 71.7%, momentum 71.7%, Adam 94.3% at lr 7e-4."""
    jobs = sweep(tmp_path, "dlai_optim")
    sgd, mom, adam = (job(jobs, optim=o)["final"]["train_accuracy"] for o in ("sgd", "momentum", "adam"))
    assert adam >= 0.93
    assert adam - max(sgd, mom) >= 0.08
    assert abs(sgd - mom) < 0.03  # EMA momentum at the same lr moves like GD here


@needs_fashion
def test_berkeley_zero_and_small_normal_flat_at_ln10_while_he_learns(tmp_path):
    """Published (CIFAR-10): zero and N(0, 1e-4) flat at ln 10; He's loss falls."""
    jobs = sweep(tmp_path, "berkeley_init")
    for init in ("zero", "normal"):
        history = job(jobs, init=init)["history"]
        assert all(abs(h["train_loss"] - math.log(10)) < 5e-3 for h in history), init
    he = job(jobs, init="he")["history"]
    assert he[-1]["train_loss"] < math.log(10) - 0.3
    assert he[-1]["test_accuracy"] > 0.25


@needs_fashion
def test_uva_fashion_mnist_optimizers_near_89_percent(tmp_path):
    """Published (40 epochs, test accuracy): SGD 89.1%, momentum 88.8%, Adam 89.5%. Full length here.

    The tutorial tests the epoch with the best accuracy on a validation split of 40 (its
    ``train_model``); this project holds out no validation set and SGD's last iterate at lr 0.1
    swings (seed 0: 89.0%, 89.3%, 87.0% at epochs 32, 36, 40, the last on a loss spike), so the
    comparison is the median test accuracy of the last three evaluations (epochs 32, 36, 40):
    no choice made on the test set, and one spike does not move it.
    """
    jobs = sweep(tmp_path, "uva_optim", "eval_every=936")  # every 4 epochs (234 steps an epoch)
    for optim, published in (("sgd", 0.891), ("momentum", 0.888), ("adam", 0.895)):
        history = job(jobs, optim=optim)["history"]
        last_three = [h["test_accuracy"] for h in history if h["step"] >= 7488]
        assert len(last_three) == 3, [h["step"] for h in history]
        assert abs(statistics.median(last_three) - published) < 0.02, (optim, last_three)
