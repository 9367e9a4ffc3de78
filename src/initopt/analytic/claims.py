"""Claims: each closed form set beside the same quantity measured another way.

A :class:`Claim` holds a name, the closed-form value, the measured value, their absolute
difference, whether it is within the claim's tolerance, and ``method``, how the measured value
was obtained: ``autograd`` (torch autograd and the trainer's optimizers), ``Monte Carlo``
(torch sampling, no gradients), ``algebra`` (a numpy identity check, e.g. eigenvalues) or
``closed form`` (one closed form against another). Plus a note where the homework's sample
answer uses another convention or slips. :func:`all_claims` runs every claim on the homework's
default instances and on seeded random ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from initopt.analytic import closed_form as cf
from initopt.analytic import iterations as it
from initopt.analytic import simulate as sim

METHODS = ("autograd", "Monte Carlo", "algebra", "closed form")


@dataclass
class Claim:
    name: str
    closed_form: float
    autograd: float
    abs_err: float
    ok: bool
    note: str = ""
    method: str = "autograd"

    def __post_init__(self):  # plain Python numbers, whatever numpy handed in
        self.closed_form, self.autograd = float(self.closed_form), float(self.autograd)
        self.abs_err, self.ok = float(self.abs_err), bool(self.ok)
        if self.method not in METHODS:
            raise ValueError(f"Claim method={self.method!r}: one of {METHODS}")

    def to_dict(self) -> dict:
        d = asdict(self)
        return d if self.note else {k: v for k, v in d.items() if k != "note"}


def compare(name: str, closed: float, measured: float, tol: float, note: str = "", extra_ok=True,
            method: str = "autograd") -> Claim:
    err = abs(closed - measured)
    return Claim(name, float(closed), float(measured), float(err), bool(err <= tol and extra_ok), note,
                 method)


def settle_count(errors: np.ndarray, scale: np.ndarray, eps: float) -> int:
    """One past the last step whose error leaves ``eps * scale`` in some coordinate
    (``errors[t-1]`` is the error after step t); the caller runs long enough for it to stay."""
    outside = np.any(np.abs(errors).reshape(len(errors), -1) > eps * np.abs(scale).ravel(), axis=1)
    return int(np.nonzero(outside)[0].max()) + 2 if outside.any() else 1


def compare_paths(name: str, closed: np.ndarray, measured: np.ndarray, tol: float = 1e-9) -> Claim:
    """Whole trajectories: the reported values are the last iterates, the error the worst step."""
    scale = max(1.0, float(np.abs(closed).max()))
    err = float(np.abs(closed - measured).max())
    last = lambda a: float(np.ravel(a[-1])[0])  # noqa: E731
    return Claim(name, last(closed), last(measured), err, bool(err <= tol * scale))


def random_problem(rng: np.random.Generator, n: int = 8, d: int = 4, spread: float = 10.0):
    """A least-squares problem with singular values spread over ``spread`` (well posed)."""
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    k = min(n, d)
    s = np.geomspace(1.0, 1.0 / spread, k) * rng.uniform(0.5, 2.0)
    X = u[:, :k] @ np.diag(s) @ v[:, :k].T
    return X, rng.standard_normal(n), s


# ============================================================== gradient descent


def gd_scalar_claims(s: float, y: float, tag: str) -> list[Claim]:
    out = []
    w_star = y / s
    for frac in (0.2, 0.7, 0.95):  # within the stable range, below and above 1/(2 s^2)
        eta = frac / s**2
        out.append(compare_paths(f"GD {tag}: trajectory w_t, eta={frac:g}/s^2",
                                 cf.gd_trajectory(eta, s, y, 60), sim.gd_scalar(s, y, eta, 60)))
    for side, frac in (("just below", 1 - 1e-3), ("just above", 1 + 1e-3)):
        eta = frac * cf.gd_max_stable_eta([s])
        path = sim.gd_scalar(s, y, eta, 2000)
        measured = sim.measured_rate(path - w_star, order=1)
        predicted = abs(cf.gd_factor(eta, s))
        flips = (measured < 1) if side == "just below" else (measured > 1)
        out.append(compare(
            f"GD {tag}: |error factor| {side} the edge 1/s^2", predicted, measured, 1e-9, extra_ok=flips,
            note="" if side == "just above" else
            f"sample 1(a) puts the edge at 1/(2 s^2) = {cf.gd_oscillation_eta(s):.6g}; that is where "
            f"the factor 1 - 2 eta s^2 hits 0 (one-step convergence) and oscillation starts; GD is "
            f"stable up to 1/s^2 = {cf.gd_max_stable_eta([s]):.6g} (loss without 1/2)"))
    eta = cf.gd_oscillation_eta(s)
    one_step = sim.gd_scalar(s, y, eta, 1)[0]
    out.append(compare(f"GD {tag}: eta = 1/(2 s^2) lands on w* in one step", w_star, one_step, 1e-12))
    eta, eps = 0.3 / s**2, 1e-3
    predicted = it.gd_iterations(eta, [s], eps)
    path = sim.gd_scalar(s, y, eta, int(predicted) + 20)
    measured = settle_count(path - w_star, np.array([w_star]), eps)
    out.append(compare(f"GD {tag}: iterations to within (1 - 1e-3) of w*", predicted, measured, 0,
                       note="sample 1(b) gives log(eps)/log|1 - 2 eta s^2| without rounding up"))
    return out


def gd_two_mode_claims(s_l: float, s_s: float, tag: str) -> list[Claim]:
    X, y = np.diag([s_l, s_s]), np.array([1.0, 1.0])
    w_star = cf.least_squares_solution(X, y)
    eta = cf.gd_optimal_eta([s_l, s_s])
    path = sim.gd_least_squares(X, y, eta, 400)
    out = [compare(f"GD {tag}: rate at eta* = 1/(s_l^2 + s_s^2)", cf.gd_optimal_rate([s_l, s_s]),
                   sim.measured_rate(path - w_star, order=1), 1e-9)]
    for step in (0.5 * eta, 1.6 * eta):  # which mode converges faster flips around eta*
        path = sim.gd_least_squares(X, y, step, 30)
        errs = np.abs(path[-1] - w_star) / np.abs(w_star)
        measured_faster = int(np.argmin(errs))
        out.append(compare(f"GD {tag}: faster mode at eta={step:.4g} (0 = s_l, 1 = s_s)",
                           cf.gd_faster_mode(step, [s_l, s_s]), measured_faster, 0))
    return out


def gd_least_squares_claims(rng: np.random.Generator, tag: str) -> list[Claim]:
    X, y, s = random_problem(rng)
    eta = 0.8 * cf.gd_max_stable_eta(s)
    return [compare_paths(f"GD {tag}: least-squares trajectory through the SVD",
                          cf.gd_least_squares_trajectory(X, y, eta, 80), sim.gd_least_squares(X, y, eta, 80))]


# ===================================================================== momentum


def momentum_trajectory_claims(rng: np.random.Generator, beta: float, tag: str) -> list[Claim]:
    X, y, s = random_problem(rng)
    out = []
    lo, hi = cf.momentum_complex_eta_range(beta, min(s))
    for label, eta in (("complex s_min", 0.5 * (lo + hi) if hi < cf.momentum_max_stable_eta(beta, s)
                        else 0.5 * cf.momentum_max_stable_eta(beta, s)),
                       ("near the edge", 0.9 * cf.momentum_max_stable_eta(beta, s))):
        out.append(compare_paths(
            f"momentum {tag} b={beta}: trajectory by R_i recurrence, eta {label}",
            cf.momentum_least_squares_trajectory(X, y, eta, beta, 80),
            sim.momentum_least_squares(X, y, eta, beta, 80)))
    eta = 0.5 * cf.momentum_max_stable_eta(beta, s)
    out.append(compare_paths(
        f"momentum {tag} b={beta}: torch heavy ball (lr = eta b) path = hand-written EMA recurrence",
        cf.ema_momentum_recurrence(X, y, eta, beta, 60),
        sim.momentum_least_squares(X, y, eta * beta, beta, 60, form="heavy_ball")))
    return out


def momentum_iteration_claims(s_l: float, s_s: float, beta: float, tag: str) -> list[Claim]:
    """The count from iterating R_i at the best eta against autograd's, with the asymptotic estimate."""
    X, y = np.diag([s_l, s_s]), np.array([1.0, 1.0])
    w_star = cf.least_squares_solution(X, y)
    eta, _ = cf.momentum_optimal_eta(beta, [s_l, s_s])
    out = []
    for eps in (1e-3, 1e-6):
        count = it.momentum_iterations(eta, beta, [s_l, s_s], eps)
        path = sim.momentum_least_squares(X, y, eta, beta, 2 * int(count) + 100)
        estimate = it.asymptotic_iterations(cf.momentum_log_rate(eta, beta, [s_l, s_s]), eps)
        out.append(compare(f"momentum {tag} b={beta}: iterations to stay within eps={eps:g}, by R_i",
                           count, settle_count(path - w_star, w_star, eps), 0,
                           note=f"ceil(ln eps / ln rho) = {estimate} is only the asymptotic estimate "
                                f"(eps = {eps:g})"))
    return out


