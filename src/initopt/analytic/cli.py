"""``python -m initopt.analytic``: every claim as a table; ``gd`` / ``momentum`` queries.

    python -m initopt.analytic [--json] [--seed N] [--plot DIR]
    python -m initopt.analytic gd --sigmas 3,0.3 [--eta E] [--eps 1e-3] [--json]
    python -m initopt.analytic momentum --sigmas 3,0.3 --beta 0.1 [--eta E] [--eps 1e-3] [--json]

Exit status: 0 when every claim holds, 1 when one fails, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from initopt.analytic import closed_form as cf


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong and what is allowed), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(flag: str, allowed: str, accept):
    """An argparse type: a float that ``accept`` admits, else one line naming flag, value and range."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"{flag}={text!r}: {allowed}")
        return value

    return parse


_eta = _number("--eta", "the learning rate must be a number > 0", lambda v: v > 0)
_beta = _number("--beta", "beta must be a number in (0, 1]", lambda v: 0 < v <= 1)
_eps = _number("--eps", "the tolerance must be a number in (0, 1)", lambda v: 0 < v < 1)
_one_sigma = _number("--sigmas", "singular values must be numbers > 0", lambda v: v > 0)


def _sigmas(text: str) -> list[float]:
    values = [_one_sigma(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"--sigmas={text!r}: a comma-separated list of numbers > 0")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m initopt.analytic",
                           description="Closed forms for GD and momentum, checked against torch autograd.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random instances")
    parser.add_argument("--plot", metavar="DIR", help="write PNG figures into DIR")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)
    for name in ("gd", "momentum"):
        p = sub.add_parser(name, help=f"{name} on least squares with the given singular values")
        p.add_argument("--sigmas", type=_sigmas, required=True, help="singular values, e.g. 3,0.3")
        if name == "momentum":
            p.add_argument("--beta", type=_beta, required=True, help="EMA weight of the new gradient")
        p.add_argument("--eta", type=_eta, help="a learning rate to analyse")
        p.add_argument("--eps", type=_eps, default=1e-3, help="relative tolerance for iterations")
        p.add_argument("--json", action="store_true", help="print JSON")
    return parser


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
        rate = cf.gd_rate(eta, sigmas)
        out.update({
            "eta": eta,
            "rate": rate,
            "stable": rate < 1,
            "iterations": cf.iterations_to_tolerance(rate, eps),
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
        "optimal_pair": {"eta": best_eta, "beta": best_beta, "rate": best_rate},
        "heavy_ball": "torch SGD(lr = eta * beta, momentum = 1 - beta) follows the same path",
    }
    if eta is not None:
        rate = cf.momentum_rate(eta, beta, sigmas)
        out.update({
            "eta": eta,
            "rate": rate,
            "stable": rate < 1,
            "iterations": cf.iterations_to_tolerance(rate, eps),
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
    width = max(len(c.name) for c in claims)
    lines = [f"{'claim':<{width}}  {'closed form':>13}  {'autograd':>13}  {'error':>9}  ok",
             "-" * (width + 46)]
    notes = []
    for c in claims:
        mark = "yes" if c.ok else "NO"
        star = ""
        if c.note:
            notes.append(c.note)
            star = f" [{len(notes)}]"
        lines.append(f"{c.name:<{width}}  {c.closed_form:13.6g}  {c.autograd:13.6g}  {c.abs_err:9.2e}  "
                     f"{mark}{star}")
    passed = sum(c.ok for c in claims)
    lines.append(f"\n{passed} of {len(claims)} claims hold (float64; losses without 1/2).")
    if notes:
        lines.append("\nConventions and the homework's sample answers:")
        lines += [f"  [{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "gd":
        _print_query(gd_query(args.sigmas, args.eta, args.eps), args.json)
        return 0
    if args.command == "momentum":
        _print_query(momentum_query(args.sigmas, args.beta, args.eta, args.eps), args.json)
        return 0

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
