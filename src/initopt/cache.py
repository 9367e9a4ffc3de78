"""The folder where initopt keeps what it derives once and reads back later (generated datasets,
unpacked dataset files, the heat map's colour table): ``INITOPT_CACHE``, default ~/.cache/initopt."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("INITOPT_CACHE", Path.home() / ".cache" / "initopt"))


def keep(path: Path, write: Callable[[Path], None]) -> None:
    """``write(partial)`` then one rename onto ``path``: whole or not at all. An unwritable cache
    (OSError) is skipped: what it would keep is made again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
        write(partial)
        os.replace(partial, path)
    except OSError:
        pass
