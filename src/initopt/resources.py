"""What a population needs from the machine, checked before anything starts.

* open files: one TensorBoard event file per member, plus the aggregate run of a replica job,
  plus a margin for Python, torch and Hydra, against the process's soft ``RLIMIT_NOFILE``;
* memory: per member, the parameters with their gradient, two optimizer buffers and the update
  (5 copies), the step's activations kept for backward (batch x hidden units, 3 copies), and the
  evaluation's activations (all examples x the widest layer), against ``MemAvailable``.
"""

from __future__ import annotations

import resource
from pathlib import Path

from initopt.config import ConfigError
from initopt.values import Config

FILE_MARGIN = 64
MEMORY_SHARE = 0.8  # of what the kernel says is available
FEATURES = {"moons": 2, "circles": 2, "digits": 64, "mnist": 784, "fashion_mnist": 784, "cifar10": 3072}
CLASSES = {"moons": 2, "circles": 2}


def open_file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def available_memory() -> int | None:
    """Bytes the kernel reports as available (Linux ``/proc/meminfo``), or None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def parameter_count(cfg, n_in: int, n_out: int) -> int:
    """Parameters of ``initopt.models.build_model(cfg, n_in, n_out)`` without building it (nor
    importing torch): sum over layers of fan_in x fan_out (+ fan_out biases when ``cfg.bias``)."""
    sizes = [n_in, *cfg.hidden, n_out]
    return sum(a * b + (b if cfg.bias else 0) for a, b in zip(sizes, sizes[1:]))


def io_sizes(cfg: Config) -> tuple[int, int]:
    """The model's input features and outputs for ``cfg.data`` (one logit for two classes)."""
    return FEATURES.get(cfg.data.name, 784), 1 if CLASSES.get(cfg.data.name, 10) == 2 else 10


def memory_estimate(cfg: Config, members: int, n_train: int) -> int:
    """Bytes a population of ``members`` copies of ``cfg`` needs (see the module doc)."""
    n_in, n_out = io_sizes(cfg)
    itemsize = 8 if cfg.dtype == "float64" else 4
    weights = parameter_count(cfg.model, n_in, n_out)
    units = sum(cfg.model.hidden) + n_out
    per_member = (5 * weights + 3 * cfg.batch_size * units + n_train * max([*cfg.model.hidden, n_out])) * itemsize
    return members * per_member


def check_population_fits(cfg: Config, members: int, n_train: int) -> None:
    """One line naming what is too big when the machine cannot hold the population: ``replicas``
    (the count of members) when one member fits and ``members`` do not, else ``model.hidden``
    (one member alone, its parameters and activations, is beyond the memory)."""
    files = members + (1 if members > 1 else 0) + FILE_MARGIN
    limit = open_file_limit()
    if files > limit:
        raise ConfigError("replicas", members, f"needs {files} open files (an event file per member) and this "
                          f"process may open {limit} (ulimit -n): at most {limit - FILE_MARGIN - 1}, "
                          "or raise the limit")
    need, have = memory_estimate(cfg, members, n_train), available_memory()
    if have is None or need <= MEMORY_SHARE * have:
        return
    one = memory_estimate(cfg, 1, n_train)
    if one > MEMORY_SHARE * have:
        raise ConfigError("model.hidden", list(cfg.model.hidden), (
            f"the model alone needs about {one / 2**30:.1f} GiB of memory "
            f"({parameter_count(cfg.model, *io_sizes(cfg)):,} parameters with their gradients and optimizer state, "
            f"and its activations) and {have / 2**30:.1f} GiB is available: use narrower or fewer layers"))
    raise ConfigError("replicas", members, f"needs about {need / 2**30:.1f} GiB of memory and "
                      f"{have / 2**30:.1f} GiB is available: use fewer replicas or a smaller model")
