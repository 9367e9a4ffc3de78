"""SIGINT / SIGTERM as a request to stop at the next step (the loop then checkpoints)."""

from __future__ import annotations

import signal


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
