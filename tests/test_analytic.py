"""Closed forms against torch autograd (float64), on random instances and at the boundaries."""

from __future__ import annotations

import contextlib
import io
import json
import math
from decimal import Decimal, localcontext
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from conftest import run_cli
from hypothesis import example, given, settings
from hypothesis import strategies as st

from initopt.analytic import closed_form as cf
from initopt.analytic import iterations as it
from initopt.analytic import simulate as sim
from initopt.analytic.claims import all_claims, random_problem
from initopt.analytic.cli import format_table, main

FEW = settings(max_examples=20, deadline=None)
sigma = st.floats(0.1, 5.0)
beta_st = st.floats(0.02, 1.0)


@pytest.fixture(scope="module")
def claims_seed0():
    return all_claims(0)


def test_every_claim_holds(claims_seed0):
    failed = [c.name for c in claims_seed0 if not c.ok]
    assert failed == [], failed


@pytest.mark.slow  # ~10 s: every simulation again
def test_every_claim_holds_on_a_second_seed():
    failed = [c.name for c in all_claims(1) if not c.ok]
    assert failed == [], failed


def test_the_table_marks_claims_that_involve_no_autograd(claims_seed0):
    rows = {c.name: c for c in claims_seed0}
    table = format_table(claims_seed0).splitlines()
    assert "measured by" in table[0]
    expected = {"det R = 1 - b": "algebra", "eigenvalues (tr": "algebra", "sample 2(c) discriminant": "algebra",
                "kernel form": "closed form", "lim E[w_t]": "closed form", "E||(X+N)w - y||^2": "Monte Carlo",
                "MAP (LBFGS": "autograd", "torch heavy ball": "autograd"}
    for fragment, method in expected.items():
        names = [n for n in rows if fragment in n]
        assert names, fragment
        for name in names:
            assert rows[name].method == method, name
            line = next(row for row in table if row.startswith(name))
            assert f"  {method}  " in line, line
    assert sum(c.method == "autograd" for c in claims_seed0) >= 40
    assert "3 algebra and 2 closed-form identities (no autograd)" in "\n".join(table)


def test_the_map_claim_maximises_the_posterior_and_the_heavy_ball_claim_has_two_sides(claims_seed0):
    X, y, _ = random_problem(np.random.default_rng(2), n=5, d=7)
    for lam in (0.05, 3.0):  # LBFGS on the log posterior, not a formula
        np.testing.assert_allclose(sim.ridge_map(X, y, lam), cf.ridge_primal(X, y, lam), atol=1e-10)
    X, y, s = random_problem(np.random.default_rng(3))
    eta, beta = 0.4 * cf.momentum_max_stable_eta(0.3, s), 0.3
    hand = cf.ema_momentum_recurrence(X, y, eta, beta, 40)
    np.testing.assert_allclose(sim.momentum_least_squares(X, y, eta * beta, beta, 40, form="heavy_ball"),
                               hand, atol=1e-10)
    # the hand-written side really is EMA: with heavy ball's lr = eta (no b) the paths differ
    assert np.abs(sim.momentum_least_squares(X, y, eta, beta, 40, form="heavy_ball") - hand).max() > 1e-3
    hb = next(c for c in claims_seed0 if "torch heavy ball" in c.name)
    assert hb.abs_err < 1e-9


@FEW
@given(s=sigma, y=st.floats(-3, 3), frac=st.floats(0.01, 0.99))
def test_gd_scalar_trajectory_matches_autograd(s, y, frac):
    eta = frac * cf.gd_max_stable_eta([s])
    np.testing.assert_allclose(sim.gd_scalar(s, y, eta, 40), cf.gd_trajectory(eta, s, y, 40),
                               rtol=0, atol=1e-10 * max(1, abs(y / s)))


@FEW
@given(seed=st.integers(0, 10**6), frac=st.floats(0.05, 0.95))
def test_gd_least_squares_trajectory_matches_autograd(seed, frac):
    X, y, s = random_problem(np.random.default_rng(seed))
    eta = frac * cf.gd_max_stable_eta(s)
    np.testing.assert_allclose(sim.gd_least_squares(X, y, eta, 50),
                               cf.gd_least_squares_trajectory(X, y, eta, 50), atol=1e-9)


