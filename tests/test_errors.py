"""Bad input and faults, each answered in one line (the README's table, row by row).

Most checks are in-process calls of the command-line check Hydra's run is preceded by;
a few run the real command where the command line itself is the point.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_python
from omegaconf import OmegaConf
from test_data import fake_mnist_dir

from initopt.checks import precheck_command_line, user_error_line
from initopt.config import ConfigError, clip_words, load_error_cause
from initopt.data import load_dataset
from initopt.datafiles import min_generated_samples
from initopt.engine.checkpoint import load as load_checkpoint
from initopt.signals import interrupt_deferred
from initopt.threads import DEFAULT_THREADS, choose_threads

CPU = torch.device("cpu")


def error_line(argv: list[str]) -> str:
    """The one line the command line ``argv`` is refused with."""
    with pytest.raises(Exception) as info:
        precheck_command_line(argv)
    line = user_error_line(info.value)
    assert "\n" not in line
    return line


# ---------------------------------------------------------------- corrupt dataset files
def _gz(path: Path) -> Path:
    return path.with_name(path.name + ".gz")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {  # name: (gzipped files?, file to damage, damage, words of the answer)
    "truncated": (False, "train-images-idx3-ubyte", _truncate, "is truncated: 19592 data bytes"),
    "truncated gzip": (True, "train-images-idx3-ubyte", _truncate, "is truncated"),
    "garbage": (False, "t10k-images-idx3-ubyte", lambda p: p.write_bytes(b"junk" * 9),
                "is not an MNIST-format (idx, uint8) file: it starts with 0x6a756e6b"),
    "garbage gzip": (True, "t10k-labels-idx1-ubyte", lambda p: p.write_bytes(b"junk" * 9),
                     "is not a readable gzip file"),
    "empty": (False, "train-labels-idx1-ubyte", lambda p: p.write_bytes(b""),
              "is not an MNIST-format (idx, uint8) file: it starts with nothing"),
    "extra bytes": (False, "train-images-idx3-ubyte", lambda p: p.write_bytes(p.read_bytes() + b"x"),
                    "is longer than its header says"),
    "labels for other images": (False, "train-labels-idx1-ubyte",
                                lambda p: p.write_bytes(p.read_bytes()[:7] + bytes([49]) + p.read_bytes()[8:-1]),
                                "has 49 labels for the 50 images"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_a_corrupt_dataset_file_is_named_in_one_line_and_nothing_is_cached(tmp_path, monkeypatch, case):
    gz, name, damage, words = CORRUPTIONS[case]
    cache = tmp_path / "cache"
    monkeypatch.setattr("initopt.data.CACHE_DIR", cache)
    root = fake_mnist_dir(tmp_path / "files", gz=gz)
    bad = _gz(root / name) if gz else root / name
    damage(bad)
    line = error_line(["data=fashion_mnist", f"data.root={root}"])
    assert f"{bad} {words}" in line and "replace it" in line
    with pytest.raises(ConfigError):  # loading refuses before copying anything into the cache
        load_dataset(OmegaConf.create({"name": "fashion_mnist", "root": str(root), "download": False,
                                       "preprocess": "none", "limit_train": 0}), CPU, torch.float32)
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_the_command_line_refuses_a_truncated_dataset_with_exit_2(tmp_path):
    root = fake_mnist_dir(tmp_path / "files", gz=False)
    _truncate(root / "train-images-idx3-ubyte")
    proc = run_cli("data=fashion_mnist", f"data.root={root}", cwd=tmp_path,
                   env={"INITOPT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "train-images-idx3-ubyte is truncated" in proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "outputs").exists()


def test_a_corrupt_cifar10_file_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    line = error_line(["data=cifar10", f"data.root={tmp_path}"])
    assert f"{folder}/data_batch_1 is missing" in line
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"junk")
    assert f"{folder}/data_batch_1 does not match CIFAR-10's published MD5" in error_line(
        ["data=cifar10", f"data.root={tmp_path}"])


# ----------------------------------------------------------------------- n_samples
def test_too_few_samples_for_the_split_name_the_minimum():
    line = error_line(["data.n_samples=4", "batch_size=3"])
    assert line.startswith("data.n_samples=4 is not allowed: at least 5 with data.test_fraction=0.25")
    precheck_command_line(["data.n_samples=5", "batch_size=3"])  # the minimum itself is accepted
    assert "or data.n_samples >= 86" in error_line(["data.n_samples=50"])  # batch 64 needs 86
    assert "needs 10 (one per class)" in error_line(["data=digits", "data.test_fraction=0.001"])


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5, 0.9, 0.97])
def test_the_minimum_is_the_smallest_size_scikit_learn_can_split(fraction):
    import sklearn.datasets as skd
    from sklearn.model_selection import train_test_split

    def splits(n: int) -> bool:
        x, y = skd.make_moons(n, random_state=0)
        try:
            train_test_split(x, y, test_size=fraction, random_state=0, stratify=y)
        except ValueError:
            return False
        return True

    n_min = min_generated_samples(fraction)
    assert splits(n_min) and not splits(n_min - 1)


# -------------------------------------------------------------- non-finite floats
@pytest.mark.parametrize("overrides", [
    ["optim.lr=inf"], ["optim.lr=-inf"], ["optim.lr=nan"], ["optim.weight_decay=inf"],
    ["optim=momentum", "optim.beta=nan"], ["optim=adam", "optim.eps=inf"],
    ["init=normal", "init.std=nan"], ["init=normal", "init.std=inf"], ["init=xavier", "init.gain=inf"],
    ["init.bias_std=inf"], ["data.noise=inf"], ["data.test_fraction=nan"],
], ids=lambda o: " ".join(o))
def test_non_finite_floats_are_refused(overrides):
    key, value = overrides[-1].split("=")
    assert error_line(overrides) == f"{key}={float(value)!r} is not allowed: must be a finite number"


# ------------------------------------------------------------ unparsable overrides
@pytest.mark.parametrize("override,words", [
    ("init=hé", ["init='hé'", "'é', not ASCII", "he, normal, normal10, xavier, zero"]),
    ("optim=adàm", ["optim='adàm'", "'à'", "adam, momentum, sgd"]),
    ("stéps=3", ["stéps='3'", "'é'", "key='...'"]),
    ("data.root=/tmp/hé", ["data.root='/tmp/hé'", "quote a value"]),
    ("optim.lr=(", ["optim.lr='('", "unexpected '('"]),
    ("init=[", ["init='['", "unexpected '['", "he, normal"]),
    ("init", ["override='init'", "not key=value", "he, normal"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_unparsable_overrides_are_explained(override, words):
    line = error_line([override])
    assert "Lexer" not in line and "Exception" not in line
    for word in words:
        assert word in line


def test_the_quoting_the_answer_advises_works():
    precheck_command_line(["data.root='/tmp/hé'"])


# ---------------------------------------------------------- foreign checkpoints
class Malicious:
    def __reduce__(self):
        return os.system, ("echo pwned",)


@pytest.mark.parametrize("write,cause", [
    (lambda p: torch.save({"x": Malicious()}, p), "asks to import posix.system"),
    (lambda p: torch.save(torch.nn.Linear(2, 2), p), "asks to import torch.nn.modules.linear.Linear"),
    (lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=4)), "a plain pickle, not a torch checkpoint"),
    (lambda p: p.write_bytes(b""), "the file is empty or truncated"),
    (lambda p: p.write_bytes(b"this is not a checkpoint"), "not a torch file"),
], ids=["malicious", "whole module", "plain pickle", "empty", "text"])
def test_a_foreign_checkpoint_is_refused_with_its_cause_and_no_warnings(tmp_path, recwarn, write, cause):
    path = tmp_path / "checkpoint.pt"
    write(path)
    with pytest.raises(ConfigError) as info:
        load_checkpoint(path, ["fingerprint"])
    message = str(info.value)
    assert cause in message and "\n" not in message and "weights_only" not in message
    assert not recwarn.list  # torch's warnings about foreign pickles are not shown


def test_long_causes_are_cut_at_a_word_and_marked():
    cut = clip_words("alpha beta gamma delta", 14)
    assert cut == "alpha beta..." and len(cut) <= 14
    long = RuntimeError("first sentence " + "word " * 60 + ". Second sentence.")
    cause = load_error_cause(long)
    assert cause.endswith("...") and re.search(r"\bword\.\.\.$", cause) and len(cause) <= 160


# ------------------------------------------------------------------ output dirs
@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_an_output_dir_where_no_file_can_be_created_is_refused():
    line = error_line(["hydra.run.dir=/proc/initopt_run"])
    assert line.startswith("hydra.run.dir='/proc/initopt_run' is not allowed: cannot create files in /proc")


def test_the_writability_probe_leaves_nothing_behind(tmp_path):
    precheck_command_line([f"hydra.run.dir={tmp_path}/run"])
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ threads
def _threads_cfg(threads, batch_size=64, replicas=1):
    return OmegaConf.create({"threads": threads, "batch_size": batch_size, "replicas": replicas})


def test_threads_auto_takes_one_thread_for_small_steps_and_torch_default_for_large():
    toy = 2 * 64 + 64 + 64 * 64 + 64 + 64 + 1  # 2-64-64-1
    big = 784 * 512 + 512 + 512 * 256 + 256 + 256 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert choose_threads(_threads_cfg("auto"), toy) == 1
    assert choose_threads(_threads_cfg("auto", batch_size=256), big) == DEFAULT_THREADS
    assert choose_threads(_threads_cfg("auto", replicas=1000), toy) == DEFAULT_THREADS
    # 20 members stacked (34 MFLOP a step): split over members, more threads pay sooner than for one model
    assert choose_threads(_threads_cfg("auto", replicas=20), toy) == DEFAULT_THREADS
    assert choose_threads(_threads_cfg("auto", replicas=5), toy) == 1
    assert choose_threads(_threads_cfg(0), toy) == DEFAULT_THREADS
    assert choose_threads(_threads_cfg(3), big) == 3


@pytest.mark.parametrize("value", ["abc", "-1", "1.5"])
def test_threads_must_be_auto_or_a_count(value):
    assert error_line([f"threads={value}"]).startswith("threads=")


# ------------------------------------------------------------------- Ctrl-C during start-up
def test_ctrl_c_while_torch_loads_is_one_line_and_exit_130(tmp_path):
    """SIGINT once the process has begun mapping torch's libraries (it imports torch, then runs the
    checks): no traceback, at most two lines, exit 130."""
    proc = subprocess.Popen([sys.executable, "-m", "initopt.train", "steps=20", "hydra.run.dir=run"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.time() + 120
    while "/torch/" not in maps.read_text():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert "interrupted" in err


# python -c CTRL_C_IN_TORCHS_CPP_INIT <args>: initopt.train, with Ctrl-C pressed at the moment torch's
# C++ initialisation (torch._C._c10d_init) calls back into Python (watched with sys.setprofile)
CTRL_C_IN_TORCHS_CPP_INIT = """
import atexit, signal, sys
class CtrlCInTorchsCppInit:
    fired = False
    def __init__(self):
        self.open_c_calls = []
    def find_spec(self, name, path=None, target=None):
        if name == "torch":  # torch's import begins: watch the calls
            sys.meta_path.remove(self)
            sys.setprofile(self.profile)
        return None
    def profile(self, frame, event, arg):
        if event == "c_call":
            self.open_c_calls.append(getattr(arg, "__name__", ""))
        elif event in ("c_return", "c_exception") and self.open_c_calls:
            self.open_c_calls.pop()
        elif event == "call" and self.open_c_calls[-1:] == ["_c10d_init"]:
            sys.setprofile(None)
            CtrlCInTorchsCppInit.fired = True
            signal.raise_signal(signal.SIGINT)
