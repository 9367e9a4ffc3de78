"""Every use of Hydra's private API (``hydra._internal``) in initopt, in one place.

initopt needs five things Hydra does not export publicly:

* the basic sweeper (:class:`BasicSweeper`, the population sweeper's base class) and its expansion
  of a sweep into jobs (:func:`expand_sweep`, ``BasicSweeper.split_arguments``);
* applying plain ``key=value`` overrides to a composed config (:func:`apply_value_overrides`,
  ``ConfigLoaderImpl._apply_overrides_to_config``) and a job's directory name
  (:func:`overrides_dirname`, ``get_overrides_dirname``): the steps Hydra's composition ends with,
  used to derive a job's config from a composed one without re-running the defaults list;
* Hydra's command-line parser (:func:`args_parser`, ``get_args_parser``) and a config loader for
  a config module (:func:`config_loader`), to read a command line exactly as Hydra will before it
  starts. That loader reads each config file once per process (:class:`SharingConfigLoader`):
  Hydra's own reads every file again, and copies its repository, for every composition.

They are tested against the Hydra versions in :data:`TESTED`; importing this module on another
version fails in one line (:class:`UntestedHydra`). The contract is
``tests/test_population_launcher.py::test_the_fast_composition_equals_hydras_for_every_job``
(and the ``.hydra/`` files test of ``tests/test_launchers.py``): a new Hydra is supported once
they pass on it and its version is added to :data:`TESTED`.
"""

from __future__ import annotations

import pickle

import hydra
from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.config_repository import CachingConfigRepository
from hydra._internal.utils import create_config_search_path, get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser

TESTED = ("1.3.",)  # version prefixes this module was tested on (1.3.2 - 1.3.8)
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"  # its _target_ in a config

__all__ = ["BASIC_SWEEPER", "UntestedHydra", "apply_value_overrides", "args_parser", "basic_sweeper",
           "config_loader", "expand_sweep", "overrides_dirname"]


class UntestedHydra(RuntimeError):
    """initopt uses Hydra internals that this Hydra version was not tested with."""


def check_version(version: str = hydra.__version__) -> None:
    if not version.startswith(TESTED):
        raise UntestedHydra(
            f"hydra-core {version} is not a version initopt was tested with (tested: "
            f"{', '.join(v + 'x' for v in TESTED)}); install one: pip install 'hydra-core>=1.3.2,<1.4'")


check_version()


def basic_sweeper():
    """Hydra's basic sweeper class and its config class, looked up when asked: Hydra's plugin scan
    executes its module again, and a subclass must derive from the class that scan made."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf

    return BasicSweeper, BasicSweeperConf


def expand_sweep(overrides: list) -> list[list[str]]:
    """Every job's override list (parsed ``Override`` objects in), as the basic sweeper expands a sweep."""
    return [list(job) for batch in basic_sweeper()[0].split_arguments(overrides, None) for job in batch]


def apply_value_overrides(overrides: list, cfg) -> None:
    """Apply parsed ``key=value`` overrides to a composed config in place, as Hydra's composition does."""
    ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)


def overrides_dirname(overrides: list, kv_sep: str, item_sep: str, exclude_keys: list) -> str:
    """``hydra.job.override_dirname`` of a job's (non-hydra) parsed overrides."""
    return get_overrides_dirname(overrides=overrides, kv_sep=kv_sep, item_sep=item_sep, exclude_keys=exclude_keys)


def args_parser():
    """Hydra's own ``argparse`` parser of a ``@hydra.main`` command line."""
    return get_args_parser()


def config_loader(config_path: str):
    """A config loader for ``config_path`` (e.g. ``pkg://initopt.conf``), as ``@hydra.main`` builds
    one, that reads each config file once (:class:`SharingConfigLoader`)."""
    return SharingConfigLoader(config_search_path=create_config_search_path(config_path))


class SharingConfigLoader(ConfigLoaderImpl):
    """Hydra's config loader with one repository for all its compositions of a primary config.

    Each composition of ``ConfigLoaderImpl`` makes a ``CachingConfigRepository`` (a deep copy of the
    repository) and reads and parses every YAML file of the defaults list again (~0.1 s of its
    ~0.2 s here); a sweep composes once per option of each swept group. This loader keeps one per
    primary config (not for a command line that sets ``hydra.searchpath``: Hydra's own way then),
    and it hands out each loaded file as a new copy, as an uncached repository would (Hydra changes
    what it loads while composing)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._repositories: dict = {}  # primary config name -> its repository

    def _parse_overrides_and_create_caching_repo(self, config_name, overrides):
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
        if any(o.get_key_element() == "hydra.searchpath" for o in parsed):
            return super()._parse_overrides_and_create_caching_repo(config_name, overrides)
        if config_name not in self._repositories:
            repository = _CopyingRepository(self.repository)
            self._process_config_searchpath(config_name, parsed, repository)
            self._repositories[config_name] = repository
        return parsed, self._repositories[config_name]


class _CopyingRepository(CachingConfigRepository):
    """A caching repository that hands out a new copy of each loaded config (unpickled: ~50x faster
    than reading its YAML file again)."""

    def __init__(self, delegate) -> None:
        super().__init__(delegate)
        self._pickled: dict[str, bytes | None] = {}

    def load_config(self, config_path: str):
        if config_path not in self._pickled:
            loaded = self.delegate.load_config(config_path=config_path)
            self._pickled[config_path] = None if loaded is None else pickle.dumps(loaded)
        data = self._pickled[config_path]
        return None if data is None else pickle.loads(data)
