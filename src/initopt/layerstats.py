"""Per-parameter-tensor statistics for TensorBoard, computed on the device, copied at a flush.

For every parameter tensor p of every member (a single run is one member; stacked replicas
are K, the leading dimension of each stacked tensor), with w_s its value after optimizer
step s (w_0 = the initialization) and g_s the gradient of step s (taken at w_{s-1}):

* ``weight_norm/<p>``  ||w_s||_2, at step 0 and every ``param_every`` steps;
* ``update_ratio/<p>`` ||w_s - w_{s-1}||_2 / ||w_s||_2, every ``param_every`` steps: the step
  actually applied (lr times the optimizer's update) relative to the weights, the usual
  health signal (around 1e-3 per step is typical; 0 where the step moved nothing);
* histograms of w_s at step 0 and every ``hist_every`` steps, and of g_s at step 1 (the
  gradient at initialization) and every ``hist_every`` steps: ``bins`` equal-width buckets
  between the tensor's min and max, counted on the device (:class:`Histogrammer`).

Nothing here syncs with the host; :meth:`ParamStatsRecorder.drain` copies everything at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

HIST_FIELDS = 4  # min, max, sum, sum of squares; then the bucket counts


def member_norms(tensors: list[torch.Tensor], members: int) -> torch.Tensor:
    """``(members, P)``: the L2 norm of each member's slice of each tensor."""
    if members == 1:
        return torch.stack(torch._foreach_norm(tensors)).unsqueeze(0)
    return torch.stack([t.reshape(members, -1).norm(dim=1) for t in tensors], dim=1)


