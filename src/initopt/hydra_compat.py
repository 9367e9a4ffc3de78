"""Every use of Hydra's private API (``hydra._internal``) in initopt, in one place.

initopt needs these things Hydra does not export publicly:

* the basic sweeper (:class:`BasicSweeper`, the population sweeper's base class) and its expansion
  of a sweep into jobs (:func:`expand_sweep`, ``BasicSweeper.split_arguments``);
* applying plain ``key=value`` overrides to a composed config (:func:`apply_value_overrides`,
  ``ConfigLoaderImpl._apply_overrides_to_config``) and a job's directory name
  (:func:`overrides_dirname`, ``get_overrides_dirname``): the steps Hydra's composition ends with,
  used to derive a job's config from a composed one without re-running the defaults list;
* Hydra's command-line parser (:func:`args_parser`, ``get_args_parser``) and a config loader for
  a config module (:func:`config_loader`), to read a command line exactly as Hydra will before it
  starts. That loader shares its work with every other of the process (:class:`SharingConfigLoader`:
  each file read once, each command line's config composed once, a sweep's compositions merging
  their shared leading configs once), and ``@hydra.main`` is given one too
  (:func:`share_hydras_compositions`): Hydra's own reads every file again, and copies its
  repository, for every composition, and composes a command line's config three times.

They are tested against the Hydra versions in :data:`TESTED`; importing this module on another
version fails in one line (:class:`UntestedHydra`). The contract is
``tests/test_launchers.py::test_the_fast_composition_equals_hydras_for_every_job``
(and the ``.hydra/`` files test of ``tests/test_launchers.py``): a new Hydra is supported once
they pass on it and its version is added to :data:`TESTED`.
"""

from __future__ import annotations

import os
import pickle
import sys

import hydra
from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.config_repository import CachingConfigRepository
from hydra._internal.utils import create_config_search_path, get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, flag_override
from omegaconf.errors import OmegaConfBaseException

TESTED = ("1.3.",)  # version prefixes this module was tested on (1.3.2 - 1.3.8)
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"  # its _target_ in a config

