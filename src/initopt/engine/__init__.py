"""One training engine: a population of K >= 1 members trained as one (a single run is K = 1).

Public API::

    training = build(cfg, data, members)          # population, optimizer, fresh loop state
    result = training.fit(sinks, progress, stop_requested, save_checkpoint)

:mod:`~initopt.engine.population` (members, stacked parameters, forward),
:mod:`~initopt.engine.optimizer` (per-member hyperparameters), :mod:`~initopt.engine.step`
(the eager and the capturable step), :mod:`~initopt.engine.backprop` (the batched MLP's backward,
written out), :mod:`~initopt.engine.loop` (the schedule), :mod:`~initopt.engine.checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from initopt.data import Dataset
from initopt.engine.loop import METRIC_KEYS, LoopState, Result, Schedule, evaluate, fit
from initopt.engine.optimizer import PopulationOptimizer, family_of, member_hyperparameters
from initopt.engine.population import Member, Population, build_population, forward_mode, seeded_model

__all__ = ["METRIC_KEYS", "Member", "Population", "PopulationOptimizer", "Result", "Schedule", "Training",
           "build", "evaluate", "family_of", "forward_mode", "members_of", "seeded_model"]


@dataclass
class Training:
    """A population ready to train: its optimizer, its loop state and its schedule."""

    population: Population
    optimizer: PopulationOptimizer
    state: LoopState
    schedule: Schedule
    data: Dataset
    compile: str = "off"

    def fit(self, sinks=None, progress=None, stop_requested=lambda: False, save_checkpoint=None) -> Result:
        return fit(self.population, self.optimizer, self.data, self.schedule, self.state, sinks, progress,
                   stop_requested, save_checkpoint, self.compile)

    def member_state(self, k: int) -> dict:
        """Member k's state, complete on its own (on the CPU): ``params`` (a plain model's
        ``state_dict``), ``optimizer`` (the full state of its family), ``step``,
        ``diverged_step`` (None while it trains), ``wall_time_s``, ``history`` and ``sampler``
        (generator, order, position). It loads into any population of the same shapes and
        optimizer family, whatever its other members (:meth:`load_member_state`)."""
        return {"params": self.population.member_state_dict(k), "optimizer": self.optimizer.member_state(k),
                **self.state.member_state(k)}

    def load_member_state(self, k: int, member: dict) -> None:
        """Slot k <- a member state from any population, or a single run."""
        self.population.load_member_state_dict(k, member["params"])
        self.optimizer.load_member_state(k, member["optimizer"])
        self.state.load_member_state(k, member)


def members_of(cfg: DictConfig, seeds: list[int]) -> list[Member]:
    """The members of one config with these seeds (its replicas)."""
    return [Member(seed, cfg.init, cfg.optim) for seed in seeds]


def build(cfg: DictConfig, data: Dataset, members: list[Member] | None = None, mode: str = "stacked") -> Training:
    """Population (each member built and initialized on the CPU, then moved to ``data``'s device),
    its optimizer with per-member hyperparameters, and a fresh loop state.

    ``cfg`` gives what members share (model, batch size, schedule); ``members`` default to
    ``cfg``'s own seed, init and optimizer.
    """
    members = members or members_of(cfg, [cfg.seed])
    device, dtype = data.x_train.device, data.x_train.dtype
    population = build_population(cfg.model, members, data.n_features, data.n_outputs, device, dtype, mode)
    optims = [m.optim for m in members]
    optimizer = PopulationOptimizer(population.tensors(), family_of(optims[0]), member_hyperparameters(optims))
    state = LoopState.fresh(data, cfg.batch_size, [m.seed for m in members])
    return Training(population, optimizer, state, Schedule.from_config(cfg), data, cfg.get("compile", "off"))
