"""How many CPU threads torch uses for a run (the ``threads`` key).

Under CPU contention torch's default (one intra-op thread per core) makes a network 2.5-100x
slower than one thread: its threads wait for each other at every operation while another
process holds a core (``scripts/bench_threads.py``, table in conf/train.yaml). On an idle
machine more threads pay off only for large steps (the crossover lies between 39 and 970 MFLOP
a step on 2 cores). ``threads=auto`` takes one thread below 1e8 FLOP a step, torch's default above.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

# torch's own choice for this process (cores, or OMP_NUM_THREADS), read before anything changes it.
DEFAULT_THREADS = torch.get_num_threads()
# FLOP per step below which ``auto`` takes one thread (see the measurements in conf/train.yaml).
ONE_THREAD_BELOW_FLOP = 1e8


def step_flop(cfg: DictConfig, n_weights: int) -> float:
    """FLOP of one training step: 6 x weights x batch x replicas (forward 2, backward 4)."""
    return 6.0 * n_weights * cfg.batch_size * cfg.replicas


def choose_threads(cfg: DictConfig, n_weights: int) -> int:
    """Threads for a run of a model with ``n_weights`` parameters.

    ``threads=auto``: 1 if :func:`step_flop` < ``ONE_THREAD_BELOW_FLOP``, else torch's default;
    ``threads=0``: torch's default; ``threads=N``: N.
    """
    if cfg.threads == "auto":
        return 1 if step_flop(cfg, n_weights) < ONE_THREAD_BELOW_FLOP else DEFAULT_THREADS
    return cfg.threads or DEFAULT_THREADS