def momentum_rate_claims(s: float, beta: float, tag: str) -> list[Claim]:
    """Single-mode problems: measured contraction against the spectral radius of R."""
    X, y = np.array([[s]]), np.array([1.0])
    w_star = 1.0 / s
    lo, hi = cf.momentum_complex_eta_range(beta, s)
    edge = cf.momentum_max_stable_eta(beta, [s])
    out = []
    for label, eta in (("real (small eta)", 0.5 * lo), ("complex", 0.5 * (lo + hi)),
                       ("real (large eta)", 0.5 * (hi + edge))):
        kind = cf.momentum_eigen_kind(eta, beta, s)
        path = sim.momentum_least_squares(X, y, eta, beta, 300)[:, 0]
        rho = cf.momentum_spectral_radius(eta, beta, s)
        out.append(compare(f"momentum {tag} b={beta:.3g}: rate = spectral radius, {label} [{kind}]",
                           rho, sim.measured_rate(path - w_star, order=2), 1e-6))
    for side, frac in (("just below", 1 - 1e-4), ("just above", 1 + 1e-4)):
        eta = frac * edge
        path = sim.momentum_least_squares(X, y, eta, beta, 300)[:, 0]
        measured = sim.measured_rate(path - w_star, order=2)
        flips = (measured < 1) if side == "just below" else (measured > 1)
        out.append(compare(f"momentum {tag} b={beta:.3g}: rate {side} the edge (2-b)/(b s^2)",
                           cf.momentum_spectral_radius(eta, beta, s), measured, 1e-6, extra_ok=flips))
    path = sim.momentum_least_squares(X, y, lo, beta, 300)[:, 0]
    out.append(compare(f"momentum {tag} b={beta:.3g}: repeated eigenvalue sqrt(1-b) at the complex edge",
                       math.sqrt(1 - beta), sim.measured_rate(path - w_star, order=2), 1e-6,
                       extra_ok=cf.momentum_eigen_kind(lo, beta, s) == "repeated"))
    return out


