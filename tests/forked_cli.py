"""``python -m <module> args...`` for the tests, in a process forked from an interpreter that has
imported torch already.

A command-line test pays ~3 s for ``import torch`` in every new interpreter, most of a small run's
5 s, and the suite starts some fifty of them. Python's ``multiprocessing`` fork server (one per
test process, torch preloaded, started at the first call) forks a fresh child for each command:
the child is a new process with its own working directory, environment, stdout and stderr files
and exit code, and runs the module as ``python -m`` does (``runpy.run_module`` as ``__main__``);
only torch's import is done already. Nothing of initopt, Hydra or the test is imported in the
server, so every command imports initopt anew, reading its environment (``INITOPT_CACHE``...).

Tests of start-up itself (what a refused command imports, the installed wheel, signals) start a
real interpreter instead (``conftest.run_python``).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

PRELOAD = ["torch"]  # imported once in the fork server, before any child is forked
_context = None


def _fork_server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _exit_code(code) -> int:
    """What ``sys.exit(code)`` makes the process's exit status, as the interpreter does it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _run_as_main(module: str, args: list[str], cwd: str, env: dict, out: str, err: str) -> None:
    """In the forked child: ``python -m module args`` in ``cwd`` with ``env``, stdout and stderr
    into the files ``out`` and ``err``; the process exits with the command's exit status."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except BaseException:  # an uncaught exception: its traceback and exit status 1, as the interpreter
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # the child leaves through os._exit below, which skips them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_module(module: str, args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``python -m module args`` in a forked child (see the module doc); its output as text."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        child = _fork_server().Process(target=_run_as_main, args=(module, list(args), str(cwd), env, out, err))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired([module, *args], timeout)
        read = lambda path: Path(path).read_text(encoding="utf-8", errors="replace")  # noqa: E731
        return subprocess.CompletedProcess([sys.executable, "-m", module, *args], child.exitcode, read(out), read(err))
