"""One training step of every member of a population, with no host synchronisation.

step t, for each member k with batch (x_k, y_k):

    L_k = mean loss of f(w_k; x_k) against y_k     (L = sum_k L_k, so dL/dw_k = dL_k/dw_k)
    g_k = dL_k / dw_k                               (torch.func.grad_and_value over the stacked params)
    record [||g_kp||_2 for each tensor p, L_k] at a device-side slot
    diverged_at_k <- t  if member k was active and L_k or a norm is non-finite
    w_k <- optimizer update, for members still active (the others stay where they were)

Shapes are static (the batch is gathered into buffers allocated once by device-side indices)
and nothing reads a value back to the host, so the function compiles whole with
``torch.compile(fullgraph=True)`` and can be captured as a CUDA graph; divergence is read
back only at flush time (:class:`initopt.engine.loop`).
"""

from __future__ import annotations

import torch
from torch.func import grad_and_value

from initopt.engine.optimizer import PopulationOptimizer
from initopt.engine.population import Population, member_losses
from initopt.probes import ActivationRecorder, StepRecorder, member_grad_norms


class TrainStep:
    """The step function and the device state it updates (batch buffers, divergence, records)."""

    def __init__(self, population: Population, optimizer: PopulationOptimizer, num_classes: int,
                 recorder: StepRecorder | None, activations: ActivationRecorder | None, functional: bool = False):
        self.population, self.optimizer, self.num_classes = population, optimizer, num_classes
        self.recorder, self.activations = recorder, activations
        device, k = population.device, population.k
        self.step_t = torch.zeros((), dtype=torch.long, device=device)
        self.diverged_at = torch.zeros(k, dtype=torch.long, device=device)  # 0 = still active
        # Eager: plain autograd (torch.func's transforms cost ~10x the toy step in Python);
        # to be compiled whole: torch.func.grad_and_value, which Dynamo traces without a break.
        self._grad = grad_and_value(self._loss, has_aux=True) if functional else self._autograd
        self._x_buf: torch.Tensor | None = None
        self.last_grads: list[torch.Tensor] = []
        self._y_buf: torch.Tensor | None = None

    def _loss(self, params: dict, x: torch.Tensor, y: torch.Tensor, with_activations: bool):
        stats: list[torch.Tensor] | None = [] if with_activations else None
        logits = self.population.forward(params, x, stats)
        y = y if y.dim() == 2 else y.expand(self.population.k, *y.shape)
        losses = member_losses(logits, y, self.num_classes)
        aux = (losses.detach(), torch.stack(stats, dim=1) if stats else losses.new_zeros(0))
        return losses.sum(), aux

    def _autograd(self, params: dict, x: torch.Tensor, y: torch.Tensor, with_activations: bool):
        """``torch.func.grad_and_value``'s result, by ``torch.autograd.grad``."""
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        total, aux = self._loss(leaves, x, y, with_activations)
        grads = torch.autograd.grad(total, list(leaves.values()))
        return dict(zip(leaves, grads)), (total.detach(), aux)

    def gather(self, x_all: torch.Tensor, y_all: torch.Tensor, idx: torch.Tensor | None):
        """The members' batches ``(K, B, ...)`` gathered into buffers allocated once (or all data)."""
        if idx is None:
            return x_all, y_all
        if self._x_buf is None:
            self._x_buf = x_all.new_empty(idx.numel(), *x_all.shape[1:])
            self._y_buf = y_all.new_empty(idx.numel(), *y_all.shape[1:])
        flat = idx.reshape(-1)
        torch.index_select(x_all, 0, flat, out=self._x_buf)
        torch.index_select(y_all, 0, flat, out=self._y_buf)
        return self._x_buf.view(*idx.shape, *x_all.shape[1:]), self._y_buf.view(idx.shape)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, record: bool, with_activations: bool):
        """One step of every member; returns the ``(K, L, 2)`` activation stats when asked (else empty)."""
        grads, (_, (losses, stats)) = self._grad(self.population.params, x, y, with_activations)
        grads = [grads[n] for n in self.population.names]
        self.last_grads = grads  # for the (off-step) histograms of initopt.layerstats
        norms = member_grad_norms(grads)
        self.step_t.add_(1)
        finite = torch.isfinite(losses) & torch.isfinite(norms).all(dim=1)
        self.diverged_at.copy_(torch.where((self.diverged_at == 0) & ~finite, self.step_t, self.diverged_at))
        if record and self.recorder is not None:
            self.recorder.write(norms, losses)
        self.optimizer.step(grads, self.diverged_at == 0)
        return stats


def compiled(step: TrainStep, requested: str, device: torch.device):
    """The step function to call: ``torch.compile(fullgraph=True)`` when ``requested`` is ``on``, or
    ``auto`` on CUDA (``mode="reduce-overhead"``: CUDA graphs, the step's ~60 launches replayed as
    one); else the eager step. A compile that fails falls back to eager with a one-line note."""
    if requested == "off" or (requested == "auto" and device.type != "cuda"):
        return step
    mode = "reduce-overhead" if device.type == "cuda" else None
    fast = torch.compile(step, fullgraph=True, mode=mode)
    state = {"fn": fast}

    def call(*args):
        if state["fn"] is fast:
            try:
                return fast(*args)
            except Exception as err:  # Dynamo / Inductor / capture refused: the eager step computes the same
                from initopt.config import first_line

                print(f"compile={requested}: falling back to the eager step ({first_line(err, 140)})")
                state["fn"] = step
        return state["fn"](*args)

    return call