def momentum_algebra_claims(rng: np.random.Generator) -> list[Claim]:
    """Eigenvalue formula vs numpy on random (eta, beta, s); the sample's discriminant form."""
    worst_eig, worst_disc, worst_det = 0.0, 0.0, 0.0
    for _ in range(200):
        eta, beta, s = rng.uniform(0.001, 1.0), rng.uniform(0.01, 1.0), rng.uniform(0.1, 3.0)
        R = cf.momentum_matrix(eta, beta, s)
        ours = sorted(cf.momentum_eigenvalues(eta, beta, s), key=lambda z: (z.real, z.imag))
        ref = sorted(np.linalg.eigvals(R), key=lambda z: (z.real, z.imag))
        worst_eig = max(worst_eig, max(abs(a - b) for a, b in zip(ours, ref)))
        u = 2 * eta * s * s
        sample = beta**2 * (u - 1) ** 2 - 8 * eta * (1 - beta) * beta * s * s
        worst_disc = max(worst_disc, abs(sample - cf.momentum_discriminant(eta, beta, s)))
        worst_det = max(worst_det, abs(np.linalg.det(R) - (1 - beta)))
    return [
        Claim("momentum: eigenvalues (tr +- sqrt(tr^2 - 4 det))/2 vs numpy, 200 random", 0.0, worst_eig,
              worst_eig, worst_eig < 1e-9, method="algebra"),
        Claim("momentum: det R = 1 - b, 200 random", 0.0, worst_det, worst_det, worst_det < 1e-12,
              method="algebra"),
        Claim("momentum: sample 2(c) discriminant = b^2(1 + 2 eta s^2)^2 - 8 eta b s^2", 0.0, worst_disc,
              worst_disc, worst_disc < 1e-12,
              note="the sample's b^2(2 eta s^2 - 1)^2 - 8 eta (1-b) b s^2 is the same polynomial",
              method="algebra"),
    ]


