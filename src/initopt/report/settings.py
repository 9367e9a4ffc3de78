"""The settings a sweep held fixed, read from its jobs' composed ``.hydra/config.yaml``: model,
data, steps, batch size, and each init's and optimizer's own parameters (lr per optimizer).
A key that differs between jobs is shown with all its values.
"""

from __future__ import annotations

from dataclasses import dataclass

from initopt.report.collect import INIT_ORDER, OPTIM_ORDER

# Keys that say how a job ran or where its files are, not what it computed.
NOT_SHOWN = ("name", "root", "download", "fused")
TRAINING = ("steps", "batch_size", "dtype", "eval_every")


def _fmt(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(_fmt, value)) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _values(configs: list[dict], section: str, key: str) -> str:
    """The value of ``section.key`` in the configs; ``a/b/c`` (numbers ascending) where they differ."""
    raw = [c.get(section, {}).get(key) for c in configs if key in c.get(section, {})]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        raw = sorted(raw)
    seen = list(dict.fromkeys(_fmt(v) for v in raw))
    return seen[0] if len(seen) == 1 else "/".join(seen)


def _section(configs: list[dict], section: str) -> str:
    """``name (key value, ...)`` of one config group, every key the configs give it."""
    keys = list(dict.fromkeys(k for c in configs for k in c.get(section, {}) if k not in NOT_SHOWN))
    if section == "data" and not any(c.get("data", {}).get("name") == "lstsq" for c in configs):
        keys = [k for k in keys if k != "sigmas"]  # the least-squares problem's alone
    names = _values(configs, section, "name")
    return f"{names} (" + ", ".join(f"{k} {_values(configs, section, k)}" for k in keys) + ")"


def _names(configs: list[dict], section: str, order: tuple) -> list[str]:
    """The names chosen for a config group (e.g. the optimizers), in the config order."""
    names = list(dict.fromkeys(str(c.get(section, {}).get("name")) for c in configs if section in c))
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), names.index(n)))


def _with_name(configs: list[dict], section: str, name: str) -> list[dict]:
    return [c for c in configs if str(c.get(section, {}).get("name")) == name]


def _per_name(configs: list[dict], section: str, order: tuple) -> list[str]:
    """One ``_section`` per chosen name, in the config order."""
    return [_section(_with_name(configs, section, n), section) for n in _names(configs, section, order)]


def _lrs(configs: list[dict]) -> str:
    """``sgd 0.1, momentum 0.1, adam 0.001``: the learning rate of each optimizer."""
    return ", ".join(f"{n} {_values(_with_name(configs, 'optim', n), 'optim', 'lr')}"
                     for n in _names(configs, "optim", OPTIM_ORDER))


def _top(configs: list[dict], key: str) -> str:
    return _values([{"t": c} for c in configs], "t", key)


@dataclass
class Settings:
    """The fixed settings: ``lines`` for the report page, ``short`` for a figure's title."""

    lines: list[str]
    short: str


def fixed_settings(configs: list[dict], seeds: list[str]) -> Settings:
    configs = [c for c in configs if c]
    if not configs:
        return Settings(["(no .hydra/config.yaml found: settings unknown)"], "")
    training = ", ".join(f"{k.replace('_', ' ')} {_top(configs, k)}"
                         for k in TRAINING if any(k in c for c in configs))
    seed_text = f"seeds {', '.join(seeds)} (n = {len(seeds)})"
    lines = [f"- model: {_section(configs, 'model')}",
             f"- data: {_section(configs, 'data')}",
             f"- init: {'; '.join(_per_name(configs, 'init', INIT_ORDER))}",
             f"- optimizer: {'; '.join(_per_name(configs, 'optim', OPTIM_ORDER))}",
             f"- training: {training}; {seed_text}"]
    model = " ".join(_values(configs, "model", k) for k in ("name", "hidden", "activation")
                     if any(k in c.get("model", {}) for c in configs))
    short = (f"{_values(configs, 'data', 'name')} · {model} · {_top(configs, 'steps')} steps · "
             f"batch {_top(configs, 'batch_size')} · lr {_lrs(configs)}")
    return Settings(lines, short)
