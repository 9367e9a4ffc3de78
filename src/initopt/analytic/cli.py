"""``python -m initopt.analytic``: every claim as a table; ``gd`` / ``momentum`` queries.

    python -m initopt.analytic [--json] [--seed N] [--plot DIR]
    python -m initopt.analytic gd --sigmas 3,0.3 [--eta E] [--eps 1e-3] [--json]
    python -m initopt.analytic momentum --sigmas 3,0.3 --beta 0.1 [--eta E] [--eps 1e-3] [--json]

Exit status: 0 when every claim holds, 1 when one fails, 2 for bad arguments (one line naming the
flag, its value and the allowed range). The ranges keep every answer a finite float: singular
values in [1e-50, 1e50], beta in [1e-50, 1], eps in [1e-300, 1), and
``1e-300 <= 2 eta b s_min^2``, ``2 eta s_max^2 <= 1e100`` (b = 1 for GD).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from decimal import Decimal, localcontext
from fractions import Fraction

from initopt.analytic import INTERRUPTED
from initopt.analytic import closed_form as cf
from initopt.analytic import iterations as it
from initopt.signals import INTERRUPTED_EXIT, interrupt_deferred


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong and what is allowed), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


SIGMA_RANGE = (1e-50, 1e50)  # s^2 and 1 / s^2 stay far inside float's range
BETA_MIN = 1e-50
EPS_MIN = 1e-300
STEP_MAX = 1e100  # 2 eta s_max^2: far past every stability edge (beta >= 1e-50 puts it below 4e50)
STEP_MIN = 1e-300  # 2 eta s_min^2 (GD) and 2 eta beta s_min^2 (momentum): ln rho stays a normal float


def _number(allowed: str, accept):
    """An argparse type: a float that ``accept`` admits, else one line with the value and the range
    (argparse puts the flag in front)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"got {text!r}; {allowed}")
        return value

    return parse


_eta = _number("the learning rate must be a finite number > 0", lambda v: v > 0)
_beta = _number(f"beta must be a number in [{BETA_MIN:g}, 1]", lambda v: BETA_MIN <= v <= 1)
_eps = _number(f"the tolerance must be a number in [{EPS_MIN:g}, 1)", lambda v: EPS_MIN <= v < 1)


def _sigmas(text: str) -> list[float]:
    """``--sigmas``: comma-separated numbers in SIGMA_RANGE; an empty item (``3,,0.3``) is refused."""
    lo, hi = SIGMA_RANGE
    allowed = f"a comma-separated list of numbers in [{lo:g}, {hi:g}]"
    items = [item.strip() for item in text.split(",")]
    for i, item in enumerate(items, 1):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not lo <= value <= hi:
            what = "is empty" if not item else f"is {item!r}"
            raise argparse.ArgumentTypeError(f"got {text!r}: item {i} {what}; give {allowed}")
    return [float(item) for item in items]


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"got {text!r}; the seed must be an integer >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m initopt.analytic",
                           description="Closed forms for GD and momentum, checked against torch autograd.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the random instances (>= 0)")
    parser.add_argument("--plot", metavar="DIR", help="write PNG figures into DIR")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)
    lo, hi = SIGMA_RANGE
    for name in ("gd", "momentum"):
        p = sub.add_parser(name, help=f"{name} on least squares with the given singular values")
        p.add_argument("--sigmas", type=_sigmas, required=True,
                       help=f"singular values in [{lo:g}, {hi:g}], e.g. 3,0.3")
        if name == "momentum":
            p.add_argument("--beta", type=_beta, required=True,
                           help=f"EMA weight of the new gradient, in [{BETA_MIN:g}, 1]")
        p.add_argument("--eta", type=_eta, help="a learning rate to analyse")
        p.add_argument("--eps", type=_eps, default=1e-3,
                       help=f"relative tolerance for iterations, in [{EPS_MIN:g}, 1)")
        p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _sci(q: Fraction) -> str:
    """A rational in 4-digit scientific notation, whatever its exponent (no float overflow)."""
    with localcontext() as ctx:
        ctx.prec = 4
        return f"{Decimal(q.numerator) / Decimal(q.denominator):.3E}"


