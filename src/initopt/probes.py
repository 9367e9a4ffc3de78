"""Per-step statistics of every member, written on the device into buffers allocated once.

A recorded step stores, for each member k of a population of K,
``[||g_k1||_2, ..., ||g_kP||_2, loss_k]``: the L2 norm of the gradient of each parameter tensor
(weight and bias per layer) and the mini-batch loss, into row ``slot`` of a device buffer
``(capacity, K, P + 1)``; ``slot`` is a device counter, so recording needs no host sync and the
step can be captured. :meth:`StepRecorder.drain` copies the filled rows to the host once. The
summaries are derived on the host, per member:

* mean gradient norm (the homework's):  (1/P) sum_p ||g_p||_2
* global gradient norm:                 sqrt(sum_p ||g_p||_2^2)

and, on the device in the same copy, the window mean (1/n) sum_steps ||g_p||_2 over the n steps
drained together (the flush window): the smoothed gradient norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def member_grad_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """``(K, P)``: ||g_kp||_2 for member k and parameter tensor p (grads stacked ``(K, *shape)``)."""
    k = grads[0].shape[0]
    return torch.stack([torch.linalg.vector_norm(g.reshape(k, -1), dim=1) for g in grads], dim=1)


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

    def reduce(self, members: np.ndarray, how) -> StepRecords:
        """A summary over the given members, e.g. ``how=np.mean`` (NaN rows when there are none)."""
        picked = self.rows[:, members]
        table = how(picked, axis=1) if picked.shape[1] else np.full(picked.shape[:1] + picked.shape[2:], np.nan)
        window = how(self.window[members], axis=0)
        return StepRecords(self.steps, self.walltimes, table[:, :-1], table[:, -1], window[:-1])


class StepRecorder:
    """Device buffer of per-step rows; the step writes at a device-side slot, the host drains."""

    def __init__(self, k: int, n_params: int, capacity: int, device: torch.device, dtype: torch.dtype):
        self.rows = torch.zeros(capacity, k, n_params + 1, device=device, dtype=dtype)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.steps: list[int] = []
        self.times: list[float] = []

    def write(self, norms: torch.Tensor, losses: torch.Tensor) -> None:
        """Inside the step: row ``slot`` <- [norms | loss] for every member; ``slot += 1``."""
        self.rows.index_copy_(0, self.slot, torch.cat([norms, losses.unsqueeze(1)], dim=1).unsqueeze(0))
        self.slot.add_(1)

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
