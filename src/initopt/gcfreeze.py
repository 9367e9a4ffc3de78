"""The garbage collector told to leave alone what lives until the process ends.

Python's cyclic garbage collector walks every tracked object at each full collection and at the
interpreter's exit. After torch, Hydra and a sweep's configs are loaded that is ~10^6 objects:
~0.1 s a full collection here (a 600-job sweep makes ~7), ~0.4 s of the ~0.7 s that Python's exit
takes with torch loaded. ``gc.freeze()`` moves every object alive at the call into a permanent
generation that no collection walks; nothing is freed or finalized differently (objects go when
their last reference does, as before), only cycles among them are not looked for.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """No collection while importing torch: its ~2*10^5 new objects set off full collections
    (~0.5 s here) that find no garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def freeze_survivors() -> None:
    """Every object alive now out of the collector's sight (``gc.freeze``): called by
    :func:`initopt.train.main` once torch is imported (after the start-up checks, which hold every
    job's config) and when the command is done (before Python's exit)."""
    gc.collect()  # what is garbage already goes first, not kept for good
    gc.freeze()
