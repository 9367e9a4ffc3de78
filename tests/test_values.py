"""A config's values as plain data: read like the config, once per sweep job, builtins when copied."""

from __future__ import annotations

import pickle

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from initopt.values import Values, plain_copy, values_of


def test_values_read_like_the_config_with_interpolations_resolved():
    cfg = OmegaConf.create({"optim": {"name": "sgd", "lr": 0.1}, "steps": 10, "eval_every": "${steps}",
                            "model": {"hidden": [8, 4]}})
    values = values_of(cfg)
    assert values.optim.lr == values["optim"]["lr"] == 0.1
    assert values.eval_every == 10  # resolved
    assert values.model.hidden == [8, 4] and isinstance(values.model, Values)
    assert values.optim.get("beta", 0.5) == 0.5 and "lr" in values.optim
    with pytest.raises(AttributeError):
        getattr(values.optim, "beta")  # noqa: B009 (the attribute read is the test)


def test_a_missing_value_fails_as_reading_it_from_the_config_does():
    cfg = OmegaConf.create({"optim": {"lr": "???"}})
    with pytest.raises(MissingMandatoryValue):
        values_of(cfg)


def test_a_plain_copy_is_builtins_only_and_independent():
    values = values_of(OmegaConf.create({"data": {"name": "moons", "sigmas": [3.0, 0.3]}, "seed": 1}))
    copied = plain_copy(values)
    assert copied == values and type(copied) is dict and type(copied["data"]) is dict
    copied["data"]["sigmas"].append(1.0)
    assert values.data.sigmas == [3.0, 0.3]
    # a checkpoint's weights-only load accepts builtins only: no initopt class may be pickled
    assert b"initopt" not in pickle.dumps(copied) and b"initopt" in pickle.dumps(values)


def test_a_sweep_jobs_values_are_read_once_per_process():
    from initopt.checks import compose_master
    from initopt.compose import JobConfigs, sweep_jobs

    loader, master = compose_master(["init=he", "optim.lr=0.1,0.2", "steps=3"], multirun=True)
    composer = JobConfigs()
    job_cfgs = [composer.task_config(loader, master, job)[0] for job in sweep_jobs(loader, master)]
    assert [composer.values(c).optim.lr for c in job_cfgs] == [0.1, 0.2]
    assert composer.values(job_cfgs[0]) is composer.values(job_cfgs[0])  # one read a job
    other = OmegaConf.create({"seed": 1})  # any other config: read anew, nothing kept
    assert composer.values(other) == {"seed": 1} and composer.values(other) is not composer.values(other)


def test_a_runs_config_is_frozen_and_its_values_read_once():
    """A single run's config (from Hydra, changeable) is taken read-only once by its plan; its
    values are then read once, and its members' configs, merged from it, are read-only too."""
    from initopt.compose import JobConfigs, frozen

    cfg = OmegaConf.create({"seed": 1, "replicas": 2})
    run_cfg = frozen(cfg)
    assert run_cfg is not cfg and OmegaConf.is_readonly(run_cfg) and not OmegaConf.is_readonly(cfg)
    assert frozen(run_cfg) is run_cfg
    composer = JobConfigs()
    assert composer.values(run_cfg) is composer.values(run_cfg)
    member = OmegaConf.merge(run_cfg, {"seed": 2, "replicas": 1})
    assert composer.values(member) is composer.values(member) and composer.values(member).seed == 2



def test_a_literal_jobs_values_and_yaml_are_its_bases_with_its_own_values_put_in(monkeypatch):
    """A job whose base and values hold no interpolation: its values are its base's (read once) with
    the values it sets read from it, and its YAML is written item by item from them; a job with an
    interpolation is read whole. Either way the same as reading the job's config itself."""
    from initopt import compose
    from initopt.checks import compose_master
    from initopt.compose import JobConfigs, sweep_jobs

    loader, master = compose_master(["init=he,zero", "optim.lr=1,0.5", "model.hidden=[3],[4,5]", "+x=3,${seed}"],
                                    multirun=True)
    composer = JobConfigs()
    jobs = [composer.task_config(loader, master, job)[0] for job in sweep_jobs(loader, master)]
    expected = [(values_of(c), OmegaConf.to_yaml(c)) for c in jobs]
    read_whole = []
    monkeypatch.setattr(compose, "values_of", lambda c: read_whole.append(c) or values_of(c))
    got = [(composer.values(c), composer.config_yaml(c)) for c in jobs]
    assert got == expected
    assert [repr(v) for v, _ in got] == [repr(v) for v, _ in expected]  # 1.0 stays 1.0, not 1
    assert len(read_whole) == len(jobs) // 2 and all(OmegaConf.is_interpolation(c, "x") for c in read_whole)
    whole = {id(c) for c in read_whole}  # only the interpolated half was read whole
    literal = [v for (v, _), c in zip(got, jobs) if id(c) not in whole]
    assert len(literal) == len(jobs) // 2 and all(v.optim.lr in (1.0, 0.5) and type(v.optim.lr) is float
                                                     for v in literal)
    assert literal[0].data is literal[1].data  # what a job does not set is its base's, shared