@FEW
@given(seed=st.integers(0, 10**6), beta=beta_st, frac=st.floats(0.05, 0.95))
def test_momentum_trajectory_follows_the_R_recurrence(seed, beta, frac):
    X, y, s = random_problem(np.random.default_rng(seed))
    eta = frac * cf.momentum_max_stable_eta(beta, s)
    np.testing.assert_allclose(sim.momentum_least_squares(X, y, eta, beta, 50),
                               cf.momentum_least_squares_trajectory(X, y, eta, beta, 50), atol=1e-8)


@FEW
@given(s=sigma, beta=st.floats(0.02, 0.98), u=st.floats(0.01, 0.99))
def test_measured_momentum_rate_is_the_spectral_radius(s, beta, u):
    eta = u * cf.momentum_max_stable_eta(beta, [s])
    path = sim.momentum_least_squares(np.array([[s]]), np.array([1.0]), eta, beta, 200)[:, 0]
    rho = cf.momentum_spectral_radius(eta, beta, s)
    if cf.momentum_eigen_kind(eta, beta, s, tol=1e-6) == "repeated":
        return  # a double root: the fitted recurrence is only sqrt(eps)-accurate there
    assert sim.measured_rate(path - 1 / s, order=2) == pytest.approx(rho, abs=1e-6)


@FEW
@given(s=sigma, beta=st.floats(0.02, 0.99), u=st.floats(0.001, 3.0))
def test_stable_exactly_below_the_edge_and_kinds_follow_the_complex_range(s, beta, u):
    edge = cf.momentum_max_stable_eta(beta, [s])
    eta = u * edge
    if abs(u - 1) < 1e-6:
        return
    assert (cf.momentum_spectral_radius(eta, beta, s) < 1) == (eta < edge)
    lo, hi = cf.momentum_complex_eta_range(beta, s)
    kind = cf.momentum_eigen_kind(eta, beta, s)
    if lo * (1 + 1e-6) < eta < hi * (1 - 1e-6):
        assert kind == "complex"
        assert cf.momentum_spectral_radius(eta, beta, s) == pytest.approx(math.sqrt(1 - beta))
    elif eta < lo * (1 - 1e-6) or eta > hi * (1 + 1e-6):
        assert kind == "real"


@FEW
@given(s=sigma, beta=st.floats(0.02, 0.99), eta=st.floats(0.001, 2.0))
def test_heavy_ball_matrix_has_the_ema_eigenvalues_under_the_mapping(s, beta, eta):
    mapped = cf.heavy_ball_equivalent(eta, beta)
    hb = np.sort_complex(np.linalg.eigvals(cf.heavy_ball_matrix(mapped["lr"], mapped["momentum"], s)))
    ema = np.sort_complex(np.linalg.eigvals(cf.momentum_matrix(eta, beta, s)))
    np.testing.assert_allclose(hb, ema, atol=1e-6)


@pytest.mark.parametrize("beta", [0.05, 0.3, 0.9])
def test_eigenvalues_repeat_at_both_ends_of_the_complex_range(beta):
    for eta in cf.momentum_complex_eta_range(beta, 2.0):
        assert cf.momentum_eigen_kind(eta, beta, 2.0) == "repeated"
        a, b = cf.momentum_eigenvalues(eta, beta, 2.0)
        assert abs(a - b) < 1e-6


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_stability_flips_at_the_momentum_edge_with_autograd(beta):
    s = 2.0
    edge = cf.momentum_max_stable_eta(beta, [s])
    X, y = np.array([[s]]), np.array([1.0])
    below = sim.momentum_least_squares(X, y, edge * (1 - 1e-3), beta, 3000)[:, 0] - 1 / s
    above = sim.momentum_least_squares(X, y, edge * (1 + 1e-3), beta, 3000)[:, 0] - 1 / s
    assert abs(below[-1]) < abs(below[0]) * 1e-3
    assert abs(above[-1]) > abs(above[0]) * 1e3


def test_stability_flips_at_the_gd_edge_with_autograd():
    s = 3.0
    below = sim.gd_scalar(s, 1.0, (1 - 1e-3) / s**2, 5000) - 1 / s
    above = sim.gd_scalar(s, 1.0, (1 + 1e-3) / s**2, 5000) - 1 / s
    assert abs(below[-1]) < 1e-3 and abs(above[-1]) > 1e3


