"""The real command line: a single run and the homework's -m sweep, read back from disk."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from conftest import FAULTY_CLI, read_metrics, run_cli, scalar_tags

INITS = ("zero", "normal", "xavier", "he")
OPTIMS = ("sgd", "momentum", "adam")
PARAMS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    proc = run_cli("-m", f"init={','.join(INITS)}", f"optim={','.join(OPTIMS)}",
                   "steps=30", "eval_every=10", "flush_every=8", "model.hidden=[16,8]",
                   "hydra.sweep.dir=grid", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "grid"


def job_dir(sweep_dir, init: str, optim: str):
    """Job directories (= TensorBoard run names) are named by the swept keys only."""
    return sweep_dir / f"init={init},optim={optim}"


def test_the_sweep_runs_every_job_in_its_own_named_directory(sweep_dir):
    names = {p.name for p in sweep_dir.iterdir() if p.is_dir()}
    assert names == {job_dir(sweep_dir, i, o).name for i, o in itertools.product(INITS, OPTIMS)} | {"groups"}


def test_every_job_logs_a_grad_norm_per_parameter_tensor_every_step(sweep_dir):
    for init, optim in itertools.product(INITS, OPTIMS):
        job = job_dir(sweep_dir, init, optim)
        tags = scalar_tags(job)
        for name in PARAMS:
            steps = [e.step for e in tags[f"grad_norm/{name}"]]
            assert steps == list(range(1, 31)), (job.name, name)
        for tag in ("grad_summary/mean_norm", "grad_summary/global_norm", "loss/batch",
                    "loss/train", "loss/test", "accuracy/train", "accuracy/test"):
            assert tag in tags, (job.name, tag)
        # step 0: at initialization; 1, 2, 5: the log-spaced early evaluations below eval_every=10
        assert [e.step for e in tags["loss/test"]] == [0, 1, 2, 5, 10, 20, 30]


def test_mean_and_global_norm_are_derived_from_the_per_tensor_norms(sweep_dir):
    tags = scalar_tags(job_dir(sweep_dir, "he", "adam"))
    for i in (0, 17, 29):
        norms = [tags[f"grad_norm/{n}"][i].value for n in PARAMS]
        assert tags["grad_summary/mean_norm"][i].value == pytest.approx(sum(norms) / 6, rel=1e-5)
        assert tags["grad_summary/global_norm"][i].value == pytest.approx(
            sum(v * v for v in norms) ** 0.5, rel=1e-5)


def test_zero_init_weight_gradients_are_zero_in_the_logs(sweep_dir):
    tags = scalar_tags(job_dir(sweep_dir, "zero", "sgd"))
    assert all(e.value == 0.0 for e in tags["grad_norm/fc1.weight"])
    assert all(e.value > 0.0 for e in tags["grad_norm/out.bias"])


def test_every_job_writes_metrics_json_with_its_final_numbers(sweep_dir):
    for init, optim in itertools.product(INITS, OPTIMS):
        m = read_metrics(job_dir(sweep_dir, init, optim))
        assert m["status"] == "ok" and m["steps_done"] == 30
        assert m["choices"]["init"] == init and m["choices"]["optim"] == optim
        assert m["wall_time_s"] > 0 and m["steps_per_s"] > 0
        assert 0.0 <= m["final"]["test_accuracy"] <= 1.0
        last = scalar_tags(job_dir(sweep_dir, init, optim))["accuracy/test"][-1].value
        assert m["final"]["test_accuracy"] == pytest.approx(last, abs=1e-6)


def test_an_hparams_session_and_the_custom_scalar_layout_are_in_each_run(sweep_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(job_dir(sweep_dir, "xavier", "momentum")))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = info.session_start_info.hparams
    assert hp["init"].string_value == "xavier" and hp["optim"].string_value == "momentum"
    assert "custom_scalars__config__" in acc.Tags()["tensors"]
    assert not any(t.startswith("final/") for t in acc.Tags()["scalars"])  # single dots: HParams has them


def test_a_failing_job_is_recorded_and_the_others_still_finish(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FAULTY_CLI, "-m", "seed=0,1,2", "steps=5", "hydra.sweep.dir=sw"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    failed = read_metrics(tmp_path / "sw/seed=1")
    assert failed["status"] == "failed" and "the disk holding the data went away" in failed["error"]
    assert all(read_metrics(tmp_path / f"sw/seed={s}")["status"] == "ok" for s in (0, 2))


def test_a_diverging_run_stops_and_says_where(tmp_path):
    proc = run_cli("optim=sgd", "optim.lr=1e4", "steps=500", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_metrics(tmp_path / "run")
    assert m["status"] == "diverged"
    assert 1 <= m["diverged_step"] < 500 and m["steps_done"] < 500
    assert m["final"]["test_accuracy"] is None
    assert "diverged at step" in proc.stdout


def test_single_run_writes_under_its_hydra_output_dir_only(tmp_path):
    proc = run_cli("steps=20", "hydra.run.dir=out/one", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no ./runs, nothing stray
    assert (tmp_path / "out/one/metrics.json").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "out/one").iterdir())


def test_a_runs_line_names_its_test_loss_where_there_is_no_accuracy():
    from initopt.sweep.outputs import fmt, headline_key

    assert headline_key({"test_accuracy": 0.86, "test_loss": 0.3}) == "test_accuracy"
    assert headline_key({"test_accuracy": float("nan"), "test_loss": 2.5e-6}) == "test_loss"  # data=lstsq
    assert headline_key({"test_accuracy": None, "test_loss": 0.1}) == "test_loss"
    assert fmt(2.5e-6) == "2.5e-06" and fmt(0.8640) == "0.8640" and fmt(float("inf")) == "nan"
