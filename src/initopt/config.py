"""Structured configs: one dataclass per config-group option, plus range checks.

Hydra checks key names and types against these schemas while it composes a run
(a typo'd key or ``steps=abc`` fails there). Ranges are checked by
:func:`validate`, because ``__post_init__`` does not run on composed configs.
Every failure is a :class:`ConfigError` whose one-line message names the key,
the value and what is allowed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from initopt.values import Values


class ConfigError(ValueError):
    """A user-facing configuration error with a one-line message."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def clip_words(text: str, limit: int = 160) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, "..." marking a cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 3].rsplit(" ", 1)[0].rstrip(" ,;:") + "..."


# What torch.load's long messages come down to: (pattern in the message, cause for a user).
LOAD_ERROR_CAUSES = (
    (r"GLOBAL ([\w.]+)", "it asks to import {0}, which a weights-only load refuses: "
                         "not a plain tensor file, possibly malicious"),
    (r"Unsupported operand (\d+)", "pickle opcode {0} is not allowed in a weights-only load: "
                                   "a plain pickle, not a torch checkpoint"),
    (r"invalid load key", "not a torch file"),
    (r"central directory|zip archive", "not a complete zip archive: truncated or not a torch file"),
    (r"Ran out of input|^$", "the file is empty or truncated"),
)