__all__ = ["BASIC_SWEEPER", "LOADER_VARIABLE", "CopyingRepository", "SharingConfigLoader", "UntestedHydra",
           "apply_value_overrides", "args_parser", "basic_sweeper", "clear_shared", "config_loader", "expand_sweep",
           "overrides_dirname", "share_hydras_compositions"]


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
    one, that shares its reading and composing with every other of this process
    (:class:`SharingConfigLoader`)."""
    return SharingConfigLoader(config_search_path=create_config_search_path(config_path))


LOADER_VARIABLE = "INITOPT_HYDRA_LOADER"  # "hydra": @hydra.main keeps Hydra's own loader (to compare)
LOADERS = ("shared", "hydra")


def share_hydras_compositions() -> None:
    """Make the config loader ``@hydra.main`` builds a :class:`SharingConfigLoader`: it then reuses
    the start-up checks' files and compositions (Hydra composes the command line's config twice
    more: once to read ``hydra.mode``, once to run; the checks composed it already), and a plain
    multirun composes each job with the shared files and leading merges. Unless the environment
    says ``INITOPT_HYDRA_LOADER=hydra``: Hydra's own loader then (what ``scripts/bench.py``
    compares with); any other value is refused (a ``ValueError`` naming it)."""
    from hydra._internal import hydra as hydra_module

    choice = os.environ.get(LOADER_VARIABLE, "shared")
    if choice not in LOADERS:
        raise ValueError(f"{LOADER_VARIABLE}={choice!r} is not allowed: one of {', '.join(LOADERS)} "
                         "(initopt's loader, the default; or Hydra's own)")
    hydra_module.ConfigLoaderImpl = SharingConfigLoader if choice == "shared" else ConfigLoaderImpl


def clear_shared() -> None:
    """Forget every file read and config composed (for a process whose config files change)."""
    _REPOSITORIES.clear()
    _COMPOSED.clear()


# What the loaders of one process share: a repository per (search path, primary config), and each
# config composed by ``load_configuration`` (not a sweep job's: see SharingConfigLoader).
_REPOSITORIES: dict[tuple, CopyingRepository] = {}
_COMPOSED: dict[tuple, tuple[bool, bytes]] = {}  # its inputs -> (validated, the config pickled)


class SharingConfigLoader(ConfigLoaderImpl):
    """Hydra's config loader, sharing its work with every other in the process.

    * **Each config file read once.** Each composition of ``ConfigLoaderImpl`` makes a
      ``CachingConfigRepository`` (a deep copy of the repository) and reads and parses every YAML
      file of the defaults list again (~0.1 s of its ~0.2 s here); a sweep composes once per option
      of each swept group. This loader keeps one per search path and primary config (not for a
      command line that sets ``hydra.searchpath``: Hydra's own way then), and it hands out each
      loaded file as a new copy, as an uncached repository would (Hydra changes what it loads).
    * **A command line's config composed once.** ``load_configuration`` with the same inputs
      (config, overrides, run mode, search path, working directory, environment, version base and
      task name: all a composition reads besides the files) returns a new copy of the config
      composed first; a composition that validated its sweep overrides answers one that does not.
    * **Shared leading merges.** A composition merges its defaults list's configs one by one into an
      empty config (:meth:`_compose_config_from_defaults_list`); a sweep's compositions share
      their first ~20 (Hydra's own node, the schema, the groups before the first swept one). The
      config after the longest run of leading configs two compositions share is kept, pickled, and
      a later composition starting with that run merges only the rest.
    """

    _sweeping = False  # load_configuration called by load_sweep_config: a job's own, not kept

    def _parse_overrides_and_create_caching_repo(self, config_name, overrides):
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
        if any(o.get_key_element() == "hydra.searchpath" for o in parsed):
            return super()._parse_overrides_and_create_caching_repo(config_name, overrides)
        key = (_search_path_key(self), config_name)
        if key not in _REPOSITORIES:
            repository = CopyingRepository(self.repository)
            self._process_config_searchpath(config_name, parsed, repository)
            _REPOSITORIES[key] = repository
        return parsed, _REPOSITORIES[key]

    def load_configuration(self, config_name, overrides, run_mode, from_shell=True, validate_sweep_overrides=True):
        if self._sweeping:
            return super().load_configuration(config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
        key = _composition_key(self, config_name, overrides, run_mode, from_shell)
        held = _COMPOSED.get(key)
        if held is not None and (held[0] or not validate_sweep_overrides):
            return pickle.loads(held[1])
        cfg = super().load_configuration(config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
        data = _pickled(cfg)
        if data is not None:
            _COMPOSED[key] = (validate_sweep_overrides, data)
        return cfg

    def load_sweep_config(self, master_config, sweep_overrides):
        self._sweeping = True
        try:
            return super().load_sweep_config(master_config, sweep_overrides)
        finally:
            self._sweeping = False

    def _compose_config_from_defaults_list(self, defaults, repo):
        """Hydra 1.3's merge loop and ``strip_defaults``, from the longest kept run of leading configs."""
        if not isinstance(repo, CopyingRepository):
            return super()._compose_config_from_defaults_list(defaults, repo)
        keys = tuple((d.config_path, d.package, d.primary) for d in defaults)
        start, cfg = repo.merged_prefix(keys)
        keep = repo.shared_prefix(keys)
        with flag_override(cfg, "no_deepcopy_set_nodes", True):
            for k in range(start, len(defaults)):
                if k == keep and k > start:
                    repo.keep_merged(keys[:k], cfg)
                loaded = self._load_single_config(default=defaults[k], repo=repo)
                try:
                    cfg.merge_with(loaded.config)
                except OmegaConfBaseException as e:
                    raise ConfigCompositionException(
                        f"In '{defaults[k].config_path}': {type(e).__name__} raised while"
                        f" composing config:\n{e}").with_traceback(sys.exc_info()[2]) from e
            if keep == len(defaults) > start:
                repo.keep_merged(keys, cfg)
        _strip_defaults(cfg)
        return cfg


def _search_path_key(loader) -> tuple:
    return tuple((p.provider, p.path) for p in loader.config_search_path.get_path())


def _composition_key(loader, config_name, overrides, run_mode, from_shell) -> tuple:
    """All that ``load_configuration`` reads besides the config files."""
    from hydra import version
    from hydra.core.utils import JobRuntime

    return (_search_path_key(loader), config_name, tuple(overrides), run_mode, from_shell, os.getcwd(),
            tuple(sorted(os.environ.items())), str(version.getbase()), JobRuntime.instance().get("name"))


def _strip_defaults(cfg) -> None:
    """Hydra 1.3's last step of a composition: the ``defaults`` lists left in nodes removed."""
    if isinstance(cfg, DictConfig):
        if cfg._is_missing() or cfg._is_none():
            return
        with flag_override(cfg, ["readonly", "struct"], False):
            if cfg._get_flag("HYDRA_REMOVE_TOP_LEVEL_DEFAULTS"):
                cfg._set_flag("HYDRA_REMOVE_TOP_LEVEL_DEFAULTS", None)
                cfg.pop("defaults", None)
        for _key, value in cfg.items_ex(resolve=False):
            _strip_defaults(value)


class CopyingRepository(CachingConfigRepository):
    """A caching repository that hands out a new copy of each loaded config (unpickled: ~50x faster
    than reading its YAML file again), and keeps the configs merged from leading runs of its
    compositions' defaults lists (see :class:`SharingConfigLoader`)."""

    def __init__(self, delegate) -> None:
        super().__init__(delegate)
        self._pickled: dict[str, bytes | None] = {}
        self._lists: list[tuple] = []  # each composition's defaults, as (config path, package, primary)
        self._merged: dict[tuple, bytes] = {}  # a leading run of them -> the config they merge into

    def load_config(self, config_path: str):
        if config_path not in self._pickled:
            loaded = self.delegate.load_config(config_path=config_path)
            data = None if loaded is None else _pickled(loaded)
            if loaded is not None and data is None:
                return loaded  # not kept (see _pickled): read again when asked again
            self._pickled[config_path] = data
        data = self._pickled[config_path]
        return None if data is None else pickle.loads(data)

    def shared_prefix(self, keys: tuple) -> int:
        """The length of the longest leading run ``keys`` shares with an earlier composition's (then noted)."""
        longest = max((_common_length(keys, other) for other in self._lists), default=0)
        if keys not in self._lists:
            self._lists.append(keys)
        return longest

    def merged_prefix(self, keys: tuple):
        """The longest kept leading run of ``keys`` and a new copy of its config (0 and an empty one)."""
        for k in range(len(keys), 0, -1):
            if keys[:k] in self._merged:
                return k, pickle.loads(self._merged[keys[:k]])
        return 0, OmegaConf.create()

    def keep_merged(self, keys: tuple, cfg) -> None:
        """Keep ``cfg``, merged from ``keys``, as the merge loop will find it (without the flag the
        loop sets for its duration: a later loop, entering with it unset, must leave it unset)."""
        cfg._set_flag("no_deepcopy_set_nodes", None)
        data = _pickled(cfg)
        cfg._set_flag("no_deepcopy_set_nodes", True)
        if data is not None:
            self._merged[keys] = data


def _pickled(obj) -> bytes | None:
    """``obj`` pickled, or None when it cannot be: a config whose schema is a dataclass that Hydra's
    plugin scan has since defined again (it executes a plugin's module anew; the scan of a joblib
    worker, say) holds a class pickle no longer finds under its name. Such a config is not kept."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return None


def _common_length(a: tuple, b: tuple) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
