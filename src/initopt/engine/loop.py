"""The one training loop, over a population of K >= 1 members (a single run is K = 1).

Each step is :class:`~initopt.engine.step.TrainStep` (device work only). Around it, on the host:

* a member whose step turned non-finite is marked diverged at that step: right after the step
  when it is the eager one (which reads one finiteness number back per step), at the next flush
  when it is the capturable one (which froze the member on the device and kept its step count);
* every ``flush_every`` steps, at evaluations, at a checkpoint and at the end, the buffered step
  records go to the host once, and on to the sinks;
* at step 0 (initialization), at the log-spaced early steps 1, 2, 5, 10, 20, 50, ... below
  ``eval_every`` (:data:`EARLY_STEPS`), every ``eval_every`` steps and at the end, the whole
  training and held-out sets are evaluated for every member (one host sync; the step records are
  flushed there too, so the smoothed norms get a point at each); a non-finite result marks that
  member diverged at that step and freezes it (at step 0: at its initial weights);
* a stop request (SIGINT / SIGTERM) or ``checkpoint_every`` saves a checkpoint right after a
  flush, so the event files and the checkpoint agree on the last step written.

A diverged member is frozen and left out of summaries; the others go on; the loop ends early
when none is left.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from initopt.data import BatchSampler, Dataset
from initopt.engine.population import Population, member_accuracies, member_losses
from initopt.engine.step import TrainStep, compiled
from initopt.layerstats import ParamStatsRecorder
from initopt.probes import ActivationRecorder, StepRecorder

METRIC_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
LOSS_COLUMNS = [0, 2]  # of METRIC_KEYS
INIT_ACTIVATION_EXAMPLES = 1024
# Evaluations before the first ``eval_every``: where initializations differ most (1-2-5 per decade).
EARLY_STEPS = tuple(m * 10**d for d in range(7) for m in (1, 2, 5))


@dataclass
class Schedule:
    """When things happen, in optimizer steps (0 = never, for the optional ones)."""

    steps: int
    batch_size: int
    log_every: int = 1
    eval_every: int = 100
    flush_every: int = 100
    checkpoint_every: int = 0
    act_every: int = 0
    param_every: int = 0  # weight norms and update ratios
    hist_every: int = 0  # weight and gradient histograms

    @classmethod
    def from_config(cls, cfg) -> Schedule:
        return cls(cfg.steps, cfg.batch_size, cfg.log_every, cfg.eval_every, cfg.flush_every,
                   cfg.checkpoint_every, cfg.act_every, cfg.get("param_every", 0), cfg.get("hist_every", 0))

    def evaluates_at(self, step: int) -> bool:
        """Every ``eval_every`` steps, the early steps 1, 2, 5, 10, ... below it, and the last step."""
        return (step % self.eval_every == 0 or step == self.steps
                or (step < self.eval_every and step in EARLY_STEPS))


@dataclass
class LoopState:
    """Everything besides parameters and optimizer state that a resumed population needs.

    ``diverged[k]`` is member k's ``diverged_step``: None while it trains, else the step whose
    loss, gradient or evaluation was first non-finite (0: its evaluation at initialization).
    The population's device mask ``alive`` mirrors it during a pass of the loop.
    """

    sampler: BatchSampler
    step: int = 0
    histories: list[list[tuple[int, dict[str, float]]]] = field(default_factory=list)
    diverged: list[int | None] = field(default_factory=list)
    wall_time_s: float = 0.0
    restored: set[int] = field(default_factory=set)  # slots loaded from member states

    @classmethod
    def fresh(cls, data: Dataset, batch_size: int, seeds: list[int]) -> LoopState:
        sampler = BatchSampler(len(data.x_train), batch_size, seeds, data.x_train.device)
        return cls(sampler, histories=[[] for _ in seeds], diverged=[None] * len(seeds))

    @property
    def active(self) -> np.ndarray:
        return np.array([d is None for d in self.diverged])

    def check_lockstep(self) -> None:
        """Restored members and fresh ones cannot train together (their steps and batch orders differ)."""
        if self.restored and len(self.restored) != len(self.diverged):
            raise ValueError(f"a population trains its members in lockstep: members restored at step {self.step} "
                             "cannot join fresh ones")

    def member_state(self, k: int) -> dict:
        """Member k's share: its step, diverged_step, wall time, history and sampler."""
        return {"step": self.step, "diverged_step": self.diverged[k], "wall_time_s": self.wall_time_s,
                "history": [[s, m] for s, m in self.histories[k]], "sampler": self.sampler.member_state(k)}

    def load_member_state(self, k: int, state: dict) -> None:
        """Slot k <- a member's share; the members of one population must be at one step."""
        if self.restored - {k} and state["step"] != self.step:
            raise ValueError(f"a population trains its members in lockstep: a member at step {state['step']} "
                             f"cannot join members at step {self.step}")
        self.sampler.load_member_state(k, state["sampler"])
        self.step = state["step"]
        self.restored.add(k)
        self.wall_time_s = max(self.wall_time_s, state["wall_time_s"])
        self.histories[k] = [(s, dict(m)) for s, m in state["history"]]
        self.diverged[k] = state["diverged_step"]


