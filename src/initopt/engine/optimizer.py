"""The optimizers of a population, with per-member hyperparameters as tensors.

Every hyperparameter is a ``(K,)`` tensor (one value per member), broadcast over each stacked
parameter ``(K, *shape)`` through views built once, so members with different learning rates,
momenta or Adam betas step together in ``torch._foreach_*`` kernels, with no host
synchronisation (capturable). Each update is ``torch.optim``'s, member by member (the tests
compare them in float64):

* family ``sgd`` covers plain SGD and both momentum forms (``initopt.optim``)::

      g <- g + wd w ;  buf <- mu buf + g  (buf_0 = 0, so buf_1 = g) ;  w <- w - lr buf

  with (lr, mu) = (lr, 0) for ``sgd``, (lr beta, 1 - beta) for EMA momentum (homework eq. 6) and
  (lr, 1 - beta) for heavy ball: exactly ``torch.optim.SGD(lr, momentum=mu, weight_decay=wd)``.
* family ``adam``, ``torch.optim.Adam``, with each member's own step count t::

      g <- g + wd w ;  m <- m + (1 - b1)(g - m) ;  v <- b2 v + (1 - b2) g^2 ;  t <- t + 1
      w <- w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

**State.** Each member's state is complete on its own (:meth:`member_state`): the SGD family
always has a momentum buffer (zero for a member whose momentum is 0, as ``torch.optim.SGD``
without momentum has none), Adam has ``exp_avg``, ``exp_avg_sq`` and the member's own ``step``.

**Adam in one pass.** While every member is alive, on the CPU, with one step count and one
(beta1, beta2, eps) for all (a sweep over learning rates), Adam's update is torch's own fused
kernel (``torch._fused_adam_``, what ``torch.optim.Adam(fused=True)`` calls: one pass over g, m
and v) with lr 1 on a zeroed scratch ``s``, then each member's own lr::

      s <- 0 ;  m, v, s <- fused Adam (lr 1) ;  w <- w + lr s      (s = -m_hat / (sqrt(v_hat) + eps))

the same update as above up to rounding (~1e-13 relative in float64), in ~1/2-1/3 of the time of
the ten ``torch._foreach_*`` passes (``scripts/bench_adam.py``: 200 toy members 2.2 ms, not 6.6;
20 members 1.8x, 400 3.1x faster; the deep model's 2.1-2.7x).
A population the kernel cannot take (members frozen, betas per member, another device) takes the
passes.

**Frozen members.** A member that is no longer alive (it diverged) does not move, and neither
does its optimizer state: its coefficients are the neutral ones (lr 0, momentum 1, weight decay
0, Adam's 1 - b1 0, b2 1, 1 - b2 0, eps 1 (a denominator away from 0), step increment 0) and its
gradient is masked to zero.
:meth:`set_alive` writes those coefficients into buffers allocated once (the views over them
stay valid); :meth:`step` (every member alive, nothing masked) and :meth:`masked_step` (a
``(K,)`` alive mask) are the two updates.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from initopt.optim import momentum_sgd_arguments

FAMILIES = ("sgd", "adam")
# What a frozen member's coefficient is, per coefficient (see module doc).
_NEUTRAL = {"neg_lr": 0.0, "momentum": 1.0, "weight_decay": 0.0, "one_minus_beta1": 0.0, "beta2": 1.0,
            "one_minus_beta2": 0.0, "eps": 1.0, "increment": 0.0}


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


def per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(K,)`` -> ``(K, 1, ..., 1)``, a view broadcastable over a stacked parameter."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _coefficients(family: str, hyper: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-member coefficients the update multiplies by, for live members."""
    coef = {"neg_lr": -hyper["lr"], "weight_decay": hyper["weight_decay"].clone()}
    if family == "sgd":
        coef["momentum"] = hyper["momentum"].clone()
    else:
        coef.update(one_minus_beta1=1 - hyper["beta1"], beta2=hyper["beta2"].clone(),
                    one_minus_beta2=1 - hyper["beta2"], eps=hyper["eps"].clone(),
                    increment=torch.ones_like(hyper["lr"]))
    return coef


