"""A composed config's values as plain data, read like the config (``cfg.data.name``, ``cfg["seed"]``).

OmegaConf resolves, type-checks and wraps every value on every read (~20-50 us a key here); a
sweep reads each job's config many times over (the start-up checks, its HParams values, its
fingerprint, its group's key, its members' init and optimizer settings). :func:`values_of` reads
the whole config once (``OmegaConf.to_container(resolve=True)``, ~1 ms) into :class:`Values`, a
dict whose keys are also attributes; a sweep's job takes it once per process
(:meth:`initopt.compose.JobConfigs.values`). Plain data has no schema: what needs the config's
types (``OmegaConf.get_type``) or writes it back as YAML reads the config itself.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


class Values(dict):
    """A config node's values: ``v.key`` is ``v["key"]``; nested nodes are ``Values`` too, lists
    are lists. Shared by every reader of a job: read it, never change it."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


Config = DictConfig | Values  # what a check reads like a config: the config itself or its values


def values_of(cfg: DictConfig) -> Values:
    """``cfg``'s values, interpolations resolved (a read of a missing or unresolvable value fails
    here, as reading it from the config would: a ``???`` value raises ``MissingMandatoryValue``)."""
    return _wrap(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, enum_to_str=True))


def value_of(value: Any) -> Any:
    """One value read from a config (``OmegaConf.select``) as :func:`values_of` reads it: a node as
    plain data, an enum as its name."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True, throw_on_missing=True, enum_to_str=True)
    return value.name if isinstance(value, Enum) else value


def literal_values(cfg: DictConfig) -> Values | None:
    """``values_of(cfg)`` of a config holding no interpolation and no missing value (what it holds
    is what it is: read without resolving, ~0.7 ms), else None."""
    held = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    return _wrap(held) if _literal(held) else None


def has_path(values: Values, path: list[str]) -> bool:
    """Each key of ``path`` names a node of the one before (where :func:`with_value` may put a value)."""
    for key in path:
        if not isinstance(values, dict) or key not in values:
            return False
        values = values[key]
    return True


def with_value(values: Values, path: list[str], value: Any) -> Values:
    """``values`` with ``value`` (plain data) at ``path`` (keys of nested nodes, each present): new
    copies of the nodes along the path, every other node shared."""
    key, rest = path[0], path[1:]
    return Values({**values, key: with_value(values[key], rest, value) if rest else _wrap(value)})


def plain_copy(value: Any) -> Any:
    """A new copy of ``value`` in builtin types only (``Values`` -> ``dict``): what may be changed,
    serialized or pickled into a checkpoint (whose weights-only load allows builtins only)."""
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_copy(v) for v in value]
    return value


def _literal(value: Any) -> bool:
    if isinstance(value, str):
        return "${" not in value and value != "???"
    if isinstance(value, dict):
        return all(_literal(v) for v in value.values())
    if isinstance(value, list):
        return all(_literal(v) for v in value)
    return True


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return Values((k, _wrap(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value