def momentum_optimum_claims(s_l: float, s_s: float, beta: float, tag: str) -> list[Claim]:
    X, y = np.diag([s_l, s_s]), np.array([1.0, 1.0])
    w_star = cf.least_squares_solution(X, y)
    eta, rate = cf.momentum_optimal_eta(beta, [s_l, s_s])
    path = sim.momentum_least_squares(X, y, eta, beta, 400)
    out = [compare(f"momentum {tag} b={beta}: rate at the best eta={eta:.4g}", rate,
                   sim.measured_rate(path - w_star, order=2), 1e-6)]
    eta, beta_best, rate = cf.momentum_optimal_pair([s_l, s_s])
    path = sim.momentum_least_squares(X, y, eta, beta_best, 400)
    out.append(compare(f"momentum {tag}: rate at the best pair (eta={eta:.4g}, b={beta_best:.4g})",
                       rate, sim.measured_rate(path - w_star, order=2), 1e-4,
                       note=f"GD's best rate here is {cf.gd_optimal_rate([s_l, s_s]):.4f}"))
    return out


# =============================================================== noise and ridge


def instance_noise_claims(rng: np.random.Generator) -> list[Claim]:
    X, y, _ = random_problem(rng, n=6, d=3)
    w, sigma = rng.standard_normal(3), 0.5
    m = X.shape[0]
    predicted = np.sum((X @ w - y) ** 2) + cf.noise_ridge_lambda(sigma, m) * np.sum(w**2)
    measured = sim.noisy_inputs_expected_loss(X, y, w, sigma, draws=200_000)
    out = [compare("noise: E||(X+N)w - y||^2 = ||Xw - y||^2 + m sigma^2 ||w||^2", predicted, measured,
                   0.01 * predicted, method="Monte Carlo",
                   note=f"ridge lambda = m sigma^2 = {cf.noise_ridge_lambda(sigma, m):g} for the summed "
                        f"loss; sample 3(a)'s lambda = sigma^2 = {sigma**2:g} is for the loss averaged "
                        "over the m rows")]
    x, yy, sigma = 1.5, 2.0, 0.8
    eta = 0.15 * cf.noisy_scalar_max_stable_eta(x, sigma)  # E[w] factor 0.7: a visible approach
    means, stderr = sim.noisy_scalar_gd_mean(x, yy, sigma, eta, 40)
    predicted_path = cf.noisy_scalar_mean_trajectory(eta, x, yy, sigma, 40)
    z = float(np.max(np.abs(means - predicted_path) / stderr))
    out.append(Claim("noise: E[w_t] recurrence (scalar, mean of 20000 draws), last step",
                     float(predicted_path[-1]), float(means[-1]), float(abs(predicted_path[-1] - means[-1])),
                     z < 5.0, note=f"worst step {z:.2f} standard errors off; stable for eta < "
                     f"1/(x^2 + sigma^2) = {cf.noisy_scalar_max_stable_eta(x, sigma):.4g}; sample 3(c)'s "
                     f"2/(x^2 + sigma^2) = {cf.noisy_scalar_max_stable_eta(x, sigma, half=True):.4g} "
                     "assumes a 1/2 in the loss"))
    out.append(compare("noise: lim E[w_t] = x y / (x^2 + sigma^2) = 1-row ridge with lambda = sigma^2",
                       cf.noisy_scalar_limit(x, yy, sigma),
                       float(cf.ridge_primal(np.array([[x]]), np.array([yy]), sigma**2)[0]), 1e-12,
                       method="closed form"))
    return out


