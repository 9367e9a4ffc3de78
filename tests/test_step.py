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


# ---------------------------------------------------------------- the records' fast path and the witness
def float32_step(scale: float = 1.0, seeds=(0, 1)):
    cfg = compose_job(["steps=10", "optim=sgd", "optim.lr=1e-30"])
    data = load_dataset(cfg.data, CPU, torch.float32)
    x, y = data.x_train * scale, data.y_train
    training = engine.build(cfg, data, engine.members_of(cfg, list(seeds)))
    recorder = StepRecorder(len(seeds), len(training.population.names), 10, CPU)
    step = TrainStep(training.population, training.optimizer, data.num_classes, recorder, None)
    idx = torch.arange(len(seeds) * 64).reshape(len(seeds), 64)
    return step, x[idx], y[idx]


def exact_norms(step, x, y) -> torch.Tensor:
    """Each member's gradient norms, accumulated in float64 from the same float32 gradients."""
    total, _ = step._loss(step.population.leaves, x, y, False)
    grads = torch.autograd.grad(total, step._leaves)
    return torch.stack([torch.linalg.vector_norm(g.double(), dim=tuple(range(1, g.dim()))) for g in grads], dim=1)


def test_a_recorded_steps_norms_equal_the_exact_ones_to_float32_rounding():
    step, x, y = float32_step()
    expected = exact_norms(step, x, y)
    step.eager(x, y, True, False)
    torch.testing.assert_close(step.recorder.rows[0, :, :-1], expected, rtol=2e-6, atol=0)


def test_a_recorded_step_whose_float32_squares_overflow_records_the_exact_finite_norms():
    """Inputs of ~1e20: every gradient entry finite, their float32 squares not: the record holds
    the float64 norms (finite), and no member is taken for diverged."""
    step, x, y = float32_step(scale=1e20)
    expected = exact_norms(step, x, y)
    assert torch.isfinite(expected).all() and expected.max() > 1e19  # float32 squares would overflow
    step.eager(x, y, True, False)
    torch.testing.assert_close(step.recorder.rows[0, :, :-1], expected, rtol=1e-12, atol=0)
    assert step.newly_diverged == [] and step.all_alive


def test_the_witness_is_a_sum_whose_overflow_only_sends_the_step_to_the_exact_test():
    from initopt.probes import all_finite_witness, finite_members

    big = [torch.full((2, 8, 8), 1e37), torch.ones(2, 8)]  # finite entries, their sum overflows float32
    losses = torch.ones(2)
    assert not torch.isfinite(all_finite_witness(big, losses))
    assert finite_members(big, losses).tolist() == [True, True]
    big[1][1, 3] = float("nan")
    assert not torch.isfinite(all_finite_witness(big, losses))
    assert finite_members(big, losses).tolist() == [True, False]
    assert torch.isfinite(all_finite_witness([torch.randn(2, 8, 8)], losses))


@pytest.mark.parametrize("optim", ["optim=momentum", "optim=adam"])
def test_a_false_alarm_takes_the_masked_update_which_equals_the_plain_one(optim):
    """A witness that overflows on finite values sends the step down the masked path with every
    member alive: the same update as the plain one."""
    runs = []
    for masked in (False, True):
        training, step, data = population_step(optim)
        grads = [torch.randn_like(p) for p in training.population.params.values()]
        for _ in range(3):
            if masked:
                training.optimizer.masked_step(grads, training.population.alive)
            else:
                training.optimizer.step(grads)
        runs.append(weights(training))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
