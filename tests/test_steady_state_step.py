"""``initopt.optim.steady_state_step`` and ``torch_equivalent``: what a constant gradient is
eventually moved by, checked against torch.optim itself (not against the formulas)."""

from __future__ import annotations

import pytest
import torch

from initopt.optim import steady_state_step, torch_equivalent

CONFIGS = [
    {"name": "sgd", "lr": 0.1, "weight_decay": 0.0},
    {"name": "momentum", "lr": 0.1, "beta": 0.1, "form": "ema", "weight_decay": 0.0},
    {"name": "momentum", "lr": 0.1, "beta": 0.1, "form": "heavy_ball", "weight_decay": 0.0},
    {"name": "momentum", "lr": 0.3, "beta": 0.5, "form": "heavy_ball", "weight_decay": 0.0},
    {"name": "adam", "lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
]


def _last_update(cfg: dict, gradient: torch.Tensor, steps: int = 400) -> torch.Tensor:
    """The update torch.optim applies at step ``steps`` under a constant gradient."""
    w = torch.zeros_like(gradient, requires_grad=True)
    args = torch_equivalent(cfg)
    if cfg["name"] == "adam":
        opt = torch.optim.Adam([w], lr=args["lr"], betas=(args["momentum"], cfg["beta2"]), eps=cfg["eps"])
    else:
        opt = torch.optim.SGD([w], lr=args["lr"], momentum=args["momentum"])
    for _ in range(steps):
        before = w.detach().clone()
        w.grad = gradient.clone()
        opt.step()
    return w.detach() - before


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['name']}-{c.get('form', '')}-{c['lr']}")
def test_a_constant_gradient_is_eventually_moved_by_the_steady_state_step(cfg):
    g = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    update = _last_update(cfg, g)
    step = steady_state_step(cfg)
    expected = -step * torch.sign(g) if cfg["name"] == "adam" else -step * g
    assert torch.allclose(update, expected, rtol=1e-6, atol=0), (update, expected)


def test_ema_momentum_has_sgds_steady_state_step_and_heavy_ball_lr_over_beta():
    sgd, ema, heavy = CONFIGS[:3]
    assert steady_state_step(ema) == steady_state_step(sgd) == 0.1
    assert steady_state_step(heavy) == pytest.approx(1.0)
    assert torch_equivalent(ema) == {"lr": pytest.approx(0.01), "momentum": 0.9}
    assert torch_equivalent(heavy) == {"lr": 0.1, "momentum": 0.9}


def test_an_unknown_optimizer_or_form_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        steady_state_step({"name": "rmsprop", "lr": 0.1})
    with pytest.raises(ValueError, match="unknown momentum form 'nesterov'"):
        steady_state_step({"name": "momentum", "lr": 0.1, "beta": 0.1, "form": "nesterov"})
