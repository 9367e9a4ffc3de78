"""What TensorBoard's HParams plugin shows: each run's hyperparameters and a sweep's domains.

The plugin reads three summaries (TensorBoard's ``api.proto``; written by :mod:`initopt.tb`):

* one *experiment* for the whole sweep: a column per hyperparameter with its discrete
  domain (every value the sweep gives it, so the value filter lists them) and whether it
  ``differs`` between runs (the plugin puts those columns first and shows the first five),
  and the metrics: scalar tags whose last value fills the table and whose curves
  "Show Metrics" draws (:data:`METRICS`, with display names);
* per run a *session start*: the run's values (:func:`run_hparams`) and a group name; runs
  sharing a group are one row of the table (a replica job's seeds, :func:`sessions`);
* per run a *session end*: success, or failure for a diverged run.

A sweep's experiment is computed on multirun start from every job's composed config
(:mod:`initopt.callbacks`) and extended at its end by the group runs' rows
(:mod:`initopt.groupruns`); a single run's from its own values. Integers (seed, steps, batch
size) are numbers, so the table sorts and filters them as numbers; a row that pools several
seeds (a replica job's seeds, a mean run, a group run) has ``seeds`` (``0..4``) instead of ``seed``;
a mean run (a replica job's ``mean``, a group run) has ``seeds_averaged``, the number of seeds.

The optimizer columns are true for every form: ``optim.torch_lr`` and ``optim.torch_momentum``
(the ``torch.optim`` call that performs the same update) and ``optim.steady_step`` (the step a
constant gradient g settles to, divided by g: :func:`steady_step`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from omegaconf import DictConfig

from initopt.optim import momentum_sgd_arguments
from initopt.values import Config

GROUPS = ("model", "init", "optim", "data")
# The table's metrics (scalar tags, their last value) and the names its header shows.
METRICS = {"loss/train": "training loss", "loss/test": "held-out loss", "accuracy/train": "training accuracy",
           "accuracy/test": "held-out accuracy",
           "grad_summary/mean_norm_smooth": "mean gradient norm (last window)"}
Value = str | float

# Config keys per init / optimizer that the HParams table shows, where the option has them.
INIT_KEYS = ("std", "gain", "mode", "distribution")
OPTIM_KEYS = ("lr", "beta", "form", "beta1", "beta2", "eps", "weight_decay")


def torch_equivalent(optim: Config) -> tuple[float, float]:
    """``(lr, momentum)`` of the ``torch.optim`` call doing the same update: SGD ``(lr, 0)``;
    EMA momentum ``SGD(lr * beta, momentum=1 - beta)``; heavy ball ``SGD(lr, momentum=1 - beta)``;
    Adam ``(lr, 0)`` (its betas are columns of their own)."""
    if optim.name == "momentum":
        args = momentum_sgd_arguments(float(optim.lr), float(optim.beta), str(optim.form))
        return float(args["lr"]), float(args["momentum"])
    return float(optim.lr), 0.0


def steady_step(optim: Config) -> float:
    """The steady-state step size: under a constant gradient g the update settles to
    ``steady_step * g``. torch's ``buf <- mu buf + g; w <- w - lr buf`` settles at
    ``buf = g / (1 - mu)``, so it is ``lr / (1 - mu)``: ``lr`` for SGD, ``lr`` for EMA momentum
    (``lr beta / beta``), ``lr / beta`` for heavy ball. Adam: its ``lr`` (its steady step is
    ``lr`` per coordinate, whatever g)."""
    if optim.name == "momentum" and optim.form == "heavy_ball":
        return float(optim.lr) / float(optim.beta)
    return float(optim.lr)  # (lr beta) / (1 - (1 - beta)) for EMA momentum, exactly lr


def _number_or_text(value) -> Value:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def run_hparams(cfg: DictConfig, choices: Mapping[str, str]) -> dict[str, Value]:
    """One run's HParams values: the group options (``choices``, Hydra's names, e.g. ``normal10``),
    the init and optimizer parameters the chosen options have, the torch.optim equivalent and the
    steady-state step, the model's hidden sizes and activation, batch size, steps and seed (read
    from the config's values, :meth:`initopt.compose.JobConfigs.values`)."""
    from initopt.compose import JOBS  # at call time: compose is above this module

    cfg = JOBS.values(cfg)
    values: dict[str, Value] = {g: str(choices.get(g, cfg[g].name)) for g in GROUPS}
    values.update({f"init.{k}": _number_or_text(cfg.init[k]) for k in INIT_KEYS if k in cfg.init})
    if cfg.init.get("bias_std", 0):
        values["init.bias_std"] = float(cfg.init.bias_std)
    values.update({f"optim.{k}": _number_or_text(cfg.optim[k]) for k in OPTIM_KEYS if k in cfg.optim})
    values["optim.torch_lr"], values["optim.torch_momentum"] = torch_equivalent(cfg.optim)
    values["optim.steady_step"] = steady_step(cfg.optim)
    values["model.hidden"] = ",".join(str(h) for h in cfg.model.hidden)
    values["model.activation"] = str(cfg.model.activation)
    values.update({k: float(int(cfg[k])) for k in ("batch_size", "steps", "seed")})
    return values


