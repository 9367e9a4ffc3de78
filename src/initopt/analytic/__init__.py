"""Closed forms for GD, momentum, instance noise and ridge, checked against torch autograd.

* :mod:`~initopt.analytic.closed_form`: the formulas (pure math, numpy; exact at the edges);
* :mod:`~initopt.analytic.iterations`: step counts (exact for GD, by iterating R_i for momentum);
* :mod:`~initopt.analytic.simulate`: the same problems run with autograd and the trainer's
  optimizer factory;
* :mod:`~initopt.analytic.claims`: the two side by side;
* :mod:`~initopt.analytic.cli`: ``python -m initopt.analytic``.
"""

INTERRUPTED = "initopt.analytic: interrupted"  # Ctrl-C's one line (the module's imports, then its work)
