"""K seeds of one configuration trained at once: parameters stacked, forward by ``torch.func.vmap``.

Replica r is the run with seed ``seed + r``: its model is built and initialized after
``torch.manual_seed(seed + r)`` and its batches come from its own ``BatchSampler(seed + r)``,
exactly as a separate run. The K parameter sets are stacked along a new leading dimension
(``torch.func.stack_module_state``); the loss is the *sum* of the K replicas' mean losses,
so ``backward`` gives each replica its own gradient, and every ``torch.optim`` optimizer used
here (SGD, both momentum forms, Adam) updates element by element, so one optimizer over the
stacked tensors is K independent optimizers. Results match separate runs to float
rounding (batched and single matrix products may round differently).

Small networks are bound by Python and kernel-launch overhead, so K replicas cost about one
step; big ones are bound by arithmetic and gain little (see ``scripts/bench.py``):
``replicas_mode=auto`` vectorizes below :data:`VMAP_MAX_MACS` multiply-adds per replica-step
and otherwise trains the replicas one after another in the same process.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from initopt.data import BatchSampler, Dataset
from initopt.layerstats import ParamStats
from initopt.loop import LoopSettings, is_checkpoint_due, param_stats_recorder, take_checkpoint
from initopt.probes import StepRecords
from initopt.tb import RunLogger

# Above this many multiply-adds per replica and step (batch x weights), vmap stops paying.
VMAP_MAX_MACS = 5e6
METRIC_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def replica_strategy(mode: str, n_weights: int, batch_size: int, is_mlp: bool) -> str:
    """``stacked`` (batched MLP), ``vmap`` or ``sequential`` as asked; ``auto``: stacked (vmap for
    other modules) when a replica-step is small, else sequential."""
    if mode != "auto":
        return mode
    if n_weights * batch_size > VMAP_MAX_MACS:
        return "sequential"
    return "stacked" if is_mlp else "vmap"


class StackedModel:
    """K models of one architecture as one: ``params[name]`` has shape ``(K, *shape)``
    (``torch.func.stack_module_state``).

    The forward pass is ``torch.func.vmap`` over ``functional_call`` (any module), or, with
    ``batched_mlp=True`` for the MLP, each layer written as one batched matrix product
    ``h <- act(b_k + h_k W_k^T)`` (``torch.baddbmm``). The second does the same arithmetic
    without vmap's per-operation batching rules, which cost more than the arithmetic itself on
    small networks (2-64-64-1, 32 replicas: 2.8 ms a step with vmap, 1.2 ms batched, 0.52 ms
    for a single model; ``scripts/bench.py`` measures it).
    """

    def __init__(self, models: list[nn.Module], batched_mlp: bool = False):
        self.k = len(models)
        self.params, self.buffers = stack_module_state(models)
        self._base = copy.deepcopy(models[0]).to("meta")
        self.batched_mlp = batched_mlp

    def _call(self, params, buffers, x):
        return functional_call(self._base, (params, buffers), (x,))

    def _mlp(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        h = x
        for name, module in self._base.named_children():
            if not isinstance(module, nn.Linear):
                h = module(h)  # the parameter-free nonlinearity, elementwise
                continue
            w = self.params[f"{name}.weight"].transpose(1, 2)
            b = self.params.get(f"{name}.bias")
            if h.dim() == 2:  # the same inputs for every replica
                h = torch.matmul(h, w) if b is None else torch.baddbmm(b.unsqueeze(1), h.expand(self.k, *h.shape), w)
            else:
                h = torch.bmm(h, w) if b is None else torch.baddbmm(b.unsqueeze(1), h, w)
        return h

    def __call__(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Logits ``(K, B, out)``; ``x`` is ``(K, B, in)``, or ``(B, in)`` for all when ``shared``."""
        if self.batched_mlp:
            return self._mlp(x, shared)
        dims = (0, 0, None) if shared else (0, 0, 0)
        return vmap(self._call, in_dims=dims)(self.params, self.buffers, x)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def named_parameters(self):
        return list(self.params.items())

    def replica_state_dict(self, r: int) -> dict[str, torch.Tensor]:
        return {name: p[r].detach().clone() for name, p in self.params.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.params.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            p.copy_(state[name])


def replica_losses(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K,)``: each replica's mean loss over its batch (the single-run loss, K at a time)."""
    k, b = y.shape[:2]
    if num_classes == 2:
        per_example = F.binary_cross_entropy_with_logits(logits.squeeze(-1), y, reduction="none")
    else:
        per_example = F.cross_entropy(logits.reshape(k * b, -1), y.reshape(k * b), reduction="none").view(k, b)
    return per_example.mean(1)


def replica_accuracies(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(K,)``: fraction correct per replica, as :func:`initopt.loop.accuracy`."""
    predicted = (logits.squeeze(-1) > 0).to(y.dtype) if logits.shape[-1] == 1 else logits.argmax(-1)
    return (predicted == y).float().mean(1)


def per_replica_grad_norms(params: list[torch.Tensor]) -> torch.Tensor:
    """``(K, P)``: the L2 norm of each replica's gradient of each parameter tensor."""
    k = params[0].shape[0]
    return torch.stack([torch.linalg.vector_norm(p.grad.reshape(k, -1), dim=1) for p in params], dim=1)


@torch.no_grad()
def evaluate_replicas(model: StackedModel, data: Dataset) -> np.ndarray:
    """``(K, 4)``: train loss, train accuracy, test loss, test accuracy of every replica."""
    cols = []
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        logits = model(x, shared=True)
        ys = y.expand(model.k, *y.shape)
        cols += [replica_losses(logits, ys, data.num_classes), replica_accuracies(logits, ys)]
    return torch.stack(cols, dim=1).cpu().numpy().astype(np.float64)


@dataclass
class ReplicaState:
    """What a resumed replica run needs besides parameters and optimizer: one sampler a replica."""

    samplers: list[BatchSampler]
    step: int = 0
    histories: list[list] = field(default_factory=list)
    diverged: list[int | None] = field(default_factory=list)
    wall_time_s: float = 0.0

    @property
    def alive(self) -> list[bool]:
        """Which replicas have not diverged."""
        return [d is None for d in self.diverged]

    @property
    def any_alive(self) -> bool:
        return None in self.diverged

    def state_dict(self) -> dict:
        return {"samplers": [s.state_dict() for s in self.samplers], "step": self.step,
                "histories": [[[s, m] for s, m in h] for h in self.histories],
                "diverged": [-1 if d is None else d for d in self.diverged], "wall_time_s": self.wall_time_s}

    def load_state_dict(self, state: dict) -> None:
        for sampler, s in zip(self.samplers, state["samplers"]):
            sampler.load_state_dict(s)
        self.step, self.wall_time_s = state["step"], state["wall_time_s"]
        self.histories = [[(s, dict(m)) for s, m in h] for h in state["histories"]]
        self.diverged = [None if d == -1 else d for d in state["diverged"]]


def new_replica_state(data: Dataset, settings: LoopSettings, seeds: list[int]) -> ReplicaState:
    device = data.x_train.device
    samplers = [BatchSampler(len(data.x_train), settings.batch_size, s, device) for s in seeds]
    return ReplicaState(samplers, histories=[[] for _ in seeds], diverged=[None] * len(seeds))


@dataclass
class ReplicaResult:
    steps_done: int
    wall_time_s: float
    histories: list[list]
    diverged: list[int | None]
    interrupted: bool

    def final(self, r: int) -> dict[str, float]:
        if self.diverged[r] is not None or not self.histories[r]:
            return {k: math.nan for k in METRIC_KEYS}
        return self.histories[r][-1][1]


class ReplicaLogs:
    """One TensorBoard run per replica, plus the job's mean run with the min-max band over seeds."""

    def __init__(self, loggers: list[RunLogger], aggregate: RunLogger):
        self.loggers, self.aggregate = loggers, aggregate

    def write_steps(self, steps, times, rows: np.ndarray, alive: list[bool], window: np.ndarray) -> None:
        """``rows``: (n, K, P + 1) gradient norms and loss per recorded step and replica;
        ``window``: (K, P + 1) their mean over the n steps."""
        for r, logger in enumerate(self.loggers):
            logger.write_steps(StepRecords(steps, times, rows[:, r, :-1], rows[:, r, -1], window[r, :-1]))
        live = rows[:, alive] if any(alive) else rows
        live_window = window[alive] if any(alive) else window
        mean = StepRecords(steps, times, live[:, :, :-1].mean(1), live[:, :, -1].mean(1),
                           live_window[:, :-1].mean(0))
        self.aggregate.write_steps(mean)
        lo = StepRecords(steps, times, live[:, :, :-1].min(1), live[:, :, -1].min(1))
        hi = StepRecords(steps, times, live[:, :, :-1].max(1), live[:, :, -1].max(1))
        self.aggregate.write_band(mean, lo, hi)

    def write_param_stats(self, stats: ParamStats) -> None:
        """Each replica's own statistics; the mean run gets none (a mean of histograms is none)."""
        for r, logger in enumerate(self.loggers):
            logger.write_param_stats(stats.member(r))

    def write_effective_lr(self, step: int, lr: float) -> None:
        for logger in (*self.loggers, self.aggregate):
            logger.write_effective_lr(step, lr)

    def write_eval(self, step: int, table: np.ndarray, alive: list[bool]) -> None:
        for r, logger in enumerate(self.loggers):
            if alive[r]:
                logger.write_eval(step, dict(zip(METRIC_KEYS, table[r])))
        live = table[alive]
        if len(live):
            self.aggregate.write_eval(step, dict(zip(METRIC_KEYS, live.mean(0))),
                                      low=dict(zip(METRIC_KEYS, live.min(0))),
                                      high=dict(zip(METRIC_KEYS, live.max(0))))

    def flush(self) -> None:
        for logger in (*self.loggers, self.aggregate):
            logger.flush()


def fit_replicas(model: StackedModel, optimizer: torch.optim.Optimizer, data: Dataset, settings: LoopSettings,
                 state: ReplicaState, logs: ReplicaLogs | None = None, progress=None,
                 stop_requested=lambda: False, save_checkpoint=None) -> ReplicaResult:
    """The loop of :func:`initopt.loop.fit`, for K stacked replicas at once.

    A replica whose loss or gradient turns non-finite is marked diverged at that step and
    left out of the mean from then on; the others go on (replicas never mix: its NaNs stay
    in its own slice). The loop stops early when every replica has diverged.
    """
    k = model.k
    params = model.parameters()
    n_rows = settings.flush_every
    rows = torch.zeros(n_rows, k, len(params) + 1, device=data.x_train.device, dtype=data.x_train.dtype)
    steps_buf: list[int] = []
    times_buf: list[float] = []
    interrupted = False
    step = state.step
    stats = param_stats_recorder(params, k, settings, logs)
    lr = optimizer.param_groups[0]["lr"]
    if step == 0:  # at initialization: an evaluation, the weights' norms and histograms
        _evaluate_into(state, model, data, 0, logs, lr)
        if stats is not None:
            stats.at_init()
    start = time.perf_counter() - state.wall_time_s
    for step in range(state.step + 1, settings.steps + 1):
        indices = [s.next_indices() for s in state.samplers]
        if indices[0] is None:
            logits = model(data.x_train, shared=True)
            y = data.y_train.expand(k, *data.y_train.shape)
        else:
            idx = torch.stack(indices)
            logits, y = model(data.x_train[idx]), data.y_train[idx]
        losses = replica_losses(logits, y, data.num_classes)
        optimizer.zero_grad()
        losses.sum().backward()
        if settings.log_every and step % settings.log_every == 0:
            row = rows[len(steps_buf)]
            row[:, :-1] = per_replica_grad_norms(params)
            row[:, -1] = losses.detach()
            steps_buf.append(step)
            times_buf.append(time.time())
        if stats is not None:
            stats.before_step(step)
        optimizer.step()
        if stats is not None:
            stats.after_step(step)

        last = step == settings.steps
        interrupted = stop_requested()
        checkpoint_due = is_checkpoint_due(settings, step, interrupted, save_checkpoint)
        if steps_buf and (len(steps_buf) == n_rows or last or checkpoint_due or step % settings.flush_every == 0):
            _drain(rows, steps_buf, times_buf, state, logs)
        if stats is not None and (last or checkpoint_due or step % settings.flush_every == 0):
            logs.write_param_stats(stats.drain())
        if state.any_alive and (step % settings.eval_every == 0 or last):
            _evaluate_into(state, model, data, step, logs, lr)
        if progress is not None:
            progress.update(1)
        if not state.any_alive:
            break
        if checkpoint_due:
            take_checkpoint(state, step, start, logs, save_checkpoint)
        if interrupted:
            break
    finished = step == settings.steps or not state.any_alive
    return ReplicaResult(step, time.perf_counter() - start, state.histories, state.diverged,
                         interrupted and not finished)


def _evaluate_into(state: ReplicaState, model: StackedModel, data: Dataset, step: int,
                   logs: ReplicaLogs | None, lr: float) -> None:
    """Evaluate every replica; a non-finite result marks it diverged, a finite one joins its history."""
    table = evaluate_replicas(model, data)
    for r, alive in enumerate(state.alive):
        if alive and not np.isfinite(table[r]).all():
            state.diverged[r] = step
        elif alive:
            state.histories[r].append((step, dict(zip(METRIC_KEYS, table[r].tolist()))))
    if logs is not None:
        logs.write_eval(step, table, state.alive)
        logs.write_effective_lr(step, lr)


def _drain(rows: torch.Tensor, steps_buf: list[int], times_buf: list[float], state: ReplicaState,
           logs: ReplicaLogs | None) -> None:
    """Copy the buffered step rows to the host once; mark replicas that turned non-finite."""
    n = len(steps_buf)
    # The window mean over the n steps is taken on the device and comes back in the same copy.
    both = torch.cat([rows[:n], rows[:n].mean(0, keepdim=True)]).cpu().numpy().astype(np.float64)
    host, window = both[:n], both[n]
    steps, times = np.asarray(steps_buf, dtype=np.int64), np.asarray(times_buf)
    for r in range(host.shape[1]):
        bad = ~np.isfinite(host[:, r]).all(axis=1)
        if state.diverged[r] is None and bad.any():
            state.diverged[r] = int(steps[bad.argmax()])
    if logs is not None:
        logs.write_steps(steps, times, host, state.alive, window)
    steps_buf.clear()
    times_buf.clear()
