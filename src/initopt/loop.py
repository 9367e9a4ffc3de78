"""The training loop: step, record, evaluate, stop on divergence.

One step is: take a batch, loss = L(f(x), y), backward, record the gradient
norms (on the device, no sync), optimizer step. Every ``flush_every`` steps the
records go to the host once: they are checked for non-finite values and written
to TensorBoard. Every ``eval_every`` steps (and at the end) the whole training
and held-out sets are evaluated.

L is ``BCEWithLogits`` for two classes (one logit) and cross-entropy otherwise.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from initopt.data import BatchSampler, Dataset
from initopt.layerstats import ParamStatsRecorder
from initopt.probes import ActivationRecorder, StepRecorder
from initopt.tb import RunLogger


def loss_function(num_classes: int):
    """mean BCE-with-logits on one logit for two classes, mean cross-entropy on C logits otherwise."""
    if num_classes == 2:
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits.squeeze(-1), y)
    return F.cross_entropy


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction correct: sign of the logit for two classes, arg-max of the logits otherwise."""
    if logits.shape[-1] == 1:
        predicted = (logits.squeeze(-1) > 0).to(y.dtype)
    else:
        predicted = logits.argmax(-1)
    return (predicted == y).float().mean()


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, loss_fn) -> dict[str, float]:
    """Loss and accuracy on the whole training and held-out sets (one host sync)."""
    was_training = model.training
    model.eval()
    values = []
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        logits = model(x)
        values += [loss_fn(logits, y), accuracy(logits, y)]
    model.train(was_training)
    train_loss, train_acc, test_loss, test_acc = torch.stack(values).tolist()
    return {
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
    }


@dataclass
class LoopSettings:
    steps: int
    batch_size: int
    seed: int
    log_every: int = 1  # 0 = no per-step records
    eval_every: int = 100
    flush_every: int = 100
    checkpoint_every: int = 0  # 0 = only when interrupted
    act_every: int = 0  # 0 = no activation statistics
    param_every: int = 0  # weight norm and update ratio every N steps (0 = none)
    hist_every: int = 0  # weight and gradient histograms every N steps (0 = none)


@dataclass
class LoopState:
    """Everything besides model and optimizer that a resumed run needs to continue bitwise."""

    sampler: BatchSampler
    step: int = 0  # optimizer steps taken (= last step logged to TensorBoard)
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    wall_time_s: float = 0.0

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "step": self.step,
                "history": [[s, m] for s, m in self.history], "wall_time_s": self.wall_time_s}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.wall_time_s = state["step"], state["wall_time_s"]
        self.history = [(s, dict(m)) for s, m in state["history"]]


@dataclass
class FitResult:
    status: str  # "ok" | "diverged" | "interrupted"
    steps_done: int
    diverged_step: int | None
    final: dict[str, float]
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    wall_time_s: float = 0.0

    @property
    def steps_per_s(self) -> float:
        return self.steps_done / self.wall_time_s if self.wall_time_s > 0 else float("nan")


def _is_finite(metrics: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in metrics.values())


def is_checkpoint_due(settings: LoopSettings, step: int, interrupted: bool, save_checkpoint) -> bool:
    """On a stop request, and every ``checkpoint_every`` steps, when there is a checkpoint to save."""
    periodic = bool(settings.checkpoint_every) and step % settings.checkpoint_every == 0
    return save_checkpoint is not None and (interrupted or periodic)


def take_checkpoint(state, step: int, start: float, logger, save_checkpoint) -> None:
    """Record where the loop is, flush the event files (logger position = step), then save."""
    state.step, state.wall_time_s = step, time.perf_counter() - start
    if logger is not None:
        logger.flush()
    save_checkpoint(state)


def _write_activations(acts: ActivationRecorder, logger: RunLogger | None) -> None:
    steps, std, mean = acts.drain()
    if logger is not None and len(steps):
        logger.write_activations(steps, std, mean, acts.names)


@torch.no_grad()
def _activation_recorder(model, data: Dataset, settings: LoopSettings, logger, fresh: bool):
    """Hooks on the hidden activations; a fresh run first records them at initialization (step 0)."""
    layers = model.activation_layers() if settings.act_every and hasattr(model, "activation_layers") else []
    if not layers:
        return None
    acts = ActivationRecorder(layers, settings.flush_every + 1, data.x_train.device, data.x_train.dtype)
    if fresh:
        acts.armed = True
        model(data.x_train[:1024])
        acts.record(0)
        _write_activations(acts, logger)
    return acts


def record_initial_activations(model, data: Dataset, settings: LoopSettings, logger: RunLogger) -> None:
    """Only the step-0 activation statistics (replicas record no more: hooks don't see through vmap)."""
    acts = _activation_recorder(model, data, settings, logger, fresh=True)
    if acts is not None:
        acts.remove()


