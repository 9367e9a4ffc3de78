"""The engine: every member of a population equals a separate run written with plain torch.

The reference run here shares nothing with the code under test but the initial weights:
an ``nn.Sequential`` of ``nn.Linear`` layers, batches sliced from ``torch.randperm`` with the
member's own generator, ``F.binary_cross_entropy_with_logits`` / ``F.cross_entropy`` and
``torch.optim`` built from the member's settings.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from initopt import engine
from initopt.checks import compose_job
from initopt.data import Dataset, load_dataset
from initopt.engine import checkpoint
from initopt.engine import loop as engine_loop

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
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def compose(*overrides: str):
    return compose_job(["dtype=float64", "steps=60", "eval_every=20", "log_every=1", *overrides])


# ------------------------------------------------------------------------------ the reference
def torch_optimizer(params, optim) -> torch.optim.Optimizer:
    """``torch.optim`` with the member's settings: EMA momentum z <- (1-b) z + b g, w <- w - lr z
    is SGD(lr b, momentum 1-b); heavy ball is SGD(lr, momentum 1-b)."""
    wd = optim.weight_decay
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                                weight_decay=wd, foreach=False)
    if optim.name == "momentum":
        lr = optim.lr * optim.beta if optim.form == "ema" else optim.lr
        return torch.optim.SGD(params, lr=lr, momentum=1 - optim.beta, weight_decay=wd, foreach=False)
    return torch.optim.SGD(params, lr=optim.lr, weight_decay=wd, foreach=False)


def torch_model(cfg, initial: dict[str, torch.Tensor]) -> nn.Sequential:
    """An nn.Sequential of the configured widths holding the given initial weights (in layer order)."""
    tensors = list(initial.values())
    widths = [tensors[0].shape[1]] + [w.shape[0] for w in tensors[::2]]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out, dtype=torch.float64))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[cfg.model.activation]())
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for p, t in zip(model.parameters(), tensors, strict=True):
            p.copy_(t)
    return model


def batches(n: int, batch_size: int, seed: int):
    """Slices of a fresh ``torch.randperm`` each epoch (the short last slice dropped); full batch
    when batch_size >= n."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        if batch_size >= n:
            yield None
            continue
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def reference_run(cfg, data: Dataset, member: engine.Member, initial: dict, steps: int):
    """The member trained alone for ``steps`` steps: (its weights by layer order, its optimizer)."""
    model = torch_model(cfg, initial)
    optimizer = torch_optimizer(model.parameters(), member.optim)
    order = batches(len(data.x_train), cfg.batch_size, member.seed)
    for _ in range(steps):
        idx = next(order)
        x, y = (data.x_train, data.y_train) if idx is None else (data.x_train[idx], data.y_train[idx])
        logits = model(x)
        if data.num_classes == 2:
            loss = F.binary_cross_entropy_with_logits(logits.squeeze(-1), y)
        else:
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [p.detach() for p in model.parameters()], optimizer


def assert_weights(got: dict[str, torch.Tensor], expected: list[torch.Tensor]) -> None:
    for (name, tensor), want in zip(got.items(), expected, strict=True):
        torch.testing.assert_close(tensor, want, rtol=1e-10, atol=1e-12, msg=name)


def initial_weights(training: engine.Training) -> list[dict[str, torch.Tensor]]:
    return [training.population.member_state_dict(k) for k in range(training.population.k)]


def assert_members_equal_separate_runs(cfg, data, members, mode="stacked"):
    training = engine.build(cfg, data, members, mode)
    initial = initial_weights(training)
    result = training.fit()
    assert result.steps_done == cfg.steps and all(d is None for d in result.diverged)
    for k, member in enumerate(members):
        expected, _ = reference_run(cfg, data, member, initial[k], cfg.steps)
        assert_weights(training.population.member_state_dict(k), expected)
    return training, result


# ---------------------------------------------------------------------------------- equality
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


@pytest.mark.parametrize("mode", ["stacked", "vmap"])
@pytest.mark.parametrize("family", ["sgd", "adam"])
def test_members_may_differ_in_init_seed_and_every_optimizer_hyperparameter(family, mode):
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
    assert_members_equal_separate_runs(cfg, data, members, mode)