def load_error_cause(err: BaseException, limit: int = 160) -> str:
    """The cause of a failed ``torch.load`` in one line, without torch's advice paragraphs.

    Known causes (a refused global, a foreign pickle, a truncated zip) map to a short
    sentence; anything else is "not a torch file" (or, for an OSError, the file's problem)
    with the type and first sentence of the message, cut at a word boundary.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    for pattern, cause in LOAD_ERROR_CAUSES:
        match = re.search(pattern, text)
        if match:
            return cause.format(*match.groups())
    first = re.split(r"(?<=\.)\s", text.splitlines()[0])[0] if text else ""
    detail = f"{type(err).__name__}: {first}" if first else type(err).__name__
    if isinstance(err, OSError):  # the file itself: permissions, a folder, an I/O error
        return clip_words(detail, limit)
    return clip_words(f"not a torch file; {detail}", limit)  # the unpickler met bytes it can't read


# ----------------------------------------------------------------------------- model
@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "relu"
    bias: bool = True


# ------------------------------------------------------------------------------ init
@dataclass
class ZeroInitConfig:
    name: str = "zero"
    bias_std: float = 0.0


@dataclass
class NormalInitConfig:
    name: str = "normal"
    std: float = 0.01
    bias_std: float = 0.0


@dataclass
class XavierInitConfig:
    name: str = "xavier"
    distribution: str = "normal"
    gain: float = 1.0
    bias_std: float = 0.0


@dataclass
class HeInitConfig:
    name: str = "he"
    distribution: str = "normal"
    mode: str = "fan_in"
    nonlinearity: str = "relu"
    bias_std: float = 0.0


# ----------------------------------------------------------------------------- optim
@dataclass
class SGDConfig:
    name: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 0.0


@dataclass
class MomentumConfig:
    """Both momentum forms, parametrised by the homework's beta (weight of the new gradient).

    ``form=ema``        z <- (1-beta) z + beta g;  w <- w - lr z      (homework eq. 6, z0 = 0)
    ``form=heavy_ball`` b <- (1-beta) b + g;       w <- w - lr b      (torch.optim.SGD momentum)
    """

    name: str = "momentum"
    lr: float = 0.1
    beta: float = 0.1
    form: str = "ema"
    weight_decay: float = 0.0


@dataclass
class AdamConfig:
    name: str = "adam"
    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    fused: bool = True


# ------------------------------------------------------------------------------ data
@dataclass
class DataConfig:
    name: str = "moons"
    n_samples: int = 1000
    noise: float = 0.2
    factor: float = 0.5
    test_fraction: float = 0.25
    root: str = "data"
    download: bool = False
    preprocess: str = "none"
    limit_train: int = 0
    seed: int = 0
    sigmas: list[float] = field(default_factory=lambda: [3.0, 0.3])  # lstsq: singular values of X / sqrt(n)


# ------------------------------------------------------------------------------- run
@dataclass
class TrainConfig:
    model: Any = MISSING
    init: Any = MISSING
    optim: Any = MISSING
    data: Any = MISSING
    seed: int = 0
    replicas: int = 1
    replicas_mode: str = "auto"
    device: str = "auto"
    dtype: str = "float32"
    steps: int = 1000
    batch_size: int = 64
    log_every: int = 1
    eval_every: int = 100
    flush_every: int = 100
    act_every: int = 10
    param_every: int = 50
    hist_every: int = 250
    hist_tensors: str = r"\.weight$"  # regex: histograms of the tensors whose name it finds
    checkpoint_every: int = 0
    resume: bool = True
    overwrite: bool = False
    compile: str = "auto"
    threads: Any = "auto"  # "auto" or an int >= 0: checked by validate
    deterministic: bool = False
    progress: bool = True


ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "gelu", "identity")
INIT_DISTRIBUTIONS = ("normal", "uniform")
FAN_MODES = ("fan_in", "fan_out")
NONLINEARITIES = ("relu", "leaky_relu", "tanh", "sigmoid", "linear", "selu")
MOMENTUM_FORMS = ("ema", "heavy_ball")
DATASETS = ("moons", "circles", "digits", "fashion_mnist", "mnist", "cifar10", "lstsq")
PREPROCESS = ("none", "scale", "center", "standardize")
DEVICES = ("auto", "cpu", "cuda")
REPLICA_MODES = ("auto", "stacked", "vmap", "sequential")
COMPILE_MODES = ("auto", "on", "off")
DTYPES = ("float32", "float64")

GROUP_SCHEMAS = {
    "model": {"mlp_schema": MLPConfig},
    "init": {
        "zero_schema": ZeroInitConfig,
        "normal_schema": NormalInitConfig,
        "xavier_schema": XavierInitConfig,
        "he_schema": HeInitConfig,
    },
    "optim": {"sgd_schema": SGDConfig, "momentum_schema": MomentumConfig, "adam_schema": AdamConfig},
    "data": {"data_schema": DataConfig},
}


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore; the YAML files extend them by name."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, schemas in GROUP_SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=group, name=name, node=node)


# ---------------------------------------------------------------------------- checks
def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, value, "one of " + ", ".join(allowed))


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, value, "must be > 0")


def _non_negative(key: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(key, value, "must be >= 0")


def _in_open_closed(key: str, value: float, lo: float, hi: float) -> None:
    if not lo < value <= hi:
        raise ConfigError(key, value, f"must be in ({lo}, {hi}]")


def _validate_model(m: Values) -> None:
    hidden = list(m.hidden)
    if any(h <= 0 for h in hidden):
        raise ConfigError("model.hidden", hidden, "a list of positive layer widths ([]: a linear model)")
    _one_of("model.activation", m.activation, ACTIVATIONS)


def _validate_init(i: Values) -> None:
    _non_negative("init.bias_std", i.bias_std)
    if i.name == "normal":
        _non_negative("init.std", i.std)
    if i.name in ("xavier", "he"):
        _one_of("init.distribution", i.distribution, INIT_DISTRIBUTIONS)
    if i.name == "xavier":
        _positive("init.gain", i.gain)
    if i.name == "he":
        _one_of("init.mode", i.mode, FAN_MODES)
        _one_of("init.nonlinearity", i.nonlinearity, NONLINEARITIES)


def _validate_optim(o: Values) -> None:
    _positive("optim.lr", o.lr)
    _non_negative("optim.weight_decay", o.weight_decay)
    if o.name == "momentum":
        _in_open_closed("optim.beta", o.beta, 0.0, 1.0)
        _one_of("optim.form", o.form, MOMENTUM_FORMS)
    if o.name == "adam":
        for key in ("beta1", "beta2"):
            if not 0.0 <= o[key] < 1.0:
                raise ConfigError(f"optim.{key}", o[key], "must be in [0, 1)")
        _positive("optim.eps", o.eps)


def _validate_data(d: Values) -> None:
    _one_of("data.name", d.name, DATASETS)
    _one_of("data.preprocess", d.preprocess, PREPROCESS)
    if d.name in ("moons", "circles", "lstsq"):
        _non_negative("data.noise", d.noise)
    if d.name == "lstsq" and (not d.sigmas or not all(math.isfinite(s) and s > 0 for s in d.sigmas)):
        raise ConfigError("data.sigmas", list(d.sigmas), "a non-empty list of singular values > 0")
    if d.name == "circles" and not 0.0 < d.factor < 1.0:
        raise ConfigError("data.factor", d.factor, "must be in (0, 1)")
    if not 0.0 < d.test_fraction < 1.0:
        raise ConfigError("data.test_fraction", d.test_fraction, "must be in (0, 1)")
    _non_negative("data.limit_train", d.limit_train)


def _check_known_keys(cfg: DictConfig) -> None:
    """``+key=value`` adds keys that Hydra's struct mode lets through and nothing would read."""
    for node_key in (None, "model", "init", "optim", "data"):
        node = cfg if node_key is None else cfg[node_key]
        fields = getattr(OmegaConf.get_type(node), "__dataclass_fields__", None)
        for key in node.keys() if fields else ():
            if key not in fields:
                full = key if node_key is None else f"{node_key}.{key}"
                raise ConfigError(full, node[key], "not a config key; allowed: " + ", ".join(fields))


