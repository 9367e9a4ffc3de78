"""The eager step's written-out backward gives autograd's losses and gradients, member by member.

The reference is ``torch.autograd.grad`` of the summed member losses through the population's own
forward pass (``Population.forward`` and ``member_losses``), in float64, for every nonlinearity
the MLP offers and each loss (BCE on one logit, cross-entropy on ten, squared error).
"""

from __future__ import annotations

import pytest
import torch

from initopt import engine
from initopt.checks import compose_job
from initopt.data import load_dataset
from initopt.engine.backprop import StackedBackprop
from initopt.engine.population import member_losses
from initopt.engine.step import TrainStep
from initopt.models import ACTIVATION_MODULES

CPU = torch.device("cpu")
DATA = {"moons (BCE)": ["data=moons"], "digits (cross-entropy)": ["data=digits"],
        "lstsq (squared error)": ["data=lstsq", "model=linear"]}


def population(*overrides: str, members: int = 3, mode: str = "stacked"):
    cfg = compose_job(["dtype=float64", "init=normal", *overrides])
    data = load_dataset(cfg.data, CPU, torch.float64)
    training = engine.build(cfg, data, engine.members_of(cfg, list(range(members))), mode)
    return training.population, data, training


def batches(data, members: int, size: int = 16, seed: int = 0):
    """Each member its own rows of the training set: ``(K, B, in)``, ``(K, B)``."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(data.x_train), (members, size), generator=gen)
    return data.x_train[idx], data.y_train[idx]


def autograd_reference(pop, x, y, num_classes, with_activations=False):
    leaves = {n: p.detach().clone().requires_grad_() for n, p in pop.params.items()}
    stats = [] if with_activations else None
    logits = pop.forward(leaves, x, stats)
    y = y if y.dim() == 2 else y.expand(pop.k, *y.shape)
    losses = member_losses(logits, y, num_classes)
    grads = torch.autograd.grad(losses.sum(), [leaves[n] for n in pop.names])
    return losses.detach(), list(grads), stats


def hand(pop, num_classes):
    return StackedBackprop(pop.mlp_layers, pop.names, num_classes)


def assert_same(got, want):
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("activation", sorted(ACTIVATION_MODULES))
@pytest.mark.parametrize("data", sorted(DATA))
def test_the_hand_backward_gives_autograds_losses_and_gradients(activation, data):
    bias = "true" if activation != "identity" else "false"
    overrides = [*DATA[data], f"model.activation={activation}", f"model.bias={bias}"]
    if "model=linear" not in overrides:
        overrides.append("model.hidden=[7,5,6]")
    pop, dataset, _ = population(*overrides)
    x, y = batches(dataset, pop.k)
    losses, grads = hand(pop, dataset.num_classes)(pop.params, x, y)
    want_losses, want_grads, _ = autograd_reference(pop, x, y, dataset.num_classes)
    torch.testing.assert_close(losses, want_losses, rtol=1e-14, atol=0)
    assert_same(grads, want_grads)
    assert [g.shape for g in grads] == [pop.params[n].shape for n in pop.names]


def test_the_hand_backward_takes_one_batch_for_all_members_and_records_activations():
    """Full-batch steps pass ``(B, in)`` for every member; the activation statistics are the
    forward pass's, as ``Population.forward`` gives them."""
    pop, dataset, _ = population("model.hidden=[8,8]", "model.activation=tanh")
    x, y = dataset.x_train[:40], dataset.y_train[:40]
    stats = []
    losses, grads = hand(pop, dataset.num_classes)(pop.params, x, y, stats)
    want_losses, want_grads, want_stats = autograd_reference(pop, x, y, dataset.num_classes, True)
    torch.testing.assert_close(losses, want_losses, rtol=1e-14, atol=0)
    assert_same(grads, want_grads)
    assert len(stats) == 2 and all(s.shape == (pop.k, 2) for s in stats)
    assert_same(stats, want_stats)


def test_a_member_gone_non_finite_has_non_finite_gradients_by_hand_as_by_autograd():
    """Member 1's weights hold a NaN and member 2's overflow its sums: the finiteness of each
    member's loss and gradients (what the step freezes a member on) is autograd's."""
    from initopt.probes import finite_members

    pop, dataset, _ = population("model.hidden=[8,8]", "model.activation=relu", members=4)
    pop.params["fc1.weight"][1, 0, 0] = float("nan")
    pop.params["fc1.weight"][2] = 1e200
    pop.params["fc2.weight"][2] = 1e200
    x, y = batches(dataset, pop.k)
    losses, grads = hand(pop, dataset.num_classes)(pop.params, x, y)
    want_losses, want_grads, _ = autograd_reference(pop, x, y, dataset.num_classes)
    assert finite_members(grads, losses).tolist() == finite_members(want_grads, want_losses).tolist() \
        == [True, False, False, True]
    for k in (0, 3):
        assert_same([g[k] for g in grads], [g[k] for g in want_grads])


def test_the_eager_step_backpropagates_by_hand_for_the_batched_mlp_and_by_autograd_through_vmap():
    stacked, dataset, training = population("model.hidden=[8]")
    assert TrainStep(stacked, training.optimizer, dataset.num_classes, None, None).backprop is not None
    vmapped, dataset, training = population("model.hidden=[8]", mode="vmap")
    assert TrainStep(vmapped, training.optimizer, dataset.num_classes, None, None).backprop is None


def test_an_eager_step_by_hand_moves_every_member_as_one_by_autograd():
    """Ten momentum steps of the same population, one step backpropagating by hand, the other by
    autograd: the same weights and the same recorded gradient norms and losses."""
    from initopt.probes import StepRecorder

    runs = []
    for by_hand in (True, False):
        pop, dataset, training = population("model.hidden=[8,8]", "optim=momentum")
        recorder = StepRecorder(pop.k, len(pop.names), 10, CPU)
        step = TrainStep(pop, training.optimizer, dataset.num_classes, recorder, None)
        if not by_hand:
            step.backprop = None
        for s in range(10):
            step.eager(*batches(dataset, pop.k, seed=s), True, False)
            recorder.mark(s + 1, 0.0)
        runs.append(([p.clone() for p in pop.params.values()], recorder.rows.clone()))
    assert_same(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-12, atol=1e-15)