sys.meta_path.insert(0, CtrlCInTorchsCppInit())
atexit.register(lambda: print("fired:", CtrlCInTorchsCppInit.fired,
                              "torch loaded:", hasattr(sys.modules.get("torch"), "Tensor")))
from initopt.train import cli
sys.argv = ["initopt.train", *sys.argv[1:]]
cli()
"""


def test_ctrl_c_inside_torchs_cpp_init_waits_for_it_then_is_one_line_and_exit_130(tmp_path):
    """A KeyboardInterrupt raised in Python code that torch's C++ initialisation calls aborted the
    process ("terminate called after throwing an instance of 'python_error'", signal 6; also seen at
    random as 'pybind11::error_already_set'): Ctrl-C is held back until torch is loaded, then ends the
    command as above."""
    proc = run_python("-c", CTRL_C_IN_TORCHS_CPP_INIT, "steps=20", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "interrupted" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "fired: True torch loaded: True" in proc.stdout  # the signal came inside torch's C++ init
    assert not (tmp_path / "run").exists()  # no job started


# python -c CTRL_C_AT_IMPORT NAME MODULE ARGS...: ``python -m MODULE ARGS``, with Ctrl-C pressed as
# the module's imports look for NAME
CTRL_C_AT_IMPORT = """
import runpy, signal, sys
name, module = sys.argv[1], sys.argv[2]
class CtrlCAt:
    def find_spec(self, fullname, path=None, target=None):
        if fullname == name:
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlCAt())
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(("name", "module", "args", "line"), [
    ("hydra", "initopt.train", ["steps=2"], "initopt.train: interrupted outside training"),
    ("numpy", "initopt.report", ["."], "initopt.report: interrupted: nothing written"),
    ("numpy", "initopt.analytic", [], "initopt.analytic: interrupted"),
], ids=["train", "report", "analytic"])
def test_ctrl_c_while_a_command_imports_its_libraries_is_one_line_and_exit_130(tmp_path, name, module, args,
                                                                            line):
    proc = run_python("-c", CTRL_C_AT_IMPORT, name, module, *args, cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.startswith(line) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_interrupt_deferred_raises_after_the_body_and_restores_the_handler():
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt_deferred():
            signal.raise_signal(signal.SIGINT)
            finished.append(True)  # the body goes on past the signal
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with interrupt_deferred():  # no signal: nothing raised
        pass


def test_interrupt_deferred_leaves_an_ignored_sigint_ignored():
    """A command started with SIGINT ignored (``cmd &`` in a script) is not made interruptible."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt_deferred():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    except KeyboardInterrupt:
        pytest.fail("an ignored SIGINT was raised as KeyboardInterrupt")
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# ------------------------------------------------------------------------- seeds' ranges
@pytest.mark.parametrize(("argv", "line"), [
    (["seed=18446744073709551616"], "seed=18446744073709551616 is not allowed: must be an integer in "
                                    "[0, 18446744073709551615]"),
    (["seed=-1"], "seed=-1 is not allowed: must be an integer in [0, 18446744073709551615]"),  # torch: -1 = 2^64-1
    (["seed=18446744073709551615", "replicas=2"], "seed=18446744073709551615 is not allowed: must be an integer "
                                                  "in [0, 18446744073709551614] with replicas=2"),
    (["data.seed=4294967296"], "data.seed=4294967296 is not allowed: must be an integer in [0, 4294967295]"),
], ids=["past 64 bits", "negative", "the last replica past 64 bits", "data.seed past scikit-learn's"])
def test_seeds_outside_torch_and_scikit_learn_ranges_are_one_line(argv, line):
    assert error_line(argv).startswith(line)
    precheck_command_line(["seed=18446744073709551615"])  # the largest seed itself is accepted


# ---------------------------------------------------------------- what is too big names itself
def test_a_model_too_big_for_memory_is_named_not_replicas(monkeypatch):
    monkeypatch.setattr("initopt.resources.available_memory", lambda: 16 * 2**30)
    line = error_line(["model.hidden=[100000,100000]"])
    assert line.startswith("model.hidden=[100000, 100000] is not allowed: the model alone needs about 186.7 GiB")
    assert "10,000,500,001 parameters" in line and "16.0 GiB is available" in line and "replicas" not in line
    line = error_line(["model.hidden=[4096,4096]", "replicas=200"])  # one fits, 200 do not
    assert line.startswith("replicas=200 is not allowed: needs about")


def test_an_unwritable_dataset_cache_names_INITOPT_CACHE_not_data_root(tmp_path, monkeypatch):
    monkeypatch.setattr("initopt.data.CACHE_DIR", Path("/proc/initopt_cache"))  # no file there, even for root
    root = fake_mnist_dir(tmp_path / "files", gz=True)  # gzipped: unpacked into the cache to be read
    with pytest.raises(ConfigError) as info:
        load_dataset(OmegaConf.create({"name": "fashion_mnist", "root": str(root), "download": False,
                                       "preprocess": "none", "limit_train": 0}), CPU, torch.float32)
    line = str(info.value)
    assert line.startswith("INITOPT_CACHE='/proc/initopt_cache' is not allowed: cannot write the dataset cache")
    assert "data.root" not in line and "\n" not in line


def test_an_unknown_INITOPT_HYDRA_LOADER_is_refused_in_one_line_before_any_run(tmp_path):
    proc = run_cli("steps=2", "hydra.run.dir=run", cwd=tmp_path, env={"INITOPT_HYDRA_LOADER": "fastest"})
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert proc.stderr.strip() == ("initopt.train: error: INITOPT_HYDRA_LOADER='fastest' is not allowed: one of "
                                   "shared, hydra (initopt's loader, the default; or Hydra's own)")


# ------------------------------------------------------------ the report's output folder
def test_a_report_into_an_unwritable_folder_is_refused_before_reading_anything(tmp_path, monkeypatch, capsys):
    from initopt.report import __main__ as report_cli

    (tmp_path / "sw" / "job").mkdir(parents=True)
    monkeypatch.setattr(report_cli, "build", lambda *a: pytest.fail("the sweep was read"))
    (tmp_path / "afile").write_text("x")
    for out, why in (("/proc/initopt_report", "cannot create files in /proc"),
                     (str(tmp_path / "afile" / "report"), f"{tmp_path / 'afile'} is a file, not a folder")):
        with pytest.raises(SystemExit) as stop:
            report_cli.main([str(tmp_path / "sw"), "--out", out])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1
        assert err.startswith(f"initopt.report: error: --out={out!r} is not allowed: {why}")