def test_gd_two_mode_optimum_balances_the_extreme_modes():
    sig = [3.0, 0.3]
    eta = cf.gd_optimal_eta(sig)
    assert eta == pytest.approx(1 / (9 + 0.09))
    assert abs(cf.gd_factor(eta, 3.0)) == pytest.approx(abs(cf.gd_factor(eta, 0.3)))
    grid = np.linspace(1e-4, cf.gd_max_stable_eta(sig), 20001)
    assert min(cf.gd_rate(e, sig) for e in grid) >= cf.gd_optimal_rate(sig) - 1e-12


def test_momentum_best_eta_is_a_minimum_of_the_rate():
    sig, beta = [3.0, 0.3, 1.0], 0.5
    eta, rate = cf.momentum_optimal_eta(beta, sig)
    grid = np.geomspace(1e-4, cf.momentum_max_stable_eta(beta, sig), 20001)
    assert min(cf.momentum_rate(e, beta, sig) for e in grid) >= rate - 1e-9
    assert cf.momentum_rate(eta, beta, sig) == pytest.approx(rate)


def test_best_pair_beats_gd_and_every_other_beta():
    sig = [3.0, 0.3]
    _, beta_best, rate = cf.momentum_optimal_pair(sig)
    assert rate == pytest.approx((10 - 1) / (10 + 1))  # sqrt(k) = 10
    assert rate < cf.gd_optimal_rate(sig)
    for beta in np.linspace(0.02, 1.0, 50):
        assert cf.momentum_optimal_eta(beta, sig)[1] >= rate - 1e-9


@FEW
@given(seed=st.integers(0, 10**6), lam=st.floats(0.01, 10.0), n=st.integers(2, 8), d=st.integers(2, 8))
def test_the_three_ridge_forms_agree(seed, lam, n, d):
    X, y, _ = random_problem(np.random.default_rng(seed), n=n, d=d)
    primal = cf.ridge_primal(X, y, lam)
    np.testing.assert_allclose(cf.ridge_kernel(X, y, lam), primal, atol=1e-10)
    np.testing.assert_allclose(sim.ridge_map(X, y, lam), primal, atol=1e-9)


def test_gd_on_the_ridge_objective_converges_to_the_ridge_solution():
    X, y, s = random_problem(np.random.default_rng(5), n=6, d=4)
    lam = 0.5
    w = sim.gd_least_squares(X, y, 0.9 / (max(s) ** 2 + lam), 4000, ridge=lam)[-1]
    np.testing.assert_allclose(w, cf.ridge_primal(X, y, lam), atol=1e-9)


def test_instance_noise_is_ridge_with_m_sigma_squared():
    X, y, _ = random_problem(np.random.default_rng(3), n=5, d=3)
    w, s = np.array([0.5, -1.0, 2.0]), 0.7
    expected = np.sum((X @ w - y) ** 2) + 5 * s**2 * np.sum(w**2)
    assert sim.noisy_inputs_expected_loss(X, y, w, s, draws=400_000) == pytest.approx(expected, rel=5e-3)
    assert cf.noise_ridge_lambda(s, 5) == pytest.approx(5 * s**2)
    assert cf.noise_ridge_lambda(s, 5, averaged=True) == pytest.approx(s**2)


def test_noisy_gd_mean_follows_the_expected_recurrence():
    x, y, s = 1.2, -0.7, 0.6
    eta = 0.2 * cf.noisy_scalar_max_stable_eta(x, s)
    mean, se = sim.noisy_scalar_gd_mean(x, y, s, eta, 30, draws=50_000, seed=7)
    z = np.abs(mean - cf.noisy_scalar_mean_trajectory(eta, x, y, s, 30)) / se
    assert z.max() < 5
    assert cf.noisy_scalar_max_stable_eta(x, s, half=True) == 2 * cf.noisy_scalar_max_stable_eta(x, s)


# ----------------------------------------------------------------------------- CLI
def analytic(*args, cwd):
    return run_cli(*args, cwd=cwd, module="initopt.analytic", timeout=120)


