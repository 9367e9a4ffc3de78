"""The engine: every member of a population equals a separate torch.optim run with its settings."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from initopt import engine
from initopt.checks import compose_job
from initopt.data import BatchSampler, load_dataset
from initopt.engine.population import member_losses
from initopt.optim import build_optimizer

CPU = torch.device("cpu")
OPTIMS = [
    ["optim=sgd"],
    ["optim=momentum", "optim.form=ema"],
    ["optim=momentum", "optim.form=heavy_ball", "optim.lr=0.01"],
    ["optim=adam", "optim.fused=false"],
    ["optim=adam", "optim.fused=true"],
    ["optim=adam", "optim.weight_decay=0.01"],
    ["optim=momentum", "optim.weight_decay=0.05"],
]


def compose(*overrides: str):
    return compose_job(["dtype=float64", "steps=60", "eval_every=20", "log_every=1", *overrides])


def torch_optim_run(cfg, data, member: engine.Member, steps: int) -> dict[str, torch.Tensor]:
    """The reference: one plain nn.Module, torch.optim, the member's own seed and batch order."""
    model = engine.seeded_model(cfg.model, member.init, member.seed, data.n_features, data.n_outputs, torch.float64)
    optimizer = build_optimizer(model.parameters(), member.optim)
    sampler = BatchSampler(len(data.x_train), cfg.batch_size, [member.seed], CPU)
    for _ in range(steps):
        idx = sampler.next_indices()
        x, y = (data.x_train, data.y_train) if idx is None else (data.x_train[idx[0]], data.y_train[idx[0]])
        loss = member_losses(model(x).unsqueeze(0), y.unsqueeze(0), data.num_classes).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {n: p.detach() for n, p in model.named_parameters()}


def assert_members_equal_separate_runs(cfg, data, members, mode="stacked"):
    training = engine.build(cfg, data, members, mode)
    result = training.fit()
    assert result.steps_done == cfg.steps and all(d is None for d in result.diverged)
    for k, member in enumerate(members):
        expected = torch_optim_run(cfg, data, member, cfg.steps)
        for name, tensor in training.population.member_state_dict(k).items():
            torch.testing.assert_close(tensor, expected[name], rtol=1e-10, atol=1e-12)
    return training, result


@pytest.mark.parametrize("mode", ["stacked", "vmap"])
@pytest.mark.parametrize("optim", OPTIMS, ids=lambda o: " ".join(o))
def test_each_seed_equals_a_separate_torch_optim_run(optim, mode):
    cfg = compose(*optim)
    data = load_dataset(cfg.data, CPU, torch.float64)
    assert_members_equal_separate_runs(cfg, data, engine.members_of(cfg, [0, 1, 5]), mode)


def member(cfg, seed: int, **changes) -> engine.Member:
    init = OmegaConf.merge(cfg.init, changes.get("init", {}))
    optim = OmegaConf.merge(cfg.optim, changes.get("optim", {}))
    return engine.Member(seed, init, optim)


def init_cfg(name: str, **params):
    return compose(f"init={name}", *(f"init.{k}={v}" for k, v in params.items())).init


def optim_cfg(name: str, **params):
    return compose(f"optim={name}", *(f"optim.{k}={v}" for k, v in params.items())).optim


@pytest.mark.parametrize("family", ["sgd", "adam"])
def test_members_may_differ_in_init_seed_and_every_optimizer_hyperparameter(family):
    cfg = compose("optim=adam" if family == "adam" else "optim=sgd")
    data = load_dataset(cfg.data, CPU, torch.float64)
    inits = [init_cfg("zero"), init_cfg("normal", std=0.3), init_cfg("xavier", gain=2.0),
             init_cfg("he", mode="fan_out")]
    if family == "adam":
        optims = [optim_cfg("adam", lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd)
                  for lr, b1, b2, eps, wd in [(1e-3, 0.9, 0.999, 1e-8, 0), (3e-2, 0.5, 0.99, 1e-6, 0.01),
                                              (1e-2, 0.0, 0.9, 1e-4, 0), (3e-3, 0.95, 0.9999, 1e-8, 0.1)]]
    else:
        optims = [optim_cfg("sgd", lr=0.3), optim_cfg("momentum", lr=0.5, beta=0.1, form="ema"),
                  optim_cfg("momentum", lr=0.02, beta=0.3, form="heavy_ball", weight_decay=0.01),
                  optim_cfg("sgd", lr=0.01, weight_decay=0.1)]
    members = [engine.Member(seed, i, o) for seed, i, o in zip([0, 3, 3, 9], inits, optims)]
    assert_members_equal_separate_runs(cfg, data, members)


def test_ten_classes_and_full_batch_work_the_same_way():
    cfg = compose("data=digits", "model.hidden=[16]", "batch_size=1347", "optim=adam")
    data = load_dataset(cfg.data, CPU, torch.float64)
    assert_members_equal_separate_runs(cfg, data, engine.members_of(cfg, [0, 3]))


def test_a_diverging_member_is_frozen_where_it_diverged_and_the_others_go_on():
    cfg = compose("optim=sgd", "steps=40", "flush_every=10", "eval_every=10")
    data = load_dataset(cfg.data, CPU, torch.float64)
    members = [member(cfg, 0), member(cfg, 0, optim={"lr": 1e200}), member(cfg, 1)]
    training = engine.build(cfg, data, members)
    result = training.fit()
    assert result.diverged[0] is None and result.diverged[2] is None
    assert result.diverged[1] is not None and result.diverged[1] <= 10
    assert result.status(1) == "diverged" and result.status(0) == "ok"
    frozen = training.population.member_state_dict(1)
    assert all(torch.isfinite(t).all() for t in frozen.values())
    for k in (0, 2):
        expected = torch_optim_run(cfg, data, members[k], cfg.steps)
        for name, tensor in training.population.member_state_dict(k).items():
            torch.testing.assert_close(tensor, expected[name], rtol=1e-10, atol=1e-12)


def test_evaluation_starts_at_initialization():
    cfg = compose("steps=40", "eval_every=20")
    data = load_dataset(cfg.data, CPU, torch.float64)
    result = engine.build(cfg, data).fit()
    assert [s for s, _ in result.histories[0]] == [0, 20, 40]


def test_the_model_is_initialized_on_the_cpu_then_moved(monkeypatch):
    """Same seed, same weights on every device: init draws happen before the move."""
    cfg = compose()
    data = load_dataset(cfg.data, CPU, torch.float64)
    devices_at_init = []
    real_normal = torch.nn.init.kaiming_normal_

    def spy(tensor, *args, **kwargs):
        devices_at_init.append(tensor.device.type)
        return real_normal(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", spy)
    training = engine.build(cfg, data, engine.members_of(cfg, [4]))
    assert devices_at_init and set(devices_at_init) == {"cpu"}
    plain = engine.seeded_model(cfg.model, cfg.init, 4, data.n_features, data.n_outputs, torch.float64)
    for name, tensor in plain.named_parameters():
        assert torch.equal(training.population.member_state_dict(0)[name], tensor.detach())
