"""The optimizers of a population, with per-member hyperparameters as tensors.

Every hyperparameter is a ``(K,)`` tensor (one value per member), broadcast over each stacked
parameter ``(K, *shape)``, so members with different learning rates, momenta or Adam betas step
together in ``torch._foreach_*`` kernels, with no host synchronisation (capturable). Each update
is ``torch.optim``'s, member by member (the tests compare them in float64):

* family ``sgd`` covers plain SGD and both momentum forms (``initopt.optim``)::

      g <- g + wd w ;  buf <- mu buf + g  (buf_0 = 0, so buf_1 = g) ;  w <- w - lr buf

  with (lr, mu) = (lr, 0) for ``sgd``, (lr beta, 1 - beta) for EMA momentum (homework eq. 6) and
  (lr, 1 - beta) for heavy ball: exactly ``torch.optim.SGD(lr, momentum=mu, weight_decay=wd)``.
* family ``adam``, ``torch.optim.Adam``::

      g <- g + wd w ;  m <- m + (1 - b1)(g - m) ;  v <- b2 v + (1 - b2) g^2 ;  t <- t + 1
      w <- w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

A member that is no longer active (it diverged) gets a zero gradient and a zero step: its
weights stay as they were before the step that went non-finite.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from initopt.optim import momentum_sgd_arguments

FAMILIES = ("sgd", "adam")


def family_of(optim_cfg: DictConfig) -> str:
    """``sgd`` for sgd and momentum (one update rule), ``adam`` for adam."""
    return "adam" if optim_cfg.name == "adam" else "sgd"


def member_hyperparameters(optim_cfgs: list[DictConfig]) -> dict[str, list[float]]:
    """Each hyperparameter of the family, one value per member (see module doc)."""
    family = family_of(optim_cfgs[0])
    if any(family_of(o) != family for o in optim_cfgs):
        raise ValueError("a population has one optimizer family")
    if family == "adam":
        keys = {"lr": "lr", "beta1": "beta1", "beta2": "beta2", "eps": "eps", "weight_decay": "weight_decay"}
        return {k: [float(o[src]) for o in optim_cfgs] for k, src in keys.items()}
    lrs, mus = [], []
    for o in optim_cfgs:
        args = momentum_sgd_arguments(o.lr, o.beta, o.form) if o.name == "momentum" else {"lr": o.lr, "momentum": 0.0}
        lrs.append(float(args["lr"]))
        mus.append(float(args["momentum"]))
    return {"lr": lrs, "momentum": mus, "weight_decay": [float(o.weight_decay) for o in optim_cfgs]}


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(K,)`` -> ``(K, 1, ..., 1)``, broadcastable over a stacked parameter."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class PopulationOptimizer:
    """``torch.optim``'s SGD / momentum / Adam for K members at once (see module doc)."""

    def __init__(self, params: list[torch.Tensor], family: str, hyper: dict[str, list[float]]):
        if family not in FAMILIES:
            raise ValueError(f"unknown optimizer family {family!r}")
        self.params, self.family = params, family
        like = params[0]
        self.hyper = {k: torch.tensor(v, dtype=like.dtype, device=like.device) for k, v in hyper.items()}
        self._views = {k: [_per_member(v, p) for p in params] for k, v in self.hyper.items()}
        self.uses_weight_decay = any(v != 0 for v in hyper["weight_decay"])
        self.uses_momentum = family == "sgd" and any(v != 0 for v in hyper["momentum"])
        self.state: dict[str, list[torch.Tensor] | torch.Tensor] = {}
        if self.uses_momentum:
            self.state["momentum_buffer"] = [torch.zeros_like(p) for p in params]
        if family == "adam":
            self.state["exp_avg"] = [torch.zeros_like(p) for p in params]
            self.state["exp_avg_sq"] = [torch.zeros_like(p) for p in params]
            self.state["step"] = torch.zeros((), dtype=like.dtype, device=like.device)

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], active: torch.Tensor) -> None:
        """One update of every member; ``active`` ``(K,)`` bool: inactive members do not move."""
        grads = [torch.where(_per_member(active, g), g, 0) for g in grads]
        if self.uses_weight_decay:
            torch._foreach_addcmul_(grads, self.params, self._views["weight_decay"])
        gate = active.to(self.params[0].dtype)
        if self.family == "sgd":
            self._sgd(grads, gate)
        else:
            self._adam(grads, gate)

    def _sgd(self, grads: list[torch.Tensor], gate: torch.Tensor) -> None:
        direction = grads
        if self.uses_momentum:
            bufs = self.state["momentum_buffer"]
            torch._foreach_mul_(bufs, self._views["momentum"])
            torch._foreach_add_(bufs, grads)
            direction = bufs
        neg_lr = -self.hyper["lr"] * gate  # (K,), once; broadcast to each tensor as a view
        scale = [_per_member(neg_lr, p) for p in self.params]
        torch._foreach_add_(self.params, torch._foreach_mul(direction, scale))

    def _adam(self, grads: list[torch.Tensor], gate: torch.Tensor) -> None:
        h, m, v = self.hyper, self.state["exp_avg"], self.state["exp_avg_sq"]
        self.state["step"].add_(1)
        t = self.state["step"]
        torch._foreach_lerp_(m, grads, [1 - b for b in self._views["beta1"]])
        torch._foreach_mul_(v, self._views["beta2"])
        torch._foreach_addcmul_(v, grads, torch._foreach_mul(grads, [1 - b for b in self._views["beta2"]]))
        step_size = -h["lr"] / (1 - h["beta1"] ** t) * gate
        bias2_sqrt = torch.sqrt(1 - h["beta2"] ** t)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [_per_member(bias2_sqrt, p) for p in self.params])
        torch._foreach_add_(denom, self._views["eps"])
        update = torch._foreach_div(m, denom)
        torch._foreach_mul_(update, [_per_member(step_size, p) for p in self.params])
        torch._foreach_add_(self.params, update)

    def state_dict(self, members: list[int]) -> dict:
        """The given members' slices of the state (the shared Adam step count whole), on the CPU."""
        return {"family": self.family,
                "state": {k: v.cpu() if torch.is_tensor(v) else [t[members].cpu() for t in v]
                          for k, v in self.state.items()}}

    @torch.no_grad()
    def load_state_dict(self, payload: dict, members: list[int]) -> None:
        if payload["family"] != self.family or payload["state"].keys() != self.state.keys():
            raise ValueError("the checkpoint's optimizer state is of another kind")
        for key, saved in payload["state"].items():
            target = self.state[key]
            if torch.is_tensor(target):
                target.copy_(saved)
            else:
                for t, s in zip(target, saved):
                    t[members] = s.to(t.device)