class Histogrammer:
    """Histograms of all P tensors of a list at once, per member, in a fixed number of launches.

    Row ``[member, p]`` of the result holds min, max, sum, sum of squares and the counts of
    ``bins`` equal buckets on [min, max] of that member's slice of tensor p (bucket =
    floor(bins (x - min) / (max - min)), the maximum in the last bucket; all in the first when
    max = min). The tensors are concatenated and reduced by segment (``scatter_reduce``,
    ``scatter_add_``): no host sync, and no launch per tensor.
    """

    def __init__(self, numels: list[int], members: int, bins: int, device):
        self.members, self.bins, self.p = members, bins, len(numels)
        segment = torch.repeat_interleave(torch.arange(self.p, device=device), torch.tensor(numels, device=device))
        self.segment = segment.expand(members, -1)
        self.bucket_base = self.segment * bins

    def __call__(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        k, p, seg = self.members, self.p, self.segment
        x = torch.cat([t.detach().reshape(k, -1) for t in tensors], dim=1)
        lo = x.new_full((k, p), torch.inf).scatter_reduce_(1, seg, x, "amin")
        hi = x.new_full((k, p), -torch.inf).scatter_reduce_(1, seg, x, "amax")
        width = (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)
        idx = ((x - lo.gather(1, seg)) / width.gather(1, seg) * self.bins).long().clamp_(0, self.bins - 1)
        counts = x.new_zeros(k, p * self.bins).scatter_add_(1, self.bucket_base + idx, torch.ones_like(x))
        sums = x.new_zeros(k, p).scatter_add_(1, seg, x)
        squares = x.new_zeros(k, p).scatter_add_(1, seg, x * x)
        return torch.cat([torch.stack([lo, hi, sums, squares], dim=2), counts.view(k, p, self.bins)], dim=2)


@dataclass
class Histograms:
    """Host histograms of one kind (``weights`` or ``gradients``): ``rows[i, member, p]`` is
    the :class:`Histogrammer` row of tensor p at ``steps[i]``; ``numel`` elements per tensor."""

    steps: np.ndarray
    rows: np.ndarray  # (n, members, P, 4 + bins)
    numel: list[int]


@dataclass
class ParamStats:
    """What a drain hands to the logger: host arrays, a leading axis of recorded steps."""

    norm_steps: np.ndarray
    weight_norm: np.ndarray  # (n, members, P)
    ratio_steps: np.ndarray
    update_ratio: np.ndarray  # (m, members, P)
    histograms: dict[str, Histograms] = field(default_factory=dict)

    def member(self, r: int) -> ParamStats:
        """The same records for member ``r`` alone (a replica's own run)."""
        return ParamStats(self.norm_steps, self.weight_norm[:, r:r + 1], self.ratio_steps,
                          self.update_ratio[:, r:r + 1],
                          {k: Histograms(h.steps, h.rows[:, r:r + 1], h.numel) for k, h in self.histograms.items()})


class ParamStatsRecorder:
    """Buffers the statistics above on the device; call :meth:`at_init` once before training,
    :meth:`before_step` before the step and :meth:`after_step` after it."""

    def __init__(self, params: list[torch.Tensor], members: int = 1, param_every: int = 10,
                 hist_every: int = 100, bins: int = 30):
        self.params, self.members, self.bins = params, members, bins
        self.param_every, self.hist_every = param_every, hist_every
        self.numel = [p.numel() // members for p in params]
        self._histogram = Histogrammer(self.numel, members, bins, params[0].device) if hist_every else None
        self._norms: list[torch.Tensor] = []
        self._norm_steps: list[int] = []
        self._ratios: list[torch.Tensor] = []
        self._ratio_steps: list[int] = []
        self._hists: dict[str, list[tuple[int, torch.Tensor]]] = {"weights": [], "gradients": []}
        self._before: list[torch.Tensor] | None = None

    @property
    def active(self) -> bool:
        return bool(self.param_every or self.hist_every)

    def _hist(self, kind: str, step: int, tensors: list[torch.Tensor]) -> None:
        self._hists[kind].append((step, self._histogram(tensors)))

    @torch.no_grad()
    def at_init(self) -> None:
        """Step 0: the weights' norms and histograms as initialized."""
        if self.param_every:
            self._norms.append(member_norms(self.params, self.members))
            self._norm_steps.append(0)
        if self.hist_every:
            self._hist("weights", 0, self.params)

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        """Keep w_{s-1} when the update ratio of step ``step`` is due."""
        if self.param_every and step % self.param_every == 0:
            self._before = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def after_step(self, step: int, grads: list[torch.Tensor]) -> None:
        """Gradient and weight histograms, weight norms and the update ratio of step ``step`` when
        due (``grads``: the step's gradients, stacked like the parameters)."""
        if self.hist_every and (step == 1 or step % self.hist_every == 0):
            self._hist("gradients", step, grads)
        if self.hist_every and step % self.hist_every == 0:
            self._hist("weights", step, self.params)
        if self._before is not None:
            both = member_norms([*self.params, *torch._foreach_sub(self.params, self._before)], self.members)
            norms, moved = both[:, :len(self.params)], both[:, len(self.params):]
            self._ratios.append(moved / norms.clamp_min(torch.finfo(norms.dtype).tiny))  # 0 where nothing moved
            self._norms.append(norms)
            self._norm_steps.append(step)
            self._ratio_steps.append(step)
            self._before = None

    def drain(self) -> ParamStats:
        """Everything recorded since the last drain, as host arrays (one copy per kind)."""
        p = len(self.params)

        def host(rows: list[torch.Tensor], shape: tuple[int, ...]) -> np.ndarray:
            if not rows:
                return np.zeros((0, *shape))
            return torch.stack(rows).cpu().numpy().astype(np.float64)

        stats = ParamStats(np.asarray(self._norm_steps, dtype=np.int64), host(self._norms, (self.members, p)),
                           np.asarray(self._ratio_steps, dtype=np.int64), host(self._ratios, (self.members, p)))
        for kind, entries in self._hists.items():
            if entries:
                steps = np.asarray([s for s, _ in entries], dtype=np.int64)
                stats.histograms[kind] = Histograms(steps, host([r for _, r in entries], ()), self.numel)
        for buf in (self._norms, self._norm_steps, self._ratios, self._ratio_steps, *self._hists.values()):
            buf.clear()
        return stats
