"""The homework grid through Hydra's joblib (local parallel), submitit_local and initopt's population launchers."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import pytest
from conftest import read_metrics, run_cli

GRID = ["init=zero,normal,xavier,he", "optim=sgd,momentum,adam"]


@pytest.mark.parametrize("launcher", [pytest.param("joblib", marks=pytest.mark.slow),  # third-party: -m slow
                                      pytest.param("submitit_local", marks=pytest.mark.slow), "population"])
def test_the_homework_grid_runs_through_the_launcher(tmp_path, launcher):
    proc = run_cli("-m", f"+launcher={launcher}", *GRID, "steps=20", "model.hidden=[8]",
                   "hydra.sweep.dir=grid", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {p.name: read_metrics(p) for p in (tmp_path / "grid").iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name != "groups"}
    expected = {f"init={i},optim={o}"
                for i, o in itertools.product(["zero", "normal", "xavier", "he"], ["sgd", "momentum", "adam"])}
    assert set(jobs) == expected  # neither the launcher nor the unswept keys are in run names
    assert all(m["status"] == "ok" and m["steps_done"] == 20 for m in jobs.values())


# ------------------------------------------------------------------ composition, once per job
# The contract of initopt.hydra_compat: what initopt derives from Hydra's private steps equals what
# Hydra composes itself, job by job, over every config group and kind of override.
SWEEPS = {
    "init x optim x values": ["init=zero,he", "optim=sgd,adam", "optim.lr=0.01,0.1", "seed=0,1",
                              "model.hidden=[8],[4,4]", "steps=7"],
    "model x data x optim form": ["model=tanh,deep", "data=circles,digits", "init=normal,xavier",
                                  "optim=momentum", "optim.form=ema,heavy_ball"],
    "experiment (its sweep in hydra.sweeper.params)": ["+experiment=dlai_init,dlai_optim", "seed=5,6"],
    "launcher, hydra key": ["+launcher=population", "hydra.launcher.member_budget=2", "init=he,xavier",
                            "seed=0,1"],
    "+, ++ and ~ overrides": ["~hydra.callbacks.tensorboard_hparams", "+data.extra=1,2", "++seed=3,4",
                              "optim=adam,sgd"],
    "a group deleted": ["~model", "optim=adam,sgd", "seed=0,1"],
}


def hydra_loader_and_master(sweep: list[str]):
    from initopt.checks import compose_master

    return compose_master(sweep, multirun=True)  # as Hydra composes it (hydra.mode=MULTIRUN added)


def comparable(cfg) -> str:
    from omegaconf import OmegaConf, open_dict, read_write

    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.cwd = ""  # the composing process's working directory
    return OmegaConf.to_yaml(cfg)


@pytest.mark.parametrize("sweep", SWEEPS.values(), ids=SWEEPS.keys())
def test_the_fast_composition_equals_hydras_for_every_job(sweep):
    from omegaconf import OmegaConf

    from initopt.compose import JobConfigs, sweep_jobs
    from initopt.values import values_of

    loader, master = hydra_loader_and_master(sweep)
    jobs = sweep_jobs(loader, master)
    assert len(jobs) >= 4
    composer = JobConfigs()
    for job in jobs:
        hydra = loader.load_sweep_config(master, job)
        fast = composer.compose(loader, master, job)
        assert comparable(fast) == comparable(hydra), job
        task, choices = composer.task_config(loader, master, job)
        assert OmegaConf.to_yaml(task) == OmegaConf.to_yaml(_task(hydra)), job
        hydras_task = _task(hydra)
        OmegaConf.set_readonly(hydras_task, True)  # a job's config is shared read-only
        assert list(_nodes(task)) == list(_nodes(hydras_task)), job  # flags and schema types too
        assert choices == dict(hydra.hydra.runtime.choices)
        assert composer.config_yaml(task) == OmegaConf.to_yaml(hydras_task), job  # .hydra/config.yaml
        if not OmegaConf.is_missing(hydras_task, "model"):  # (a job with a group deleted cannot be read)
            assert composer.values(task) == values_of(hydras_task), job
    assert composer.compositions <= len(jobs)  # at most one per set of config-group choices (the next tests)


@pytest.mark.parametrize("sweep", SWEEPS.values(), ids=SWEEPS.keys())
def test_the_sharing_loader_composes_every_job_as_hydras_own_loader(sweep):
    """initopt's loader (files read once, leading merges shared between compositions: the
    population launcher's and, given to ``@hydra.main``, plain multirun's) composes each job of a
    sweep node for node as Hydra's own ``ConfigLoaderImpl`` does (every third job compared: Hydra's
    own takes ~0.25 s a composition)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from omegaconf import OmegaConf

    from initopt.compose import sweep_jobs

    loader, master = hydra_loader_and_master(sweep)
    hydras_own = ConfigLoaderImpl(config_search_path=loader.config_search_path)
    for i, job in enumerate(sweep_jobs(loader, master)):
        shared = loader.load_sweep_config(master, job)
        if i % 3 == 0:
            expected = hydras_own.load_sweep_config(master, job)
            for cfg in (shared, expected):
                OmegaConf.clear_cache(cfg)
            assert comparable(shared) == comparable(expected), job
            assert list(_nodes(shared)) == list(_nodes(expected)), job


