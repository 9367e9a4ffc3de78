"""A finished command ends without Python's teardown of torch (``initopt.gcfreeze.exit_without_teardown``),
and otherwise exactly as Python would end it: its exit status, its output flushed, its ``atexit``
callbacks run, its threads finished."""

from __future__ import annotations

import pytest
from conftest import run_python

# A command whose interpreter teardown shows: an object only the teardown finalizes prints "torn down".
COMMAND = """
import atexit, os, sys, threading
from initopt.gcfreeze import exit_without_teardown


class FinalizedByTeardown:
    def __del__(self, write=os.write):
        write(1, b" torn down")


kept = FinalizedByTeardown()
atexit.register(print, " atexit ran", end="")


def main():
    print("work done", end="")  # left in the buffer: the exit must flush it
    if "thread" in sys.argv:  # a thread still running when the work is done
        threading.Timer(0.2, print, [" thread finished"], {"end": ""}).start()
    status = sys.argv[1]
    sys.exit(int(status) if status.isdigit() else status)


if "python" in sys.argv:  # Python's own exit, for comparison
    main()
exit_without_teardown(main)
"""


def run(*args: str, tmp_path):
    return run_python("-c", COMMAND, *args, cwd=tmp_path, timeout=120)


def test_pythons_own_exit_tears_the_interpreter_down(tmp_path):
    done = run("0", "python", tmp_path=tmp_path)
    assert (done.returncode, done.stdout) == (0, "work done atexit ran torn down")


@pytest.mark.parametrize("status, code", [("0", 0), ("3", 3), ("2", 2)])
def test_a_finished_command_keeps_its_status_output_and_atexit_callbacks_but_skips_the_teardown(
        tmp_path, status, code):
    done = run(status, tmp_path=tmp_path)
    assert (done.returncode, done.stdout) == (code, "work done atexit ran")


def test_an_exit_with_a_message_prints_it_and_ends_with_status_1(tmp_path):
    done = run("no such key", tmp_path=tmp_path)
    assert (done.returncode, done.stdout, done.stderr.strip()) == (1, "work done atexit ran", "no such key")


def test_a_thread_still_running_gets_pythons_own_exit_which_waits_for_it(tmp_path):
    done = run("0", "thread", tmp_path=tmp_path)
    assert done.returncode == 0
    assert done.stdout.startswith("work done thread finished atexit ran")


def test_under_a_profiler_the_command_returns_to_it_and_its_profile_is_written(tmp_path):
    (tmp_path / "command.py").write_text(COMMAND)
    done = run_python("-m", "cProfile", "-o", "command.prof", "command.py", "0", cwd=tmp_path, timeout=120)
    assert done.returncode == 0
    assert done.stdout.startswith("work done atexit ran")
    assert (tmp_path / "command.prof").stat().st_size > 0  # cProfile writes it after the command returns
