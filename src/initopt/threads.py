"""How many CPU threads torch uses for a run (the ``threads`` key).

Under CPU contention torch's default (one intra-op thread per core) makes a network 2.3-100x
slower than one thread: its threads wait for each other at every operation while another
process holds a core (``scripts/bench_threads.py``, table in conf/train.yaml). On an idle
machine more threads pay off only for large enough steps, and sooner when a step trains several
members stacked (K independent batched matrix products per layer split over the cores at no
cost) than for one model's matrix products: ``threads=auto`` takes one thread below 1e8 FLOP a
step for one model, below 1e7 FLOP for a stacked population, torch's default above.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

# torch's own choice for this process (cores, or OMP_NUM_THREADS), read before anything changes it.
DEFAULT_THREADS = torch.get_num_threads()
# FLOP per step below which ``auto`` takes one thread (see the measurements in conf/train.yaml):
# one model's step; a step of K >= 2 members stacked (scripts/bench_threads.py, 2 cores, quiet:
# 2 threads / 1 = 1.06 for 5 toy members at 8.5 MFLOP, 0.83 for 10 at 17, 0.70 for 20 at 34 MFLOP).
ONE_THREAD_BELOW_FLOP = 1e8
STACKED_ONE_THREAD_BELOW_FLOP = 1e7


def step_flop(cfg: DictConfig, n_weights: int) -> float:
    """FLOP of one training step: 6 x weights x batch x replicas (forward 2, backward 4)."""
    return 6.0 * n_weights * cfg.batch_size * cfg.replicas


def choose_threads(cfg: DictConfig, n_weights: int) -> int:
    """Threads for a run of ``cfg.replicas`` members (stacked when more than one) of a model with
    ``n_weights`` parameters.

    ``threads=auto``: 1 if :func:`step_flop` < ``ONE_THREAD_BELOW_FLOP`` (one member) or
    ``STACKED_ONE_THREAD_BELOW_FLOP`` (several), else torch's default; ``threads=0``: torch's
    default; ``threads=N``: N.
    """
    if cfg.threads == "auto":
        below = STACKED_ONE_THREAD_BELOW_FLOP if cfg.replicas > 1 else ONE_THREAD_BELOW_FLOP
        return 1 if step_flop(cfg, n_weights) < below else DEFAULT_THREADS
    return cfg.threads or DEFAULT_THREADS
