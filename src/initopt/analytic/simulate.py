"""The same problems run with torch autograd and the trainer's own optimizer factory, in float64.

Each function builds the loss exactly as the closed forms state it (no 1/2), lets
``loss.backward()`` compute the gradient and ``initopt.optim.build_optimizer`` take the
step, and returns the iterates: what a user's training run would do, step for step.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf

from initopt.optim import build_optimizer

F64 = torch.float64


def _optimizer(params, name: str, lr: float, **extra) -> torch.optim.Optimizer:
    extra = {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in extra.items()}
    cfg = {"name": name, "lr": float(lr), "weight_decay": 0.0, **extra}
    return build_optimizer(params, OmegaConf.create(cfg))


def _iterate(w: torch.Tensor, loss_fn, opt: torch.optim.Optimizer, steps: int) -> np.ndarray:
    path = np.empty((steps, *w.shape))
    for t in range(steps):
        opt.zero_grad()
        loss_fn(w).backward()
        opt.step()
        path[t] = w.detach().numpy()
    return path


def gd_least_squares(X, y, eta: float, steps: int, ridge: float = 0.0) -> np.ndarray:
    """``optim=sgd`` on ``||Xw - y||^2 + ridge ||w||^2`` from ``w = 0``."""
    Xt, yt = torch.as_tensor(X, dtype=F64), torch.as_tensor(y, dtype=F64)
    w = torch.zeros(Xt.shape[1], dtype=F64, requires_grad=True)
    loss = lambda w: ((Xt @ w - yt) ** 2).sum() + ridge * (w**2).sum()  # noqa: E731
    return _iterate(w, loss, _optimizer([w], "sgd", eta), steps)


def gd_scalar(s: float, y: float, eta: float, steps: int) -> np.ndarray:
    """``optim=sgd`` on ``(y - s w)^2`` from ``w = 0``."""
    return gd_least_squares(np.array([[s]]), np.array([y]), eta, steps)[:, 0]


def momentum_least_squares(X, y, eta: float, beta: float, steps: int, form: str = "ema") -> np.ndarray:
    """``optim=momentum`` (``form`` ema or heavy_ball, lr = eta) on ``||Xw - y||^2`` from ``w = 0``."""
    Xt, yt = torch.as_tensor(X, dtype=F64), torch.as_tensor(y, dtype=F64)
    w = torch.zeros(Xt.shape[1], dtype=F64, requires_grad=True)
    opt = _optimizer([w], "momentum", eta, beta=beta, form=form)
    return _iterate(w, lambda w: ((Xt @ w - yt) ** 2).sum(), opt, steps)


def noisy_scalar_gd_mean(x: float, y: float, sigma: float, eta: float, steps: int,
                         draws: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of ``w_t`` over ``draws`` independent runs of ``optim=sgd`` on
    ``(x_hat w - y)^2``, fresh ``x_hat = x + N(0, sigma^2)`` each step; all runs in one vector
    (the loss sums the independent runs, so each coordinate gets its own gradient)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.zeros(draws, dtype=F64, requires_grad=True)
    opt = _optimizer([w], "sgd", eta)
    means, stderrs = np.empty(steps), np.empty(steps)
    for t in range(steps):
        x_hat = x + sigma * torch.randn(draws, generator=gen, dtype=F64)
        opt.zero_grad()
        ((x_hat * w - y) ** 2).sum().backward()
        opt.step()
        means[t] = w.detach().mean().item()
        stderrs[t] = w.detach().std().item() / np.sqrt(draws)
    return means, stderrs


def noisy_inputs_expected_loss(X, y, w, sigma: float, draws: int = 20000, seed: int = 0) -> float:
    """Monte-Carlo ``E||(X + N) w - y||^2`` over ``draws`` noise matrices, vectorised."""
    gen = torch.Generator().manual_seed(seed)
    Xt, yt, wt = (torch.as_tensor(a, dtype=F64) for a in (X, y, w))
    noise = sigma * torch.randn(draws, *Xt.shape, generator=gen, dtype=F64)
    return (((Xt + noise) @ wt - yt) ** 2).sum(-1).mean().item()


def ridge_map(X, y, lam: float, max_iter: int = 200) -> np.ndarray:
    """MAP estimate for ``w ~ N(0, I)``, ``y = X w + sqrt(lam) N``, ``N ~ N(0, I)``: the minimiser of the
    negative log posterior ``||Xw - y||^2 / (2 lam) + ||w||^2 / 2``, found by ``torch.optim.LBFGS``
    with autograd gradients, from ``w = 0``. Unit steps, no line search: a line search compares loss
    values, which stop resolving progress once the gradient is ~sqrt(float eps) (1e-8 here)."""
    Xt, yt = torch.as_tensor(X, dtype=F64), torch.as_tensor(y, dtype=F64)
    w = torch.zeros(Xt.shape[1], dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-14, tolerance_change=0.0,
                            history_size=20)

    def closure():
        opt.zero_grad()
        loss = ((Xt @ w - yt) ** 2).sum() / (2 * lam) + (w**2).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().copy()


def measured_rate(errors: np.ndarray, order: int, floor: float = 1e-9) -> float:
    """Per-step contraction read off a trajectory of errors ``e_t = w_t - w*``.

    Each coordinate of a decoupled (diagonal) problem obeys a linear recurrence of the
    system's order, ``e_{t+1} = p_1 e_t + ... + p_k e_{t-k+1}`` (Cayley-Hamilton: k = 1 for GD,
    2 for momentum). The ``p`` are fitted by least squares on the steps where ``|e|`` is still
    above ``floor`` times its largest value (before rounding noise takes over); the rate is
    the largest modulus of a root of ``z^k - p_1 z^(k-1) - ... - p_k``, over coordinates.
    Unlike a ratio of norms, this is exact for oscillating (complex) and repeated modes too.
    """
    e = errors.reshape(len(errors), -1)
    rates = []
    for col in e.T:
        big = np.abs(col) > floor * np.abs(col).max()
        n = int(np.argmin(big)) if not big.all() else len(col)
        col = col[:n]
        if n <= 2 * order + 1:
            continue
        lagged = np.column_stack([col[order - 1 - j : n - 1 - j] for j in range(order)])
        coeffs, *_ = np.linalg.lstsq(lagged, col[order:], rcond=None)
        rates.append(float(np.abs(np.roots(np.concatenate([[1.0], -coeffs]))).max()))
    return max(rates)
