"""``python -m initopt.analytic``: see :mod:`initopt.analytic.cli`; the process ends without
Python's teardown of torch (:func:`initopt.gcfreeze.exit_without_teardown`)."""

import sys

from initopt.analytic.cli import main
from initopt.gcfreeze import exit_without_teardown

exit_without_teardown(lambda: sys.exit(main()))
