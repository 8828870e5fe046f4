"""RewardDistribution: exact statistics, property tests, both kinds, mixing."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distrm.distribution import RewardDistribution, default_levels
from distrm.risk import parse_risk

LEVELS = default_levels(19, torch.float64)

values_st = st.lists(
    st.floats(min_value=-5, max_value=5, allow_nan=False, allow_infinity=False), min_size=19, max_size=19
)


def qdist(vals) -> RewardDistribution:
    return RewardDistribution.from_quantiles(torch.tensor(vals, dtype=torch.float64), LEVELS)


def test_default_levels_are_qrm_levels():
    assert torch.allclose(LEVELS, torch.arange(1, 20, dtype=torch.float64) / 20)


def test_mean_matches_numeric_integral_of_quantile_function():
    d = qdist(np.sort(np.random.default_rng(0).normal(size=19)))
    u = torch.linspace(0, 1, 200_001, dtype=torch.float64)[1:-1]
    q = d.quantile(u)
    assert torch.isclose(d.mean(), q.mean(), atol=1e-5)
    assert torch.isclose(d.variance(), q.var(unbiased=False), atol=1e-4)
    for lam in (0.5, 3.0):
        assert torch.isclose(d.exp_utility(lam), (-torch.exp(-lam * q)).mean(), rtol=1e-4)
    for alpha in (0.05, 0.1, 0.33):
        assert torch.isclose(d.cvar(alpha), q[u <= alpha].mean(), atol=1e-3)


def test_constant_tails_documented_behaviour():
    d = qdist(np.linspace(0, 1, 19))
    assert d.quantile(0.0).item() == pytest.approx(0.0)
    assert d.quantile(0.01).item() == pytest.approx(0.0)  # constant below tau_1
    assert d.quantile(1.0).item() == pytest.approx(1.0)
    assert d.cvar(0.05).item() == pytest.approx(0.0)  # the lowest 5% sit at q_1
    assert d.quantile(0.5).item() == pytest.approx(0.5)


@settings(max_examples=60, deadline=None)
@given(values_st, st.floats(0.01, 1.0))
def test_properties(vals, alpha):
    d = qdist(vals)
    qs = d.quantile(torch.linspace(0, 1, 101, dtype=torch.float64))
    assert bool((qs[1:] >= qs[:-1] - 1e-12).all()), "quantile function must be monotone"
    m = d.mean()
    assert d.cvar(alpha) <= m + 1e-9
    assert d.variance() >= 0
    # exponential-utility certainty equivalents are ordered by risk aversion and <= mean
    ces = [d.certainty_equivalent(lam) for lam in (0.1, 1.0, 4.0)]
    assert ces[0] <= m + 1e-9 and ces[1] <= ces[0] + 1e-9 and ces[2] <= ces[1] + 1e-9
    assert d.quantile(0.05) <= m + 1e-9 or d.quantile(0.05) <= d.quantile(0.95)
    # cdf is the inverse of the quantile function at interior levels
    r = d.quantile(0.5)
    assert d.cdf(r) >= 0.5 - 1e-9


@settings(max_examples=40, deadline=None)
@given(st.lists(values_st, min_size=3, max_size=3), st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3))
def test_mean_of_mixture_is_mixture_of_means(comps, w):
    g = torch.tensor(w, dtype=torch.float64)
    g = g / g.sum()
    ds = [qdist(c) for c in comps]
    mixed = RewardDistribution.mix(ds, g)
    assert torch.isclose(mixed.mean(), sum(gi * d.mean() for gi, d in zip(g, ds)), atol=1e-9)


def test_probability_mixture_is_bimodal_quantile_average_is_not():
    lo = qdist(np.full(19, 0.1))
    hi = qdist(np.full(19, 0.9))
    g = torch.tensor([0.5, 0.5], dtype=torch.float64)
    qa = RewardDistribution.mix([lo, hi], g, method="quantile_average")
    pm = RewardDistribution.mix([lo, hi], g, method="probability")
    assert torch.allclose(qa.values, torch.full((19,), 0.5, dtype=torch.float64))
    # probability mixture: half the mass at 0.1, half at 0.9
    assert pm.quantile(0.25).item() == pytest.approx(0.1, abs=1e-6)
    assert pm.quantile(0.75).item() == pytest.approx(0.9, abs=1e-6)
    assert pm.cdf(0.5).item() == pytest.approx(0.5, abs=0.03)


def test_ensemble_kind_statistics_are_member_statistics():
    members = torch.tensor([[1.0, 3.0, 2.0, 6.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    d = RewardDistribution.from_members(members)
    assert torch.allclose(d.mean(), members.mean(-1))
    assert torch.allclose(d.variance(), members.var(-1, unbiased=False))
    assert d.cvar(0.25)[0].item() == pytest.approx(1.0)
    assert d.cvar(0.5)[0].item() == pytest.approx(1.5)
    assert d.cdf(2.5)[0].item() == pytest.approx(0.5)
    lam = 0.7
    assert torch.allclose(d.exp_utility(lam), (-torch.exp(-lam * members)).mean(-1))
    assert torch.allclose(
        d.certainty_equivalent(lam), -torch.log(torch.exp(-lam * members).mean(-1)) / lam
    )


def test_certainty_equivalent_large_lambda_is_finite_and_near_min():
    d = qdist(np.linspace(0, 100, 19))
    ce = d.certainty_equivalent(50.0)
    assert math.isfinite(ce.item()) and 0 <= ce.item() < 1


def test_batched_shapes_and_indexing():
    vals = torch.randn(4, 3, 19).sort(-1).values
    d = RewardDistribution.from_quantiles(vals)
    assert d.mean().shape == (4, 3)
    assert d.quantile(torch.tensor([0.1, 0.9])).shape == (4, 3, 2)
    assert d[1].mean().shape == (3,)
    assert d.cdf(0.0).shape == (4, 3)
    assert d.sample(7, generator=torch.Generator().manual_seed(0)).shape == (4, 3, 7)


def test_risk_by_name_and_parse():
    d = qdist(np.linspace(-1, 1, 19))
    name, params = parse_risk("cvar:alpha=0.25")
    assert name == "cvar" and params == {"alpha": 0.25}
    assert torch.isclose(d.risk(name, **params), d.cvar(0.25))
    with pytest.raises(ValueError, match="unknown risk measure"):
        parse_risk("sharpe")
    with pytest.raises(ValueError, match="key=value"):
        parse_risk("cvar:0.1")


def test_bad_construction_is_clear():
    with pytest.raises(ValueError, match="levels"):
        RewardDistribution(values=torch.zeros(3), levels=torch.tensor([0.5, 0.2, 0.7]))
    with pytest.raises(ValueError, match="columns"):
        RewardDistribution(values=torch.zeros(4), levels=torch.tensor([0.2, 0.5, 0.7]))
