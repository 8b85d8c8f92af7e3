"""The Gamma-Gamma model of spend per transaction (Fader & Hardie 2013, note 025).

A customer's transaction values are Gamma(p, ν) with ν ~ Gamma(q, γ) across customers,
independent of how often they buy. Fitted on repeat customers only (frequency > 0:
the first purchase's value is not used, as in the note), it gives the expected average
transaction value of each customer, and with a BG/NBD model a predicted CLV.

As for BG/NBD, ``fit`` raises :class:`DegenerateFitError` rather than return a fit that did
not converge or ran to the edge of the parameter space (p, q and γ / mean spend outside
``SHAPE_RANGE``), and ``q`` must exceed 1 for the population's mean spend to exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import digamma, gammaln

__all__ = ["MIN_CUSTOMERS", "SHAPE_RANGE", "DegenerateFitError", "GammaGammaModel", "fit",
           "log_likelihood"]

FloatArray = npt.NDArray[np.float64]
MIN_CUSTOMERS = 20
SHAPE_RANGE = (1e-3, 1e4)  # the same reasoning as rules.bgnbd.SHAPE_RANGE


class DegenerateFitError(ValueError):
    """The fit did not converge or ran to the edge of the parameter space; do not use it."""


def _arrays(frequency: Any, monetary_value: Any) -> tuple[FloatArray, FloatArray]:
    x, m = (np.asarray(v, dtype=np.float64) for v in (frequency, monetary_value))
    x, m = np.broadcast_arrays(x, m)
    if np.any(x < 0) or np.any(m < 0):
        raise ValueError("frequency and monetary_value must be non-negative")
    return x, m


def _loglik_terms(params: FloatArray, x: FloatArray, m: FloatArray) -> FloatArray:
    p, q, g = params
    px = p * x
    return np.asarray(gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(g)
                      + (px - 1) * np.log(m) + px * np.log(x) - (px + q) * np.log(g + m * x),
                      dtype=np.float64)


def log_likelihood(params: Any, frequency: Any, monetary_value: Any) -> float:
    """Sample log-likelihood at ``params = (p, q, gamma)`` over repeat customers."""
    x, m = _arrays(frequency, monetary_value)
    keep = (x > 0) & (m > 0)
    return float(_loglik_terms(np.asarray(params, dtype=np.float64), x[keep], m[keep]).sum())


@dataclass(frozen=True)
class GammaGammaModel:
    """Fitted Gamma-Gamma parameters."""

    p: float
    q: float
    gamma: float
    log_likelihood: float
    n: int
    converged: bool = True

    def expected_spend(self, frequency: Any, monetary_value: Any) -> Any:
        """E[M | x, m̄]: a weighted mean of the population and the customer's own average."""
        x, m = _arrays(frequency, monetary_value)
        value = self.p * (self.gamma + x * m) / (self.p * x + self.q - 1)
        return float(value) if np.ndim(frequency) == 0 else value

    # lifetimes' name (GammaGammaFitter), arguments in the same order
    conditional_expected_average_profit = expected_spend

    def clv(self, bgnbd_model: Any, frequency: Any, recency: Any, T: Any, monetary_value: Any,
            horizon: float, discount_rate: float = 0.0, steps: int = 12,
            periods_per_year: float = 365.0) -> Any:
        """Predicted value over ``horizon`` (same unit as ``T``).

        Without discounting: E[purchases in horizon] × expected spend. With an annual
        ``discount_rate``, the horizon is cut into ``steps`` slices, each slice's expected
        purchases discounted at its end (``periods_per_year`` time units per year).
        """
        spend = np.asarray(self.expected_spend(frequency, monetary_value), dtype=np.float64)
        if discount_rate <= 0:
            return bgnbd_model.expected_purchases(horizon, frequency, recency, T) * spend
        total = np.zeros_like(spend)
        previous = np.zeros_like(spend)
        for k in range(1, steps + 1):
            t = horizon * k / steps
            cumulative = np.asarray(bgnbd_model.expected_purchases(t, frequency, recency, T))
            total += (cumulative - previous) / (1 + discount_rate) ** (t / periods_per_year)
            previous = cumulative
        return total * spend