@pytest.mark.parametrize("mode", ["stacked", "vmap"])
def test_adam_takes_torchs_fused_kernel_while_it_can_and_its_passes_otherwise(monkeypatch, mode):
    """A sweep over learning rates (betas and eps shared, every member alive) updates through
    torch's fused Adam kernel, one call a step; members with their own betas go through the
    ``_foreach`` passes; both equal torch.optim.Adam member by member."""
    calls = []
    real = torch._fused_adam_
    monkeypatch.setattr(torch, "_fused_adam_", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = compose("optim=adam", "steps=25", "optim.weight_decay=0.01")
    data = load_dataset(cfg.data, CPU, torch.float64)
    lr_sweep = [optim_cfg("adam", lr=lr, weight_decay=0.01) for lr in (1e-3, 1e-2, 3e-2)]
    assert_members_equal_separate_runs(cfg, data, [engine.Member(s, cfg.init, o) for s, o in enumerate(lr_sweep)],
                                       mode)
    assert len(calls) == cfg.steps
    calls.clear()
    betas = [optim_cfg("adam", lr=1e-2, beta1=b1) for b1 in (0.9, 0.5)]
    assert_members_equal_separate_runs(cfg, data, [engine.Member(s, cfg.init, o) for s, o in enumerate(betas)], mode)
    assert not calls


def test_ten_classes_and_full_batch_work_the_same_way():
    cfg = compose("data=digits", "model.hidden=[16]", "batch_size=1347", "optim=adam")
    data = load_dataset(cfg.data, CPU, torch.float64)
    assert_members_equal_separate_runs(cfg, data, engine.members_of(cfg, [0, 3]))


# -------------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("optim", [["optim=sgd"], ["optim=momentum", "optim.weight_decay=0.05"],
                                   ["optim=adam", "optim.weight_decay=0.01"]], ids=lambda o: " ".join(o))