@dataclass(frozen=True)
class Session:
    """One TensorBoard run's HParams entry: its values and its row (``group``; "" = its own)."""

    hparams: dict[str, Value]
    group: str = ""


def replica_seeds(cfg: DictConfig) -> list[int]:
    return [int(cfg.seed) + r for r in range(int(cfg.replicas))]


def seed_range(seeds: list[int]) -> str:
    """``0..4`` for consecutive seeds, else ``0,3,7``."""
    seeds = sorted(seeds)
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}..{seeds[-1]}"
    return ",".join(map(str, seeds))


def pooled(values: Mapping[str, Value], seeds: list[int]) -> dict[str, Value]:
    """A row over several seeds: ``seeds`` (text) in place of the numeric ``seed``."""
    rest = {k: v for k, v in values.items() if k not in ("seed", "seeds")}
    return {**rest, "seeds": seed_range(seeds)}


def sessions(cfg: DictConfig, choices: Mapping[str, str], run_name: str) -> dict[str, Session]:
    """The HParams entries a job writes, by kind: ``run`` for a single run; for ``replicas=K``,
    ``seeds`` (every seed's run, one row: seeds ``a..b``, replicas ``K seeds``) and ``mean``
    (the mean run, its own row: replicas ``mean of K``). A sweep job's values are computed once
    (:meth:`initopt.compose.JobConfigs.derived`: the HParams callback and the job's plan both ask)."""
    from initopt.compose import JOBS

    values = JOBS.derived(cfg, "hparams", lambda c: run_hparams(c, choices))
    if int(cfg.replicas) <= 1:
        return {"run": Session(values)}
    seeds = replica_seeds(cfg)
    common = pooled(values, seeds)
    k = len(seeds)
    return {"seeds": Session({**common, "replicas": f"{k} seeds"}, group=f"{run_name or 'run'} (seeds)"),
            "mean": Session({**common, "replicas": f"mean of {k}", "seeds_averaged": float(k)})}


def _sort_key(value: Value):
    """Numbers by value; integer strings (seeds) by their number; other strings alphabetically."""
    if isinstance(value, float):
        return (0, value, "")
    text = value.replace(",", "..").split("..")[0]
    return (0, float(text), value) if text.lstrip("-").isdigit() else (1, 0.0, value)


@dataclass(frozen=True)
class Column:
    """One HParams column: its name, its discrete domain (sorted) and whether runs differ in it."""

    name: str
    values: tuple[Value, ...]
    differs: bool


def columns(runs: Iterable[Mapping[str, Value]]) -> list[Column]:
    """The experiment's columns from every run's values: the domain of a column is the set of
    values the runs give it; it ``differs`` when that set has more than one value (a column only
    some runs have, e.g. ``optim.beta`` for momentum only, differs only if those runs differ)."""
    domains: dict[str, set] = {}
    for values in runs:
        for name, value in values.items():
            domains.setdefault(name, set()).add(value)
    return [Column(name, tuple(sorted(vals, key=_sort_key)), len(vals) > 1)
            for name, vals in domains.items()]