def _task(cfg):
    from omegaconf import open_dict, read_write

    cfg = cfg.copy()
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


def test_each_structural_set_is_composed_once_and_values_are_applied():
    from initopt.compose import JobConfigs, sweep_jobs

    loader, master = hydra_loader_and_master(SWEEPS["init x optim x values"])
    composer = JobConfigs()
    for job in sweep_jobs(loader, master):
        composer.task_config(loader, master, job)
        composer.compose(loader, master, job)
    # init x optim, 2 x 2 combinations: (zero, sgd), (zero, adam), (he, sgd) composed by Hydra, (he, adam)
    # assembled from them; the values applied to each
    assert (composer.compositions, composer.assembled) == (3, 1)


def test_a_grid_of_group_options_is_composed_once_per_option_and_assembled():
    """4 inits x 3 optimizers: each option composed once (4 + 3 - 1 = 6 compositions), the other 6
    combinations assembled, every one equal to Hydra's; an option that writes outside its own node
    (an experiment, ``@package _global_``) is always left to Hydra."""
    from initopt.compose import JobConfigs, sweep_jobs

    loader, master = hydra_loader_and_master(["init=zero,normal,xavier,he", "optim=sgd,momentum,adam"])
    composer = JobConfigs()
    jobs = sweep_jobs(loader, master)
    for job in jobs:
        composer.task_config(loader, master, job)
    assert (composer.compositions, composer.assembled) == (6, 6)
    for job in jobs[4::3]:  # assembled ones (Hydra's own composition is slow: a sample)
        assert comparable(composer.compose(loader, master, job)) == comparable(loader.load_sweep_config(master, job))

    loader, master = hydra_loader_and_master(["+experiment=dlai_init,dlai_optim", "optim=sgd,adam"])
    composer = JobConfigs()
    for job in sweep_jobs(loader, master):
        composer.task_config(loader, master, job)
    assert composer.assembled == 0


def test_a_jobs_values_are_applied_from_the_longest_run_of_leading_values_two_jobs_share(monkeypatch):
    """Jobs of one base share their leading values; the config after such a run is kept (from the
    second job that applies it) and later jobs apply only the rest, equal to Hydra's all the same."""
    from initopt import hydra_compat
    from initopt.compose import JobConfigs, sweep_jobs

    loader, master = hydra_loader_and_master(["model.hidden=[8]", "steps=3", "optim.lr=0.1,0.2", "seed=0,1,2"])
    applied = []
    apply = hydra_compat.apply_value_overrides
    monkeypatch.setattr(hydra_compat, "apply_value_overrides", lambda o, c: applied.append(len(o)) or apply(o, c))
    composer = JobConfigs()
    jobs = sweep_jobs(loader, master)
    tasks = [composer.task_config(loader, master, job)[0] for job in jobs]
    # 4 values a job: the 1st and 2nd job apply all 4, the 3rd its seed; lr=0.2's first two apply
    # lr and seed, the last its seed: 14 applications, not 24
    assert sum(applied) == 4 + 4 + 1 + 2 + 2 + 1
    for job, task in zip(jobs, tasks):
        assert list(_nodes(task)) == list(_nodes(_readonly(_task(loader.load_sweep_config(master, job))))), job


def _readonly(cfg):
    from omegaconf import OmegaConf

    OmegaConf.set_readonly(cfg, True)
    return cfg