def fused_adam_scratch(params: list[torch.Tensor], family: str, hyper: dict[str, list[float]]):
    """The scratch tensors of Adam's fused path (see module doc), or None where it does not apply:
    not Adam, not the CPU, a dtype the kernel does not take, or betas or eps that differ between members."""
    uniform = family == "adam" and all(len(set(hyper[k])) == 1 for k in ("beta1", "beta2", "eps"))
    usable = (params[0].device.type == "cpu" and params[0].dtype in (torch.float32, torch.float64)
              and all(p.is_contiguous() for p in params))
    if not (uniform and usable and hasattr(torch, "_fused_adam_")):
        return None
    return [torch.zeros_like(p) for p in params]


class PopulationOptimizer:
    """``torch.optim``'s SGD / momentum / Adam for K members at once (see module doc)."""

    def __init__(self, params: list[torch.Tensor], family: str, hyper: dict[str, list[float]]):
        if family not in FAMILIES:
            raise ValueError(f"unknown optimizer family {family!r}")
        self.params, self.family = params, family
        like = params[0]
        self.hyper = {k: torch.tensor(v, dtype=like.dtype, device=like.device) for k, v in hyper.items()}
        self.uses_weight_decay = any(v != 0 for v in hyper["weight_decay"])
        self.uses_momentum = family == "sgd" and any(v != 0 for v in hyper["momentum"])
        self._live = _coefficients(family, self.hyper)  # the coefficients of live members, kept
        self.coef = {k: v.clone() for k, v in self._live.items()}  # what the update uses (set_alive)
        self._neutral = {k: torch.full_like(v, _NEUTRAL[k]) for k, v in self._live.items()}
        self._views = {k: [per_member(v, p) for p in params] for k, v in self.coef.items()}
        self._scratch = fused_adam_scratch(params, family, hyper)
        self._fused_betas = {k: hyper[k][0] for k in ("beta1", "beta2", "eps")} if self._scratch is not None else {}
        self._one_step: bool | None = True  # every member at the same Adam step (None: not known, read it)
        self.state: dict[str, list[torch.Tensor] | torch.Tensor] = {}
        if family == "sgd":
            self.state["momentum_buffer"] = [torch.zeros_like(p) for p in params]
        else:
            self.state["exp_avg"] = [torch.zeros_like(p) for p in params]
            self.state["exp_avg_sq"] = [torch.zeros_like(p) for p in params]
            self.state["step"] = torch.zeros(len(hyper["lr"]), dtype=like.dtype, device=like.device)
            # bias corrections, recomputed in place each step (their views are built once)
            self._step_size = torch.zeros_like(self.state["step"])
            self._bias2_sqrt = torch.zeros_like(self.state["step"])
            self._views["step_size"] = [per_member(self._step_size, p) for p in params]
            self._views["bias2_sqrt"] = [per_member(self._bias2_sqrt, p) for p in params]

    def static_tensors(self) -> list[torch.Tensor]:
        """Every tensor the update mutates or reads across steps (static addresses for capture)."""
        tensors = [*self.coef.values()]
        for value in self.state.values():
            tensors += [value] if torch.is_tensor(value) else value
        if self.family == "adam":
            tensors += [self._step_size, self._bias2_sqrt]
        return tensors

    @torch.no_grad()
    def set_alive(self, alive: torch.Tensor) -> None:
        """The coefficients for this ``(K,)`` alive mask, written in place (no host sync)."""
        for key, coef in self.coef.items():
            torch.where(alive, self._live[key], self._neutral[key], out=coef)

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], all_alive: bool = True) -> None:
        """One update of every member, its gradients all finite (the eager path while all live;
        ``all_alive`` False: frozen members' coefficients are the neutral ones)."""
        if self.uses_weight_decay:
            grads = torch._foreach_add(grads, torch._foreach_mul(self.params, self._views["weight_decay"]))
        if self.family == "sgd":
            self._sgd(grads)
        elif all_alive and self._fusable() and self._one_step_count():
            self._adam_fused(grads)
        else:
            self._adam(grads)
            if not all_alive:  # frozen members' step counts stood still
                self._one_step = None

    @torch.no_grad()
    def masked_step(self, grads: list[torch.Tensor], alive: torch.Tensor) -> None:
        """One update; members not ``alive`` ``(K,)`` keep weights and state (after :meth:`set_alive`).
        Every member alive (a false alarm), the update is the plain one's, by the same path."""
        all_alive = self._fusable() and bool(alive.all())  # (a host read: the fused path is the CPU's)
        self.step([torch.where(per_member(alive, g), g, 0) for g in grads], all_alive=all_alive)

    def _sgd(self, grads: list[torch.Tensor]) -> None:
        direction = grads
        if self.uses_momentum:
            bufs = self.state["momentum_buffer"]
            torch._foreach_mul_(bufs, self._views["momentum"])
            torch._foreach_add_(bufs, grads)
            direction = bufs
        torch._foreach_addcmul_(self.params, direction, self._views["neg_lr"])

    def _fusable(self) -> bool:
        """Adam's fused path applies (see module doc), and no graph is being traced (the compiled
        step keeps the passes: it reads nothing back)."""
        return self._scratch is not None and not torch.compiler.is_compiling()

    def _one_step_count(self) -> bool:
        """Every member at the same Adam step: known while every update moved every member (the
        counts start equal), read back (the fused path is the CPU's) after a masked update or a
        member's state loaded."""
        if self._one_step is None:
            t = self.state["step"]
            self._one_step = bool((t == t[0]).all())
        return self._one_step

    def _adam_fused(self, grads: list[torch.Tensor]) -> None:
        """Adam through torch's fused kernel on a scratch, then each member's lr (see module doc)."""
        t, scratch = self.state["step"], self._scratch
        grads = [g if g.is_contiguous() else g.contiguous() for g in grads]  # the kernel walks memory in order
        t.add_(self.coef["increment"])
        torch._foreach_zero_(scratch)
        torch._fused_adam_(scratch, grads, self.state["exp_avg"], self.state["exp_avg_sq"], [], [t[0]] * len(scratch),
                           lr=1.0, weight_decay=0.0, amsgrad=False, maximize=False, **self._fused_betas)
        torch._foreach_addcmul_(self.params, scratch, self._views["neg_lr"], value=-1)

    def _adam(self, grads: list[torch.Tensor]) -> None:
        c, m, v, t = self.coef, self.state["exp_avg"], self.state["exp_avg_sq"], self.state["step"]
        t.add_(c["increment"])
        # step_size = -lr / (1 - b1^t), bias2_sqrt = sqrt(1 - b2^t); t >= 1 keeps a frozen member's
        # (never stepped) corrections finite; its lr is 0
        t1 = t.clamp_min(1)
        torch.pow(self.hyper["beta1"], t1, out=self._step_size)
        torch.div(c["neg_lr"], self._step_size.neg_().add_(1), out=self._step_size)
        torch.pow(self.hyper["beta2"], t1, out=self._bias2_sqrt)
        self._bias2_sqrt.neg_().add_(1).sqrt_()
        torch._foreach_lerp_(m, grads, self._views["one_minus_beta1"])
        torch._foreach_mul_(v, self._views["beta2"])
        torch._foreach_addcmul_(v, grads, torch._foreach_mul(grads, self._views["one_minus_beta2"]))
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, self._views["bias2_sqrt"])
        torch._foreach_add_(denom, self._views["eps"])
        update = torch._foreach_div(m, denom)
        torch._foreach_addcmul_(self.params, update, self._views["step_size"])

    # ------------------------------------------------------------------ member states
    def member_state(self, k: int) -> dict:
        """Member ``k``'s optimizer state, complete on its own, on the CPU (see module doc)."""
        state: dict = {"family": self.family}
        if self.family == "sgd":
            moving = float(self.hyper["momentum"][k]) != 0
            state["momentum_buffer"] = [b[k].cpu().clone() if moving else torch.zeros_like(b[k], device="cpu")
                                        for b in self.state["momentum_buffer"]]
        else:
            state["exp_avg"] = [t[k].cpu().clone() for t in self.state["exp_avg"]]
            state["exp_avg_sq"] = [t[k].cpu().clone() for t in self.state["exp_avg_sq"]]
            state["step"] = float(self.state["step"][k])
        return state

    @torch.no_grad()
    def load_member_state(self, k: int, state: dict) -> None:
        """Slot ``k`` <- a member's optimizer state (from any population, or a single run)."""
        self._one_step = None  # its step count may be another's
        if state["family"] != self.family:
            raise ValueError(f"the member's optimizer state is of family {state['family']!r}, "
                             f"this population's is {self.family!r}")
        for key, value in state.items():
            if key == "family":
                continue
            target = self.state[key]
            if torch.is_tensor(target):
                target[k] = value
            else:
                for t, saved in zip(target, value):
                    t[k] = saved.to(t.device)
