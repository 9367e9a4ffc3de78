"""The step is capturable: no host sync, static shapes; it compiles whole and computes the same."""

from __future__ import annotations

import pytest
import torch

from initopt import engine
from initopt.checks import compose_job
from initopt.data import load_dataset
from initopt.engine.step import TrainStep, compiled
from initopt.probes import StepRecorder

CPU = torch.device("cpu")


def population_step(optim: str, functional: bool = True):
    cfg = compose_job(["dtype=float64", "steps=10", optim])
    data = load_dataset(cfg.data, CPU, torch.float64)
    training = engine.build(cfg, data, engine.members_of(cfg, [0, 1, 2]))
    recorder = StepRecorder(3, len(training.population.names), 10, CPU, torch.float64)
    step = TrainStep(training.population, training.optimizer, data.num_classes, recorder, None, functional)
    return training, step, data


@pytest.mark.parametrize("optim", ["optim=sgd", "optim=momentum", "optim=adam"])
def test_the_functional_step_compiles_whole_with_no_graph_break(optim):
    training, step, data = population_step(optim)
    x, y = step.gather(data.x_train, data.y_train, training.state.sampler.next_indices())
    explained = torch._dynamo.explain(step)(x, y, True, False)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


@pytest.mark.parametrize("optim", ["optim=momentum", "optim=adam"])
def test_the_compiled_step_equals_the_eager_one(optim):
    torch._dynamo.reset()
    (eager, eager_step, data), (comp, comp_step, _) = population_step(optim, False), population_step(optim)
    fast = torch.compile(comp_step, fullgraph=True, backend="aot_eager")
    for _ in range(5):
        idx = eager.state.sampler.next_indices()
        comp.state.sampler.next_indices()
        eager_step(*eager_step.gather(data.x_train, data.y_train, idx), True, False)
        fast(*comp_step.gather(data.x_train, data.y_train, idx), True, False)
    for name in eager.population.names:
        torch.testing.assert_close(comp.population.params[name], eager.population.params[name], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(comp_step.recorder.rows, eager_step.recorder.rows, rtol=1e-12, atol=1e-14)


def test_compile_is_off_on_the_cpu_by_default_and_falls_back_with_a_note(monkeypatch, capsys):
    _, step, data = population_step("optim=sgd")
    assert compiled(step, "auto", CPU) is step and compiled(step, "off", CPU) is step

    def refuse(fn, **kwargs):
        def broken(*args):
            raise RuntimeError("capture is not supported here\nsecond line")
        return broken

    monkeypatch.setattr(torch, "compile", refuse)
    fn = compiled(step, "on", CPU)
    x, y = step.gather(data.x_train, data.y_train, torch.zeros(3, 64, dtype=torch.long))
    fn(x, y, True, False)
    fn(x, y, True, False)
    out = capsys.readouterr().out
    assert out.count("falling back to the eager step (capture is not supported here)") == 1
    assert step.step_t.item() == 2
