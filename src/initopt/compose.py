"""Each sweep job's config, composed once per distinct set of structural overrides (used by the
population launcher and the sweep's HParams callback).

Hydra composes every job of a sweep from scratch (the defaults list, every YAML file and schema):
~0.1-0.2 s a job here, more than a small job trains. Jobs that differ only in plain values
(``seed=3``, ``optim.lr=0.1``) share everything but those values, so this composes one config per
distinct set of *structural* overrides (config groups such as ``init=he``, ``+``/``~`` overrides,
``hydra.*`` keys) through Hydra itself, and derives each job's config from a copy of it by Hydra's
own steps for the rest: its ``_apply_overrides_to_config`` for the values, the job's task
overrides, and ``get_overrides_dirname`` for the job's directory name. A test compares the result
with Hydra's ``load_sweep_config`` job by job.
"""

import copy

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict


class JobComposer:
    def __init__(self, config_loader, master_config: DictConfig):
        self.loader, self.master = config_loader, master_config
        self.parser = OverridesParser.create()
        self._bases: dict[tuple[str, ...], DictConfig] = {}

    @property
    def compositions(self) -> int:
        """How many full Hydra compositions were made."""
        return len(self._bases)

    def _is_value(self, override: Override) -> bool:
        """A plain ``key=value`` on a config key: it cannot change the defaults list."""
        return (override.type == OverrideType.CHANGE and override.package is None
                and not override.is_hydra_override()
                and not self.loader.repository.group_exists(override.key_or_group))

    def _split(self, overrides: list[str]) -> tuple[list[Override], list[Override], DictConfig]:
        parsed = self.parser.parse_overrides(overrides)
        values = [o for o in parsed if self._is_value(o)]
        structural = tuple(o.input_line for o in parsed if not self._is_value(o))
        if structural not in self._bases:
            self._bases[structural] = self.loader.load_sweep_config(self.master, list(structural))
        return parsed, values, self._bases[structural]

    def task_config(self, overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
        """The job's config without Hydra's node (a smaller copy), and its group choices."""
        _, values, base = self._split(overrides)
        with open_dict(base):
            hydra = base.pop("hydra")
            try:
                cfg = copy.deepcopy(base)
            finally:
                base["hydra"] = hydra
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        return cfg, dict(hydra.runtime.choices)

    def compose(self, overrides: list[str]) -> DictConfig:
        """The job's whole config, as Hydra's ``load_sweep_config`` composes it."""
        parsed, values, base = self._split(overrides)
        cfg = copy.deepcopy(base)
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        app = [o for o in parsed if not o.is_hydra_override()]
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in app]
            dirname = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=app, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
        OmegaConf.copy_cache(from_config=self.master, to_config=cfg)
        return cfg
