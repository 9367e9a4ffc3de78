"""``python -m initopt.analytic``: see :mod:`initopt.analytic.cli`."""

import sys

from initopt.analytic.cli import main

sys.exit(main())
