"""Closed forms against torch autograd (float64), on random instances and at the boundaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from initopt.analytic import closed_form as cf
from initopt.analytic import simulate as sim
from initopt.analytic.claims import all_claims, random_problem

FEW = settings(max_examples=20, deadline=None)
sigma = st.floats(0.1, 5.0)
beta_st = st.floats(0.02, 1.0)


def test_every_claim_holds_on_two_seeds():
    for seed in (0, 1):
        failed = [c.name for c in all_claims(seed) if not c.ok]
        assert failed == [], failed


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
    np.testing.assert_allclose(cf.ridge_map(X, y, lam), primal, atol=1e-10)


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
    assert {"optimal_eta", "optimal_rate", "rate", "stable", "iterations"} <= out.keys()


@pytest.mark.parametrize("args,word", [
    (["gd", "--sigmas", "3,-0.3"], "--sigmas"),
    (["gd", "--sigmas", "3", "--eta", "0"], "--eta"),
    (["gd", "--sigmas", "3", "--eta", "-1"], "--eta"),
    (["momentum", "--sigmas", "3", "--beta", "0"], "--beta"),
    (["momentum", "--sigmas", "3", "--beta", "1.5"], "--beta"),
    (["momentum", "--sigmas", "abc", "--beta", "0.5"], "--sigmas"),
])
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, args, word):
    proc = analytic(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and word in proc.stderr


def test_default_json_lists_every_claim_and_plots_are_written(tmp_path):
    proc = analytic("--json", "--plot", str(tmp_path / "figs"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    claims = json.loads(proc.stdout)
    assert len(claims) > 30
    assert all({"name", "closed_form", "autograd", "abs_err", "ok"} <= c.keys() for c in claims)
    assert all(c["ok"] for c in claims)
    for png in ("spectral_radius.png", "trajectories.png"):
        assert (tmp_path / "figs" / png).stat().st_size > 10_000