@dataclass
class Result:
    """How each member ended: its status, its evaluation history, the last finite evaluation."""

    steps_done: int
    wall_time_s: float
    histories: list[list[tuple[int, dict[str, float]]]]
    diverged: list[int | None]
    interrupted: bool

    def status(self, k: int) -> str:
        return "diverged" if self.diverged[k] is not None else "ok"

    def final(self, k: int) -> dict[str, float]:
        if self.diverged[k] is not None or not self.histories[k]:
            return {key: math.nan for key in METRIC_KEYS}
        return self.histories[k][-1][1]

    def steps_per_s(self) -> float:
        return self.steps_done / self.wall_time_s if self.wall_time_s > 0 else math.nan


@torch.no_grad()
def evaluate(population: Population, data: Dataset) -> np.ndarray:
    """``(K, 4)``: train loss, train accuracy, test loss, test accuracy of every member (one sync),
    a slice of members at a time (:func:`evaluation_slices`; each member's numbers are the same
    whatever the slice: its rows of every product are its own)."""
    cols = []
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        losses, accuracies = [], []
        for members in evaluation_slices(population, len(x)):
            logits = population.forward({n: p[members] for n, p in population.params.items()}, x, in_place=True)
            ys = y.expand(logits.shape[0], *y.shape)
            losses.append(member_losses(logits, ys, data.num_classes))
            accuracies.append(member_accuracies(logits, ys, data.num_classes))
        cols += [torch.cat(losses), torch.cat(accuracies)]
    return torch.stack(cols, dim=1).cpu().numpy().astype(np.float64)


# On the CPU a population is evaluated in slices of members whose layer outputs fit in the cache,
# each nonlinearity in place: the toy study's 400 members on 750 points make 77 MB a layer, and
# every pass over that goes to memory. Measured (scripts/bench_eval.py, interleaved medians): 400
# members 205 ms at once out of place, 159 in place, 118 in slices of 20; 200 members 108 -> 66 ms.
# Accelerators take the whole population at once.
EVAL_SLICE_BYTES = 4 << 20


