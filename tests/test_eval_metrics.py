"""Calibration metrics against exact known answers and brute-force integrals."""

import numpy as np
import pytest
import torch
from scipy.stats import norm, wasserstein_distance

from distrm.distribution import RewardDistribution, default_levels
from distrm.eval.calibration import GaussianRidgeBaseline, gaussian_quantiles, select_attribute
from distrm.eval.metrics import calibration_metrics, coverage, crps, pinball, predicted_spread, wasserstein1

LV = default_levels(19, torch.float64)


def point_mass(c: float, n: int = 1) -> RewardDistribution:
    return RewardDistribution.from_quantiles(torch.full((n, 19), c, dtype=torch.float64), LV)


def test_crps_point_mass_is_absolute_error():
    d = point_mass(0.3, 2)
    got = crps(d, [[0.5], [0.1, 0.9]])
    assert got == pytest.approx([0.2, (0.2 + 0.6) / 2], abs=1e-12)


def test_crps_uniform_closed_form():
    lv = torch.linspace(0, 1, 2001, dtype=torch.float64)[1:-1]
    u = RewardDistribution.from_quantiles(lv[None].clone(), lv)
    for y in (0.0, 0.3, 0.77, 1.4):
        # CRPS(U(0,1), y) = y^2 - y + 1/3 inside [0, 1]; outside: |y - 1/2| ... use the general form
        exact = y * y - y + 1 / 3 if 0 <= y <= 1 else abs(y - 0.5) - 1 / 6 + 0 * y
        # the constant tails of width 1/2001 make a tiny difference only
        assert crps(u, [[y]])[0] == pytest.approx(exact, abs=2e-3)


def test_crps_ensemble_matches_energy_form():
    m = torch.tensor([[0.0, 1.0, 4.0]], dtype=torch.float64)
    d = RewardDistribution.from_members(m)
    y = 1.7
    x = m[0].numpy()
    energy = np.mean(np.abs(x - y)) - 0.5 * np.mean(np.abs(x[:, None] - x[None, :]))
    assert crps(d, [[y]])[0] == pytest.approx(energy, abs=1e-12)


def test_crps_equals_brute_force_integral_for_random_quantiles():
    g = torch.Generator().manual_seed(0)
    vals = torch.randn(4, 19, generator=g, dtype=torch.float64).sort(-1).values
    d = RewardDistribution.from_quantiles(vals, LV)
    raters = [[0.1, -0.5, 2.0], [0.0], [1.0, 1.0], [-3.0, 0.4]]
    xs = np.linspace(-8, 8, 200001)
    F = d.cdf_at(torch.as_tensor(xs)[None].expand(4, -1).contiguous()).numpy()
    for i, r in enumerate(raters):
        brute = np.mean([np.trapezoid((F[i] - (xs >= y)) ** 2, xs) for y in r])
        assert crps(d[i : i + 1], [r])[0] == pytest.approx(brute, abs=1e-4)


def test_w1_shift_and_scipy():
    d = point_mass(0.2)
    assert wasserstein1(d, [[0.5]])[0] == pytest.approx(0.3, abs=1e-12)
    members = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    ens = RewardDistribution.from_members(members)
    assert wasserstein1(ens, [[0.5, 1.5, 2.5]])[0] == pytest.approx(0.5, abs=1e-12)
    assert wasserstein1(ens, [[0.0, 3.0]])[0] == pytest.approx(wasserstein_distance([0, 1, 2], [0, 3]), abs=1e-12)


def test_w1_piecewise_linear_vs_fine_samples():
    vals = torch.as_tensor(np.linspace(-1, 3, 19)[None] ** 3 / 10)
    d = RewardDistribution.from_quantiles(vals, LV)
    r = [0.1, 0.5, -0.2, 1.3]
    u = (np.arange(400000) + 0.5) / 400000
    q = d.quantile(torch.as_tensor(u)).numpy()[0]
    assert wasserstein1(d, [r])[0] == pytest.approx(wasserstein_distance(q, r), abs=1e-5)
    # shifting prediction and raters together changes nothing
    d2 = RewardDistribution.from_quantiles(vals + 5, LV)
    assert wasserstein1(d2, [[v + 5 for v in r]])[0] == pytest.approx(wasserstein1(d, [r])[0], abs=1e-10)


