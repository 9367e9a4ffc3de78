"""Where a population's records go: one TensorBoard run per member, and for a replica job a mean
run (``<job>/mean``) with the mean over its live members and their min-max band.

The engine hands over host arrays with a member axis (see :mod:`initopt.probes`); a member's
rows after the step where it diverged are not written (the step froze it there).
"""

from __future__ import annotations

import time

import numpy as np

from initopt.engine.loop import METRIC_KEYS
from initopt.layerstats import ParamStats
from initopt.probes import PopulationRecords
from initopt.tb import RunLogger


def optim_scalars(hyper: dict) -> list[tuple[float, float]]:
    """Per member ``(torch lr, steady-state step)`` from a population optimizer's hyperparameters
    (``lr`` and, for the SGD family, ``momentum``: one value per member): the steady step of
    ``buf <- mu buf + g; w <- w - lr buf`` is ``lr / (1 - mu)`` (Adam: its ``lr``)."""
    lrs = [float(v) for v in hyper["lr"]]
    mus = [float(v) for v in hyper.get("momentum", [0.0] * len(lrs))]
    return [(lr, lr / (1.0 - mu)) for lr, mu in zip(lrs, mus)]


class PopulationLogs:
    """``loggers[k]`` is member k's run; ``aggregates`` are (mean run, member indices) pairs;
    ``optim[k]``: member k's (torch lr, steady-state step) (:func:`optim_scalars`)."""

    def __init__(self, loggers: list[RunLogger], aggregates: list[tuple[RunLogger, list[int]]] = (),
                 optim: list[tuple[float, float]] | None = None):
        self.loggers, self.aggregates = loggers, list(aggregates)
        self.optim = optim

    def write_steps(self, records: PopulationRecords, diverged: list[int | None]) -> None:
        """Every member's step events, built for the whole population at once
        (:meth:`initopt.tb.ScalarRows.frames`; a diverged member's up to its step), then each
        member's window means; a mean run's from the live members."""
        if self.loggers:
            counts = [len(records.steps) if d is None else int((records.steps <= d).sum()) for d in diverged]
            tables = records.step_tables()
            frames = self.loggers[0].step_rows.frames(records.steps, records.walltimes, tables, counts)
            for k, logger in enumerate(self.loggers):
                logger.write_steps(records.member(k, until=diverged[k]), (frames[k], tables[k, :counts[k]]))
        for aggregate, members in self.aggregates:
            live = np.array([k for k in members if diverged[k] is None] or members)
            aggregate.write_steps(records.reduce(live, np.mean))
            aggregate.write_band(records.reduce(live, np.mean), records.reduce(live, np.min),
                                 records.reduce(live, np.max))

    def write_activations(self, steps: np.ndarray, rows: np.ndarray, names: list[str]) -> None:
        """``rows`` ``(n, K, L, 2)``: std and mean of each hidden layer's output per member."""
        for k, logger in enumerate(self.loggers):
            logger.write_activations(steps, rows[:, k, :, 0], rows[:, k, :, 1], names)

    def write_param_stats(self, stats: ParamStats) -> None:
        """Each member's own weight norms, update ratios and histograms (a mean run gets none:
        a mean of histograms is none)."""
        now = time.time()
        framed = self.loggers[0].param_frames(stats, now) if self.loggers else []
        for k, logger in enumerate(self.loggers):
            logger.write_param_stats(stats.member(k), framed[k], now)

    def write_eval(self, step: int, table: np.ndarray, diverged: list[int | None]) -> None:
        live = [k for k in range(len(self.loggers)) if diverged[k] is None]
        for k in live:
            self.loggers[k].write_eval(step, dict(zip(METRIC_KEYS, table[k])))
            if self.optim is not None:
                self.loggers[k].write_optim(step, *self.optim[k])
        for aggregate, members in self.aggregates:
            rows = table[[k for k in members if k in live]]
            if len(rows):
                aggregate.write_eval(step, dict(zip(METRIC_KEYS, rows.mean(0))),
                                     low=dict(zip(METRIC_KEYS, rows.min(0))), high=dict(zip(METRIC_KEYS, rows.max(0))))

    def flush(self) -> None:
        for logger in (*self.loggers, *(a for a, _ in self.aggregates)):
            logger.flush()

    def close(self) -> None:
        for logger in (*self.loggers, *(a for a, _ in self.aggregates)):
            logger.close()