def test_a_hydra_value_added_after_composing_updates_the_bases_without_composing_again():
    """The HParams callback adds the run names' exclude_keys after the start-up checks composed
    every job: the launcher's configs must equal Hydra's under the new master, at no new composition."""
    from omegaconf import open_dict, read_write

    from initopt.compose import JobConfigs, sweep_jobs

    loader, master = hydra_loader_and_master(SWEEPS["init x optim x values"])
    composer = JobConfigs()
    jobs = sweep_jobs(loader, master)
    for job in jobs:
        composer.task_config(loader, master, job)
    with read_write(master.hydra), open_dict(master.hydra):
        master.hydra.overrides.hydra.append("hydra.job.config.override_dirname.exclude_keys=[steps,seed]")
        master.hydra.job.config.override_dirname.exclude_keys = ["steps", "seed"]
    sample = jobs[::3]  # a third of the jobs (Hydra's composition is slow), yet every base and every value:
    assert {tuple(o for o in job if o.startswith(("init=", "optim="))) for job in sample} == \
        {tuple(o for o in job if o.startswith(("init=", "optim="))) for job in jobs}
    assert set().union(*sample) == set().union(*jobs)
    for job in sample:
        assert comparable(composer.compose(loader, master, job)) == \
            comparable(loader.load_sweep_config(master, job)), job
    assert (composer.compositions, composer.assembled, composer.patched) == (3, 1, 4)
    assert "seed" not in composer.compose(loader, master, jobs[0]).hydra.job.override_dirname


def _nodes(cfg, path=""):
    """Every node of a config: (path, its metadata (flags, types, key), its value if a leaf)."""
    from omegaconf import DictConfig, ListConfig

    content = cfg._content if isinstance(cfg, (DictConfig, ListConfig)) else cfg._value()
    leaf = not isinstance(content, (dict, list))
    yield path, cfg._metadata, content if leaf else None
    if not leaf:
        for key, node in (content.items() if isinstance(content, dict) else enumerate(content)):
            yield from _nodes(node, f"{path}.{key}")


def test_a_bases_copy_is_a_deep_copy_node_for_node():
    """Each job's config starts as a copy of its base, unpickled (5x faster than ``copy.deepcopy``),
    and whole configs are copied by pickling: the same values, flags (struct, read-only), schema
    types and keys at every node."""
    import copy

    from omegaconf import OmegaConf

    from initopt import compose
    from initopt.compose import JobConfigs, sweep_jobs

    loader, master = hydra_loader_and_master(SWEEPS["model x data x optim form"][:3])
    composer = JobConfigs()
    composer.task_config(loader, master, sweep_jobs(loader, master)[0])
    (base,) = composer._bases.values()
    copied = base.task_copy()
    assert copied is not base.task and list(_nodes(copied)) == list(_nodes(copy.deepcopy(base.task)))
    whole = compose.copied(base.cfg)  # Hydra's node too (interpolations, resolvers, its flags)
    assert whole is not base.cfg and list(_nodes(whole)) == list(_nodes(copy.deepcopy(base.cfg)))
    assert OmegaConf.is_struct(copied) and OmegaConf.get_type(copied.optim).__name__ == "MomentumConfig"
    copied.optim.lr = 0.5  # a copy: the base is untouched
    assert base.task.optim.lr != 0.5


@functools.cache
def _a_job_config():
    from initopt.checks import compose_job

    return compose_job(["init=xavier", "optim=adam", "data=circles", "model.hidden=[16,8]"])


@pytest.mark.parametrize("value", ["plain", "42", "true", "a: b", "x" * 300 + " y", "back\\slash 'q' \"d\"",
                                   "hé", "日本", "tab\there", "line\nbreak", "nel\x85", "", None, 3, 2.5e-07, True])
def test_yaml_text_equals_omegaconfs(value):
    """``initopt.yamltext`` (libyaml's emitter for printable ASCII, OmegaConf's dumper otherwise)
    writes what ``OmegaConf.to_yaml`` writes, byte for byte: a job's config, and any value in it."""
    from omegaconf import OmegaConf

    from initopt import yamltext

    cfg = _a_job_config()
    assert yamltext.config_yaml(cfg) == OmegaConf.to_yaml(cfg)
    nested = {"hydra": {"job": {"value": value, "list": [value, {"k": value}], "empty": [], "none": {}}}}
    assert yamltext.plain_yaml(nested) == OmegaConf.to_yaml(nested)
    items = {"a": value, "b": [value], "c": {}, "d": nested, "e": 1, "f": 1.0, "g": "1"}
    assert yamltext.mapping_yaml(items) == yamltext.mapping_yaml(items) == OmegaConf.to_yaml(items)  # item by item
    assert yamltext.plain_yaml([value]) == OmegaConf.to_yaml(OmegaConf.create([value]))


