"""One training step of every member of a population: a lean eager step and a capturable one.

step t, for each member k with batch (x_k, y_k):

    L_k = mean loss of f(w_k; x_k) against y_k     (L = sum_k L_k, so dL/dw_k = dL_k/dw_k)
    g_k = dL_k / dw_k
    record [||g_kp||_2 for each tensor p, L_k] when the step is recorded
    member k diverges at step t if L_k or an entry of g_k is not finite (the values themselves
    are tested, never a norm that can overflow): it is frozen, weights and optimizer state as
    they were after step t - 1
    w_k <- optimizer update, for members still alive

Two implementations of the same arithmetic (as ``torch.optim`` keeps a ``capturable`` one):

* **eager** (:meth:`TrainStep.eager`, the CPU default): the batched MLP's gradients by
  backpropagation written out (:mod:`~initopt.engine.backprop`, autograd's gradients in fewer and
  cheaper kernels), any other model's by ``torch.autograd.grad`` on leaves made once; one
  finiteness number read back per step (free on the CPU) and a branch on the host:
  while every member is alive, no masking at all; after a divergence, the masked update.
  Gradient norms only on recorded steps.
* **capturable** (:meth:`TrainStep.__call__`, for ``torch.compile``): branchless, no host
  sync, static shapes (the batch is gathered into buffers allocated once): ``alive`` is updated
  on the device, the update always masked, each member's step count kept on the device (the
  host derives where a member diverged from it at flush time). It compiles whole with
  ``torch.compile(fullgraph=True)``; the state it mutates is marked as static addresses so
  ``mode="reduce-overhead"`` captures it as a CUDA graph.
"""

from __future__ import annotations

import math

import torch
from torch.func import grad_and_value

from initopt.engine.backprop import StackedBackprop
from initopt.engine.optimizer import PopulationOptimizer
from initopt.engine.population import Population, member_losses
from initopt.probes import ActivationRecorder, StepRecorder, all_finite_witness, finite_members, member_grad_norms