def test_a_diverging_member_is_frozen_at_its_state_before_the_step_that_diverged(optim, monkeypatch):
    # the step's own finiteness check is under test: no early evaluation (after step 1) may see the
    # overflowing weights first
    monkeypatch.setattr(engine_loop, "EARLY_STEPS", ())
    cfg = compose(*optim, "steps=40", "flush_every=10", "eval_every=10")
    data = load_dataset(cfg.data, CPU, torch.float64)
    members = [member(cfg, 0), member(cfg, 0, optim={"lr": 1e200}), member(cfg, 1)]
    training = engine.build(cfg, data, members)
    initial = initial_weights(training)
    result = training.fit()
    assert result.diverged[0] is None and result.diverged[2] is None
    assert result.diverged[1] is not None and 1 < result.diverged[1] <= 10
    assert result.status(1) == "diverged" and result.status(0) == "ok"
    before, optimizer = reference_run(cfg, data, members[1], initial[1], result.diverged[1] - 1)
    assert_weights(training.population.member_state_dict(1), before)
    saved = training.member_state(1)["optimizer"]
    key = "exp_avg" if saved["family"] == "adam" else "momentum_buffer"
    if key in optimizer.state[optimizer.param_groups[0]["params"][0]]:
        expected = [optimizer.state[p][key] for p in optimizer.param_groups[0]["params"]]
        for got, want in zip(saved[key], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for k in (0, 2):
        expected, _ = reference_run(cfg, data, members[k], initial[k], cfg.steps)
        assert_weights(training.population.member_state_dict(k), expected)


def test_a_member_non_finite_at_initialization_keeps_its_initial_weights():
    """Its held-out loss overflows (float32) while its training batches are finite: diverged at
    step 0, never updated; a member with finite evaluations trains on beside it."""
    cfg = compose_job(["steps=30", "eval_every=10", "optim=sgd"])
    data = load_dataset(cfg.data, CPU, torch.float32)
    x_test = data.x_test.clone()
    x_test[0] = 3e38
    data = Dataset(data.x_train, data.y_train, x_test, data.y_test, data.num_classes)
    members = [member(cfg, 0), member(cfg, 1, init={"name": "zero"})]  # zero weights: finite logits
    training = engine.build(cfg, data, members)
    initial = initial_weights(training)
    result = training.fit()
    assert result.diverged == [0, None] and result.status(0) == "diverged"
    for name, tensor in training.population.member_state_dict(0).items():
        assert torch.equal(tensor, initial[0][name]), name
    assert not torch.equal(training.population.member_state_dict(1)["out.bias"], initial[1]["out.bias"])


def test_finite_float32_gradients_whose_norm_overflows_are_not_divergence():
    """Entries of ~1e20: each finite, their squares overflow float32 (a float32 norm is inf)."""
    cfg = compose_job(["steps=5", "eval_every=5", "optim=sgd", "optim.lr=1e-30"])
    data = load_dataset(cfg.data, CPU, torch.float32)
    data = Dataset(data.x_train * 1e20, data.y_train, data.x_test * 1e20, data.y_test, data.num_classes)
    training = engine.build(cfg, data)
    logits = training.population.forward(training.population.leaves, data.x_train[:64])
    loss = F.binary_cross_entropy_with_logits(logits.squeeze(-1), data.y_train[:64].unsqueeze(0))
    grads = torch.autograd.grad(loss, list(training.population.leaves.values()))
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    assert not all(torch.isfinite(torch.linalg.vector_norm(g)) for g in grads)  # the trap
    result = training.fit()
    assert result.diverged == [None] and result.steps_done == 5


# -------------------------------------------------------------------------------- checkpoints
def test_a_member_checkpointed_in_a_mixed_population_resumes_alone_or_in_another(tmp_path):
    """sgd + momentum members stopped at step 13 and saved one file each: each resumes as a
    single run, and two of them in a population of another size and order, and all end equal to
    their uninterrupted separate runs."""
    cfg = compose("optim=sgd", "steps=30", "eval_every=10")
    data = load_dataset(cfg.data, CPU, torch.float64)
    members = [member(cfg, 0), engine.Member(1, cfg.init, optim_cfg("momentum", lr=0.5, beta=0.2)),
               member(cfg, 2, optim={"lr": 0.05, "weight_decay": 0.01})]
    first = engine.build(cfg, data, members)
    initial = initial_weights(first)
    polls = iter(range(10**6))
    files = [tmp_path / f"m{k}.pt" for k in range(3)]

    def save(_state):
        for k, path in enumerate(files):
            checkpoint.save(path, [f"fp{k}"], first, members=[k])

    result = first.fit(stop_requested=lambda: next(polls) == 12, save_checkpoint=save)
    assert result.interrupted and result.steps_done == 13
    payloads = [checkpoint.load(path, [f"fp{k}"]) for k, path in enumerate(files)]
    assert [checkpoint.start_step(p) for p in payloads] == [13, 13, 13]

    groupings = [[0], [1], [2], [1, 0]]
    for grouping in groupings:
        resumed = engine.build(cfg, data, [members[k] for k in grouping])
        for slot, k in enumerate(grouping):
            checkpoint.restore(payloads[k], resumed, members=[slot])
        assert resumed.state.step == 13
        resumed.fit()
        for slot, k in enumerate(grouping):
            expected, _ = reference_run(cfg, data, members[k], initial[k], cfg.steps)
            assert_weights(resumed.population.member_state_dict(slot), expected)


def test_an_adam_member_keeps_its_own_step_count(tmp_path):
    """Bias corrections use the member's own Adam step: a member resumed at step 13 into a fresh
    population's slot ends as its separate run."""
    cfg = compose("optim=adam", "optim.fused=false", "steps=25", "eval_every=25")
    data = load_dataset(cfg.data, CPU, torch.float64)
    members = engine.members_of(cfg, [0, 1])
    first = engine.build(cfg, data, members)
    initial = initial_weights(first)
    polls = iter(range(10**6))
    first.fit(stop_requested=lambda: next(polls) == 12,
              save_checkpoint=lambda _s: checkpoint.save(tmp_path / "c.pt", ["fp"], first, members=[1]))
    payload = checkpoint.load(tmp_path / "c.pt", ["fp"])
    assert payload["members"][0]["optimizer"]["step"] == 13
    alone = engine.build(cfg, data, [members[1]])
    checkpoint.restore(payload, alone, members=[0])
    alone.fit()
    expected, _ = reference_run(cfg, data, members[1], initial[1], cfg.steps)
    assert_weights(alone.population.member_state_dict(0), expected)


def test_members_at_different_steps_cannot_share_a_population(tmp_path):
    cfg = compose("steps=20")
    data = load_dataset(cfg.data, CPU, torch.float64)
    states = []
    for stop in (3, 5):
        training = engine.build(cfg, data)
        polls = iter(range(10**6))
        training.fit(stop_requested=lambda s=stop, p=polls: next(p) == s - 1,
                     save_checkpoint=lambda _s, t=training: states.append(t.member_state(0)))
    both = engine.build(cfg, data, engine.members_of(cfg, [0, 0]))
    both.load_member_state(0, states[0])
    with pytest.raises(ValueError, match="lockstep"):
        both.load_member_state(1, states[1])
    with pytest.raises(ValueError, match="cannot join fresh ones"):
        both.fit()  # slot 1 is still fresh, at step 0


def test_an_older_checkpoint_is_refused_in_one_line(tmp_path):
    from initopt.config import ConfigError

    torch.save({"format": 2, "fingerprints": ["fp"], "population": {}}, tmp_path / "c.pt")
    with pytest.raises(ConfigError, match=r"older initopt \(format 2.*delete it to start over") as err:
        checkpoint.load(tmp_path / "c.pt", ["fp"])
    assert "\n" not in str(err.value) and "c.pt" in str(err.value)


# ------------------------------------------------------------------------------- the schedule
def test_evaluation_starts_at_initialization():
    cfg = compose("steps=40", "eval_every=20")
    data = load_dataset(cfg.data, CPU, torch.float64)
    result = engine.build(cfg, data).fit()
    assert [s for s, _ in result.histories[0]] == [0, 1, 2, 5, 10, 20, 40]  # then log-spaced below eval_every


@pytest.mark.parametrize("data_name, hidden, activation",
                         [("moons", "[16,8]", "relu"), ("digits", "[12]", "tanh"), ("moons", "[6]", "gelu")])
def test_evaluation_in_slices_of_members_equals_the_whole_population_at_once(monkeypatch, data_name, hidden,
                                                                             activation):
    cfg = compose(f"data={data_name}", f"model.hidden={hidden}", f"model.activation={activation}")
    data = load_dataset(cfg.data, CPU, torch.float64)
    population = engine.build(cfg, data, engine.members_of(cfg, list(range(7)))).population
    monkeypatch.setattr(engine_loop, "EVAL_SLICE_BYTES", 10**12)
    assert engine_loop.evaluation_slices(population, len(data.x_train)) == [slice(0, 7)]
    whole = engine_loop.evaluate(population, data)

    widest = max(max(cfg.model.hidden), data.n_outputs)
    monkeypatch.setattr(engine_loop, "EVAL_SLICE_BYTES", 3 * len(data.x_train) * widest * 8)  # 3 members a slice
    assert engine_loop.evaluation_slices(population, len(data.x_train)) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    sliced = engine_loop.evaluate(population, data)
    assert torch.equal(torch.as_tensor(sliced), torch.as_tensor(whole))
    # and neither is the in-place forward another function than autograd's
    logits = population.forward(population.leaves, data.x_test)
    expected = torch.stack([engine_loop.member_losses(logits, data.y_test.expand(7, -1), data.num_classes),
                            engine_loop.member_accuracies(logits, data.y_test.expand(7, -1), data.num_classes)], 1)
    assert torch.equal(torch.as_tensor(whole[:, 2:]), expected.detach())


def test_the_model_is_initialized_on_the_cpu_then_moved(monkeypatch):
    """Same seed, same weights on every device: the init draws happen on the CPU, then the weights
    move to the data's device (here ``meta``, a device that is not the CPU and holds no values);
    the weights are those of torch's own layers seeded and initialized by hand."""
    cfg = compose()
    data = load_dataset(cfg.data, CPU, torch.float64)
    devices_at_init = []
    real_normal = torch.nn.init.kaiming_normal_

    def spy(tensor, *args, **kwargs):
        devices_at_init.append(tensor.device.type)
        return real_normal(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", spy)
    meta = Dataset(*(t.to("meta") for t in (data.x_train, data.y_train, data.x_test, data.y_test)),
                   data.num_classes)
    moved = engine.build(cfg, meta, engine.members_of(cfg, [4]))
    assert devices_at_init == ["cpu"] * 3
    assert {p.device.type for p in moved.population.params.values()} == {"meta"}
    monkeypatch.undo()

    training = engine.build(cfg, data, engine.members_of(cfg, [4]))
    torch.manual_seed(4)
    widths = [data.n_features, *cfg.model.hidden, 1]
    layers = [nn.Linear(a, b).double() for a, b in zip(widths, widths[1:])]
    for layer in layers:  # he, fan_in, relu; zero biases (conf/init/he.yaml)
        nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    expected = [t.detach() for layer in layers for t in (layer.weight, layer.bias)]
    got = list(training.population.member_state_dict(0).values())
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