def eta_problem(command: str, sigmas: list[float], eta: float, beta: float = 1.0) -> str | None:
    """Why ``eta`` is outside the range where every answer is a finite float, or None.

    ``2 eta s_max^2 <= 1e100`` (already far past every stability edge) and
    ``2 eta b s_min^2 >= 1e-300`` (``b = 1`` for GD): below it the slowest mode's ``ln rho``
    is no longer a normal float (it would need over 1e300 steps). Both products are exact."""
    top = 2 * cf.exact(eta) * cf.exact(max(sigmas)) ** 2
    if top > cf.exact(STEP_MAX):
        edge = (cf.gd_max_stable_eta(sigmas) if command == "gd"
                else cf.momentum_max_stable_eta(beta, sigmas))
        return (f"argument --eta: got {eta!r}: 2 * eta * max(sigma)^2 = {_sci(top)} must be <= {STEP_MAX:g} "
                f"(the stability edge is eta = {edge:.6g})")
    bottom = 2 * cf.exact(eta) * cf.exact(beta) * cf.exact(min(sigmas)) ** 2
    if bottom < cf.exact(STEP_MIN):
        term = "2 * eta * min(sigma)^2" if command == "gd" else "2 * eta * beta * min(sigma)^2"
        return (f"argument --eta: got {eta!r}: {term} = {_sci(bottom)} must be >= {STEP_MIN:g} "
                "(smaller steps need more than 1e300 iterations)")
    return None


def gd_query(sigmas: list[float], eta: float | None, eps: float) -> dict:
    out = {
        "sigmas": sigmas,
        "max_stable_eta": cf.gd_max_stable_eta(sigmas),
        "optimal_eta": cf.gd_optimal_eta(sigmas),
        "optimal_rate": cf.gd_optimal_rate(sigmas),
        "oscillation_eta": [cf.gd_oscillation_eta(s) for s in sigmas],
        "convention": "loss (y - s w)^2 without 1/2: factor 1 - 2 eta s^2",
    }
    if eta is not None:
        log_rate = cf.gd_log_rate(eta, sigmas)
        out.update({
            "eta": eta,
            "stable": cf.gd_is_stable(eta, sigmas),
            "rate": cf.gd_rate(eta, sigmas),
            "log_rate": log_rate,
            "iterations": it.gd_iterations(eta, sigmas, eps),
            "iterations_asymptotic": it.asymptotic_iterations(log_rate, eps),
            "iterations_meaning": "steps until |w_t - w*| <= eps |w*| in every mode from then on, "
                                  "w0 = 0 (exact: |1 - 2 eta s^2|^t)",
            "factors": [cf.gd_factor(eta, s) for s in sigmas],
            "fastest_mode": cf.gd_faster_mode(eta, sigmas),
        })
    return out


def momentum_query(sigmas: list[float], beta: float, eta: float | None, eps: float) -> dict:
    optimal_eta, optimal_rate = cf.momentum_optimal_eta(beta, sigmas)
    best_eta, best_beta, best_rate = cf.momentum_optimal_pair(sigmas)
    out = {
        "sigmas": sigmas,
        "beta": beta,
        "max_stable_eta": cf.momentum_max_stable_eta(beta, sigmas),
        "complex_eta_range": [list(cf.momentum_complex_eta_range(beta, s)) for s in sigmas],
        "optimal_eta": optimal_eta,
        "optimal_rate": optimal_rate,
        "optimal_log_rate": cf.momentum_log_rate(optimal_eta, beta, sigmas),  # where the rate rounds to 1.0
        "optimal_pair": {"eta": best_eta, "beta": best_beta, "rate": best_rate},
        "heavy_ball": "torch SGD(lr = eta * beta, momentum = 1 - beta) follows the same path",
    }
    if eta is not None:
        log_rate = cf.momentum_log_rate(eta, beta, sigmas)
        iterations = it.momentum_iterations(eta, beta, sigmas, eps, it.MAX_STEPS)
        out.update({
            "eta": eta,
            "stable": cf.momentum_is_stable(eta, beta, sigmas),
            "rate": cf.momentum_rate(eta, beta, sigmas),
            "log_rate": log_rate,
            "iterations": iterations,
            "iterations_asymptotic": it.asymptotic_iterations(log_rate, eps),
            "iterations_meaning": "steps of R_i until |x_t| <= eps |x_0| in every mode from then on, "
                                  "w0 = z0 = 0; asymptotic: ceil(ln eps / ln rate)"
                                  + ("" if iterations is not None else
                                     f"; not settled within {it.MAX_STEPS} steps, so null"),
            "eigenvalues": [[[z.real, z.imag] for z in cf.momentum_eigenvalues(eta, beta, s)]
                            for s in sigmas],
            "eigenvalue_kind": [cf.momentum_eigen_kind(eta, beta, s) for s in sigmas],
            "heavy_ball_equivalent": cf.heavy_ball_equivalent(eta, beta),
        })
    return out