def evaluation_slices(population: Population, n_points: int) -> list[slice]:
    """Consecutive slices of the members, each with at most :data:`EVAL_SLICE_BYTES` of one
    layer's outputs (``n_points`` x the widest layer; one member at least), for the batched MLP on
    the CPU; one slice of all on another device, or for a model other than the batched MLP."""
    k = population.k
    if population.device.type != "cpu" or population.mlp_layers is None:
        return [slice(0, k)]
    first = population.params[population.names[0]]
    widest = max(p.shape[1] for p in population.params.values() if p.dim() >= 2)
    per_member = n_points * widest * first.element_size()
    size = max(1, EVAL_SLICE_BYTES // max(1, per_member))
    return [slice(a, min(a + size, k)) for a in range(0, k, size)]


class _Run:
    """One pass of the loop: the step, the recorders, the sinks and the host-side bookkeeping."""

    def __init__(self, population, optimizer, data, schedule, state, sinks, save_checkpoint, compile_mode="off"):
        self.pop, self.data, self.schedule, self.state = population, data, schedule, state
        self.sinks, self.save_checkpoint = sinks, save_checkpoint
        device, dtype, k = population.device, data.x_train.dtype, population.k
        self.recorder = StepRecorder(k, len(population.names), schedule.flush_every, device) \
            if schedule.log_every else None
        self.acts = ActivationRecorder(population.activation_names, k, schedule.flush_every + 1, device, dtype) \
            if schedule.act_every and population.records_activations else None
        self.step = TrainStep(population, optimizer, data.num_classes, self.recorder, self.acts)
        self.params = ParamStatsRecorder(population.tensors(), k, schedule.param_every, schedule.hist_every) \
            if sinks is not None and (schedule.param_every or schedule.hist_every) else None
        population.alive.copy_(torch.as_tensor(state.active, device=device))
        optimizer.set_alive(population.alive)
        self.step.all_alive = bool(state.active.all())
        self.step.member_steps.fill_(state.step)
        self.step_fn = compiled(self.step, compile_mode, device)
        self.capturable = self.step_fn != self.step.eager

    def record_initial_activations(self) -> None:
        """Step 0: activation statistics at initialization, on up to 1024 training examples."""
        if self.acts is not None:
            stats: list[torch.Tensor] = []
            with torch.no_grad():
                self.pop.forward(self.pop.params, self.data.x_train[:INIT_ACTIVATION_EXAMPLES], stats)
            self.acts.write(0, stats)

    def flush(self) -> None:
        """Records to the host once; mark members the capturable step froze (their step count
        says where); hand to the sinks."""
        if self.capturable:
            alive, steps = self.pop.alive.tolist(), self.step.member_steps.tolist()
            for k, (live, at) in enumerate(zip(alive, steps)):
                if not live and self.state.diverged[k] is None:
                    self.state.diverged[k] = at + 1
        if self.recorder is not None and self.recorder.steps:
            records = self.recorder.drain()
            if self.sinks is not None:
                self.sinks.write_steps(records, self.state.diverged)
        if self.acts is not None and self.acts.steps:
            steps, rows = self.acts.drain()
            if self.sinks is not None:
                self.sinks.write_activations(steps, rows, self.acts.names)
        if self.params is not None:
            self.sinks.write_param_stats(self.params.drain())

    def evaluate(self, step: int) -> None:
        """Every member still active: finite losses join its history, a non-finite one ends it
        (accuracies are finite whenever the losses are, and NaN by definition for regression)."""
        table = evaluate(self.pop, self.data)
        for k in np.flatnonzero(self.state.active):
            if np.isfinite(table[k, LOSS_COLUMNS]).all():
                self.state.histories[k].append((step, dict(zip(METRIC_KEYS, table[k].tolist()))))
            else:
                self.state.diverged[k] = step
                self.step.freeze([int(k)])
        if self.sinks is not None:
            self.sinks.write_eval(step, table, self.state.diverged)

    def checkpoint(self, step: int, start: float) -> None:
        self.state.step, self.state.wall_time_s = step, time.perf_counter() - start
        if self.sinks is not None:
            self.sinks.flush()
        self.save_checkpoint(self.state)


def fit(population: Population, optimizer, data: Dataset, schedule: Schedule, state: LoopState,
        sinks=None, progress=None, stop_requested: Callable[[], bool] = lambda: False,
        save_checkpoint: Callable[[LoopState], None] | None = None, compile_mode: str = "off") -> Result:
    """Train every member to ``schedule.steps`` optimizer steps (see the module doc).

    ``state`` is fresh (:meth:`LoopState.fresh`) or restored from a checkpoint. ``sinks`` receive
    ``write_steps``, ``write_activations``, ``write_eval`` and ``flush`` calls (host arrays with a
    member axis). ``stop_requested()`` is polled once a step; when it turns true the records are
    flushed, ``save_checkpoint(state)`` runs and the result says ``interrupted``. ``compile_mode``
    (off | on | auto) chooses the compiled step (:func:`initopt.engine.step.compiled`).
    """
    state.check_lockstep()
    run = _Run(population, optimizer, data, schedule, state, sinks, save_checkpoint, compile_mode)
    fresh = state.step == 0
    if fresh:
        run.record_initial_activations()
        if run.params is not None:
            run.params.at_init()
        run.evaluate(0)
    sampler, step, interrupted = state.sampler, state.step, False
    start = time.perf_counter() - state.wall_time_s
    for step in range(state.step + 1, schedule.steps + 1):
        x, y = run.step.gather(data.x_train, data.y_train, sampler.next_indices())
        record = bool(schedule.log_every) and step % schedule.log_every == 0
        with_acts = run.acts is not None and step % schedule.act_every == 0
        if run.params is not None:
            run.params.before_step(step)
        stats = run.step_fn(x, y, record, with_acts)
        for k in run.step.newly_diverged:  # the eager step froze them
            state.diverged[k] = step
        if run.params is not None:
            run.params.after_step(step, run.step.last_grads)
        if record:
            run.recorder.mark(step, time.time())
        if with_acts:
            run.acts.write(step, list(stats.unbind(1)))

        last = step == schedule.steps
        interrupted = stop_requested()
        periodic = bool(schedule.checkpoint_every) and step % schedule.checkpoint_every == 0
        checkpoint_due = save_checkpoint is not None and (interrupted or periodic)
        eval_due = schedule.evaluates_at(step)
        buffers_full = (run.recorder is not None and run.recorder.full) or (run.acts is not None and run.acts.full)
        if last or checkpoint_due or eval_due or buffers_full or step % schedule.flush_every == 0:
            run.flush()
        if eval_due and state.active.any():
            run.evaluate(step)
        if progress is not None:
            progress.update(1)
        if not state.active.any():
            break
        if checkpoint_due:
            run.checkpoint(step, start)
        if interrupted:
            break
    if sinks is not None:
        sinks.flush()
    finished = step == schedule.steps or not state.active.any()
    state.step, state.wall_time_s = step, time.perf_counter() - start
    return Result(step, time.perf_counter() - start, state.histories, state.diverged, interrupted and not finished)
