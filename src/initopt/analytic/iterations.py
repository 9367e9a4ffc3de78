"""How many steps until the error stays within ``eps`` of its start: true counts and the estimate.

From ``w0 = 0`` (and ``z0 = 0``), mode i starts with error ``x_0 = -w*_i``. The count is the
smallest ``t`` with ``|x_t'| <= eps |x_0|`` for every ``t' >= t`` and every mode (an oscillating
mode may dip below ``eps`` and come back; that dip does not count).

* GD: ``|x_t| = |1 - 2 eta s^2|^t |x_0|`` exactly, so the count is ``min{t: t ln|f| <= ln eps}``
  (:func:`gd_iterations`).
* Momentum: ``R_i`` is iterated on ``(a, x) = (0, 1)`` until a bound certifies that no later
  step leaves the band (:func:`momentum_iterations`).
* :func:`asymptotic_iterations`: ``ceil(ln eps / ln rho)``, the estimate from the spectral
  radius alone; for momentum it can be far off (132 against the true 175 for s = 3, 0.3,
  b = 0.1, eps = 1e-3 at the best eta).
"""

from __future__ import annotations

import math
from fractions import Fraction

from initopt.analytic import closed_form as cf

MAX_STEPS = 1_000_000  # momentum: R_i is iterated at most this many steps per mode


def steps_for_log_rate(log_rate: float, eps: float) -> float:
    """Smallest ``t >= 1`` with ``t ln rate <= ln eps``: 1 if the rate is 0, inf if it is >= 1."""
    if log_rate >= 0:
        return math.inf
    if log_rate == -math.inf:
        return 1
    log_eps = math.log(eps)
    quotient = log_eps / log_rate
    if quotient > 2**52:  # beyond float's integers: the count is the rounded quotient
        return float(math.ceil(quotient))
    t = max(1, math.ceil(quotient))
    if t > 1 and (t - 1) * log_rate <= log_eps:  # the quotient rounded up past an integer
        t -= 1
    elif t * log_rate > log_eps:  # or down
        t += 1
    return t


def asymptotic_iterations(log_rate: float, eps: float) -> float:
    """``ceil(ln eps / ln rho)``: when ``rho^t`` reaches ``eps`` (an estimate for momentum)."""
    return steps_for_log_rate(log_rate, eps)


# GD counts up to this many steps are settled in exact rational arithmetic: the logs' rounding can
# put ``t ln|f|`` on the wrong side of ``ln eps`` when ``|f|^t`` is within an ulp of ``eps`` (s =
# 0.2361..., eta = 0.55 / s^2, eps = 0.01: |f|^2 = 0.010000000000000002 > eps, yet the logs said 2).
EXACT_COUNT_UP_TO = 20_000


def gd_iterations(eta: float, sigmas, eps: float) -> float:
    """Exact GD count: ``max_i min{t >= 1: |1 - 2 eta s_i^2|^t <= eps}`` (inf if unstable): from
    the logs, then settled exactly (:data:`EXACT_COUNT_UP_TO`; beyond, the logs' count)."""
    if not cf.gd_is_stable(eta, sigmas):
        return math.inf
    counts = []
    for s in set(sigmas):
        t = steps_for_log_rate(cf.gd_log_factor(eta, s), eps)
        counts.append(_settled(t, abs(cf.gd_factor_exact(eta, s)), cf.exact(eps)) if t <= EXACT_COUNT_UP_TO else t)
    return max(counts)


def _settled(t: int, rate: Fraction, eps: Fraction) -> int:
    """``min{t >= 1: rate^t <= eps}`` (``rate < 1``) from an estimate ``t`` a step or so off."""
    while t > 1 and rate ** (t - 1) <= eps:
        t -= 1
    while rate ** t > eps:
        t += 1
    return t


def _divided_power_bound(t: int, lam1: complex, lam2: complex, log_rho: float) -> float:
    """A bound on ``|D_t'|`` for all ``t' >= t``, ``D_t = (l1^t - l2^t)/(l1 - l2) = sum_k l1^k l2^(t-1-k)``:
    ``min(t rho^(t-1), (|l1|^t + |l2|^t) / |l1 - l2|)``; valid once ``t rho^t`` decreases,
    ``t >= 1 / ln(1/rho)`` (the caller checks)."""
    if t <= 0:
        return 0.0
    bound = t * math.exp((t - 1) * log_rho) if log_rho > -math.inf else float(t == 1)
    gap = abs(lam1 - lam2)
    if gap > 0:
        bound = min(bound, (abs(lam1) ** t + abs(lam2) ** t) / gap)
    return bound


def momentum_mode_iterations(eta: float, beta: float, s: float, eps: float,
                             max_steps: int | None = None) -> float | None:
    """Count for one mode by iterating ``(a, x) <- R (a, x)`` from ``(0, 1)``; None if not settled
    within ``max_steps`` (default :data:`MAX_STEPS`).

    ``x_t = x_1 D_t - det D_(t-1)`` (Cayley-Hamilton, ``x_0 = 1``), so
    ``E(t) = |x_1| B(t) + det B(t-1)`` bounds every later ``|x_t'|`` (``B`` from
    :func:`_divided_power_bound`); the loop stops once ``E(t) <= eps`` and returns one past the
    last step with ``|x_t| > eps``.
    """
    if not cf.momentum_is_stable(eta, beta, [s]):
        return math.inf
    max_steps = MAX_STEPS if max_steps is None else max_steps
    (r11, r12), (r21, r22) = cf.momentum_matrix(eta, beta, s).tolist()
    lam1, lam2 = cf.momentum_eigenvalues(eta, beta, s)
    log_rho = cf.momentum_log_radius(eta, beta, s)
    t_peak = 1 + (1 / -log_rho if log_rho < 0 else math.inf)
    det, x1 = 1 - beta, r22
    a, x, last_above = 0.0, 1.0, 0
    for t in range(1, max_steps + 1):
        a, x = r11 * a + r12 * x, r21 * a + r22 * x
        if abs(x) > eps:
            last_above = t
        if t % 16 == 0 and t >= t_peak:
            envelope = (abs(x1) * _divided_power_bound(t, lam1, lam2, log_rho)
                        + det * _divided_power_bound(t - 1, lam1, lam2, log_rho))
            if envelope <= eps:
                return last_above + 1
    return None


def momentum_iterations(eta: float, beta: float, sigmas, eps: float,
                        max_steps: int | None = None) -> float | None:
    """``max_i`` of :func:`momentum_mode_iterations` (inf if unstable, None if a mode did not settle)."""
    if not cf.momentum_is_stable(eta, beta, sigmas):
        return math.inf
    slowest_first = sorted(set(sigmas), key=lambda s: -cf.momentum_log_radius(eta, beta, s))
    worst = 0
    for s in slowest_first:
        count = momentum_mode_iterations(eta, beta, s, eps, max_steps)
        if count is None:
            return None
        worst = max(worst, count)
    return worst
