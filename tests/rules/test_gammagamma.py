from pathlib import Path

import numpy as np
import pytest

from rules import bgnbd, gammagamma

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def spend():
    d = np.genfromtxt(DATA / "cdnow_customers_summary_with_transactions.csv", delimiter=",",
                      names=True)
    return d["x"], d["t_x"], d["T"], d["zbar"]


def test_fit_reproduces_fader_hardie_2013(spend):
    x, _, _, m = spend
    model = gammagamma.fit(x, m)
    assert model.n == 946
    assert model.p == pytest.approx(6.25, rel=5e-3)
    assert model.q == pytest.approx(3.74, rel=5e-3)
    assert model.gamma == pytest.approx(15.44, rel=5e-3)
    assert model.log_likelihood == pytest.approx(-4055.92, abs=0.1)
    assert gammagamma.log_likelihood((model.p, model.q, model.gamma), x, m) == pytest.approx(
        model.log_likelihood)


def test_expected_spend_shrinks_towards_the_population_mean(spend):
    x, _, _, m = spend
    model = gammagamma.fit(x, m)
    population = model.p * model.gamma / (model.q - 1)
    one = model.expected_spend(1, 100.0)
    many = model.expected_spend(20, 100.0)
    assert population < one < many < 100.0
    assert model.expected_spend(0, 0.0) == pytest.approx(population)


PAPER_BGNBD = bgnbd.BgNbdModel(0.243, 4.414, 0.793, 2.426, log_likelihood=0.0, n=0,
                               converged=True)
PAPER_SPEND = gammagamma.GammaGammaModel(6.25, 3.74, 15.44, log_likelihood=0.0, n=0)


def test_expected_spend_is_the_notes_closed_form():
    # CDNOW customer 1: x = 2, m̄ = 22.35.  E[M] = p(γ + x m̄) / (px + q − 1)
    # = 6.25 × (15.44 + 44.70) / (12.50 + 2.74) = 375.875 / 15.24 = 24.6637...
    assert PAPER_SPEND.expected_spend(2, 22.35) == pytest.approx(375.875 / 15.24)
    # x = 0: the population mean p γ / (q − 1) = 96.5 / 2.74
    assert PAPER_SPEND.expected_spend(0, 0.0) == pytest.approx(96.5 / 2.74)


def test_clv_is_published_purchases_times_spend_and_discounting_lowers_it():
    # E[Y(39) | 2, 30.43, 38.86] = 1.2260 is the paper's figure (independent of our code);
    # CLV over 39 weeks = 1.2260 × 24.6637 = 30.238.
    undiscounted = 1.2260 * 375.875 / 15.24
    clv = PAPER_SPEND.clv(PAPER_BGNBD, 2, 30.43, 38.86, 22.35, horizon=39)
    assert clv == pytest.approx(undiscounted, abs=0.03)
    # One slice, discounted at its end: 39 weeks of a year of 52 at 20 % a year → ÷ 1.2^0.75.
    discounted = PAPER_SPEND.clv(PAPER_BGNBD, 2, 30.43, 38.86, 22.35, horizon=39,
                                 discount_rate=0.2, steps=1, periods_per_year=52)
    assert discounted == pytest.approx(undiscounted / 1.2 ** 0.75, abs=0.03)
    twelve = PAPER_SPEND.clv(PAPER_BGNBD, 2, 30.43, 38.86, 22.35, horizon=39,
                             discount_rate=0.2, periods_per_year=52)
    assert discounted < twelve < clv  # earlier slices are discounted less


def test_too_few_repeat_customers():
    with pytest.raises(ValueError, match="too few"):
        gammagamma.fit([1, 2, 0], [10.0, 12.0, 0.0])


def test_repeat_customers_who_spent_nothing_are_not_counted_as_spenders():
    with pytest.raises(ValueError, match="0 repeat customers with a positive spend < 20"):
        gammagamma.fit([2] * 30, [0.0] * 30)


def test_a_degenerate_fit_is_refused():
    # Every repeat customer spends exactly the same: no heterogeneity for q and γ to
    # describe, so the search runs off along the ridge to q, γ → ∞.
    rng = np.random.default_rng(5)
    frequency = rng.integers(1, 6, 200).astype(float)
    with pytest.raises(gammagamma.DegenerateFitError, match="degenerate fit"):
        gammagamma.fit(frequency, np.full(200, 50.0))


def test_the_analytic_gradient_matches_finite_differences(spend):
    # The fit follows this gradient: a wrong term would stop it short of the optimum.
    x, _, _, m = spend
    keep = (x > 0) & (m > 0)
    x, m = x[keep], m[keep]
    at = np.log([5.0, 3.0, 20.0])  # away from the optimum, where the gradient is not 0
    _, grad = gammagamma._negative_ll_and_gradient(at, x, m)
    step = 1e-6
    for k in range(3):
        up, down = at.copy(), at.copy()
        up[k] += step
        down[k] -= step
        numeric = (gammagamma._negative_ll_and_gradient(up, x, m)[0]
                   - gammagamma._negative_ll_and_gradient(down, x, m)[0]) / (2 * step)
        assert grad[k] == pytest.approx(numeric, rel=1e-5)
    assert np.all(np.abs(grad) > 1.0)


def test_a_failed_gradient_search_falls_back_to_nelder_mead(spend, monkeypatch):
    x, _, _, m = spend
    real = gammagamma.minimize

    def failing_gradient_search(fun, start, *args, method, **kwargs):
        result = real(fun, start, *args, method=method, **kwargs)
        if method == "L-BFGS-B":
            result.success = False
        return result

    monkeypatch.setattr(gammagamma, "minimize", failing_gradient_search)
    model = gammagamma.fit(x, m)
    assert model.p == pytest.approx(6.25, rel=5e-3)
    assert model.log_likelihood == pytest.approx(-4055.92, abs=0.1)


def test_lifetimes_method_name_gives_the_notes_closed_form():
    # GammaGammaFitter's name, same argument order
    assert PAPER_SPEND.conditional_expected_average_profit(2, 22.35) == pytest.approx(
        375.875 / 15.24)
