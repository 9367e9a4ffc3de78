"""Every config combination composes; every bad input fails at start with one line."""

from __future__ import annotations

import itertools

import pytest
from conftest import REPO, run_cli, run_python

from initopt.checks import precheck_command_line, user_error_line
from initopt.config import validate

GROUPS = ("model", "init", "optim", "data")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def test_each_group_offers_what_the_homework_needs():
    assert {"zero", "normal", "xavier", "he"} <= set(options("init"))
    assert {"sgd", "momentum", "adam"} <= set(options("optim"))
    assert {"moons", "circles", "digits", "fashion_mnist", "mnist", "cifar10"} <= set(options("data"))
    assert {"mlp", "deep"} <= set(options("model"))


def test_every_combination_composes_and_validates():
    """Each group's options composed once by Hydra; every combination assembled from them (the
    groups are self-contained packages), checked equal to Hydra's own composition on a sample,
    and validated."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    choices = {g: options(g) for g in GROUPS}
    combos = list(itertools.product(*choices.values()))
    assert len(combos) >= 4 * 3 * 6
    with initialize_config_module(config_module="initopt.conf", version_base="1.3"):
        base = compose("train")
        node = {(g, o): compose("train", overrides=[f"{g}={o}"])[g] for g in GROUPS for o in choices[g]}
        sample = combos[:: max(1, len(combos) // 12)] + combos[-1:]
        by_hydra = {c: compose("train", overrides=[f"{g}={o}" for g, o in zip(GROUPS, c)]) for c in sample}
    for combo in combos:
        cfg = base.copy()
        for g, o in zip(GROUPS, combo):
            cfg[g] = node[g, o]
        if combo in by_hydra:
            assert OmegaConf.to_container(cfg) == OmegaConf.to_container(by_hydra[combo]), combo
        validate(cfg)
        assert combo[1].startswith(cfg.init.name) and cfg.optim.name == combo[2]  # normal10 is a normal


def test_defaults_are_the_documented_ones(compose):
    cfg = compose([])
    assert (cfg.model.hidden, cfg.init.name, cfg.optim.name, cfg.optim.form, cfg.data.name) == (
        [64, 64], "he", "momentum", "ema", "moons")
    assert compose(["model=deep"]).model.hidden == [50] * 10


# (override, words the one-line message must contain)
BAD_INPUTS = [
    (["init=kaiming"], ["init=kaiming", "he, normal, normal10, xavier, zero"]),
    (["model.widht=3"], ["model.widht", "allowed", "hidden"]),
    (["steps=abc"], ["steps", "abc", "Integer"]),
    (["steps=0"], ["steps=0", "> 0"]),
    (["optim.lr=-1"], ["optim.lr=-1.0", "> 0"]),
    (["optim=momentum", "optim.beta=1.5"], ["optim.beta=1.5", "(0.0, 1.0]"]),
    (["optim=momentum", "optim.beta=0"], ["optim.beta=0.0", "(0.0, 1.0]"]),
    (["optim=momentum", "optim.form=nesterov"], ["optim.form", "ema, heavy_ball"]),
    (["data=lstsq", "data.sigmas=[3,-1]"], ["data.sigmas=[3.0, -1.0]", "singular values > 0"]),
    (["data=lstsq", "data.n_samples=3"], ["data.n_samples=3", "len(data.sigmas) = 2"]),
    (["model.hidden=[8,-2]"], ["model.hidden", "positive"]),
    (["model.activation=swish"], ["model.activation", "relu"]),
    (["batch_size=0"], ["batch_size=0", "> 0"]),
    (["batch_size=100000"], ["batch_size=100000", "750"]),
    (["device=tpu"], ["device", "tpu", "auto, cpu, cuda"]),
    (["+foo=1"], ["foo=1", "not a config key"]),
    (["optim=sgd", "optim.beta=0.1"], ["optim.beta", "SGDConfig", "lr"]),
    (["data=mnist", "data.root=/nonexistent"], ["data.root", "/nonexistent", "MNIST"]),
]


@pytest.mark.parametrize("overrides,words", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(overrides, words):
    with pytest.raises(Exception) as info:
        precheck_command_line(overrides)
    line = user_error_line(info.value)
    assert "\n" not in line
    for word in words:
        assert word in line


def test_a_bad_value_inside_a_sweep_is_caught_before_any_job_runs():
    with pytest.raises(Exception) as info:
        precheck_command_line(["-m", "init=zero,kaiming", "optim=sgd,adam"])
    assert "init=kaiming" in user_error_line(info.value)


SWEEP_BAD_INPUTS = [
    # a bad combination: 700 examples a batch, but data.n_samples=200 leaves 150 to train on
    (["batch_size=64,700", "data.n_samples=1000,200"], ["batch_size=700", "150"]),
    (["+launcher=population", "hydra.launcher.member_budget=-3"],
     ["hydra.launcher.member_budget=-3", "integer >= 0", "0 = no budget"]),
    (["+launcher=population", "hydra.launcher.member_budget=abc"], ["hydra.launcher.member_budget", "abc"]),
    (["+launcher=population", "hydra.launcher.member_budget=1.5"], ["hydra.launcher.member_budget", "1.5"]),
    (["+experiment=dlai_init", "optim.lr=0.1,-1"], ["optim.lr=-1.0", "> 0"]),  # its own sweep expanded too
    (["+launcher=population_local", "hydra.launcher.shards=0"], ["hydra.launcher.shards=0", "integer >= 1"]),
    (["+launcher=population_local", "hydra.launcher.shards=two"], ["hydra.launcher.shards", "two"]),
    (["+launcher=population_slurm", "hydra.launcher.cluster=pbs"], ["hydra.launcher.cluster='pbs'", "local, slurm"]),
    (["+launcher=population_slurm", "hydra.launcher.timeout_min=0"], ["hydra.launcher.timeout_min=0", ">= 1"]),
    (["+launcher=population_local", "hydra.launcher.max_num_timeout=-1"], ["max_num_timeout=-1", ">= 0"]),
]


@pytest.mark.parametrize("overrides,words", SWEEP_BAD_INPUTS, ids=[" ".join(o) for o, _ in SWEEP_BAD_INPUTS])
def test_every_job_of_a_sweep_is_checked_before_the_first_runs(overrides, words):
    with pytest.raises(Exception) as info:
        precheck_command_line(["-m", *overrides])
    line = user_error_line(info.value)
    assert "\n" not in line
    for word in words:
        assert word in line


def test_a_sweeps_jobs_are_composed_once_per_group_option():
    from initopt.compose import JOBS

    JOBS.clear()
    precheck_command_line(["-m", "init=zero,he", "optim=sgd,adam", "seed=0,1,2", "optim.lr=0.1,0.01"])
    # init x optim: each option composed once, the fourth combination assembled from those;
    # seeds and rates applied to copies
    assert (JOBS.compositions, JOBS.assembled) == (3, 1)


def test_a_bad_combination_in_a_sweep_exits_2_in_one_line_before_any_job(tmp_path):
    proc = run_cli("-m", "batch_size=64,700", "data.n_samples=1000,200", "steps=2", "hydra.sweep.dir=s", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "batch_size=700" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_bad_override_exits_non_zero_with_one_line_and_writes_nothing(tmp_path):
    proc = run_cli("init=kaiming", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "init=kaiming" in proc.stderr and "he, normal, normal10, xavier, zero" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ``python -c`` this, then the command line: initopt.train's main, and whether torch was imported
MAIN_THEN_TORCH_IMPORTED = """
import sys
from initopt.train import main
try:
    main()
