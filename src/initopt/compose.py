"""Each job's config composed once per process, shared by the start-up checks, the sweep's HParams
callback and the population launcher (:data:`JOBS`).

Hydra composes every job of a sweep from scratch (the defaults list, every YAML file and schema):
~0.1-0.2 s a job here, more than a small job trains. Jobs that differ only in plain values
(``seed=3``, ``optim.lr=0.1``) share everything but those values, so :class:`JobConfigs`

1. composes one config per distinct set of *structural* overrides (config groups such as
   ``init=he``, ``+``/``~`` overrides, ``hydra.*`` keys) through Hydra itself
   (``load_sweep_config``: the master config's ``hydra.*`` overrides, then the job's);
2. derives each job's config from a copy of it by the steps Hydra's composition ends with: the
   values applied (:func:`initopt.hydra_compat.apply_value_overrides`), the job's task overrides
   recorded and its directory name (``hydra.job.override_dirname``) computed;
3. keeps each job's task config (without Hydra's node) and group choices, keyed by the job's
   overrides, for whoever asks next in the same process.

The checks run before Hydra starts, and the HParams callback then adds a ``hydra.*`` value override
(the run names' ``exclude_keys``): a base composed before is brought up to date by applying the
added plain ``hydra.*`` values to a copy, not recomposed; anything else is composed again.
The contract: ``test_the_fast_composition_equals_hydras_for_every_job`` (equal to Hydra's
``load_sweep_config`` job by job).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

from hydra.core.default_element import ConfigDefault
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from initopt import hydra_compat, yamltext
from initopt.values import Values, has_path, literal_values, value_of, values_of, with_value

_UNREAD = object()


@dataclass
class Base:
    """Hydra's composition of one set of structural overrides, under one list of ``hydra.*`` overrides."""

    cfg: DictConfig  # the whole config (Hydra's node included)
    hydra_overrides: tuple[str, ...]  # the master config's hydra.* overrides it was composed with
    task: DictConfig  # cfg without Hydra's node (copied from, never handed out)
    choices: dict  # hydra.runtime.choices
    assembled: bool = False  # assembled from composed bases (never a donor itself)
    _task_pickle: bytes | None = None
    _dirname: tuple | None = None
    _literal: object = _UNREAD
    # leading values of a job (as typed) -> the task config with them applied, pickled (None: seen once)
    _applied: dict[tuple[str, ...], bytes | None] = field(default_factory=dict)

    def literal_values(self) -> Values | None:
        """:attr:`task`'s values when it holds no interpolation and no missing value, read once (a
        job's values are then these with its own values put in), else None."""
        if self._literal is _UNREAD:
            self._literal = literal_values(self.task)
        return self._literal

    def dirname_settings(self) -> tuple[str, str, list[str]]:
        """``hydra.job.config.override_dirname``'s separators and excluded keys, read once (its
        ``exclude_keys`` is a resolver's interpolation, resolved on every read of the node)."""
        if self._dirname is None:
            node = self.cfg.hydra.job.config.override_dirname
            self._dirname = (node.kv_sep, node.item_sep, list(node.exclude_keys))
        return self._dirname

    def with_values(self, values: list[Override]) -> DictConfig:
        """A new copy of :attr:`task` with plain ``values`` applied in order, as Hydra applies them
        (one at a time, :func:`initopt.hydra_compat.apply_value_overrides`; ~0.3 ms each). A sweep's
        jobs share their leading values (``model.hidden=[64,64] steps=2 optim.lr=0.1``, then their own
        ``seed=3``): the config after a run of leading values that a second job applies is kept,
        pickled, and each later job starts from the longest run kept and applies only the rest."""
        lines = tuple(o.input_line for o in values)
        start = next((k for k in range(len(lines) - 1, 0, -1) if self._applied.get(lines[:k])), 0)
        cfg = pickle.loads(self._applied[lines[:start]]) if start else self.task_copy()
        for k in range(start, len(values)):
            hydra_compat.apply_value_overrides([values[k]], cfg)
            leading = lines[:k + 1]
            if k + 1 < len(values):  # (a job's whole list is its own)
                seen = leading in self._applied
                self._applied[leading] = pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL) if seen else None
        return cfg

    def task_copy(self) -> DictConfig:
        """A new copy of :attr:`task` (see :func:`copied`) in ~1/5 of ``copy.deepcopy``'s time:
        unpickled from bytes pickled once per base (a sweep copies a base once per job)."""
        if self._task_pickle is None:
            self._task_pickle = pickle.dumps(self.task, protocol=pickle.HIGHEST_PROTOCOL)
        return pickle.loads(self._task_pickle)


