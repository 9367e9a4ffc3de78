"""SIGINT / SIGTERM as a request to stop at the next step (the loop then checkpoints); Ctrl-C held
back while torch's libraries initialise."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports Ctrl-C


@contextmanager
def interrupt_deferred() -> Iterator[None]:
    """SIGINT (Ctrl-C) held back while the body runs and raised as ``KeyboardInterrupt`` once it ends.

    For importing torch: its C++ initialisation calls back into Python, and a ``KeyboardInterrupt``
    raised in such a call aborts the process ("terminate called after throwing an instance of
    'pybind11::error_already_set'" or "... 'python_error'", signal 6: every time the interrupt comes
    as ``torch._C._c10d_init`` calls back into Python, see test_errors.py; 2 of 80 Ctrl-C sent at
    random 0-1 s into the import beside a training run) or is swallowed there. Where SIGINT is ignored,
    or outside the main thread (where no handler can be set), the body just runs.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN or threading.current_thread() is not threading.main_thread():
        yield  # ignored SIGINT (a `cmd &` of a script) stays ignored; no handler outside the main thread
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:  # None: a handler not set from Python, which cannot be put back; the default then
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if received:
        raise KeyboardInterrupt


class StopSignals:
    """While active, SIGINT and SIGTERM only set :attr:`received`; the loop stops at the next step.

    Signal handlers can only be set from the main thread; elsewhere (some launchers'
    workers) this does nothing and the default behaviour stays.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        self.received = signum

    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopSignals:
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)
