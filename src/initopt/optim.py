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

Comparing optimizers by their ``lr`` misleads: what a run moves by, once the momentum buffer has
filled, is the **steady-state step** (:func:`steady_state_step`): under a constant gradient g the
update tends to ``-step * g``. It is ``lr`` for SGD and for EMA momentum (z -> g) but ``lr / beta``
for heavy ball (b -> g / beta). So with the defaults (EMA, beta 0.1, lr 0.1) momentum moves like
SGD at lr 0.1, although torch applies ``lr * beta = 0.01`` to a buffer ten times the gradient.
:func:`torch_equivalent` gives the ``torch.optim`` arguments (lr, momentum) that realise each form.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from omegaconf import DictConfig

if TYPE_CHECKING:  # torch is imported where an optimizer is built: the report reads the formulas only
    import torch

FUSED_ADAM_DEVICES = ("cpu", "cuda")


def momentum_sgd_arguments(lr: float, beta: float, form: str) -> dict:
    """The ``torch.optim.SGD`` arguments that realise a momentum form (see module doc)."""
    if form == "ema":
        return {"lr": lr * beta, "momentum": 1.0 - beta}
    if form == "heavy_ball":
        return {"lr": lr, "momentum": 1.0 - beta}
    raise ValueError(f"unknown momentum form {form!r}")


def torch_equivalent(cfg) -> dict[str, float]:
    """The ``torch.optim`` arguments that realise an optim config (any mapping with its keys):

    * sgd:                 ``SGD(lr, momentum=0)``                 -> ``{lr, momentum: 0}``
    * momentum, ema:       ``SGD(lr * beta, momentum=1 - beta)``   -> ``{lr: lr * beta, momentum: 1 - beta}``
    * momentum, heavy_ball ``SGD(lr, momentum=1 - beta)``          -> ``{lr, momentum: 1 - beta}``
    * adam:                ``Adam(lr, betas=(beta1, beta2))``      -> ``{lr, momentum: beta1}`` (the decay of
      Adam's first-moment average, the role torch's SGD ``momentum`` plays)
    """
    name = cfg["name"]
    if name == "sgd":
        return {"lr": float(cfg["lr"]), "momentum": 0.0}
    if name == "momentum":
        return {k: float(v) for k, v in momentum_sgd_arguments(cfg["lr"], cfg["beta"], cfg["form"]).items()}
    if name == "adam":
        return {"lr": float(cfg["lr"]), "momentum": float(cfg["beta1"])}
    raise ValueError(f"unknown optimizer {name!r}")


def steady_state_step(cfg) -> float:
    """The steady-state step size: under a constant gradient g the update tends to ``-step * g``.

    With torch's ``SGD(lr_t, momentum=m)`` the buffer tends to ``g / (1 - m)``, so
    ``step = lr_t / (1 - m)``; per form:

    * sgd:                 ``lr``
    * momentum, ema:       ``lr``         (z <- (1-beta) z + beta g tends to g)
    * momentum, heavy_ball ``lr / beta``  (b <- (1-beta) b + g tends to g / beta)
    * adam:                ``lr``, per coordinate and in parameter units: m / sqrt(v) tends to
      sign(g), so the update tends to ``-lr * sign(g)`` whatever the gradient's size.
    """
    name, lr = cfg["name"], float(cfg["lr"])
    if name == "momentum" and cfg["form"] == "heavy_ball":
        return lr / float(cfg["beta"])
    if name == "momentum" and cfg["form"] != "ema":
        raise ValueError(f"unknown momentum form {cfg['form']!r}")
    if name not in ("sgd", "momentum", "adam"):
        raise ValueError(f"unknown optimizer {name!r}")
    return lr


def _fused_supported(params: list[torch.Tensor]) -> bool:
    return all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in params)


def build_optimizer(params: Iterable[torch.Tensor], cfg: DictConfig) -> torch.optim.Optimizer:
    import torch

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