def fit(frequency: Any, monetary_value: Any) -> GammaGammaModel:
    """Maximum-likelihood Gamma-Gamma on the customers with frequency > 0 (others ignored).

    Only customers with a positive mean spend carry information (ln m̄ is in the
    likelihood); raises ``ValueError`` when fewer than ``MIN_CUSTOMERS`` have one and
    :class:`DegenerateFitError` for a fit that cannot be trusted.
    """
    x, m = _arrays(frequency, monetary_value)
    keep = (x > 0) & (m > 0)
    x, m = x[keep].ravel(), m[keep].ravel()
    if len(x) < MIN_CUSTOMERS:
        raise ValueError(f"{len(x)} repeat customers with a positive spend < "
                         f"{MIN_CUSTOMERS}: too few to fit")
    with np.errstate(all="ignore"):  # the search may probe overflowing parameters
        log_params, value, converged = _maximise(x, m)
    p, q, g = (float(v) for v in np.exp(log_params))
    model = GammaGammaModel(p, q, g, -value, len(x), converged)
    problem = _implausible(model, float(np.mean(m)))
    if problem:
        raise DegenerateFitError(problem)
    return model


def _maximise(x: FloatArray, m: FloatArray) -> tuple[FloatArray, float, bool]:
    """(log-parameters, −LL, converged): L-BFGS-B on the analytic gradient, and a
    derivative-free search where that fails."""
    start = np.log([1.0, 1.0, max(float(np.mean(m)), 1e-3)])
    # A finite-difference or derivative-free search cost ~6 s at 100 k repeat buyers
    # (thousands of likelihood evaluations); the gradient needs a few dozen.
    result = minimize(_negative_ll_and_gradient, start, args=(x, m), jac=True,
                      method="L-BFGS-B", options={"maxiter": 500, "gtol": 1e-7})
    if result.success and np.isfinite(result.fun):
        return result.x, float(result.fun), True
    fallback = minimize(lambda log_params: _negative_ll_and_gradient(log_params, x, m)[0],
                        result.x if np.all(np.isfinite(result.x)) else start,
                        method="Nelder-Mead",
                        options={"xatol": 1e-9, "fatol": 1e-9, "maxiter": 6000})
    return fallback.x, float(fallback.fun), bool(fallback.success)


def _negative_ll_and_gradient(log_params: FloatArray, x: FloatArray, m: FloatArray
                              ) -> tuple[float, FloatArray]:
    """−LL and its gradient in log-parameters (analytic: see ``_loglik_terms``)."""
    p, q, g = np.exp(log_params)
    value = -float(_loglik_terms(np.array([p, q, g]), x, m).sum())
    if not np.isfinite(value):
        return 1e300, np.zeros(3)
    px = p * x
    spent = np.log(g + m * x)
    shared = digamma(px + q)
    d_p = x * (shared - digamma(px) + np.log(m) + np.log(x) - spent)
    d_q = shared - digamma(q) + np.log(g) - spent
    d_g = q / g - (px + q) / (g + m * x)
    grad = np.array([d_p.sum() * p, d_q.sum() * q, d_g.sum() * g])
    return value, -grad


def _implausible(model: GammaGammaModel, mean_spend: float) -> str | None:
    """Why ``model`` cannot be used, or None."""
    shown = f"p = {model.p:.4g}, q = {model.q:.4g}, gamma = {model.gamma:.4g}"
    values = (model.p, model.q, model.gamma, model.log_likelihood)
    if not model.converged or not np.all(np.isfinite(values)):
        return f"degenerate fit: the likelihood search did not converge ({shown})"
    low, high = SHAPE_RANGE
    relative = (model.p, model.q, model.gamma / max(mean_spend, 1e-9))
    if not all(low <= value <= high for value in relative):
        return (f"degenerate fit: {shown} (gamma / mean spend = {relative[2]:.4g}) outside "
                f"[{low:g}, {high:g}]")
    if model.q <= 1:
        return f"degenerate fit: {shown}; q <= 1 leaves the mean spend undefined"
    return None
