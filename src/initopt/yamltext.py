"""YAML text exactly as ``OmegaConf.to_yaml`` writes it, with libyaml's emitter where that is the same.

A sweep writes each job's config twice (``.hydra/config.yaml`` and the run's ``config`` text) and
parts of its ``hydra.yaml``; PyYAML's pure-Python emitter takes ~4 ms a config, libyaml's (C) ~0.5.
They differ only in how they escape and fold non-ASCII and control characters (a double-quoted
string's line breaks, ``\\x85``, wide characters), so libyaml's is used when every string is
printable ASCII, and OmegaConf's own dumper otherwise. The contract:
``tests/test_launchers.py::test_yaml_text_equals_omegaconfs`` and the ``.hydra/`` files test.
"""

from __future__ import annotations

import yaml
from omegaconf import OmegaConf
from omegaconf._utils import OmegaConfDumper, get_omega_conf_dumper

OPTIONS = {"default_flow_style": False, "allow_unicode": True, "sort_keys": False}


class _LibyamlDumper(getattr(yaml, "CDumper", yaml.Dumper)):
    """libyaml's emitter with OmegaConf's representer of strings (number- and bool-like strings quoted)."""


_LibyamlDumper.add_representer(str, OmegaConfDumper.str_representer)


def config_yaml(cfg) -> str:
    """``OmegaConf.to_yaml(cfg)``."""
    return plain_yaml(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))


def plain_yaml(value) -> str:
    """``OmegaConf.to_yaml`` of plain data (dicts, lists, strings, numbers, bools, None)."""
    dumper = _LibyamlDumper if yaml.__with_libyaml__ and _ascii_only(value) else get_omega_conf_dumper()
    return yaml.dump(value, Dumper=dumper, **OPTIONS)


def _ascii_only(value) -> bool:
    """Every string in ``value`` (keys too) is printable ASCII."""
    if isinstance(value, str):
        return value.isascii() and value.isprintable()
    if isinstance(value, dict):
        return all(_ascii_only(k) and _ascii_only(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_ascii_only(v) for v in value)
    return True
