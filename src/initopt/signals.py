"""SIGINT / SIGTERM as a request to stop at the next step (the loop then checkpoints); Ctrl-C held
back while torch's libraries initialise."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def exit_interrupted(line: str) -> NoReturn:
    """A command's answer to Ctrl-C outside training: ``line`` on stderr, exit 130, no traceback."""
    print(line, file=sys.stderr)
    raise SystemExit(INTERRUPTED_EXIT)


@contextmanager
def interrupt_deferred() -> Iterator[None]:
    """SIGINT (Ctrl-C) held back while the body runs (:class:`StopSignals` for SIGINT alone) and
    raised as ``KeyboardInterrupt`` once it ends.

    For importing torch: its C++ initialisation calls back into Python, and a ``KeyboardInterrupt``
    raised in such a call aborts the process ("terminate called after throwing an instance of
    'pybind11::error_already_set'" or "... 'python_error'", signal 6: every time the interrupt comes
    as ``torch._C._c10d_init`` calls back into Python, see test_errors.py; 2 of 80 Ctrl-C sent at
    random 0-1 s into the import beside a training run) or is swallowed there. Where SIGINT is
    ignored (a ``cmd &`` of a script) it stays ignored.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    with StopSignals((signal.SIGINT,)) as stop:
        yield
    if stop.requested():
        raise KeyboardInterrupt


class StopSignals:
    """While active, SIGINT and SIGTERM (or ``signals``) only set :attr:`received`; the loop stops
    at the next step.

    Signal handlers can only be set from the main thread; elsewhere (some launchers'
    workers) this does nothing and the default behaviour stays.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, signals: tuple[int, ...] = SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        self.received = signum

    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopSignals:
        try:
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # None: a handler not set from Python, which cannot be put back; the default then
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)
