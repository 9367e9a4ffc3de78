"""How a ``-m`` sweep ended, in one line and an exit code, whichever launcher ran its jobs.

Each job's outcome (its metrics, or the error that failed it) is recorded as the job ends, in this
process; when the sweep is over, :func:`finish` prints one summary line to stderr::

    sweep: 12 jobs: 10 ok, 1 diverged, 1 failed (multirun/x/init=he: <cause>)

and returns the process's exit code:

==== =====================================================================================
0    every job finished (ok or diverged: a diverged run is a result)
2    bad input or a refusal before training (one line; e.g. the sweep directory is in use)
3    some job failed at run time (each failed job's ``metrics.json`` says why)
130  interrupted (Ctrl-C / SIGINT; 143 for SIGTERM): checkpoints saved, rerun to resume
==== =====================================================================================
"""

from __future__ import annotations

import sys
from pathlib import Path

from initopt.checks import user_error_line

EXIT_USAGE = 2
EXIT_JOB_FAILED = 3
SHOWN_FAILURES = 3  # failures named in the summary line; the rest counted

_outcomes: dict[str, dict | BaseException] = {}


def record(output_dir: Path | str, outcome: dict | BaseException) -> None:
    """A job's outcome: its metrics (``status`` ok | diverged) or the error that failed it."""
    _outcomes[str(output_dir)] = outcome


def status_of(outcome: dict | BaseException) -> str:
    if isinstance(outcome, BaseException):
        return "failed"
    return str(outcome.get("status", "ok"))


def summary_line() -> str:
    """``sweep: N jobs: a ok, b diverged, c failed (<dir>: <cause>; ...)``."""
    counts: dict[str, int] = {}
    for outcome in _outcomes.values():
        counts[status_of(outcome)] = counts.get(status_of(outcome), 0) + 1
    parts = [f"{counts[s]} {s}" for s in ("ok", "diverged", "failed") if counts.get(s)]
    parts += [f"{n} {s}" for s, n in counts.items() if s not in ("ok", "diverged", "failed")]
    failed = [(d, o) for d, o in _outcomes.items() if isinstance(o, BaseException)]
    named = "; ".join(f"{d}: {user_error_line(e)}" for d, e in failed[:SHOWN_FAILURES])
    more = f"; {len(failed) - SHOWN_FAILURES} more" if len(failed) > SHOWN_FAILURES else ""
    line = f"sweep: {len(_outcomes)} jobs: {', '.join(parts)}"
    return line + (f" ({named}{more})" if failed else "")


def finish() -> int:
    """Print the summary line (when jobs ran) and return the sweep's exit code; forget the outcomes."""
    if not _outcomes:
        return 0
    print(summary_line(), file=sys.stderr)
    code = EXIT_JOB_FAILED if any(isinstance(o, BaseException) for o in _outcomes.values()) else 0
    _outcomes.clear()
    return code