def test_pinball_point_mass():
    d = point_mass(0.0)
    # rater at 1: mean over tau of tau * 1 = 0.5 for symmetric levels
    assert pinball(d, [[1.0]])[0] == pytest.approx(0.5, abs=1e-12)
    assert pinball(d, [[-2.0]])[0] == pytest.approx(1.0, abs=1e-12)


def test_coverage_of_calibrated_model_is_nominal():
    rng = np.random.default_rng(0)
    n = 3000
    mu, sd = rng.normal(size=n), rng.uniform(0.1, 1.0, size=n)
    d = gaussian_quantiles(torch.as_tensor(mu), torch.as_tensor(sd), LV)
    raters = [list(rng.normal(m, s, size=20)) for m, s in zip(mu, sd)]
    for p in (0.5, 0.8, 0.9):
        assert coverage(d, raters, p).mean() == pytest.approx(p, abs=0.015)
    # an overconfident model (half the width) under-covers
    d_narrow = gaussian_quantiles(torch.as_tensor(mu), torch.as_tensor(sd / 2), LV)
    assert coverage(d_narrow, raters, 0.8).mean() < 0.6
    m = calibration_metrics(d, raters)["summary"]
    assert m["spread_spearman_std"] > 0.8  # spread tracks the raters' spread
    m_const = calibration_metrics(gaussian_quantiles(torch.as_tensor(mu), torch.full((n,), 0.5), LV), raters)["summary"]
    assert m_const["spread_spearman_std"] is None  # constant spread: undefined, not 0
    assert m["crps"] < m_const["crps"]


def test_predicted_spread_gaussian():
    d = gaussian_quantiles(torch.zeros(1), torch.ones(1), LV)
    assert predicted_spread(d)[0] == pytest.approx(2 * norm.ppf(0.9), abs=1e-9)


def test_gaussian_ridge_baseline_recovers_noise():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 5))
    w = rng.normal(size=5)
    idx = np.repeat(np.arange(400), 3)
    att = np.zeros_like(idx)
    y = X[idx] @ w + rng.normal(0, 0.3, size=len(idx))
    b = GaussianRidgeBaseline().fit(torch.as_tensor(X), idx, att, y, ["a"])
    assert b.sigma_[0] == pytest.approx(0.3, abs=0.03)
    d = b.predict(torch.as_tensor(X[:4]), ["a"] * 4, LV)
    assert d.values.shape == (4, 19)
    assert torch.allclose(d.mean(), torch.as_tensor(X[:4] @ w), atol=0.1)


def test_select_attribute_drops_unknown():
    vals = torch.arange(2 * 3 * 19, dtype=torch.float64).reshape(2, 3, 19)
    attrs = RewardDistribution.from_quantiles(vals, LV)
    d, keep = select_attribute(attrs, ["a", "b", "c"], ["c", "zzz"])
    assert keep.tolist() == [True, False]
    assert torch.equal(d.values[0], vals[0, 2])


def test_metrics_reject_empty_raters():
    with pytest.raises(ValueError):
        crps(point_mass(0.0), [[]])


def test_multi_rater_items_count_what_is_left_out():
    from distrm.data.records import RatedResponse
    from distrm.eval.calibration import multi_rater_items

    recs = [
        RatedResponse("p", "r1", {"a": [0.1, 0.5, 0.9], "b": 0.4}, "s", "1"),  # b: one rater
        RatedResponse("p", "r2", {"a": [0.2, float("nan")]}, "s", "2"),  # one real rater after NaN
        RatedResponse("p", "r3", {"a": [0.0, 1.0]}, "s", "3"),
    ]
    items, skipped = multi_rater_items(recs, min_raters=2)
    assert items.responses == ["r1", "r3"] and items.raters[1] == [0.0, 1.0]
    assert skipped == {"fewer than 2 raters": 2}


def test_calibration_unknown_set_and_no_items_are_clear_errors(tmp_path, capsys):
    from distrm.cli import main
    from distrm.eval.calibration import load_items

    with pytest.raises(FileNotFoundError, match="not a dataset name"):
        load_items(["dices-9999"], None, 0.2, log=lambda s: None)
    rc = main(["eval", "calibration", "--model", str(tmp_path / "no-model"), "--output-dir", str(tmp_path / "o")])
    assert rc != 0 and "no-model" in capsys.readouterr().err
