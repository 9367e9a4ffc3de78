"""The two steps: the capturable one compiles whole and computes what the lean eager one does."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from initopt import engine
from initopt.checks import compose_job
from initopt.data import load_dataset
from initopt.engine.step import TrainStep, compiled
from initopt.probes import StepRecorder

CPU = torch.device("cpu")


def population_step(optim: str, *overrides: str, seeds=(0, 1, 2)):
    cfg = compose_job(["dtype=float64", "steps=10", optim, *overrides])
    data = load_dataset(cfg.data, CPU, torch.float64)
    training = engine.build(cfg, data, engine.members_of(cfg, list(seeds)))
    recorder = StepRecorder(len(seeds), len(training.population.names), 10, CPU)
    step = TrainStep(training.population, training.optimizer, data.num_classes, recorder, None)
    return training, step, data


def weights(training) -> list[torch.Tensor]:
    return [p.clone() for p in training.population.params.values()]


@pytest.mark.parametrize("optim", ["optim=sgd", "optim=momentum", "optim=adam"])
def test_the_capturable_step_compiles_whole_with_no_graph_break(optim):
    training, step, data = population_step(optim)
    x, y = step.gather(data.x_train, data.y_train, training.state.sampler.next_indices())
    explained = torch._dynamo.explain(step)(x, y, True, False)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


@pytest.mark.parametrize("optim", ["optim=momentum", "optim=adam"])
def test_the_compiled_capturable_step_equals_the_eager_one(optim):
    torch._dynamo.reset()
    (eager, eager_step, data), (comp, comp_step, _) = population_step(optim), population_step(optim)
    fast = torch.compile(comp_step, fullgraph=True, backend="aot_eager")
    for _ in range(5):
        idx = eager.state.sampler.next_indices()
        comp.state.sampler.next_indices()
        eager_step.eager(*eager_step.gather(data.x_train, data.y_train, idx), True, False)
        eager_step.recorder.mark(0, 0.0)
        fast(*comp_step.gather(data.x_train, data.y_train, idx), True, False)
    for a, b in zip(weights(comp), weights(eager)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(comp_step.recorder.rows, eager_step.recorder.rows, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("optim", ["optim=momentum", "optim=adam"])
def test_both_steps_freeze_a_diverging_member_alike(optim):
    """Member 1 (lr 1e200) goes non-finite at step 2: the eager step branches to its masked
    update, the capturable one masks on the device; same weights, same alive mask."""
    runs = []
    for capturable in (False, True):
        cfg = compose_job(["dtype=float64", "steps=10", optim])
        data = load_dataset(cfg.data, CPU, torch.float64)
        blowing_up = OmegaConf.merge(cfg.optim, {"lr": 1e200})
        mixed = engine.build(cfg, data, [engine.Member(0, cfg.init, cfg.optim), engine.Member(1, cfg.init, blowing_up)])
        step = TrainStep(mixed.population, mixed.optimizer, data.num_classes, None, None)
        for _ in range(4):
            batch = step.gather(data.x_train, data.y_train, mixed.state.sampler.next_indices())
            (step if capturable else step.eager)(*batch, False, False)
        runs.append((weights(mixed), mixed.population.alive.tolist(), step))
    (eager_w, eager_alive, eager_step), (cap_w, cap_alive, cap_step) = runs
    assert eager_alive == cap_alive == [True, False]
    assert cap_step.member_steps.tolist() == [4, 1]  # member 1 froze after its first step
    for a, b in zip(eager_w, cap_w):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        assert torch.isfinite(a).all()


def test_compile_is_off_on_the_cpu_by_default():
    _, step, _ = population_step("optim=sgd")
    assert compiled(step, "auto", CPU) == step.eager and compiled(step, "off", CPU) == step.eager


def fake_compile(monkeypatch, after_mutating: bool):
    """torch.compile replaced by a function that fails on its first call, before or after it has
    run the step (as an out-of-memory error in the middle of a compiled step would)."""
    def fake(fn, **kwargs):
        def broken(*args):
            if after_mutating:
                fn(*args)
            raise RuntimeError("capture is not supported here\nsecond line")
        return broken

    monkeypatch.setattr(torch, "compile", fake)


def test_a_compile_refused_before_the_step_ran_falls_back_once_with_a_note(monkeypatch, capsys):
    (reference, ref_step, data), (training, step, _) = (population_step("optim=momentum") for _ in range(2))
    fake_compile(monkeypatch, after_mutating=False)
    fn = compiled(step, "on", CPU)
    for _ in range(2):
        idx = training.state.sampler.next_indices()
        reference.state.sampler.next_indices()
        fn(*step.gather(data.x_train, data.y_train, idx), True, False)
        ref_step.eager(*ref_step.gather(data.x_train, data.y_train, idx), True, False)
    out = capsys.readouterr().out
    assert out.count("falling back to the eager step (capture is not supported here)") == 1
    for a, b in zip(weights(training), weights(reference)):  # two steps, each applied once
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_failure_after_the_step_began_is_raised_never_rerun(monkeypatch, capsys):
    (reference, ref_step, data), (training, step, _) = (population_step("optim=momentum") for _ in range(2))
    fake_compile(monkeypatch, after_mutating=True)
    fn = compiled(step, "on", CPU)
    idx = training.state.sampler.next_indices()
    with pytest.raises(RuntimeError, match="capture is not supported"):
        fn(*step.gather(data.x_train, data.y_train, idx), True, False)
    ref_step(*ref_step.gather(data.x_train, data.y_train, idx), True, False)
    assert "falling back" not in capsys.readouterr().out
    for a, b in zip(weights(training), weights(reference)):  # applied once, not twice
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compile_marks_the_mutated_state_as_static_addresses(monkeypatch):
    """What CUDA graphs need: every tensor the step mutates keeps its address across calls."""
    _, step, _ = population_step("optim=adam")
    marked = []
    monkeypatch.setattr(torch._dynamo, "mark_static_address", lambda t, guard=False: marked.append(t))
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    compiled(step, "on", CPU)
    ids = {id(t) for t in marked}
    mutated = [*step.population.params.values(), step.population.alive, step.member_steps,
               step.recorder.rows, step.recorder.slot, *step.optimizer.state["exp_avg"],
               *step.optimizer.state["exp_avg_sq"], step.optimizer.state["step"], *step.optimizer.coef.values()]
    assert all(id(t) in ids for t in mutated)