def test_gd_query_json(tmp_path):
    proc = analytic("gd", "--sigmas", "3,0.3", "--eta", "0.05", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["max_stable_eta"] == pytest.approx(1 / 9)
    assert out["optimal_eta"] == pytest.approx(1 / 9.09)
    assert out["optimal_rate"] == pytest.approx(8.91 / 9.09)
    assert out["rate"] == pytest.approx(1 - 2 * 0.05 * 0.09) and out["stable"] is True
    assert out["iterations"] == math.ceil(math.log(1e-3) / math.log(1 - 2 * 0.05 * 0.09))
    assert out["iterations_asymptotic"] == out["iterations"]  # GD's factor is exact


def test_momentum_query_json(tmp_path):
    proc = analytic("momentum", "--sigmas", "3,0.3", "--beta", "0.1", "--eta", "0.5", "--json",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["max_stable_eta"] == pytest.approx(1.9 / 0.9)
    assert out["complex_eta_range"][0] == pytest.approx(list(cf.momentum_complex_eta_range(0.1, 3.0)))
    assert len(out["complex_eta_range"]) == 2 and len(out["eigenvalues"]) == 2
    lam = out["eigenvalues"][0]
    assert math.hypot(*lam[0]) == pytest.approx(math.sqrt(0.9))  # complex for s=3 at eta=0.5
    assert {"optimal_eta", "optimal_rate", "rate", "stable", "iterations", "iterations_asymptotic"} <= out.keys()


def query(*args) -> dict:
    """``main([...args, '--json'])`` in-process: the parsed JSON answer."""
    return json.loads(_run_main([*args, "--json"])[1])


def _run_main(args):
    """``main(args)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as stop:
            code = stop.code
    return code, out.getvalue(), err.getvalue()


# Every command of issue 13's list, and the other bad inputs: one line naming the flag, exit 2.
BAD_ARGUMENTS = [
    (["gd", "--sigmas", "1e308,1"], "--sigmas"),
    (["gd", "--sigmas", "1e-200,1"], "--sigmas"),
    (["momentum", "--sigmas", "1e-200", "--beta", "0.5", "--eta", "1"], "--sigmas"),
    (["momentum", "--sigmas", "1e200", "--beta", "0.5"], "--sigmas"),
    (["momentum", "--sigmas", "3,0.3", "--beta", "0.1", "--eta", "1e300"], "--eta"),
    (["gd", "--sigmas", "3,0.3", "--eta", "1e-300"], "--eta"),
    (["momentum", "--sigmas", "3,0.3", "--beta", "1e-3", "--eta", "1e-298"], "--eta"),
    (["gd", "--sigmas", "3,,0.3"], "--sigmas"),
    (["gd", "--sigmas", "3,0.3,"], "--sigmas"),
    (["gd", "--sigmas", ""], "--sigmas"),
    (["gd", "--sigmas", "3,-0.3"], "--sigmas"),
    (["gd", "--sigmas", "3,nan"], "--sigmas"),
    (["gd", "--sigmas", "3", "--eta", "0"], "--eta"),
    (["gd", "--sigmas", "3", "--eta", "-1"], "--eta"),
    (["gd", "--sigmas", "3", "--eta", "inf"], "--eta"),
    (["gd", "--sigmas", "3", "--eps", "1"], "--eps"),
    (["gd", "--sigmas", "3", "--eps", "0"], "--eps"),
    (["gd", "--sigmas", "3", "--eps", "1e-320"], "--eps"),
    (["momentum", "--sigmas", "3", "--beta", "0"], "--beta"),
    (["momentum", "--sigmas", "3", "--beta", "1.5"], "--beta"),
    (["momentum", "--sigmas", "3", "--beta", "1e-60"], "--beta"),
    (["momentum", "--sigmas", "abc", "--beta", "0.5"], "--sigmas"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "1.5"], "--seed"),
    (["--plot", "/proc/initopt_plots"], "--plot"),
]


@pytest.mark.parametrize("args,word", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_give_one_line_and_exit_2(args, word):
    code, out, err = _run_main(args)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and word in err and "Traceback" not in err, err


def test_a_crash_case_exits_2_from_the_command_line(tmp_path):
    proc = analytic("gd", "--sigmas", "1e308,1", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--sigmas" in proc.stderr


def test_tiny_steps_get_the_exact_answer_not_a_rounded_one():
    out = query("gd", "--sigmas", "3,0.3", "--eta", "1e-298")  # 1 - 2 eta s^2 rounds to 1
    assert out["stable"] is True and out["rate"] == 1.0
    assert out["log_rate"] == pytest.approx(-2e-298 * 0.09, rel=1e-12)
    assert out["iterations"] == pytest.approx(math.log(1e3) / (2e-298 * 0.09), rel=1e-12)


def test_true_momentum_counts_at_the_tools_own_optimal_eta():
    eta = query("momentum", "--sigmas", "3,0.3", "--beta", "0.1")["optimal_eta"]
    for eps, true, estimate in (("1e-3", 175, 132), ("1e-6", 317, 263)):
        out = query("momentum", "--sigmas", "3,0.3", "--beta", "0.1", "--eta", repr(eta), "--eps", eps)
        assert (out["iterations"], out["iterations_asymptotic"]) == (true, estimate)


def _brute_force_count(matrices, eps, horizon):
    """One past the last step where some mode's |x_t| > eps, iterating each R_i from (0, 1)."""
    last = 0
    for R in matrices:
        state = np.array([0.0, 1.0])
        for t in range(1, horizon + 1):
            state = R @ state
            if abs(state[1]) > eps:
                last = max(last, t)
    return last + 1


@settings(max_examples=25, deadline=None)
@given(sig=st.lists(st.floats(0.2, 4.0), min_size=1, max_size=3), beta=st.floats(0.05, 1.0),
       frac=st.floats(0.02, 0.98), eps=st.sampled_from([1e-2, 1e-3, 1e-6]))
def test_momentum_count_matches_brute_force_iteration(sig, beta, frac, eps):
    eta = frac * cf.momentum_max_stable_eta(beta, sig)
    count = it.momentum_iterations(eta, beta, sig, eps, max_steps=20_000)
    if count is None:  # too slow to settle: nothing to compare
        return
    mats = [cf.momentum_matrix(eta, beta, s) for s in sig]
    assert count == _brute_force_count(mats, eps, horizon=4 * count + 200)


@settings(max_examples=25, deadline=None)
@given(sig=st.lists(st.floats(0.2, 4.0), min_size=1, max_size=3), frac=st.floats(0.01, 0.999),
       eps=st.sampled_from([1e-2, 1e-3, 1e-6]))
@example(sig=[0.23613852640023156], frac=0.55, eps=0.01)  # |f|^2 an ulp above eps: the logs said 2
def test_gd_count_matches_brute_force_iteration_and_momentum_with_beta_1(sig, frac, eps):
    eta = frac * cf.gd_max_stable_eta(sig)
    count = it.gd_iterations(eta, sig, eps)
    if count > 20_000:
        return
    rates, bound = [abs(cf.gd_factor_exact(eta, s)) for s in sig], Fraction(eps)  # exact, as the count
    assert all(r ** count <= bound for r in rates)  # every mode within eps at the count
    assert count == 1 or any(r ** (count - 1) > bound for r in rates)  # and not a step before
    assert it.momentum_iterations(eta, 1.0, sig, eps) == count  # beta = 1 is GD


def _decimal(x) -> Decimal:
    return Decimal(float(x))  # exact


def test_tiny_beta_edge_is_unstable_and_its_eigenvalues_are_accurate():
    sig, beta = "12,1.5", 1e-10
    edge = query("momentum", "--sigmas", sig, "--beta", repr(beta))["max_stable_eta"]
    at = query("momentum", "--sigmas", sig, "--beta", repr(beta), "--eta", repr(edge))
    below = query("momentum", "--sigmas", sig, "--beta", repr(beta), "--eta",
                  repr(math.nextafter(edge, 0)))
    # exact rule: stable iff eta b s_max^2 < 2 - b
    exact_stable = lambda e: Fraction(e) * Fraction(beta) * 144 < 2 - Fraction(beta)  # noqa: E731
    assert at["stable"] is exact_stable(edge) and below["stable"] is exact_stable(math.nextafter(edge, 0))
    assert at["iterations"] == ("inf" if not at["stable"] else at["iterations"])
    with localcontext() as ctx:  # reference eigenvalues with 60 digits
        ctx.prec = 60
        for out, eta in ((at, edge), (below, math.nextafter(edge, 0))):
            b, e = _decimal(beta), _decimal(eta)
            tr, det = 2 - b - 2 * e * b * 144, 1 - b
            disc = tr * tr - 4 * det
            reference = abs(tr - disc.sqrt()) / 2 if disc > 0 else det.sqrt()
            modulus = max(math.hypot(*z) for z in out["eigenvalues"][0])
            assert abs(Decimal(modulus) - reference) / reference < Decimal("1e-15")
            assert (reference < 1) is out["stable"]
    assert at["stable"] is False  # the float edge lies above the true one: |lambda| = 1 + 1.5e-8


@pytest.mark.parametrize("beta", [1e-6, 1e-10, 1e-12, 1e-16, 1e-30])
def test_the_complex_range_has_no_cancellation_for_tiny_beta(beta):
    lo, hi = cf.momentum_complex_eta_range(beta, 1.5)
    with localcontext() as ctx:
        ctx.prec = 60
        b = _decimal(beta)
        r = (1 - b).sqrt()
        ref_lo, ref_hi = (1 - r) ** 2 / (2 * b * Decimal("2.25")), (1 + r) ** 2 / (2 * b * Decimal("2.25"))
        assert abs(Decimal(lo) - ref_lo) / ref_lo < Decimal("1e-14")
        assert abs(Decimal(hi) - ref_hi) / ref_hi < Decimal("1e-14")
    assert cf.momentum_log_radius(0.5 * (lo + hi), beta, 1.5) == pytest.approx(math.log1p(-beta) / 2, rel=1e-14)


@settings(max_examples=30, deadline=None)
@given(s=st.floats(0.1, 10.0), beta=st.floats(1e-12, 1.0), side=st.sampled_from([-1, 1]))
def test_stability_is_decided_exactly_at_the_edge(s, beta, side):
    edge = cf.momentum_max_stable_eta(beta, [s])
    eta = math.nextafter(edge, math.inf if side > 0 else 0)
    exact_rule = Fraction(eta) * Fraction(beta) * Fraction(s) ** 2 < 2 - Fraction(beta)
    assert cf.momentum_is_stable(eta, beta, [s]) is bool(exact_rule)
    assert (cf.momentum_log_radius(eta, beta, s) < 0) is bool(exact_rule)
    gd_eta = math.nextafter(cf.gd_max_stable_eta([s]), math.inf if side > 0 else 0)
    assert cf.gd_is_stable(gd_eta, [s]) is bool(Fraction(gd_eta) * Fraction(s) ** 2 < 1)
    assert (cf.gd_log_rate(gd_eta, [s]) < 0) is cf.gd_is_stable(gd_eta, [s])


extreme = st.sampled_from([1e-50, 1e-20, 1e-3, 0.3, 1.0, 3.0, 1e3, 1e20, 1e50])


@settings(max_examples=40, deadline=None)
@given(sig=st.lists(extreme, min_size=1, max_size=3), beta=st.sampled_from([1e-50, 1e-12, 0.1, 1.0]),
       where=st.floats(0.0, 1.0), momentum=st.booleans())
def test_every_accepted_input_gets_finite_answers(sig, beta, where, momentum):
    """Anywhere in the accepted ranges: no exception, no nan, inf only for an unstable count."""
    command = "momentum" if momentum else "gd"
    b = beta if momentum else 1.0
    lo = max(math.log(1e-300) - math.log(2 * b) - 2 * math.log(min(sig)), math.log(1e-307))  # smallest eta
    hi = math.log(1e100) - math.log(2) - 2 * math.log(max(sig))
    args = [command, "--sigmas", ",".join(map(repr, sig))] + (["--beta", repr(beta)] if momentum else [])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(it, "MAX_STEPS", 2000)
        code, out, err = _run_main([*args, "--json"])
        assert code == 0, err
        if lo <= hi:
            eta = math.exp(lo + where * (hi - lo)) * (1 + 1e-9)
            code, out, err = _run_main([*args, "--eta", repr(min(eta, math.exp(hi) * (1 - 1e-9))), "--json"])
            assert code == 0, err
    answer = json.loads(out)

    def numbers(v):
        if isinstance(v, dict):
            return [x for item in v.values() for x in numbers(item)]
        if isinstance(v, list):
            return [x for item in v for x in numbers(item)]
        return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else []

    assert all(math.isfinite(x) for x in numbers(answer))
    if "iterations" in answer:
        assert (answer["iterations"] == "inf") is (not answer["stable"])


def test_a_count_beyond_the_step_budget_is_null_with_the_reason(monkeypatch):
    monkeypatch.setattr(it, "MAX_STEPS", 100)
    out = query("momentum", "--sigmas", "3,0.3", "--beta", "0.5", "--eta", "1e-4")
    assert out["iterations"] is None and "100 steps" in out["iterations_meaning"]
    assert out["iterations_asymptotic"] > 100


def test_default_json_lists_every_claim_and_plots_are_written(tmp_path, claims_seed0, monkeypatch, capsys):
    """The command's output (in this process: the claims of seed 0 are the fixture's, checked above)."""
    import initopt.analytic.claims

    monkeypatch.setattr(initopt.analytic.claims, "all_claims", lambda seed: claims_seed0 if seed == 0 else None)
    assert main(["--json", "--plot", str(tmp_path / "figs")]) == 0
    claims = json.loads(capsys.readouterr().out)
    assert len(claims) > 30
    assert all({"name", "closed_form", "autograd", "abs_err", "ok", "method"} <= c.keys() for c in claims)
    assert all(c["ok"] for c in claims)
    for png in ("spectral_radius.png", "trajectories.png"):
        assert (tmp_path / "figs" / png).stat().st_size > 10_000


# --------------------------------------------------- the optimal step at extreme condition numbers
def _mp_log_rate(eta: float, beta: float, sigmas) -> mpmath.mpf:
    """``ln max_i |lambda(R_i)|`` from mpmath's eigenvalue routine on each 2x2 matrix R_i, in
    250 digits (the float eta, beta and sigmas taken exactly): no closed form involved."""
    with mpmath.workdps(250):
        b, e = mpmath.mpf(beta), mpmath.mpf(eta)
        radii = []
        for s in sigmas:
            s2 = mpmath.mpf(s) ** 2
            values, _ = mpmath.eig(mpmath.matrix([[1 - b, 2 * b * s2], [-e * (1 - b), 1 - 2 * e * b * s2]]))
            radii.append(max(abs(v) for v in values))
        return mpmath.log(max(radii))


EXTREME = [([1e-20, 1e20], 0.5), ([1.0, 1e40], 0.9), ([1e-25, 1e15], 0.1), ([3e-10, 2e10], 1e-3),
           ([1e-20, 1e20], 1e-50), ([1.0, 1e5, 1e10], 0.3), ([3.0, 0.3], 0.1), ([2.0, 1e-18], 1.0)]


@pytest.mark.parametrize(("sigmas", "beta"), EXTREME)
def test_the_optimal_step_is_stable_and_its_rate_matches_mpmath_eigenvalues(sigmas, beta):
    """Up to s_max / s_min = 1e40: the step is at most the edge, its rate is the rate of the
    matrices' eigenvalues in 250 digits, and no nearby step (1e-6 either side) does better."""
    eta, rate = cf.momentum_optimal_eta(beta, sigmas)
    assert 0 < eta <= cf.momentum_max_stable_eta(beta, sigmas) and cf.momentum_is_stable(eta, beta, sigmas)
    truth = _mp_log_rate(eta, beta, sigmas)
    assert truth < 0
    assert cf.momentum_log_rate(eta, beta, sigmas) == pytest.approx(float(truth), rel=1e-9)
    assert rate == pytest.approx(float(mpmath.exp(truth)), rel=1e-15) and rate <= 1
    for nearby in (eta * (1 - 1e-6), eta * (1 + 1e-6)):
        assert truth <= _mp_log_rate(nearby, beta, sigmas) + 1e-12 * abs(truth)


def test_the_cli_answers_the_80_decade_case_in_range():
    out = query("momentum", "--sigmas", "1e-20,1e20", "--beta", "0.5")
    assert out["optimal_eta"] <= out["max_stable_eta"]
    assert out["optimal_rate"] <= 1.0  # 1 - 6e-80 rounds to 1.0 in float64
    assert out["optimal_log_rate"] == pytest.approx(float(_mp_log_rate(out["optimal_eta"], 0.5, [1e-20, 1e20])),
                                                    rel=1e-9)
    assert -1e-79 < out["optimal_log_rate"] < 0


def test_ctrl_c_while_checking_the_claims_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(seed):
        raise KeyboardInterrupt

    monkeypatch.setattr("initopt.analytic.claims.all_claims", interrupted)
    assert main([]) == 130
    out, err = capsys.readouterr()
    assert err == "initopt.analytic: interrupted\n" and out == ""