def _dump(obj) -> str:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), indent=2)


def _print_query(result: dict, as_json: bool) -> None:
    if as_json:
        print(_dump(result))
        return
    for key, value in result.items():
        print(f"{key:>22}: {value}")


def format_table(claims) -> str:
    """One row per claim: closed form, measured value, how it was measured (autograd, Monte Carlo,
    or an algebra / closed-form identity that involves no autograd), the error and ok."""
    from initopt.analytic.claims import METHODS

    width = max(len(c.name) for c in claims)
    lines = [f"{'claim':<{width}}  {'closed form':>13}  {'measured':>13}  {'measured by':<11}  "
             f"{'error':>9}  ok", "-" * (width + 59)]
    notes = []
    for c in claims:
        mark = "yes" if c.ok else "NO"
        star = ""
        if c.note:
            notes.append(c.note)
            star = f" [{len(notes)}]"
        lines.append(f"{c.name:<{width}}  {c.closed_form:13.6g}  {c.autograd:13.6g}  {c.method:<11}  "
                     f"{c.abs_err:9.2e}  {mark}{star}")
    passed = sum(c.ok for c in claims)
    by = {m: sum(c.method == m for c in claims) for m in METHODS}
    lines.append(f"\n{passed} of {len(claims)} claims hold (float64; losses without 1/2): "
                 f"{by['autograd']} measured with torch autograd, {by['Monte Carlo']} by Monte Carlo, "
                 f"{by['algebra']} algebra and {by['closed form']} closed-form identities (no autograd).")
    if notes:
        lines.append("\nConventions and the homework's sample answers:")
        lines += [f"  [{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


def _writable_dir(parser: argparse.ArgumentParser, directory: str) -> None:
    """Create ``directory`` and a probe file in it, or stop with one line (exit 2)."""
    from pathlib import Path

    probe = Path(directory) / ".initopt_write_probe"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        parser.error(f"argument --plot: got {directory!r}: cannot write there ({err.strerror or err}); "
                     "give a writable directory")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command and args.eta is not None:
        problem = eta_problem(args.command, args.sigmas, args.eta, getattr(args, "beta", 1.0))
        if problem:
            parser.error(problem)
    if args.plot:
        _writable_dir(parser, args.plot)
    if args.command == "gd":
        _print_query(gd_query(args.sigmas, args.eta, args.eps), args.json)
        return 0
    if args.command == "momentum":
        _print_query(momentum_query(args.sigmas, args.beta, args.eta, args.eps), args.json)
        return 0

    try:
        return _check_claims(args)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return INTERRUPTED_EXIT


def _check_claims(args: argparse.Namespace) -> int:
    """Every claim checked against autograd and printed; the figures written when asked; 1 if a
    claim fails."""
    with interrupt_deferred():  # Ctrl-C inside torch's import would abort (initopt.signals)
        from initopt.analytic.claims import all_claims

    claims = all_claims(args.seed)
    if args.json:
        print(_dump([c.to_dict() for c in claims]))
    else:
        print(format_table(claims))
    if args.plot:
        from initopt.analytic.plots import write_all

        for path in write_all(args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return 0 if all(c.ok for c in claims) else 1
