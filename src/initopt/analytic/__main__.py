"""``python -m initopt.analytic``: see :mod:`initopt.analytic.cli`; the process ends without
Python's teardown of torch (:func:`initopt.gcfreeze.exit_without_teardown`)."""

import sys

from initopt.analytic import INTERRUPTED
from initopt.signals import exit_interrupted

try:  # Ctrl-C while importing (numpy) is the same one line as later, not an import traceback
    from initopt.analytic.cli import main
    from initopt.gcfreeze import exit_without_teardown
except KeyboardInterrupt:
    exit_interrupted(INTERRUPTED)

exit_without_teardown(lambda: sys.exit(main()))
