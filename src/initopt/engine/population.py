"""A population: K >= 1 members of one architecture, their parameters stacked and trained as one.

Member k is the run with its own seed, initialization and optimizer hyperparameters: its model
is built on the CPU after seeding its generator with ``seed_k`` and initialized there (so a seed gives
the same weights on every device), then its parameters become slice ``k`` of tensors of shape
``(K, *shape)`` on the run's device. A single run is K = 1.

The forward pass gives logits ``(K, B, out)``. For the MLP each layer is one batched matrix
product per layer, ``h <- act(b + h W^T)`` with ``torch.baddbmm`` (the same arithmetic as K
separate models, without vmap's per-operation batching cost); any other module goes through
``torch.func.vmap`` over ``functional_call``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from initopt.init import initialize
from initopt.models import MLP, build_model, count_parameters
from initopt.values import Config

# Above this many multiply-adds per member and step (batch x weights), stacking stops paying on a
# CPU: replicas_mode=auto then trains the members one after another (see scripts/bench.py).
STACK_MAX_MACS = 5e6


@dataclass(frozen=True)
class Member:
    """What differs between the members of a population: seed, initialization, optimizer."""

    seed: int
    init: Config  # the init and optim nodes, read by attribute (a config or its values)
    optim: Config


def seeded_model(model_cfg: DictConfig, init_cfg: DictConfig, seed: int, n_in: int, n_out: int,
                 dtype: torch.dtype) -> nn.Module:
    """The model a run with ``seed`` starts from, built and initialized on the CPU.

    ``torch.nn.init`` draws from the generator of the tensor's device: initializing on the CPU
    makes the weights of a seed the same whatever device the run then moves to. Only the CPU's
    generator is seeded (what ``torch.manual_seed`` does first): ``torch.manual_seed`` also queues
    a seed for each accelerator API (CUDA, XPU, MTIA) with a formatted stack trace apiece
    (~0.4 ms a member), and no draw here is made on them.
    """
    torch.default_generator.manual_seed(seed)
    model = build_model(model_cfg, n_in, n_out).to(dtype=dtype)
    initialize(model, init_cfg)
    return model


def forward_mode(mode: str, model: nn.Module, batch_size: int) -> str:
    """``stacked`` (batched MLP), ``vmap`` or ``sequential`` as asked; ``auto``: stacked (vmap for
    other modules) while a member-step is small, else sequential (members one after another)."""
    if mode != "auto":
        return mode
    if count_parameters(model) * batch_size > STACK_MAX_MACS:
        return "sequential"
    return "stacked" if isinstance(model, MLP) else "vmap"


class Population:
    """K models of one architecture as stacked tensors ``params[name]`` of shape ``(K, *shape)``.

    ``params`` are plain tensors, updated in place by the optimizer; ``leaves`` are the same
    storage as autograd leaves (``requires_grad``), made once, for the eager step's backward
    pass. ``alive`` ``(K,)`` bool, on the device: the members still training (a diverged member
    is frozen; the host keeps its ``diverged_step``).
    """

    def __init__(self, models: list[nn.Module], members: list[Member], device: torch.device,
                 batched_mlp: bool = True):
        self.k = len(models)
        self.members = members
        self.names = [n for n, _ in models[0].named_parameters()]
        self.params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).to(device)
                       for n in self.names}
        self.leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}
        self.alive = torch.ones(self.k, dtype=torch.bool, device=device)
        self._base = copy.deepcopy(models[0]).to("meta")
        self._layers = _mlp_layers(self._base) if batched_mlp and isinstance(self._base, MLP) else None
        self.activation_names = [n for n, _ in self._base.activation_layers()] \
            if isinstance(self._base, MLP) else []

    @property
    def device(self) -> torch.device:
        return self.params[self.names[0]].device

    @property
    def records_activations(self) -> bool:
        """Activation statistics come out of the batched MLP forward (not through vmap)."""
        return self._layers is not None and bool(self.activation_names)

    @property
    def mlp_layers(self) -> list[tuple[str, bool, nn.Module | None]] | None:
        """(linear layer name, has bias, nonlinearity or None) in forward order; None unless the
        forward pass is the batched MLP's (else it goes through vmap)."""
        return self._layers

    def tensors(self) -> list[torch.Tensor]:
        return [self.params[n] for n in self.names]

    def forward(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                activations: list | None = None, in_place: bool = False) -> torch.Tensor:
        """Logits ``(K, B, out)`` of the members whose stacked ``params`` are given (``K`` is their
        first dimension: the population's or a slice of it); ``x`` is ``(K, B, in)``, or
        ``(B, in)`` for all.

        When ``activations`` is a list, each hidden layer's output statistics ``(K, 2)`` (std,
        mean over all units and examples of a member) are appended to it. ``in_place``: each
        nonlinearity that has an in-place form overwrites its input (no autograd through it).
        """
        if self._layers is None:
            dims = (0, None) if x.dim() == 2 else (0, 0)
            return vmap(self._call, in_dims=dims)(params, x)
        h = x if x.dim() == 3 else x.expand(params[self.names[0]].shape[0], *x.shape)
        for name, has_bias, act in self._layers:
            h = stacked_linear(params, name, has_bias, h)
            if act is not None:
                h = nonlinearity(act, h) if in_place else act(h)
                if activations is not None:
                    activations.append(activation_stats(h))
        return h

    def _call(self, params, x):
        return functional_call(self._base, params, (x,))

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s weights as a plain model's ``state_dict`` (on the CPU)."""
        return {n: self.params[n][k].cpu().clone() for n in self.names}

    @torch.no_grad()
    def load_member_state_dict(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Slot ``k`` <- a plain model's ``state_dict`` (a member's weights from anywhere)."""
        for n, p in self.params.items():
            p[k] = state[n].to(p.device)


def stacked_linear(params: dict[str, torch.Tensor], name: str, has_bias: bool, h: torch.Tensor) -> torch.Tensor:
    """Layer ``name`` of every member: ``h W^T + b``, ``(K, B, out)`` from ``h`` ``(K, B, in)``."""
    w = params[f"{name}.weight"].transpose(1, 2)
    return torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, w) if has_bias else torch.bmm(h, w)


# nonlinearities with an in-place form (their output may overwrite their input)
IN_PLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_, nn.Identity: lambda z: z}


def nonlinearity(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``act(z)``, overwriting ``z`` where the nonlinearity has an in-place form (:data:`IN_PLACE`)."""
    in_place = IN_PLACE.get(type(act))
    return in_place(z) if in_place is not None else act(z)


