"""Interrupt, resume, determinism and refusing what would overwrite a user's results."""

from __future__ import annotations

import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, run_cli, scalar_tags
from hypothesis import given, settings
from hypothesis import strategies as st

from initopt.engine import checkpoint
from initopt.train import hydra_quoted, shell_word

RUN = ["model.hidden=[8]", "optim=adam", "eval_every=500", "flush_every=50"]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "initopt.train", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_training(run_dir: Path, proc: subprocess.Popen, extra_s: float = 1.0) -> None:
    """Until the run has opened its event file (it trains from then on), plus ``extra_s``."""
    deadline = time.time() + 60
    while not (run_dir.exists() and any(run_dir.glob("events.out.tfevents*"))):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(extra_s)


def wait_for_file(path: Path, proc: subprocess.Popen, deadline_s: float = 300) -> None:
    """Poll until ``path`` exists (the run is alive all the while), failing after ``deadline_s``."""
    deadline = time.time() + deadline_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"no {path.name} after {deadline_s} s"
        time.sleep(0.05)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    proc = run_cli(*RUN, "steps=8000", "hydra.run.dir=run", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "run"


@pytest.mark.slow  # multi-process fault test (pytest -m slow, run by .ci/run)
def test_sigint_saves_a_checkpoint_and_resuming_ends_bitwise_identical(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = start([*RUN, "steps=8000", "hydra.run.dir=run"], tmp_path)
    wait_until_training(run_dir, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Resume with" in err and "hydra.run.dir=" in err
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    stopped_at = checkpoint.start_step(ckpt)
    assert 0 < stopped_at < 8000
    assert not (run_dir / "metrics.json").exists()

    resumed = run_cli(*RUN, "steps=8000", "hydra.run.dir=run", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {stopped_at}" in resumed.stdout
    assert_same_weights(run_dir / "final.pt", uninterrupted / "final.pt")
    a, b = read_metrics(run_dir), read_metrics(uninterrupted)
    assert a["final"] == b["final"] and a["history"] == b["history"]
    assert not (run_dir / "checkpoint.pt").exists()
    steps = [e.step for e in scalar_tags(run_dir)["grad_norm/fc1.weight"]]
    assert steps == list(range(1, 8001))  # every step once, none twice
    values = [e.value for e in scalar_tags(run_dir)["loss/batch"]]
    assert values == [e.value for e in scalar_tags(uninterrupted)["loss/batch"]]


@pytest.mark.slow  # multi-process fault test (pytest -m slow, run by .ci/run)
def test_a_hard_kill_resumes_from_the_periodic_checkpoint(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = start([*RUN, "steps=8000", "checkpoint_every=300", "hydra.run.dir=run"], tmp_path)
    wait_for_file(run_dir / "checkpoint.pt", proc)  # written atomically: complete once it exists
    proc.kill()  # SIGKILL: no handler runs; events past the checkpoint are already on disk
    proc.communicate()
    assert (run_dir / "checkpoint.pt").exists()
    resumed = run_cli(*RUN, "steps=8000", "checkpoint_every=300", "hydra.run.dir=run", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(run_dir / "final.pt", uninterrupted / "final.pt")
    steps = [e.step for e in scalar_tags(run_dir)["grad_norm/fc1.weight"]]
    assert steps == list(range(1, 8001))  # TensorBoard purges what the killed run wrote twice


@pytest.mark.slow  # multi-process fault test (pytest -m slow, run by .ci/run)
def test_an_interrupted_sweep_resumes_without_redoing_finished_jobs(tmp_path):
    args = ["-m", "seed=0,1,2", *RUN, "steps=3000", "hydra.sweep.dir=sw"]
    proc = start(args, tmp_path)
    sweep = tmp_path / "sw"
    second = None
    deadline = time.time() + 120
    while second is None:  # wait until the first job finished and the second is training
        done = [d for d in sweep.glob("*") if (d / "metrics.json").exists()] if sweep.exists() else []
        running = [d for d in sweep.glob("*") if any(d.glob("events*")) and d not in done] \
            if sweep.exists() else []
        if done and running:
            second = running[0]
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    size = sum(p.stat().st_size for p in second.glob("events*"))
    while sum(p.stat().st_size for p in second.glob("events*")) == size:  # its first flush: it trains
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "hydra.sweep.dir=" in err
    first = done[0]
    stamp = (first / "metrics.json").stat().st_mtime_ns
    # its training run's event file; the heat map (*.heatmap) is redrawn at every sweep's end on the
    # sweep's colour scale, so the resumed sweep writes one for it
    events_before = sorted(p.name for p in first.glob("events*") if not p.name.endswith(".heatmap"))

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already finished" in again.stdout and "resuming at step" in again.stdout
    assert (first / "metrics.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in first.glob("events*") if not p.name.endswith(".heatmap")) == events_before
    jobs = [d for d in sweep.iterdir() if d.is_dir() and d.name != "groups"]
    assert len(jobs) == 3 and all(read_metrics(d)["status"] == "ok" for d in jobs)


def test_same_config_and_seed_give_bitwise_identical_results_on_cpu(tmp_path):
    args = ["data=digits", "model.hidden=[32,16]", "optim=momentum", "steps=300", "eval_every=100"]
    for name in ("a", "b"):
        proc = run_cli(*args, f"hydra.run.dir={name}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_weights(tmp_path / "a/final.pt", tmp_path / "b/final.pt")
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert a["final"] == b["final"] and a["history"] == b["history"]
    assert [e.value for e in scalar_tags(tmp_path / "a")["grad_norm/fc1.weight"]] == \
        [e.value for e in scalar_tags(tmp_path / "b")["grad_norm/fc1.weight"]]


def test_a_finished_run_is_never_overwritten(tmp_path):
    assert run_cli("steps=30", "hydra.run.dir=run", cwd=tmp_path).returncode == 0
    stamp = (tmp_path / "run/metrics.json").stat().st_mtime_ns
    again = run_cli("steps=30", "hydra.run.dir=run", cwd=tmp_path)
    assert again.returncode == 0 and "already finished" in again.stdout
    other = run_cli("steps=40", "hydra.run.dir=run", cwd=tmp_path)
    assert other.returncode == 2 and "another config" in other.stderr
    assert other.stderr.strip().count("\n") == 0
    assert (tmp_path / "run/metrics.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("content,words", [
    (b"this is not a checkpoint", "unreadable"),
    (pickle.dumps({"a": 1}, protocol=4), "a plain pickle, not a torch checkpoint"),  # torch warns on it
    (None, "another config"),
])
def test_corrupt_or_mismatched_checkpoints_are_one_line_errors(tmp_path, content, words):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if content is None:  # a real checkpoint, written by a run with other settings
        proc = start([*RUN, "steps=100000", "hydra.run.dir=run"], tmp_path)
        wait_until_training(run_dir, proc, extra_s=0.3)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        args = [*RUN, "steps=100000", "optim.lr=0.5", "hydra.run.dir=run"]
    else:
        (run_dir / "checkpoint.pt").write_bytes(content)
        args = [*RUN, "steps=50", "hydra.run.dir=run"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "checkpoint" in proc.stderr and words in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert (run_dir / "checkpoint.pt").exists()  # left for the user to decide


def test_an_output_dir_that_cannot_be_created_is_a_one_line_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = run_cli("steps=10", "hydra.run.dir=afile/run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "hydra.run.dir" in proc.stderr and "not a folder" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_divergence_is_marked_in_tensorboard(tmp_path):
    proc = run_cli("optim=sgd", "optim.lr=1e4", "steps=300", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_metrics(tmp_path / "run")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    (status,) = acc.Tensors("status")
    assert status.step == m["diverged_step"]
    assert f"diverged at step {m['diverged_step']}" in tensor_util.make_ndarray(status.tensor_proto).item().decode()


# ------------------------------------------------------ the printed resume line, run verbatim
FAST = ["model.hidden=[8]", "optim=adam", "eval_every=100000", "flush_every=500", "log_every=0",
        "act_every=0", "param_every=0", "hist_every=0", "checkpoint_every=10"]
ODD_DIR = "ré sumé/it's a=b,c"  # a space, a quote, '=', ',' and non-ASCII characters
CASES = {  # what the user typed (after the shell), where its job directories are
    "single run, default directory (outputs/<time>/<a=b,c=d>)": (["init=he"], "outputs/*/*"),
    "plain sweep, odd directory": (["-m", "seed=0,1", f"hydra.sweep.dir={hydra_quoted(ODD_DIR)}"], f"{ODD_DIR}/*"),
    "population sweep, odd directory": (["-m", "+launcher=population", "seed=0,1",
                                         f"hydra.sweep.dir={hydra_quoted(ODD_DIR)}"], f"{ODD_DIR}/*"),
}


def resume_line(stderr: str) -> str:
    """The command printed after "Resume with:"."""
    lines = stderr.splitlines()
    return lines[[i for i, line in enumerate(lines) if line.endswith("Resume with:")][-1] + 1].strip()


@pytest.mark.slow  # multi-process fault test (pytest -m slow, run by .ci/run)
@pytest.mark.parametrize("case", CASES)
def test_the_printed_resume_line_runs_verbatim_in_a_shell(tmp_path, case):
    """Interrupted once a checkpoint exists, the run is resumed by the printed line pasted into
    bash as it is: the user's own values (a space and a quote in one) survive, the directory
    is quoted for Hydra and the shell, and every job finishes."""
    extra, jobs_glob = CASES[case]
    args = [*extra, *FAST, "steps=2000", "data.root=\"my data/it's here\""]  # -m first, as argparse wants
    proc = start(args, tmp_path)
    deadline = time.time() + 300
    while not list(tmp_path.glob(f"{jobs_glob}/checkpoint.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint.pt"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    line = resume_line(err)
    assert "data.root=\"my data/it's here\"" in subprocess.run(["bash", "-c", f"printf '%s\\n' {line}"],
                                                               capture_output=True, text=True).stdout

    resumed = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at step" in resumed.stdout
    jobs = [p for p in tmp_path.glob(jobs_glob) if p.is_dir() and not p.name.startswith(".") and p.name != "groups"]
    assert len(jobs) == (2 if "-m" in extra else 1)
    for job in jobs:
        assert read_metrics(job)["status"] == "ok" and not (job / "checkpoint.pt").exists()


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30))
def test_hydra_quoted_values_read_back_exactly(value):
    """Whatever a directory is called, Hydra's grammar and OmegaConf read the quoted value back as it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_override(f"hydra.run.dir={hydra_quoted(value)}").value()
    assert OmegaConf.create({"dir": parsed}).dir == value


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30))
def test_shell_words_read_back_exactly(word):
    """A POSIX shell's reading (shlex's, here; bash's in the test above) gives the word back."""
    assert shlex.split(shell_word(word)) == [word]