def ridge_claims(rng: np.random.Generator) -> list[Claim]:
    X, y, s = random_problem(rng, n=5, d=7)  # more features than rows: the kernel form's home
    lam = 0.3
    primal = cf.ridge_primal(X, y, lam)
    eta = 0.9 / (max(s) ** 2 + lam)
    gd = sim.gd_least_squares(X, y, eta, 3000, ridge=lam)[-1]
    map_estimate = sim.ridge_map(X, y, lam)
    return [
        compare("ridge: kernel form X^T(XX^T + lI)^-1 y = primal (X^TX + lI)^-1 X^T y",
                primal[0], cf.ridge_kernel(X, y, lam)[0], 1e-12, method="closed form",
                extra_ok=np.allclose(primal, cf.ridge_kernel(X, y, lam), atol=1e-12)),
        compare("ridge: MAP (LBFGS on the log posterior, w ~ N(0,I), noise var l) = primal",
                primal[0], map_estimate[0], 1e-9, extra_ok=np.allclose(primal, map_estimate, atol=1e-9)),
        compare("ridge: GD (autograd) on ||Xw - y||^2 + l||w||^2 converges to the ridge solution",
                primal[0], gd[0], 1e-8, extra_ok=np.allclose(primal, gd, atol=1e-8)),
    ]


# ========================================================================== all


def all_claims(seed: int = 0) -> list[Claim]:
    """Every claim on the homework's default instance (s = 3, 0.3) and on seeded random ones."""
    rng = np.random.default_rng(seed)
    claims: list[Claim] = []
    claims += gd_scalar_claims(3.0, 1.0, "s=3")
    s_rand = float(rng.uniform(0.2, 5.0))
    claims += gd_scalar_claims(s_rand, float(rng.normal()) or 1.0, f"s={s_rand:.3g}")
    claims += gd_two_mode_claims(3.0, 0.3, "s=(3, 0.3)")
    claims += gd_least_squares_claims(rng, "random 8x4")
    for beta in (0.1, 0.5):
        claims += momentum_trajectory_claims(rng, beta, "random 8x4")
    claims += momentum_rate_claims(3.0, 0.1, "s=3")
    claims += momentum_rate_claims(float(rng.uniform(0.3, 3.0)), float(rng.uniform(0.05, 0.9)), "random")
    claims += momentum_algebra_claims(rng)
    claims += momentum_optimum_claims(3.0, 0.3, 0.1, "s=(3, 0.3)")
    claims += momentum_iteration_claims(3.0, 0.3, 0.1, "s=(3, 0.3)")
    claims += instance_noise_claims(rng)
    claims += ridge_claims(rng)
    return claims
