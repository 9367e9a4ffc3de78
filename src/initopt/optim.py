"""Optimizers over ``torch.optim``, including the homework's EMA momentum form.

* ``sgd``:      w <- w - lr g
* ``momentum``, ``form=ema`` (homework eq. 6, z0 = 0):
                z <- (1 - beta) z + beta g ;  w <- w - lr z
  which is exactly ``torch.optim.SGD(lr=lr*beta, momentum=1-beta)``: torch keeps
  buf = z / beta (buf <- (1-beta) buf + g, first step buf = g = z_1 / beta).
  (``SGD(lr, momentum=1-beta, dampening=1-beta)`` is *not* it: torch skips dampening
  on the first step, so that step is 1/beta times too large.)
* ``momentum``, ``form=heavy_ball`` (torch's own):
                b <- (1 - beta) b + g ;  w <- w - lr b   = ``SGD(lr, momentum=1-beta)``
  The two forms trace the same path when heavy-ball's lr equals ema's lr * beta.
* ``adam``:     torch.optim.Adam, the fused kernel when the parameters' device and dtype allow.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from omegaconf import DictConfig

FUSED_ADAM_DEVICES = ("cpu", "cuda")


def momentum_sgd_arguments(lr: float, beta: float, form: str) -> dict:
    """The ``torch.optim.SGD`` arguments that realise a momentum form (see module doc)."""
    if form == "ema":
        return {"lr": lr * beta, "momentum": 1.0 - beta}
    if form == "heavy_ball":
        return {"lr": lr, "momentum": 1.0 - beta}
    raise ValueError(f"unknown momentum form {form!r}")


def _fused_supported(params: list[torch.Tensor]) -> bool:
    return all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in params)


def build_optimizer(params: Iterable[torch.Tensor], cfg: DictConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "momentum":
        args = momentum_sgd_arguments(cfg.lr, cfg.beta, cfg.form)
        return torch.optim.SGD(params, weight_decay=cfg.weight_decay, **args)
    if cfg.name == "adam":
        fused = bool(cfg.fused) and _fused_supported(params)
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
            weight_decay=cfg.weight_decay, fused=fused or None,
        )
    raise ValueError(f"unknown optimizer {cfg.name!r}")
