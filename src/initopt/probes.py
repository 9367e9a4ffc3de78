"""Per-step statistics of every member, written on the device into buffers allocated once.

A recorded step stores, for each member k of a population of K,
``[||g_k1||_2, ..., ||g_kP||_2, loss_k]``: the L2 norm of the gradient of each parameter tensor
(weight and bias per layer, accumulated in float64) and the mini-batch loss, into a row of a
device buffer ``(capacity, K, P + 1)`` (at a device-side slot in the capturable step, so
recording needs no host sync and the step can be captured). :meth:`StepRecorder.drain` copies
the filled rows to the host once. The summaries are derived on the host, per member:

* mean gradient norm (the homework's):  (1/P) sum_p ||g_p||_2
* global gradient norm:                 sqrt(sum_p ||g_p||_2^2)

and, on the device in the same copy, the window mean (1/n) sum_steps ||g_p||_2 over the n steps
drained together (the flush window): the smoothed gradient norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def member_grad_norms(grads: list[torch.Tensor], exact: bool = True) -> torch.Tensor:
    """``(K, P)``: ||g_kp||_2 for member k and parameter tensor p (grads stacked ``(K, *shape)``).

    ``exact``: accumulated in float64, so finite float32 gradients never give an infinite norm (in
    float32 the squares overflow from entries of ~1e19). Else in the gradients' own dtype, ~5x
    faster on the CPU (a population's (200, 64, 64) tensor: 0.5 ms, float64 2.3 ms), the same to
    float32's rounding, but infinite where such squares overflow: the eager step recomputes a
    step's norms exactly whenever one is not finite. K = 1: one ``torch._foreach_norm`` call;
    else one reduction per tensor over each member's dimensions.
    """
    dtype = torch.float64 if exact else None
    if grads[0].shape[0] == 1:
        return torch.stack(torch._foreach_norm(grads, 2, dtype=dtype)).unsqueeze(0)
    return torch.stack([torch.linalg.vector_norm(g, dim=_member_dims(g), dtype=dtype) for g in grads], dim=1)


def _member_dims(t: torch.Tensor) -> tuple[int, ...]:
    """The dimensions of a stacked tensor ``(K, *shape)`` that belong to one member."""
    return tuple(range(1, t.dim()))


def all_finite_witness(grads: list[torch.Tensor], losses: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor that is finite when every gradient entry and every loss is: the sum of them all
    (NaN and inf propagate through a sum). A sum of finite values may overflow (entries of ~1e38),
    so a non-finite witness only sends the step to the exact test, :func:`finite_members`. (The
    largest absolute value, ``torch._foreach_norm`` with ord inf, cannot overflow, but takes ~20x
    the time on the CPU: 4.3 ms against 0.19 ms for a 200-member population's gradients.)"""
    return torch.stack([t.sum() for t in (*grads, losses)]).sum()


def finite_members(grads: list[torch.Tensor], losses: torch.Tensor) -> torch.Tensor:
    """``(K,)`` bool: member k's loss and every entry of its gradients are finite."""
    per_tensor = torch.stack([torch.isfinite(g).all(dim=_member_dims(g)) for g in grads], dim=1)
    return per_tensor.all(dim=1) & torch.isfinite(losses)


@dataclass
class StepRecords:
    """One member's records as host arrays, one row per recorded step."""

    steps: np.ndarray  # (n,) optimizer step numbers (1-based)
    walltimes: np.ndarray  # (n,) seconds since the epoch
    grad_norms: np.ndarray  # (n, P)
    loss: np.ndarray  # (n,)
    window_mean: np.ndarray | None = None  # (P,) mean of grad_norms over the n steps (the flush window)

    @property
    def mean_grad_norm(self) -> np.ndarray:
        return self.grad_norms.mean(axis=1)

    @property
    def global_grad_norm(self) -> np.ndarray:
        return np.sqrt((self.grad_norms**2).sum(axis=1))


@dataclass
class PopulationRecords:
    """What a drain hands to the sinks: ``rows`` ``(n, K, P + 1)`` (norms, then the loss) and
    ``window`` ``(K, P + 1)``, their mean over the n steps (computed on the device)."""

    steps: np.ndarray
    walltimes: np.ndarray
    rows: np.ndarray
    window: np.ndarray

    def member(self, k: int, until: int | None = None) -> StepRecords:
        """Member k's rows (those up to step ``until`` when given: where it diverged)."""
        keep = slice(None) if until is None else self.steps <= until
        return StepRecords(self.steps[keep], self.walltimes[keep], self.rows[keep, k, :-1], self.rows[keep, k, -1],
                           self.window[k, :-1] if until is None else None)

    def step_tables(self) -> np.ndarray:
        """``(K, n, P + 3)``: each member's ``[||g_1||, ..., ||g_P||, mean norm, global norm, loss]``
        at each step (the order of :func:`initopt.tb.step_tags`; :class:`StepRecords`' formulas)."""
        norms = self.rows[:, :, :-1]
        table = np.concatenate([norms, norms.mean(axis=2, keepdims=True),
                                np.sqrt((norms**2).sum(axis=2, keepdims=True)), self.rows[:, :, -1:]], axis=2)
        return table.transpose(1, 0, 2)

    def reduce(self, members: np.ndarray, how) -> StepRecords:
        """A summary over the given members, e.g. ``how=np.mean`` (NaN rows when there are none)."""
        picked = self.rows[:, members]
        table = how(picked, axis=1) if picked.shape[1] else np.full(picked.shape[:1] + picked.shape[2:], np.nan)
        window = how(self.window[members], axis=0)
        return StepRecords(self.steps, self.walltimes, table[:, :-1], table[:, -1], window[:-1])


class StepRecorder:
    """Device buffer of per-step rows (float64: the norms are computed in float64); the step
    writes a row, the host drains. The eager step writes at the host's row
    (:meth:`write_at_host_slot`), the capturable one at a device-side slot (:meth:`write`)."""

    def __init__(self, k: int, n_params: int, capacity: int, device: torch.device):
        self.rows = torch.zeros(capacity, k, n_params + 1, device=device, dtype=torch.float64)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.steps: list[int] = []
        self.times: list[float] = []

    def write(self, norms: torch.Tensor, losses: torch.Tensor) -> None:
        """Inside the capturable step: row ``slot`` <- [norms | loss] for every member; ``slot += 1``."""
        self.rows.index_copy_(0, self.slot, torch.cat([norms, losses.unsqueeze(1)], dim=1).unsqueeze(0))
        self.slot.add_(1)

    def write_at_host_slot(self, norms: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Eager: the next row (the host counts rows) <- [norms | loss]; returns the row's sum, a
        0-d tensor that is finite when every gradient entry and loss is (float64 norms of finite
        float32 values cannot overflow; an infinite sum sends the step to :func:`finite_members`)."""
        row = self.rows[len(self.steps)]
        torch.cat([norms, losses.unsqueeze(1)], dim=1, out=row)
        return row.sum()

    def mark(self, step: int, walltime: float) -> None:
        """On the host, after a recording step: which step the row belongs to."""
        self.steps.append(step)
        self.times.append(walltime)

    @property
    def full(self) -> bool:
        return len(self.steps) == len(self.rows)

    def drain(self) -> PopulationRecords:
        n = len(self.steps)
        block = self.rows[:n]
        host = torch.cat([block, block.mean(0, keepdim=True)]).cpu().numpy().astype(np.float64)  # one copy
        records = PopulationRecords(np.asarray(self.steps, dtype=np.int64), np.asarray(self.times), host[:n], host[n])
        self.steps.clear()
        self.times.clear()
        self.slot.zero_()
        return records


class ActivationRecorder:
    """Each hidden layer's output std and mean per member, ``(capacity, K, L, 2)`` on the device.

    The variance argument behind Xavier and He is about exactly these numbers: std and mean over
    all units and examples of the layer's output (after its nonlinearity), at initialization (on
    up to 1024 training examples) and every ``act_every`` steps (on the step's batch).
    """

    def __init__(self, names: list[str], k: int, capacity: int, device: torch.device, dtype: torch.dtype):
        self.names = names
        self.rows = torch.zeros(capacity, k, len(names), 2, device=device, dtype=dtype)
        self.steps: list[int] = []

    def write(self, step: int, stats: list[torch.Tensor]) -> None:
        """``stats``: one ``(K, 2)`` tensor (std, mean) per layer, in depth order."""
        self.rows[len(self.steps)] = torch.stack(stats, dim=1)
        self.steps.append(step)

    @property
    def full(self) -> bool:
        return len(self.steps) == len(self.rows)

    def drain(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, ``(n, K, L, 2)`` host array)."""
        n = len(self.steps)
        rows = self.rows[:n].cpu().numpy().astype(np.float64)
        steps = np.asarray(self.steps, dtype=np.int64)
        self.steps.clear()
        return steps, rows