class TrainStep:
    """The step functions and the device state they update (batch buffers, alive, records)."""

    def __init__(self, population: Population, optimizer: PopulationOptimizer, num_classes: int,
                 recorder: StepRecorder | None, activations: ActivationRecorder | None):
        self.population, self.optimizer, self.num_classes = population, optimizer, num_classes
        self.recorder, self.activations = recorder, activations
        self._leaves = [population.leaves[n] for n in population.names]
        # each member's step (updates applied), kept on the device by the capturable step
        self.member_steps = torch.zeros(population.k, dtype=torch.long, device=population.device)
        self.all_alive = True  # host: the eager step's branch
        self.newly_diverged: list[int] = []  # host: members the last eager step froze
        self.last_grads: list[torch.Tensor] = []
        self._x_buf: torch.Tensor | None = None
        self._y_buf: torch.Tensor | None = None
        self._functional_grad = grad_and_value(self._loss, has_aux=True)
        layers = population.mlp_layers
        # the eager step's backward: written out for the batched MLP, else autograd's
        self.backprop = StackedBackprop(layers, population.names, num_classes) \
            if layers is not None and StackedBackprop.supports(layers) else None

    def _loss(self, params: dict, x: torch.Tensor, y: torch.Tensor, with_activations: bool):
        stats: list[torch.Tensor] | None = [] if with_activations else None
        logits = self.population.forward(params, x, stats)
        y = y if y.dim() == 2 else y.expand(self.population.k, *y.shape)
        losses = member_losses(logits, y, self.num_classes)
        return losses.sum(), (losses.detach(), _stacked_stats(stats, losses))

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

    def eager(self, x: torch.Tensor, y: torch.Tensor, record: bool, with_activations: bool) -> torch.Tensor:
        """One step of every member (see module doc); the members it froze in ``newly_diverged``.
        Returns the ``(K, L, 2)`` activation stats when asked (else empty)."""
        losses, grads, stats = self._losses_and_grads(x, y, with_activations)
        self.last_grads = grads  # for the (off-step) histograms of initopt.layerstats
        self.newly_diverged = []
        if self._record_and_check(grads, losses, record):
            self.optimizer.step(grads)
            return stats
        alive = self.population.alive
        finite = finite_members(grads, losses)
        newly = alive & ~finite
        if newly.any():
            self.newly_diverged = newly.nonzero().flatten().tolist()
            alive &= finite
            self.optimizer.set_alive(alive)
            self.all_alive = False
        self.optimizer.masked_step(grads, alive)
        return stats

    def _losses_and_grads(self, x: torch.Tensor, y: torch.Tensor, with_activations: bool):
        """``(losses (K,), gradients, activation stats (K, L, 2) or empty)`` of the eager step:
        by :class:`~initopt.engine.backprop.StackedBackprop` where it applies, else autograd."""
        if self.backprop is None:
            total, (losses, stats) = self._loss(self.population.leaves, x, y, with_activations)
            return losses, list(torch.autograd.grad(total, self._leaves)), stats
        collected: list[torch.Tensor] | None = [] if with_activations else None
        losses, grads = self.backprop(self.population.params, x, y, collected)
        return losses, grads, _stacked_stats(collected, losses)

    def _record_and_check(self, grads: list[torch.Tensor], losses: torch.Tensor, record: bool) -> bool:
        """The step's record when it is recorded; whether the plain update may follow: every member
        alive and a witness (one number read back) finite, the sum of the record or of the
        gradients. While every member is alive the norms are taken in float32 first, again exactly
        (float64) when their sum is not finite (an overflowing float32 square, or a non-finite
        entry); once one is frozen, exactly, and nothing is read back (the masked update follows
        anyway). A non-finite witness may be a false alarm: the caller then tests exactly."""
        recording = record and self.recorder is not None
        if not self.all_alive:
            if recording:
                self.recorder.write_at_host_slot(member_grad_norms(grads), losses)
            return False
        if not recording:
            return math.isfinite(all_finite_witness(grads, losses).item())
        if math.isfinite(self.recorder.write_at_host_slot(member_grad_norms(grads, exact=False), losses).item()):
            return True
        return math.isfinite(self.recorder.write_at_host_slot(member_grad_norms(grads), losses).item())

    def freeze(self, members: list[int]) -> None:
        """Members found non-finite outside the step (an evaluation): frozen from now on."""
        self.population.alive[members] = False
        self.optimizer.set_alive(self.population.alive)
        self.all_alive = bool(self.population.alive.all())

    def __call__(self, x: torch.Tensor, y: torch.Tensor, record: bool, with_activations: bool) -> torch.Tensor:
        """The capturable step (see module doc): no host sync; returns the activation stats."""
        grads, (_, (losses, stats)) = self._functional_grad(self.population.params, x, y, with_activations)
        grads = [grads[n] for n in self.population.names]
        self.last_grads = grads
        alive = self.population.alive
        alive.logical_and_(finite_members(grads, losses))
        self.member_steps.add_(alive)
        if record and self.recorder is not None:
            self.recorder.write(member_grad_norms(grads), losses)
        self.optimizer.set_alive(alive)
        self.optimizer.masked_step(grads, alive)
        return stats

    def static_tensors(self) -> list[torch.Tensor]:
        """What the capturable step mutates in place: fixed addresses, for CUDA graphs."""
        tensors = [*self.population.params.values(), self.population.alive, self.member_steps,
                   *self.optimizer.static_tensors()]
        if self.recorder is not None:
            tensors += [self.recorder.rows, self.recorder.slot]
        return tensors


def _stacked_stats(stats: list[torch.Tensor] | None, losses: torch.Tensor) -> torch.Tensor:
    """Each hidden layer's ``(K, 2)`` activation statistics as ``(K, L, 2)``; empty when none were taken."""
    return torch.stack(stats, dim=1) if stats else losses.new_zeros(0)


def compiled(step: TrainStep, requested: str, device: torch.device):
    """The step function to call: the eager step when ``requested`` is ``off`` (or ``auto`` off
    CUDA); else the capturable step under ``torch.compile(fullgraph=True)`` (on CUDA
    ``mode="reduce-overhead"``: CUDA graphs, the step's launches replayed as one), its mutated
    state marked as static addresses.

    A first call that fails before it changed any state (compilation refused) falls back to the
    eager step with a one-line note. Any later failure, or one after the step had started to
    update the state (an out-of-memory error mid-step, say), is raised: a step is never applied
    twice.
    """
    if requested == "off" or (requested == "auto" and device.type != "cuda"):
        return step.eager
    static = step.static_tensors()
    for tensor in static:
        torch._dynamo.mark_static_address(tensor)
    mode = "reduce-overhead" if device.type == "cuda" else None
    fast = torch.compile(step, fullgraph=True, mode=mode)
    state = {"fn": None}

    def first_call(*args):
        versions = [t._version for t in static]
        try:
            out = fast(*args)
        except Exception as err:
            if [t._version for t in static] != versions:  # the step began to apply: never rerun it
                raise
            from initopt.config import first_line

            print(f"compile={requested}: falling back to the eager step ({first_line(err, 140)})")
            state["fn"] = step.eager
            return step.eager(*args)
        state["fn"] = fast
        return out

    def call(*args):
        return (state["fn"] or first_call)(*args)

    return call
