"""The garbage collector told to leave alone what lives until the process ends.

Python's cyclic garbage collector walks every tracked object at each full collection and at the
interpreter's exit. After torch, Hydra and a sweep's configs are loaded that is ~10^6 objects:
~0.1 s a full collection here (a 600-job sweep makes ~7), ~0.4 s of the ~0.7 s that Python's exit
takes with torch loaded. ``gc.freeze()`` moves every object alive at the call into a permanent
generation that no collection walks; nothing is freed or finalized differently (objects go when
their last reference does, as before), only cycles among them are not looked for.

What the exit still spends after that (~0.2 s here: unloading torch's modules and its libraries'
static destructors, measured ``python -c "import torch, gc; gc.freeze()"`` against the same ending
in ``os._exit``) buys a finished command nothing: :func:`exit_without_teardown` does what Python's
exit does that has effects (threads finished, ``atexit`` callbacks: logging's handlers closed,
child processes of ``multiprocessing`` reaped; the standard streams flushed) and then ends the
process without tearing the interpreter down.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from collections.abc import Callable, Iterator
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
    job's config), and by :func:`exit_without_teardown` before an exit that is Python's own."""
    # No collection first: after the checks and torch's import one finds nothing to free (0 of the
    # ~4*10^5 objects of the homework grid's start-up, measured) and takes 0.1-0.2 s here.
    gc.freeze()


def exit_code(status) -> int:
    """The status a ``SystemExit(status)`` ends a process with: None 0, an integer itself, anything
    else (a message, already printed by :func:`exit_without_teardown`) 1."""
    if status is None:
        return 0
    return status if isinstance(status, int) else 1


RUNPY_FRAMES = {"_run_code", "_run_module_as_main"}  # what ``python -m module`` runs a module's code in


def ends_the_program(caller) -> bool:
    """Whether nothing runs after ``caller``'s module code: it is the program's own top (``python
    file.py``, ``python -c``, a console script) or the module ``python -m`` runs, and no profiler or
    tracer watches (``python -m cProfile``, ``coverage run`` and any runner that calls a module's
    code and goes on after it, to write a profile, say, would be cut short)."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return False
    frame = caller
    while frame is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    outer = frame.f_back if frame is not None else None
    while outer is not None:
        if outer.f_code.co_name not in RUNPY_FRAMES or "runpy" not in outer.f_code.co_filename:
            return False
        outer = outer.f_back
    return frame is not None


def exit_without_teardown(main: Callable[[], object]) -> None:
    """Run ``main`` as a command's whole work, then end the process as Python would, less the
    interpreter's teardown (see above). While another thread still runs, or when ``main`` raises
    anything but ``SystemExit``, the exit is Python's own (threads joined, the traceback printed).
    Daemon threads (tqdm's monitor) are ended by either exit alike. Where something runs after the
    command (:func:`ends_the_program`), ``main`` is just called."""
    if not ends_the_program(sys._getframe(1)):
        main()
        return
    try:
        main()
        status = None
    except SystemExit as stop:
        status = stop.code
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        freeze_survivors()  # Python's exit then skips walking torch's objects (~0.4 s)
        sys.exit(status)
    if status is not None and not isinstance(status, int):
        print(status, file=sys.stderr)  # as Python prints sys.exit("message")
    # Python's own callbacks at exit, in its order (no public API runs them; CPython's since 3.0)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(exit_code(status))
