"""YAML text exactly as ``OmegaConf.to_yaml`` writes it, with libyaml's emitter where that is the same.

A sweep writes each job's config twice (``.hydra/config.yaml`` and the run's ``config`` text) and
parts of its ``hydra.yaml``; PyYAML's pure-Python emitter takes ~4 ms a config, libyaml's (C) ~0.5.
They differ only in how they escape and fold non-ASCII and control characters (a double-quoted
string's line breaks, ``\\x85``, wide characters), so libyaml's is used when every string is
printable ASCII, and OmegaConf's own dumper otherwise.

A sweep's jobs differ in a few values: :func:`mapping_yaml` writes a config's top-level items one
by one (block style writes each item as its own lines, one after another) and keeps each item's
text by its value, so a job re-represents only the items its values changed (~0.1 ms, not ~2 ms).
The contract:
``tests/test_launchers.py::test_yaml_text_equals_omegaconfs`` and the ``.hydra/`` files test.
"""

from __future__ import annotations

import yaml
from omegaconf import OmegaConf
from omegaconf._utils import OmegaConfDumper, get_omega_conf_dumper, get_yaml_loader

from initopt.values import plain_copy

OPTIONS = {"default_flow_style": False, "allow_unicode": True, "sort_keys": False}


class _LibyamlDumper(getattr(yaml, "CDumper", yaml.Dumper)):
    """libyaml's emitter with OmegaConf's representer of strings (number- and bool-like strings quoted)."""


_LibyamlDumper.add_representer(str, OmegaConfDumper.str_representer)


_OmegaConfLoader = get_yaml_loader()  # OmegaConf's rules: 1e-3 a float, no timestamps, no duplicate keys


_LOADER = _OmegaConfLoader
if yaml.__with_libyaml__:
    class _LibyamlLoader(yaml.cyaml.CParser, _OmegaConfLoader):
        """OmegaConf's loader on libyaml's parser (as PyYAML builds ``CSafeLoader``: the C parser, then
        the constructor and resolver, here OmegaConf's own)."""

        def __init__(self, stream):
            yaml.cyaml.CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _LOADER = _LibyamlLoader


def load_plain(path) -> dict | list:
    """``OmegaConf.to_container(OmegaConf.load(path), resolve=False)`` through
    libyaml's parser: a sweep's ``.hydra/`` files read back by the report, ~10x faster than
    OmegaConf's pure-Python parser and its nodes. A file holding anything but a mapping or a list goes
    through OmegaConf itself."""
    with open(path, encoding="utf-8") as f:
        loaded = yaml.load(f, Loader=_LOADER)
    if loaded is None:  # an empty file: OmegaConf's empty config
        return {}
    if isinstance(loaded, (dict, list)):
        return loaded
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def config_yaml(cfg) -> str:
    """``OmegaConf.to_yaml(cfg)``."""
    return plain_yaml(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))


def plain_yaml(value) -> str:
    """``OmegaConf.to_yaml`` of plain data (dicts, lists, strings, numbers, bools, None)."""
    dumper = _LibyamlDumper if yaml.__with_libyaml__ and _ascii_only(value) else get_omega_conf_dumper()
    return yaml.dump(value, Dumper=dumper, **OPTIONS)


def int_scalar(value) -> str | None:
    """How ``OmegaConf.to_yaml`` writes ``value`` after ``key: `` when it is an int (``12``) or a
    string of one as ``str`` writes it (no sign, no leading zero: YAML would read it as an int, so
    OmegaConf's dumper quotes it, ``'12'``); None for anything else. A YAML dump takes ~0.1 ms."""
    if type(value) is int:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and value == str(int(value)):
        return repr(value)
    return None


_ITEMS: dict[str, str] = {}  # repr((key, value)) -> plain_yaml({key: value})
MAX_ITEMS = 4096  # items kept; the memo starts over beyond


def mapping_yaml(mapping: dict) -> str:
    """``plain_yaml(mapping)`` of a mapping of plain data, item by item (see the module doc).
    An item is known by ``repr((key, value))``: plain data's repr tells ``1``, ``1.0``, ``True`` and
    ``'1'`` apart, and shows every key and value in order."""
    if not mapping:
        return plain_yaml({})
    parts = []
    for item in mapping.items():
        known = repr(item)
        text = _ITEMS.get(known)
        if text is None:
            if len(_ITEMS) >= MAX_ITEMS:
                _ITEMS.clear()
            # in builtins: PyYAML writes a dict subclass (initopt's Values) as a Python object
            text = _ITEMS[known] = plain_yaml({item[0]: plain_copy(item[1])})
        parts.append(text)
    return "".join(parts)


def _ascii_only(value) -> bool:
    """Every string in ``value`` (keys too) is printable ASCII."""
    if isinstance(value, str):
        return value.isascii() and value.isprintable()
    if isinstance(value, dict):
        return all(_ascii_only(k) and _ascii_only(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_ascii_only(v) for v in value)
    return True
