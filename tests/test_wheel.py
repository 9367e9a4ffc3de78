"""The built wheel carries the configs: the trainer runs from any directory after install."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, read_metrics


def test_installed_wheel_runs_outside_the_repo(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(REPO)], check=True, capture_output=True)
    wheel = next(wheels.glob("initopt-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    assert (site / "initopt/conf/train.yaml").exists() and (site / "initopt/conf/init/he.yaml").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import initopt.conf; print(initopt.conf.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site))  # the wheel's copy, not the source tree
    proc = subprocess.run([sys.executable, "-m", "initopt.train", "init=xavier", "optim=adam",
                           "steps=10", "hydra.run.dir=run"], cwd=elsewhere, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_metrics(elsewhere / "run")["choices"]["init"] == "xavier"
