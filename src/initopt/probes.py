"""Per-step statistics computed on the device and buffered there until a flush.

Each recorded step keeps ``[||g_1||_2, ..., ||g_P||_2]`` and the batch loss as device
tensors: the L2 norm of every parameter tensor's gradient (weight and bias per layer),
from one ``_foreach_norm`` launch. Nothing is copied to the host until
:meth:`StepRecorder.drain`, so recording costs no host-device sync.
The summaries are derived at drain time on the host:

* mean gradient norm (the homework's):  (1/P) sum_p ||g_p||_2
* global gradient norm:                 sqrt(sum_p ||g_p||_2^2)

and, on the device in the same copy, the window mean (1/n) sum_steps ||g_p||_2 over the n
steps drained together (the flush window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def grad_norms(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """L2 norm of each tensor, one fused kernel launch (``torch._foreach_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` uses) instead of one launch per tensor."""
    return list(torch._foreach_norm(grads))


@dataclass
class StepRecords:
    """What a drain hands to the logger: host arrays, one row per recorded step."""

    steps: np.ndarray  # (n,) optimizer step numbers (1-based)
    walltimes: np.ndarray  # (n,) seconds since the epoch
    grad_norms: np.ndarray  # (n, P)
    loss: np.ndarray  # (n,)
    window_mean: np.ndarray | None = None  # (P,) mean of grad_norms over the n steps

    @property
    def mean_grad_norm(self) -> np.ndarray:
        return self.grad_norms.mean(axis=1)

    @property
    def global_grad_norm(self) -> np.ndarray:
        return np.sqrt((self.grad_norms**2).sum(axis=1))

    def first_non_finite_step(self) -> int | None:
        bad = ~np.isfinite(self.loss) | ~np.isfinite(self.grad_norms).all(axis=1)
        return int(self.steps[bad.argmax()]) if bad.any() else None


class StepRecorder:
    """Buffers up to ``capacity`` steps of norms on the device; :meth:`drain` empties it to the host.

    A step costs one ``_foreach_norm`` launch and two list appends; the stacking into one
    ``(n, P + 1)`` tensor and the single device-to-host copy happen at the drain.
    """

    def __init__(self, params: list[torch.nn.Parameter], capacity: int, device: torch.device):
        self.params = params
        self.capacity = capacity
        self._norms: list[tuple[torch.Tensor, ...]] = []
        self._losses: list[torch.Tensor] = []
        self._steps: list[int] = []
        self._times: list[float] = []

    def record(self, step: int, loss: torch.Tensor, walltime: float) -> None:
        """Store this step's gradient norms and loss (call after backward, before the step)."""
        self._norms.append(torch._foreach_norm([p.grad for p in self.params]))
        self._losses.append(loss.detach())
        self._steps.append(step)
        self._times.append(walltime)

    @property
    def full(self) -> bool:
        return len(self._steps) == self.capacity

    def drain(self) -> StepRecords:
        norms = torch.stack([torch.stack(n) for n in self._norms]) if self._norms else torch.zeros(0, len(self.params))
        losses = torch.stack(self._losses) if self._losses else torch.zeros(0)
        n = len(self._steps)
        # The window mean is taken on the device and comes back in the same copy as the norms.
        host = torch.cat([norms, norms.mean(0, keepdim=True)]).cpu().numpy().astype(np.float64) if n else None
        records = StepRecords(
            np.asarray(self._steps, dtype=np.int64), np.asarray(self._times),
            host[:n] if n else np.zeros((0, len(self.params))),
            losses.cpu().numpy().astype(np.float64), host[n] if n else None,
        )
        for buf in (self._norms, self._losses, self._steps, self._times):
            buf.clear()
        return records


class ActivationRecorder:
    """Mean and standard deviation of every hidden layer's output (after its nonlinearity).

    Forward hooks on the activation modules compute ``(std, mean)`` of the layer's output
    over the whole batch (all units, all examples) on the device while the hooks are armed;
    :meth:`record` stacks them into a device buffer row, :meth:`drain` copies the rows to
    the host. The variance argument behind Xavier and He is about exactly these numbers.
    """

    def __init__(self, layers: list[tuple[str, torch.nn.Module]], capacity: int, device, dtype):
        self.names = [name for name, _ in layers]
        self._rows = torch.zeros(capacity, 2 * len(layers), device=device, dtype=dtype)
        self._stats: list[torch.Tensor] = []
        self._steps: list[int] = []
        self.armed = False
        self._handles = [module.register_forward_hook(self._hook) for _, module in layers]

    def _hook(self, _module, _inputs, output: torch.Tensor) -> None:
        if self.armed:
            self._stats.extend(torch.std_mean(output.detach()))

    def record(self, step: int) -> None:
        """Store the stats the armed forward pass collected, as ``[std_1, mean_1, std_2, ...]``."""
        torch.stack(self._stats, out=self._rows[len(self._steps)])
        self._stats.clear()
        self._steps.append(step)
        self.armed = False

    @property
    def full(self) -> bool:
        return len(self._steps) == len(self._rows)

    def drain(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps, std per layer, mean per layer), host arrays."""
        n = len(self._steps)
        rows = self._rows[:n].cpu().numpy().astype(np.float64)
        steps = np.asarray(self._steps, dtype=np.int64)
        self._steps.clear()
        return steps, rows[:, 0::2], rows[:, 1::2]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

