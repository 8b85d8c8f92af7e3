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


def test_clv_is_purchases_times_spend_and_discounting_lowers_it(spend):
    x, t_x, age, m = spend
    g = gammagamma.fit(x, m)
    b = bgnbd.fit(x, t_x, age)
    clv = g.clv(b, x[:5], t_x[:5], age[:5], m[:5], horizon=52)
    expected = b.expected_purchases(52, x[:5], t_x[:5], age[:5]) * g.expected_spend(x[:5], m[:5])
    assert np.allclose(clv, expected)
    discounted = g.clv(b, x[:5], t_x[:5], age[:5], m[:5], horizon=52, discount_rate=0.2,
                       periods_per_year=52)
    assert np.all(discounted < clv) and np.all(discounted > 0.8 * clv)


def test_too_few_repeat_customers():
    with pytest.raises(ValueError, match="too few"):
        gammagamma.fit([1, 2, 0], [10.0, 12.0, 0.0])
