"""The optimizer factory: both momentum forms match their recurrences exactly."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from initopt.optim import build_optimizer


def least_squares(seed=0, n=12, d=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, generator=g, dtype=torch.float64))


def grad(X, y, w):
    """Gradient of ||Xw - y||^2 (no 1/2): 2 X^T (Xw - y)."""
    return 2 * X.T @ (X @ w - y)


def run_factory(X, y, optim: dict, steps: int) -> list[torch.Tensor]:
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    opt = build_optimizer([w], OmegaConf.create({"weight_decay": 0.0, **optim}))
    path = []
    for _ in range(steps):
        opt.zero_grad()
        ((X @ w - y) ** 2).sum().backward()
        opt.step()
        path.append(w.detach().clone())
    return path


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 1.0])
def test_ema_form_equals_the_homework_recurrence(beta):
    X, y = least_squares()
    eta = 0.2 / torch.linalg.matrix_norm(X, 2).item() ** 2
    got = run_factory(X, y, {"name": "momentum", "lr": eta, "beta": beta, "form": "ema"}, 60)
    w, z = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    for t in range(60):  # homework eq. (6): z <- (1-b) z + b g ; w <- w - eta z ; z0 = 0
        z = (1 - beta) * z + beta * grad(X, y, w)
        w = w - eta * z
        torch.testing.assert_close(got[t], w, rtol=0, atol=1e-12)


def test_heavy_ball_form_equals_torch_heavy_ball_and_the_ema_path_at_scaled_lr():
    X, y = least_squares(1)
    beta, eta = 0.2, 0.01
    got = run_factory(X, y, {"name": "momentum", "lr": eta, "beta": beta, "form": "heavy_ball"}, 40)
    w, b = torch.zeros(4, dtype=torch.float64), None
    for t in range(40):  # b <- (1-beta) b + g (first step b = g); w <- w - eta b
        g = grad(X, y, w)
        b = g if b is None else (1 - beta) * b + g
        w = w - eta * b
        torch.testing.assert_close(got[t], w, rtol=0, atol=1e-12)
    ema = run_factory(X, y, {"name": "momentum", "lr": eta / beta, "beta": beta, "form": "ema"}, 40)
    torch.testing.assert_close(torch.stack(ema), torch.stack(got), rtol=0, atol=1e-12)


def test_the_dampening_mapping_is_not_the_ema_form():
    """SGD(lr, momentum=1-b, dampening=1-b) skips dampening on step 1: a 1/b larger first step."""
    X, y = least_squares(2)
    beta, eta = 0.1, 0.01
    w = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=eta, momentum=1 - beta, dampening=1 - beta)
    ((X @ w - y) ** 2).sum().backward()
    opt.step()
    ema_first = run_factory(X, y, {"name": "momentum", "lr": eta, "beta": beta, "form": "ema"}, 1)[0]
    torch.testing.assert_close(w.detach(), ema_first / beta, rtol=1e-12, atol=0)


def test_sgd_is_plain_gradient_descent():
    X, y = least_squares(3)
    got = run_factory(X, y, {"name": "sgd", "lr": 0.01}, 5)
    w = torch.zeros(4, dtype=torch.float64)
    for t in range(5):
        w = w - 0.01 * grad(X, y, w)
        torch.testing.assert_close(got[t], w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
def test_adam_first_step_is_lr_times_sign_of_the_gradient(fused):
    X, y = least_squares(4)
    cfg = {"name": "adam", "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "fused": fused}
    w0 = torch.zeros(4, dtype=torch.float64)
    step = run_factory(X, y, cfg, 1)[0] - w0
    torch.testing.assert_close(step, -1e-3 * torch.sign(grad(X, y, w0)), rtol=1e-6, atol=0)


def test_adam_uses_the_fused_kernel_when_asked():
    w = torch.zeros(3, requires_grad=True)
    cfg = {"name": "adam", "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
           "weight_decay": 0.0}
    assert build_optimizer([w], OmegaConf.create({**cfg, "fused": True})).defaults["fused"]
    assert not build_optimizer([w], OmegaConf.create({**cfg, "fused": False})).defaults["fused"]