def activation_stats(h: torch.Tensor) -> torch.Tensor:
    """``(K, 2)``: std and mean of each member's slice of a hidden layer's output ``h`` ``(K, B, units)``."""
    return torch.stack(torch.std_mean(h.detach().flatten(1), dim=1), dim=1)


def _mlp_layers(base: MLP) -> list[tuple[str, bool, nn.Module | None]]:
    """(linear layer name, has bias, the nonlinearity after it or None) in forward order."""
    children = list(base.named_children())
    layers = []
    for i, (name, module) in enumerate(children):
        if isinstance(module, nn.Linear):
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            layers.append((name, module.bias is not None, nxt if nxt is not None and
                           not isinstance(nxt, nn.Linear) else None))
    return layers


def build_population(model_cfg: DictConfig, members: list[Member], n_in: int, n_out: int,
                     device: torch.device, dtype: torch.dtype, mode: str = "stacked") -> Population:
    """Build every member on the CPU with its own seed and initialization, then stack on ``device``."""
    models = [seeded_model(model_cfg, m.init, m.seed, n_in, n_out, dtype) for m in members]
    return Population(models, members, device, batched_mlp=mode != "vmap")


def member_losses(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K,)``: each member's mean loss over its batch.

    Two classes: mean BCE-with-logits on one logit; C classes: mean cross-entropy on C logits;
    regression (``num_classes == 0``): mean squared error ``(1/B) sum_i (f(x_i) - y_i)^2``, no 1/2.
    """
    k, b = y.shape[:2]
    if num_classes == 0:
        return (logits.squeeze(-1) - y).square().mean(1)
    if num_classes == 2:
        per_example = F.binary_cross_entropy_with_logits(logits.squeeze(-1), y, reduction="none")
    else:
        per_example = F.cross_entropy(logits.reshape(k * b, -1), y.reshape(k * b), reduction="none").view(k, b)
    return per_example.mean(1)


def member_accuracies(logits: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """``(K,)``: fraction correct: sign of the logit for two classes, arg-max of the logits otherwise;
    NaN for regression (``num_classes == 0``), where there is no class to be right about."""
    if num_classes == 0:
        return logits.new_full(logits.shape[:1], float("nan"))
    predicted = (logits.squeeze(-1) > 0).to(y.dtype) if logits.shape[-1] == 1 else logits.argmax(-1)
    return (predicted == y).to(logits.dtype).mean(1)