@pytest.mark.parametrize("text", ["lr: 1e-3\nb: 1.5e+2\nc: .5\nd: 1_000\ne: 0x1f\nf: 2026-12-03\ng: .inf\n",
                                  "a: ${b}\nb: ???\nc: [1, {d: null}]\ne: 'yes'\nf: yes\ng: ~\n", "- x=1\n- y\n",
                                  "", "plain text\n", "path: !!python/object/apply:pathlib.Path [a, b]\n"])
def test_yaml_read_back_equals_omegaconfs(tmp_path, text):
    """``initopt.yamltext.load_plain`` (libyaml's parser, OmegaConf's loader's rules) reads what
    ``OmegaConf.load`` reads, as plain data: floats without a dot, no timestamps, interpolations as text."""
    from omegaconf import OmegaConf

    from initopt import yamltext

    path = tmp_path / "f.yaml"
    path.write_text(text)
    assert yamltext.load_plain(path) == OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def test_yaml_read_back_refuses_duplicate_keys_as_omegaconf_does(tmp_path):
    import yaml

    from initopt import yamltext

    path = tmp_path / "f.yaml"
    path.write_text("a: 1\nb:\n  c: 2\n  c: 3\n")
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key c"):
        yamltext.load_plain(path)


def test_a_sweeps_hydra_files_read_back_equal_omegaconfs(tmp_path):
    from omegaconf import OmegaConf

    from initopt import yamltext

    done = run_cli("-m", "+launcher=population", "init=he,zero", "optim.lr=1e-3,0.1", "model.hidden=[8]", "steps=2",
                   "hydra.sweep.dir=sw", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    files = sorted(tmp_path.glob("sw/*/.hydra/*.yaml")) + [tmp_path / "sw" / "multirun.yaml"]
    assert len(files) == 4 * 3 + 1
    for path in files:
        assert yamltext.load_plain(path) == OmegaConf.to_container(OmegaConf.load(path), resolve=False), path


@pytest.mark.parametrize("value", [0, 7, 599, -3, 10**20, True, "0", "599", "007", "089", "-1", "1_000", "+1",
                                   "\u0663", "1e3", "", "12a", "plain", ["a=1", "b=2"]])
def test_a_hydra_yaml_piece_is_the_lines_omegaconf_writes_for_it(value):
    """A job's own values in ``hydra.yaml`` (its number and id written directly, anything else
    dumped) are the lines ``OmegaConf.to_yaml`` writes for them in the whole file."""
    from omegaconf import OmegaConf

    from initopt.jobstart import yaml_at

    for path in (("job", "num"), ("job", "id"), ("mode",)):
        nested = value
        for key in reversed(path):
            nested = {key: nested}
        whole = OmegaConf.to_yaml({"hydra": nested, "after": 1})
        assert whole == "hydra:\n" + "".join(f"  {k}:\n" for k in path[:-1]) + yaml_at(path, value) + "after: 1\n"


# ------------------------------------------------------------- the launcher's per-job files
SMALL = ["steps=2", "model.hidden=[4]", "eval_every=2", "act_every=0", "hist_every=0", "param_every=0"]


class _NoCallbacks:
    def on_job_start(self, **kwargs) -> None: ...

    def on_job_end(self, **kwargs) -> None: ...


def hydra_files_by_run_job(sweep: list[str], job: list[str], idx: int) -> dict[str, bytes]:
    """The ``.hydra/`` files Hydra's own ``run_job`` writes for one job of ``sweep`` (basic launcher's steps)."""
    from hydra.core.utils import run_job
    from hydra.types import HydraContext
    from omegaconf import open_dict

    from initopt.checks import compose_master

    loader, master = compose_master(sweep, multirun=True)
    _name_runs(loader, master)  # what the HParams callback does first
    config = loader.load_sweep_config(master, job)
    with open_dict(config):
        config.hydra.job.id = idx
        config.hydra.job.num = idx
    ret = run_job(hydra_context=HydraContext(config_loader=loader, callbacks=_NoCallbacks()),
                  task_function=lambda cfg: None, config=config, job_dir_key="hydra.sweep.dir",
                  job_subdir_key="hydra.sweep.subdir", configure_logging=False)
    folder = Path(ret.hydra_cfg.hydra.runtime.output_dir) / ".hydra"
    return {f.name: f.read_bytes() for f in folder.iterdir()}


def _name_runs(loader, master) -> None:
    from initopt.callbacks import name_runs_by_swept_keys
    from initopt.compose import sweep_overrides

    name_runs_by_swept_keys(master, sweep_overrides(loader, master))


@pytest.mark.parametrize("subdir", [[], pytest.param(["hydra.sweep.subdir=job${hydra.job.num}"],
                                                     marks=pytest.mark.slow)],
                         ids=["run names (the fast way)", "another subdir (the general way)"])
def test_the_launchers_hydra_files_are_byte_equal_to_run_jobs(tmp_path, monkeypatch, subdir):
    from initopt.compose import JOBS, sweep_jobs

    sweep = ["+launcher=population", "init=zero,he", "optim=sgd,adam", "optim.lr=0.1,0.2", *SMALL,
             "hydra.sweep.dir=s", *subdir]
    proc = run_cli("-m", *sweep, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = {}
    for folder in (tmp_path / "s").glob("*/.hydra"):
        written[folder.parent.name] = {f.name: f.read_bytes() for f in folder.iterdir()}
        for f in folder.iterdir():
            f.unlink()
    assert len(written) == 8
    monkeypatch.chdir(tmp_path)  # Hydra records the working directory
    JOBS.clear()
    from initopt.checks import compose_master

    loader, master = compose_master(sweep, multirun=True)
    for idx, job in enumerate(sweep_jobs(loader, master)):
        by_hydra = hydra_files_by_run_job(sweep, job, idx)
        name = next(n for n, files in written.items() if files["overrides.yaml"] == by_hydra["overrides.yaml"])
        assert written[name] == by_hydra, name


def test_each_jobs_train_log_holds_its_own_lines(tmp_path):
    proc = run_cli("-m", "+launcher=population", "init=zero,he", "seed=0,1", *SMALL, "hydra.sweep.dir=s",
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [p for p in (tmp_path / "s").iterdir() if p.is_dir() and p.name != "groups"]
    assert len(jobs) == 4
    for job in jobs:
        launch, outcome = (job / "train.log").read_text().splitlines()
        assert set(job.name.split(",")) <= set(launch.split(" : ", 1)[1].split()), (job.name, launch)
        assert "finished: test accuracy" in outcome


def test_an_untested_hydra_version_is_refused_in_one_line():
    from initopt.hydra_compat import UntestedHydra, check_version

    check_version("1.3.8")
    with pytest.raises(UntestedHydra) as info:
        check_version("1.4.0")
    assert "\n" not in str(info.value) and "hydra-core 1.4.0" in str(info.value) and "1.3.x" in str(info.value)


def test_the_loaders_of_a_process_share_files_and_compositions_and_compose_as_hydra_does(monkeypatch):
    """initopt's config loaders (the start-up checks' and, through ``share_hydras_compositions``,
    Hydra's own) share one repository per primary config: a later composition reads no file again,
    merges only what follows the leading configs it shares with earlier ones, and a command line's
    config composed twice is composed once. Every composition equals Hydra's own loader's node for
    node, and each is its own copy; a command line that sets hydra.searchpath is composed Hydra's way."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from initopt import hydra_compat
    from initopt.config import register_schemas

    register_schemas()
    hydra_compat.clear_shared()
    reads, merges, composed = [], [], []
    monkeypatch.setattr(ConfigRepository, "load_config", counting(ConfigRepository.load_config, reads))
    monkeypatch.setattr(ConfigLoaderImpl, "_load_single_config",
                        counting(ConfigLoaderImpl._load_single_config, merges))
    monkeypatch.setattr(ConfigLoaderImpl, "_load_configuration_impl",
                        counting(ConfigLoaderImpl._load_configuration_impl, composed))
    checks, hydras = hydra_compat.config_loader("pkg://initopt.conf"), hydra_compat.config_loader("pkg://initopt.conf")
    hydras_own = ConfigLoaderImpl(config_search_path=create_config_search_path("pkg://initopt.conf"))

    def compose(loader, overrides, validate=True):
        reads.clear(), merges.clear(), composed.clear()
        return loader.load_configuration("train", overrides, run_mode=RunMode.MULTIRUN,
                                         validate_sweep_overrides=validate)

    def same_as_hydras(cfg, overrides):
        expected = hydras_own.load_configuration("train", overrides, run_mode=RunMode.MULTIRUN)
        for c in (cfg, expected):
            OmegaConf.clear_cache(c)  # ${now:...} as resolved at each composition's second
        return comparable(cfg) == comparable(expected) and list(_nodes(cfg)) == list(_nodes(expected))

    first = compose(checks, ["init=he", "optim=adam", "hydra.mode=MULTIRUN"])
    assert reads and len(merges) > 10 and composed
    every = len(merges)
    first.optim.lr = 123.0  # a composition's config is its own
    again = compose(hydras, ["init=he", "optim=adam", "hydra.mode=MULTIRUN"], validate=False)
    assert not composed and again.optim.lr != 123.0  # composed once: a new copy of the first
    assert compose(hydras, ["init=he", "optim=adam"], validate=False).hydra.mode is None  # other overrides
    assert composed and not reads  # composed anew, no file read again
    compose(hydras, ["init=he", "optim=sgd", "seed=4"])
    sgd = compose(hydras, ["init=he", "optim=momentum", "seed=4"])  # after the leading run init=he shares
    assert 0 < len(merges) < every / 2
    assert same_as_hydras(sgd, ["init=he", "optim=momentum", "seed=4"])
    assert same_as_hydras(compose(hydras, ["init=he", "optim=adam", "hydra.mode=MULTIRUN"]),
                          ["init=he", "optim=adam", "hydra.mode=MULTIRUN"])
    monkeypatch.setenv("INITOPT_TEST_VARIABLE", "1")  # what a composition reads besides files: anew
    compose(hydras, ["init=he", "optim=adam", "hydra.mode=MULTIRUN"])
    assert composed
    searchpath = compose(checks, ["hydra.searchpath=[pkg://initopt.conf]"])
    assert reads  # its own repository: files read anew
    assert searchpath.hydra.searchpath == ["pkg://initopt.conf"]


@pytest.mark.parametrize("choice", [None, "shared", "hydra"])
def test_hydra_main_is_given_the_sharing_loader_unless_the_environment_asks_for_hydras_own(monkeypatch, choice):
    from hydra._internal import hydra as hydra_module
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from initopt import hydra_compat

    monkeypatch.setattr(hydra_module, "ConfigLoaderImpl", ConfigLoaderImpl)  # restored after the test
    if choice is None:
        monkeypatch.delenv(hydra_compat.LOADER_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(hydra_compat.LOADER_VARIABLE, choice)
    hydra_compat.share_hydras_compositions()
    expected = ConfigLoaderImpl if choice == "hydra" else hydra_compat.SharingConfigLoader
    assert hydra_module.ConfigLoaderImpl is expected


def test_a_loaded_config_that_pickle_cannot_find_again_is_handed_out_as_loaded_and_read_anew(monkeypatch):
    """Hydra's plugin scan executes a plugin's module again (in a joblib worker, say): a config loaded
    before holds a schema dataclass that pickle no longer finds under its name. The loader keeps
    no copy of it, nor of a merge holding it: it hands it out as loaded and reads it anew when asked."""
    import dataclasses
    import pickle
    import sys
    import types

    from hydra.plugins.config_source import ConfigResult
    from omegaconf import OmegaConf

    from initopt import hydra_compat

    module = types.ModuleType("initopt_test_plugin")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    module.Conf = dataclasses.make_dataclass("Conf", [("x", int, 1)], namespace={"__module__": module.__name__})
    stale = OmegaConf.structured(module.Conf)
    module.Conf = dataclasses.make_dataclass("Conf", [("x", int, 1)], namespace={"__module__": module.__name__})
    with pytest.raises(pickle.PicklingError):  # the premise: pickle finds another class by that name
        pickle.dumps(stale)

    class Delegate:
        reads = 0

        def load_config(self, config_path):
            Delegate.reads += 1
            return ConfigResult(provider="test", path=config_path, config=stale, header={})

    repository = hydra_compat.CopyingRepository(Delegate())
    assert repository.load_config("sweeper/stale").config is stale
    assert repository.load_config("sweeper/stale").config is stale and Delegate.reads == 2
    merged = OmegaConf.create({"sweeper": stale})
    repository.keep_merged(("sweeper/stale",), merged)
    assert repository.merged_prefix(("sweeper/stale",))[0] == 0  # nothing kept: merged again when asked


def counting(function, calls: list):
    """``function``, noting each call in ``calls``."""
    @functools.wraps(function)
    def counted(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)
    return counted