def _check_finite(node: dict, prefix: str = "") -> None:
    """Every float in the config is a finite number (``inf`` and ``nan`` parse as floats)."""
    for key, value in node.items():
        if isinstance(value, dict):
            _check_finite(value, f"{prefix}{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{key}", value, "must be a finite number")


SEED_MAX = 2**64 - 1  # torch.Generator's seed is an unsigned 64-bit integer
DATA_SEED_MAX = 2**32 - 1  # scikit-learn's random_state


def _check_seeds(cfg: Values) -> None:
    """Member seeds ``seed .. seed + replicas - 1`` within torch's range, ``data.seed`` within
    scikit-learn's (a negative seed would alias a large one: torch reads -1 as 2^64 - 1)."""
    last = SEED_MAX - (cfg.replicas - 1)
    if not 0 <= cfg.seed <= last:
        members = f" with replicas={cfg.replicas} (seeds seed .. seed+{cfg.replicas - 1})" if cfg.replicas > 1 else ""
        raise ConfigError("seed", cfg.seed, f"must be an integer in [0, {last}]{members}: torch's seeds are "
                          "unsigned 64-bit integers")
    if not 0 <= cfg.data.seed <= DATA_SEED_MAX:
        raise ConfigError("data.seed", cfg.data.seed, f"must be an integer in [0, {DATA_SEED_MAX}] "
                          "(scikit-learn's random_state)")


def _check_threads(value: Any) -> None:
    if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise ConfigError("threads", value, "auto (1 thread for small steps, torch's default above), "
                          "0 (torch's default) or a number of threads >= 1")


def validate(cfg: DictConfig) -> None:
    """Check every key and range a schema cannot express; raise :class:`ConfigError` on the first.
    The keys against the schemas' fields, on the config; the values on its plain data, read once
    (:meth:`initopt.compose.JobConfigs.values`)."""
    from initopt.compose import JOBS  # at call time: compose is above this module

    _check_known_keys(cfg)
    cfg = JOBS.values(cfg)
    _check_finite(cfg)
    _validate_model(cfg.model)
    _validate_init(cfg.init)
    _validate_optim(cfg.optim)
    _validate_data(cfg.data)
    _one_of("device", cfg.device, DEVICES)
    _one_of("dtype", cfg.dtype, DTYPES)
    _one_of("replicas_mode", cfg.replicas_mode, REPLICA_MODES)
    _one_of("compile", cfg.compile, COMPILE_MODES)
    if cfg.replicas < 1:
        raise ConfigError("replicas", cfg.replicas, "at least 1 (train seeds seed, seed+1, ...)")
    _check_seeds(cfg)
    for key in ("steps", "batch_size", "eval_every", "flush_every"):
        _positive(key, cfg[key])
    for key in ("log_every", "act_every", "param_every", "hist_every", "checkpoint_every"):
        _non_negative(key, cfg[key])
    _check_regex("hist_tensors", cfg.get("hist_tensors", ""))
    _check_threads(cfg.threads)


def _check_regex(key: str, value) -> None:
    import re

    try:
        re.compile(str(value))
    except re.error as err:
        raise ConfigError(key, value, f"a regular expression (Python re): {err}") from None


def register_resolvers() -> None:
    """``${initopt_non_run_keys:}`` in conf/train.yaml: Hydra's directory names leave out the keys
    that do not change a run, from the one list in :mod:`initopt.rundir`."""
    if not OmegaConf.has_resolver("initopt_non_run_keys"):
        OmegaConf.register_new_resolver("initopt_non_run_keys", _non_run_keys)


def _non_run_keys() -> list[str]:
    from initopt.rundir import dirname_exclude_keys  # at call time: rundir imports this module

    return dirname_exclude_keys()


# The YAML files extend these schemas by name: register them whenever configs may be composed.
register_schemas()
register_resolvers()