finally:
    print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize("args", [
    ["init=kaiming"],
    ["-m", "batch_size=64,700", "data.n_samples=1000,200", "hydra.sweep.dir=s"],
    ["replicas=100000", "hydra.run.dir=r"],
    ["data=cifar10", "data.root=nothing"],
    ["-m", "+launcher=population", "hydra.launcher.member_budget=-3", "init=he,zero"],
], ids=["unknown option", "bad combination in a sweep", "too many replicas", "missing files", "launcher option"])
def test_a_refused_command_line_answers_without_importing_torch(tmp_path, args):
    """The start-up checks need no torch (seconds of import): bad input is answered at once."""
    proc = run_python("-c", MAIN_THEN_TORCH_IMPORTED, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("initopt.train: error: ") and proc.stderr.strip().count("\n") == 0
    assert proc.stdout.strip() == "torch imported: False"
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


# ``python -c`` this, then the command line: main, then whether torch was imported and how many
# objects the garbage collector was told to leave alone (gc.freeze)
MAIN_THEN_FROZEN = """
import gc, sys
from initopt.train import main
try:
    main()
finally:
    print("torch imported:", "torch" in sys.modules, "frozen:", gc.get_freeze_count() > 10000)
"""


@pytest.mark.parametrize(("args", "trains"), [(["--help"], False), (["--cfg", "job"], False),
                                              (["steps=2", "model.hidden=[4]", "hydra.run.dir=r"], True)])
def test_a_training_command_freezes_what_outlives_it_and_a_help_command_imports_no_torch(tmp_path, args, trains):
    """Torch is imported with the collector paused and the objects alive then frozen (no full
    collection walks them again, nor Python's exit); a command that only shows something imports
    no torch at all."""
    proc = run_python("-c", MAIN_THEN_FROZEN, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"torch imported: {trains} frozen:") and (last.endswith("True") or not trains)


def test_missing_dataset_files_fail_fast_with_where_to_put_them(tmp_path):
    proc = run_cli("data=cifar10", f"data.root={tmp_path}/nothing", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert f"{tmp_path}/nothing/cifar-10-batches-py" in proc.stderr  # the folder the code reads
    assert "data.download=true" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