class JobConfigs:
    """Every job's config in this process: one Hydra composition per set of structural overrides."""

    def __init__(self) -> None:
        self.parser = OverridesParser.create()
        self._bases: dict[tuple, Base] = {}  # ((config, task name), structural, hydra overrides) -> Base
        self._tasks: dict[tuple, tuple[DictConfig, dict]] = {}  # (config name, overrides) -> task config, choices
        self._splits: dict[tuple, tuple] = {}  # overrides -> parsed, values, structural
        self._overrides: dict[str, Override] = {}  # an override as typed -> parsed
        self._groups: dict[str, bool] = {}  # an override's key -> whether it names a config group
        self._derived: dict[int, tuple[DictConfig, dict]] = {}  # id(task config) -> it, what was derived from it
        self._masters: dict[int, tuple] = {}  # id(master config) -> it, its overrides node, their number, key
        self._local: dict[tuple, bool] = {}  # (group, option) -> whether the option writes its group's node only
        self.compositions = 0  # full Hydra compositions made
        self.assembled = 0  # bases assembled from composed ones instead
        self.patched = 0  # bases brought up to date with added hydra.* values instead

    def clear(self) -> None:
        self.__init__()

    # ------------------------------------------------------------------ the split
    def is_value(self, override: Override, loader) -> bool:
        """A plain ``key=value`` on a config key: it cannot change the defaults list."""
        return (override.type == OverrideType.CHANGE and override.package is None
                and not override.is_sweep_override() and not self._is_group(loader, override.key_or_group))

    def _is_group(self, loader, key: str) -> bool:
        """Whether ``key`` names a config group, asked of the repository once per key (a file-system
        lookup in every search path; the same answer for every loader of one process, see :meth:`_split`)."""
        if key not in self._groups:
            self._groups[key] = loader.repository.group_exists(key)
        return self._groups[key]

    def _split(self, loader, overrides: list[str]) -> tuple[list[Override], list[Override], tuple[str, ...]]:
        """A job's overrides parsed (once: the command-line checks ask for its task config, the
        launcher for its Hydra node), its plain values, its structural overrides. Which override
        is a config group depends only on the config's search path, the same for every loader of
        one process (the checks leave a command line with another search path to Hydra)."""
        key = tuple(overrides)
        if key not in self._splits:
            parsed = self._parsed(overrides)
            plain = [self.is_value(o, loader) and not o.is_hydra_override() for o in parsed]
            self._splits[key] = (parsed, [o for o, p in zip(parsed, plain) if p],
                                 tuple(o.input_line for o, p in zip(parsed, plain) if not p))
        return self._splits[key]

    def _parsed(self, overrides: list[str]) -> list[Override]:
        """Each override parsed once per process (a sweep's jobs share most of their overrides:
        the 600-job study has 600 lists of 4 but 22 distinct strings; Hydra's parser takes ~5 ms each)."""
        missing = [o for o in dict.fromkeys(overrides) if o not in self._overrides]
        for text, override in zip(missing, self.parser.parse_overrides(missing)):
            self._overrides[text] = override
        return [self._overrides[o] for o in overrides]

    # ------------------------------------------------------------------ bases
    def _base(self, loader, master: DictConfig, structural: tuple[str, ...]) -> Base:
        from hydra.core.utils import JobRuntime

        config_name, hydra_overrides = self._master_key(master)
        # the config, and the task name Hydra gives a job whose config does not name it
        name = (config_name, JobRuntime.instance().get("name"))
        key = (name, structural, hydra_overrides)
        if key not in self._bases:
            older = self._patchable(loader, name, structural, hydra_overrides)
            self._bases[key] = self._patched(older, hydra_overrides) if older else \
                self._assembled(loader, name, structural, hydra_overrides) or \
                self._composed(loader, master, structural)
        return self._bases[key]

    def _master_key(self, master: DictConfig) -> tuple[str, tuple[str, ...]]:
        """The master config's name and ``hydra.*`` overrides (~0.25 ms to read, asked a few times
        per job), read again only when its overrides node is another or of another length (the
        HParams callback appends one to it, or sets a new list)."""
        node = master._get_node("hydra")._get_node("overrides")._get_node("hydra")
        held = self._masters.get(id(master))
        if held is None or held[0] is not master or held[1] is not node or held[2] != len(node):
            held = self._masters[id(master)] = (master, node, len(node),
                                                (master.hydra.job.config_name, tuple(raw(node))))
        return held[3]

    def _composed(self, loader, master: DictConfig, structural: tuple[str, ...]) -> Base:
        cfg = loader.load_sweep_config(master, list(structural))
        self.compositions += 1
        return Base(cfg, self._master_key(master)[1], _without_hydra(cfg), dict(cfg.hydra.runtime.choices))

    # A sweep over config groups (init=zero,he optim=sgd,adam) differs from base to base only in
    # which option fills each group's node; when every option involved is *local* (its own package,
    # no defaults but its schema), a combination is assembled from bases composed before, one donor
    # per group: 4 inits x 3 optimizers need 4 + 3 - 1 = 6 compositions, not 12.
    def _assembled(self, loader, name, structural: tuple[str, ...], hydra_overrides: tuple[str, ...]):
        """A base assembled from composed ones (see above), or None when some group has no donor yet
        or an option is not local."""
        target = self._group_choices(loader, structural)
        if not target:
            return None
        rest = [o for o in structural if o not in target.values()]
        donors = {}
        for (n, s, h), base in self._bases.items():
            if (n, h) != (name, hydra_overrides) or base.assembled:
                continue
            choices = self._group_choices(loader, s)
            if not choices or list(choices) != list(target) or [o for o in s if o not in choices.values()] != rest:
                continue
            for group, override in target.items():
                if choices[group] == override:
                    donors.setdefault(group, base)
        if len(donors) < len(target) or len({id(b) for b in donors.values()}) == 1:
            return None  # a group's option not composed yet (or the same base: nothing to assemble)
        return self._assemble(loader, structural, donors)

    def _group_choices(self, loader, structural: tuple[str, ...]) -> dict[str, str] | None:
        """``{group: override}`` for the overrides choosing a local option of a config group
        (``init=he``), in order; None when one of them chooses a non-local option."""
        choices = {}
        for override in self._parsed(list(structural)):
            if override.type != OverrideType.CHANGE or override.package is not None or override.is_hydra_override() \
                    or not self._is_group(loader, override.key_or_group):
                continue
            if not self._is_local(loader, override.key_or_group, override.value()):
                return None
            choices[override.key_or_group] = override.input_line
        return choices

    def _is_local(self, loader, group: str, option) -> bool:
        """Option ``option`` of ``group`` writes its group's node only: its own package, no ``hydra``
        key, and a defaults list of ``_self_`` and configs of its own group (its schema)."""
        key = (group, option)
        if key not in self._local:
            plain = isinstance(option, str) and "/" not in group  # a top-level group, one option named
            loaded = loader.repository.load_config(f"{group}/{option}") if plain else None
            self._local[key] = loaded is not None and loaded.header.get("package") in (None, "_group_", group) \
                and "hydra" not in loaded.config and all(
                    isinstance(d, ConfigDefault) and d.package is None and not d.path.startswith("/")
                    for d in loaded.defaults_list)
        return self._local[key]

    def _assemble(self, loader, structural: tuple[str, ...], donors: dict[str, Base]) -> Base:
        """The first donor's config with each group's node, and choice, taken from its donor; the
        task overrides and directory name Hydra records for ``structural``."""
        first = next(iter(donors.values()))
        cfg = copied(first.cfg)
        with read_write(cfg), open_dict(cfg):
            for group, donor in donors.items():
                if donor is not first:
                    cfg[group] = donor.cfg[group]
                    cfg.hydra.runtime.choices[group] = donor.choices[group]
            app = [o for o in self._parsed(list(structural)) if not o.is_hydra_override()]
            cfg.hydra.overrides.task = [o.input_line for o in app]
            cfg.hydra.job.override_dirname = hydra_compat.overrides_dirname(app, *first.dirname_settings())
        self.assembled += 1
        return Base(cfg, first.hydra_overrides, _without_hydra(cfg), dict(cfg.hydra.runtime.choices), assembled=True)

    def _patchable(self, loader, name: str, structural: tuple[str, ...], hydra_overrides: tuple[str, ...]):
        """A base of the same structural overrides composed under a prefix of ``hydra_overrides``,
        where the rest are plain values on keys no other override sets (so order cannot matter)."""
        for (n, s, h), base in self._bases.items():
            if n != name or s != structural or hydra_overrides[:len(h)] != h:
                continue
            added = self._parsed(list(hydra_overrides[len(h):]))
            others = {o.key_or_group for o in self._parsed([*h, *structural])}
            if all(self.is_value(o, loader) and o.key_or_group not in others for o in added):
                return base
        return None

    def _patched(self, base: Base, hydra_overrides: tuple[str, ...]) -> Base:
        """``base`` with the added hydra.* values applied and recorded where Hydra records them."""
        added = list(hydra_overrides[len(base.hydra_overrides):])
        cfg = copied(base.cfg)
        hydra_compat.apply_value_overrides(self._parsed(added), cfg)
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            at = len(base.hydra_overrides)
            recorded = raw(cfg.hydra.overrides.hydra)
            cfg.hydra.overrides.hydra = [*recorded[:at], *added, *recorded[at:]]
        self.patched += 1
        return Base(cfg, hydra_overrides, base.task, base.choices)

    # ------------------------------------------------------------------ jobs
    def task_config(self, loader, master: DictConfig, overrides: list[str]) -> tuple[DictConfig, dict]:
        """The job's config without Hydra's node, and its group choices (one object per job, shared)."""
        key = (self._master_key(master)[0], tuple(overrides))
        if key not in self._tasks:
            _, values, structural = self._split(loader, overrides)
            base = self._base(loader, master, structural)
            cfg = base.with_values(values)
            OmegaConf.set_readonly(cfg, True)  # shared by every user in this process: never changed
            self._tasks[key] = (cfg, base.choices)
            literal = all("$" not in o.input_line and "???" not in o.input_line for o in values)
            self._derived[id(cfg)] = (cfg, {"job": (base, [o.key_or_group for o in values])} if literal else {})
        return self._tasks[key]

    def _literal_job(self, cfg: DictConfig) -> tuple[Base, list[str]] | None:
        """A job's base and the keys its values set, when its base is literal (see
        :meth:`Base.literal_values`) and so are its values (neither an interpolation nor ``???``)."""
        held, derived = self._derived.get(id(cfg), (None, {}))
        base, keys = derived.get("job", (None, None)) if held is cfg else (None, None)
        return (base, keys) if base is not None and base.literal_values() is not None else None

    def derived(self, cfg: DictConfig, name: str, compute):
        """``compute(cfg)``, computed once per process for a read-only config (a job's task config,
        a run's :func:`frozen` config, its members' configs merged from it: none can change, so
        what is derived from it holds; each is kept from its first use), anew for any other config.
        A job is asked the same things by several phases (its values ~20 times, its fingerprint
        three times, its HParams values twice, its YAML twice), each a walk through OmegaConf's
        nodes of a few ms."""
        held, values = self._derived.get(id(cfg), (None, None))
        if held is not cfg:
            if not OmegaConf.is_readonly(cfg):
                return compute(cfg)
            held, values = self._derived[id(cfg)] = (cfg, {})
        if name not in values:
            values[name] = compute(cfg)
        return values[name]

    def values(self, cfg: DictConfig) -> Values:
        """``cfg``'s values as plain data (:func:`initopt.values.values_of`), once per job's task
        config (:meth:`derived`): its checks, HParams values, fingerprint and group key read them."""
        return self.derived(cfg, "values", self._values_of)

    def _values_of(self, cfg: DictConfig) -> Values:
        """A literal job's values are its base's with each value it sets read from it (~0.1 ms, not
        the ~1 ms of reading every node); any other config's, read whole."""
        literal = self._literal_job(cfg)
        if literal is None:
            return values_of(cfg)
        values = literal[0].literal_values()
        for key in literal[1]:
            path = key.split(".")
            if not has_path(values, path):
                return values_of(cfg)
            values = with_value(values, path, value_of(OmegaConf.select(cfg, key, throw_on_missing=True)))
        return values

    def config_yaml(self, cfg: DictConfig) -> str:
        """``OmegaConf.to_yaml(cfg)``, once per job's task config (:meth:`derived`): it is written
        to ``.hydra/config.yaml`` and as the run's ``config`` text. A literal job's YAML is its values'
        (unresolved and resolved are the same), written item by item (:func:`yamltext.mapping_yaml`)."""
        return self.derived(cfg, "yaml", lambda c: yamltext.mapping_yaml(self.values(c))
                            if self._literal_job(c) else yamltext.config_yaml(c))

    def job_hydra(self, loader, master: DictConfig, overrides: list[str]) -> tuple[Base, list[str], str]:
        """What a job's Hydra node has beyond its base's: its base, its task overrides
        (``hydra.overrides.task``) and its directory name (``hydra.job.override_dirname``)."""
        parsed, _, structural = self._split(loader, overrides)
        base = self._base(loader, master, structural)
        app = [o for o in parsed if not o.is_hydra_override()]
        return base, [o.input_line for o in app], hydra_compat.overrides_dirname(app, *base.dirname_settings())

    def compose(self, loader, master: DictConfig, overrides: list[str]) -> DictConfig:
        """The job's whole config, equal to Hydra's ``load_sweep_config(master, overrides)`` (a new copy)."""
        _, values, structural = self._split(loader, overrides)
        base = self._base(loader, master, structural)
        _, task, dirname = self.job_hydra(loader, master, overrides)
        cfg = copied(base.cfg)
        hydra_compat.apply_value_overrides(values, cfg)
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.overrides.task = task
            cfg.hydra.job.override_dirname = dirname
        OmegaConf.copy_cache(from_config=master, to_config=cfg)
        return cfg


