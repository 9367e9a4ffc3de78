"""The stacked MLP's loss gradients by backpropagation written out: the eager step's backward.

For a population of K members, layers l = 1..L with weights ``W_l`` ``(K, out_l, in_l)``, biases
``b_l`` ``(K, out_l)`` and the nonlinearity phi after every hidden layer, each member k with its
batch x ``(B, in)`` and targets y ``(B,)``::

    forward    z_l = h_{l-1} W_l^T + b_l,   h_l = phi(z_l),   h_0 = x,   logits = z_L
    loss       L_k = (1/B) sum_i loss(z_L,i, y_i)
    backward   d_L = dL_k/dz_L = (1/B) * (sigmoid(z) - y)            two classes, BCE on one logit
                                 (1/B) * (softmax(z) - onehot(y))     C classes, cross-entropy
                                 (1/B) * 2 (z - y)                    regression, squared error
               dL_k/dW_l = d_l^T h_{l-1},   dL_k/db_l = sum_i d_l,i
               d_{l-1} = (d_l W_l) * phi'(z_{l-1})

phi' times the incoming gradient is torch's own backward kernel of each nonlinearity (the one
autograd calls): ``threshold_backward`` (ReLU), ``tanh_backward``, ``sigmoid_backward``,
``leaky_relu_backward`` (from the output h), ``gelu_backward`` (from z).

Why by hand rather than ``torch.autograd``: on the CPU the study's populations (200 members of
2-64-64-1, batch 64) spend most of a step outside the three 64 x 64 x 64 matrix products that are
its arithmetic. Autograd's backward of ``baddbmm`` forms the output layer's input gradient as a
batched matrix product of inner size 1 and the first layer's weight gradient with an output of
width 2 (both shapes MKL runs several times slower than their size), and allocates every
intermediate anew. Written out, each product is oriented so that its result's last dimension is
the wider one, a product of inner size 1 is a broadcast multiply, and the nonlinearities' outputs
are formed in place. ``python scripts/bench_backprop.py`` measures both (interleaved); the tests
hold this module to autograd's gradients, member by member, for every nonlinearity and loss.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from initopt.engine.population import activation_stats, nonlinearity, stacked_linear

aten = torch.ops.aten

# g <- g * phi'(z) for each nonlinearity, in place, from its output h or its input z (autograd's kernels)
_BACKWARD = {
    nn.ReLU: lambda g, h, z, m: aten.threshold_backward.grad_input(g, h, 0, grad_input=g),
    nn.Tanh: lambda g, h, z, m: aten.tanh_backward.grad_input(g, h, grad_input=g),
    nn.Sigmoid: lambda g, h, z, m: aten.sigmoid_backward.grad_input(g, h, grad_input=g),
    nn.LeakyReLU: lambda g, h, z, m: aten.leaky_relu_backward.grad_input(g, h, m.negative_slope, True,
                                                                         grad_input=g),
    nn.GELU: lambda g, h, z, m: aten.gelu_backward.grad_input(g, z, approximate=m.approximate, grad_input=g),
    nn.Identity: lambda g, h, z, m: g,
}


class StackedBackprop:
    """Losses ``(K,)`` and gradients of a stacked MLP's parameters (see module doc).

    ``layers``: (name, has bias, nonlinearity module or None) in forward order, as
    :class:`~initopt.engine.population.Population` lists them.
    """

    def __init__(self, layers: list[tuple[str, bool, nn.Module | None]], names: list[str], num_classes: int):
        self.layers, self.names, self.num_classes = layers, names, num_classes

    @staticmethod
    def supports(layers: list[tuple[str, bool, nn.Module | None]]) -> bool:
        """Every nonlinearity has a known backward (or there is none: a linear layer)."""
        return all(act is None or type(act) in _BACKWARD for _, _, act in layers)

    @torch.no_grad()
    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 activations: list | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(losses (K,), gradients in the order of names)``; ``x`` ``(K, B, in)`` or ``(B, in)``,
        ``y`` ``(K, B)`` or ``(B,)``. With a list ``activations``, each hidden layer's output
        statistics ``(K, 2)`` (std, mean) are appended to it, as ``Population.forward`` does."""
        k = params[self.names[0]].shape[0]
        h = x if x.dim() == 3 else x.expand(k, *x.shape)
        y = y if y.dim() == 2 else y.expand(k, *y.shape)
        saved = []  # per layer: its input h_{l-1}, its pre-activation z_l, its output h_l
        for name, has_bias, act in self.layers:
            z = stacked_linear(params, name, has_bias, h)
            out = z if act is None else nonlinearity(act, z)  # in place where phi' needs only the output
            if act is not None and activations is not None:
                activations.append(activation_stats(out))
            saved.append((h, z, out))
            h = out
        losses, delta = self._loss_and_delta(h, y)
        grads: dict[str, torch.Tensor] = {}
        for i in range(len(self.layers) - 1, -1, -1):
            name, has_bias, _ = self.layers[i]
            h_in = saved[i][0]
            grads[f"{name}.weight"] = _weight_grad(delta, h_in)
            if has_bias:
                grads[f"{name}.bias"] = delta.sum(1)
            if i == 0:
                break
            _, z_prev, h_prev = saved[i - 1]
            act_prev = self.layers[i - 1][2]
            delta = _input_grad(delta, params[f"{name}.weight"])  # a new tensor: updated in place
            if act_prev is not None:
                _BACKWARD[type(act_prev)](delta, h_prev, z_prev, act_prev)
        return losses, [grads[n] for n in self.names]

    def _loss_and_delta(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_k (K,), d_L = dL_k/dlogits (K, B, out))`` (see module doc)."""
        k, b = y.shape[:2]
        scale = 1.0 / b
        if self.num_classes == 0:
            residual = logits.squeeze(-1) - y
            return residual.square().mean(1), (residual * (2 * scale)).unsqueeze(-1)
        if self.num_classes == 2:
            z = logits.squeeze(-1)
            losses = F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(1)
            return losses, ((torch.sigmoid(z) - y) * scale).unsqueeze(-1)
        flat = logits.reshape(k * b, -1)
        losses = F.cross_entropy(flat, y.reshape(k * b), reduction="none").view(k, b).mean(1)
        delta = torch.softmax(flat, dim=1)
        delta[torch.arange(k * b, device=y.device), y.reshape(-1)] -= 1
        return losses, (delta * scale).view_as(logits)


def _weight_grad(delta: torch.Tensor, h_in: torch.Tensor) -> torch.Tensor:
    """``d^T h_in`` ``(K, out, in)``, as the product whose result's last dimension is the wider
    (MKL's batched products are slow when it is narrow: the first layer's ``in`` is 2)."""
    if delta.shape[-1] > h_in.shape[-1]:
        return torch.bmm(h_in.transpose(1, 2), delta).transpose(1, 2).contiguous()
    return torch.bmm(delta.transpose(1, 2), h_in)


def _input_grad(delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``d W`` ``(K, B, in)``; for one output unit a broadcast product ``d * w`` (inner size 1)."""
    if weight.shape[1] == 1:
        return delta * weight
    return torch.bmm(delta, weight)
