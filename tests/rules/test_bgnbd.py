from pathlib import Path

import numpy as np
import pytest

from rules import bgnbd

DATA = Path(__file__).resolve().parents[1] / "data"
PAPER = bgnbd.BgNbdModel(0.243, 4.414, 0.793, 2.426, log_likelihood=0.0, n=0, converged=True)


@pytest.fixture(scope="module")
def cdnow():
    d = np.genfromtxt(DATA / "cdnow_customers_summary.csv", delimiter=",", names=True)
    return d["frequency"], d["recency"], d["T"]


def test_fit_reproduces_fader_hardie_lee_2005(cdnow):
    model = bgnbd.fit(*cdnow)
    assert model.n == 2_357 and model.converged
    for got, published in zip((model.r, model.alpha, model.a, model.b),
                              (0.243, 4.414, 0.793, 2.426), strict=True):
        assert got == pytest.approx(published, rel=5e-3)
    assert model.log_likelihood == pytest.approx(-9582.4, abs=0.1)


def test_fitted_model_gives_the_papers_derived_quantities(cdnow):
    # Row 1 of the CDNOW summary (x = 2, t_x = 30.43, T = 38.86), with our own fit rather
    # than the rounded published parameters: P(alive) and E[Y(39)] of the paper.
    model = bgnbd.fit(*cdnow)
    assert (cdnow[0][0], cdnow[1][0], cdnow[2][0]) == (2, 30.43, 38.86)
    assert model.p_alive(2, 30.43, 38.86) == pytest.approx(0.7266, abs=1e-3)
    assert model.expected_purchases(39, 2, 30.43, 38.86) == pytest.approx(1.2260, abs=1e-3)


def test_a_degenerate_fit_is_refused():
    # 100 buyers who all bought yesterday, 30 of them also 40 days before: the likelihood
    # has no interior maximum; the search "converges" to r ≈ 1e7, b ≈ 5e-4, under which
    # every repeat buyer is dead the day after buying and E[Y] is NaN.
    x = np.array([0.0] * 70 + [1.0] * 30)
    t_x = np.array([0.0] * 70 + [39.0] * 30)
    age = np.array([1.0] * 70 + [40.0] * 30)
    with pytest.raises(bgnbd.DegenerateFitError, match="outside"):
        bgnbd.fit(x, t_x, age)


def test_log_likelihood_at_the_rounded_paper_values(cdnow):
    assert bgnbd.log_likelihood((0.243, 4.414, 0.793, 2.426), *cdnow) == pytest.approx(
        -9582.43, abs=0.01)


def test_derived_quantities_for_the_first_cdnow_customer():
    assert PAPER.p_alive(2, 30.43, 38.86) == pytest.approx(0.7266, abs=1e-3)
    assert PAPER.expected_purchases(39, 2, 30.43, 38.86) == pytest.approx(1.2260, abs=1e-3)
    assert PAPER.expected_purchases_new(39) == pytest.approx(1.1967, abs=1e-3)
    assert PAPER.expected_purchases_new(78) == pytest.approx(1.8605, abs=1e-3)


def test_no_repeat_means_alive_and_vectorised_matches_scalar(cdnow):
    x, t_x, age = (v[:50] for v in cdnow)
    vector = PAPER.p_alive(x, t_x, age)
    scalars = [PAPER.p_alive(float(a), float(b), float(c)) for a, b, c in zip(x, t_x, age,
                                                                             strict=True)]
    assert np.allclose(vector, scalars)
    assert PAPER.p_alive(0, 0, 30) == 1.0
    assert PAPER.p_alive(5, 5, 38) < PAPER.p_alive(5, 37, 38), "a long silence lowers P(alive)"


@pytest.mark.parametrize(
    ("args", "message"),
    [(([-1], [0], [1]), "non-negative"), (([1.5], [1], [2]), "whole number"),
     (([1], [3], [2]), "cannot exceed"), (([0], [1], [2]), "recency must be 0")],
)
def test_bad_input_is_explained(args, message):
    with pytest.raises(ValueError, match=message):
        bgnbd.fit(*args)


def test_too_few_customers_is_a_distinct_error():
    with pytest.raises(bgnbd.InsufficientDataError):
        bgnbd.fit([1] * 10, [1] * 10, [2] * 10)


def test_recovers_parameters_from_simulated_customers():
    rng = np.random.default_rng(3)
    n, horizon = 6_000, 52.0
    lam = rng.gamma(0.5, 1 / 5.0, n)   # r = 0.5, alpha = 5
    p = rng.beta(1.0, 3.0, n)          # a = 1, b = 3
    x = np.zeros(n)
    t_x = np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > horizon:
                break
            x[i] += 1
            t_x[i] = t
            if rng.random() < p[i]:
                break
    model = bgnbd.fit(x, t_x, np.full(n, horizon))
    assert model.r == pytest.approx(0.5, rel=0.2) and model.alpha == pytest.approx(5, rel=0.25)
    assert model.a / (model.a + model.b) == pytest.approx(0.25, rel=0.25)


def test_a_fit_that_did_not_converge_is_refused(cdnow, monkeypatch):
    real = bgnbd.minimize

    def stopped_early(*args, **kwargs):
        result = real(*args, **kwargs)
        result.success = False  # as when maxiter runs out in both searches
        return result

    monkeypatch.setattr(bgnbd, "minimize", stopped_early)
    with pytest.raises(bgnbd.DegenerateFitError, match="did not converge"):
        bgnbd.fit(*cdnow)


def test_lifetimes_method_names_give_the_papers_values():
    # BetaGeoFitter's names, same argument order: the customer of the paper's Figure 4
    assert PAPER.conditional_probability_alive(2, 30.43, 38.86) == pytest.approx(0.7266, abs=1e-3)
    assert PAPER.conditional_expected_number_of_purchases_up_to_time(
        39, 2, 30.43, 38.86) == pytest.approx(1.2260, abs=1e-3)