# Sweepers that expand a sweep as the basic one does (initopt's population sweeper is one).
BASIC_SWEEPERS = (hydra_compat.BASIC_SWEEPER,
                  "hydra_plugins.initopt_population_launcher.population_launcher.PopulationSweeper")


def expands_like_basic_sweeper(master: DictConfig) -> bool:
    return master.hydra.sweeper.get("_target_") in BASIC_SWEEPERS


def sweep_overrides(loader, master: DictConfig) -> list[Override]:
    """The sweep as the basic sweeper sees it: ``hydra.sweeper.params``, then the command line."""
    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=loader)
    return parser.parse_overrides(params + raw(master.hydra.overrides.task))


def sweep_jobs(loader, master: DictConfig) -> list[list[str]]:
    """Every job's override list, as the basic sweeper expands the sweep (another sweeper's sweep:
    the master config's own overrides, one job)."""
    if not expands_like_basic_sweeper(master):
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(raw(master.hydra.overrides.task))
        return [[o.input_line for o in parsed if not o.is_sweep_override()]]
    return hydra_compat.expand_sweep(sweep_overrides(loader, master))


def task_part(cfg: DictConfig) -> DictConfig:
    """A composed config without Hydra's node (a copy)."""
    return _without_hydra(cfg)


def frozen(cfg: DictConfig) -> DictConfig:
    """``cfg`` when it is read-only (a sweep job's task config), else a read-only copy: a run's
    config, from which what is derived is then computed once (:meth:`JobConfigs.derived`)."""
    if OmegaConf.is_readonly(cfg):
        return cfg
    cfg = copied(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def copied(cfg: DictConfig) -> DictConfig:
    """A new copy of ``cfg``, equal to ``copy.deepcopy(cfg)`` node for node (values, flags, schema
    types, keys; tested) in ~1/3 of its time: pickled and unpickled (OmegaConf's ``__deepcopy__``
    walks every node in Python)."""
    return pickle.loads(pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL))


def raw(overrides) -> list[str]:
    """A list of overrides as typed (``${...}`` in an override is not resolved)."""
    return OmegaConf.to_container(overrides, resolve=False)


def _without_hydra(cfg: DictConfig) -> DictConfig:
    task = copied(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


JOBS = JobConfigs()  # this process's job configs: the checks, the HParams callback and the launcher share it