def param_stats_recorder(params, members: int, settings: LoopSettings, logger) -> ParamStatsRecorder | None:
    """Weight norms, update ratios and histograms when something will write them."""
    if logger is None or not (settings.param_every or settings.hist_every):
        return None
    return ParamStatsRecorder(params, members, settings.param_every, settings.hist_every)


def evaluate_and_log(model, optimizer, data: Dataset, loss_fn, step: int, history: list, logger) -> bool:
    """Evaluate; a finite result joins the history and TensorBoard (with the effective lr)."""
    metrics = evaluate(model, data, loss_fn)
    if not _is_finite(metrics):
        return False
    history.append((step, metrics))
    if logger is not None:
        logger.write_eval(step, metrics)
        logger.write_effective_lr(step, optimizer.param_groups[0]["lr"])
    return True


def new_state(data: Dataset, settings: LoopSettings) -> LoopState:
    sampler = BatchSampler(len(data.x_train), settings.batch_size, settings.seed, data.x_train.device)
    return LoopState(sampler)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Dataset,
    settings: LoopSettings,
    logger: RunLogger | None = None,
    progress=None,
    state: LoopState | None = None,
    stop_requested=lambda: False,
    save_checkpoint=None,
) -> FitResult:
    """Train until ``settings.steps`` optimizer steps; stop early on a non-finite loss or gradient.

    ``state`` continues a checkpointed run. ``stop_requested()`` is polled once a step; when it
    turns true (SIGINT / SIGTERM) the step's records are flushed, ``save_checkpoint(state)``
    runs and the result says ``interrupted``. ``save_checkpoint`` also runs every
    ``checkpoint_every`` steps, always right after a flush, so the TensorBoard file and the
    checkpoint agree on the last step written.
    """
    device = data.x_train.device
    loss_fn = loss_function(data.num_classes)
    state = state or new_state(data, settings)
    sampler, history = state.sampler, state.history
    params = [p for p in model.parameters() if p.requires_grad]
    recorder = StepRecorder(params, settings.flush_every, device) if settings.log_every else None
    acts = _activation_recorder(model, data, settings, logger, fresh=state.step == 0)
    stats = param_stats_recorder(params, 1, settings, logger)
    if state.step == 0:  # at initialization: an evaluation, the weights' norms and histograms
        evaluate_and_log(model, optimizer, data, loss_fn, 0, history, logger)
        if stats is not None:
            stats.at_init()
    diverged_step: int | None = None
    interrupted = False
    step = state.step
    start = time.perf_counter() - state.wall_time_s
    model.train()
    for step in range(state.step + 1, settings.steps + 1):
        idx = sampler.next_indices()
        x, y = (data.x_train, data.y_train) if idx is None else (data.x_train[idx], data.y_train[idx])
        if acts is not None and step % settings.act_every == 0:
            acts.armed = True
        loss = loss_fn(model(x), y)
        if acts is not None and acts.armed:
            acts.record(step)
        optimizer.zero_grad()
        loss.backward()
        if recorder is not None and step % settings.log_every == 0:
            recorder.record(step, loss, time.time())
        if stats is not None:
            stats.before_step(step)
        optimizer.step()
        if stats is not None:
            stats.after_step(step)

        last = step == settings.steps
        interrupted = stop_requested()
        checkpoint_due = is_checkpoint_due(settings, step, interrupted, save_checkpoint)
        flush_due = last or checkpoint_due or step % settings.flush_every == 0
        if recorder is not None and (recorder.full or flush_due):
            records = recorder.drain()
            diverged_step = records.first_non_finite_step()
            if logger is not None:
                logger.write_steps(records)
        if acts is not None and (acts.full or flush_due):
            _write_activations(acts, logger)
        if stats is not None and flush_due:
            logger.write_param_stats(stats.drain())
        if diverged_step is None and (step % settings.eval_every == 0 or last):
            if not evaluate_and_log(model, optimizer, data, loss_fn, step, history, logger):
                diverged_step = step
        if progress is not None:
            progress.update(1)
        if diverged_step is not None:
            break
        if checkpoint_due:
            take_checkpoint(state, step, start, logger, save_checkpoint)
        if interrupted:
            break
    wall = time.perf_counter() - start
    if acts is not None:
        acts.remove()
    if diverged_step is not None:
        status = "diverged"
    elif interrupted and step < settings.steps:
        status = "interrupted"
    else:
        status = "ok"
    final = history[-1][1] if status == "ok" else {k: float("nan") for k in _METRIC_KEYS}
    return FitResult(status, step, diverged_step, final, history, wall)


_METRIC_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
