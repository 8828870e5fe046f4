"""Randomized PIT calibration for discrete ratings (issue 18, item 3): exact answers on
synthetic data where the true rating distribution is known."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import kstest, wasserstein_distance

from distrm.distribution import RewardDistribution
from distrm.eval.calibration import MultiRaterItems, format_table, grouped_metrics
from distrm.eval.metrics import (
    calibration_metrics,
    cdf_bounds,
    expected_pit_cdf,
    pit_summary,
    randomized_pit,
    rater_entropy,
    uniform_w1,
)

VALUES = np.array([0.0, 0.5, 1.0])  # DICES-like: three rating values on the [0, 1] scale


def members(counts: np.ndarray) -> RewardDistribution:
    """Exact discrete distributions on VALUES as ensembles: counts [n, 3], equal row sums."""
    rows = [np.repeat(VALUES, c) for c in counts]
    return RewardDistribution.from_members(torch.tensor(np.stack(rows), dtype=torch.float64))


def near_discrete_quantiles(p: np.ndarray, delta: float = 1e-9) -> RewardDistribution:
    """Quantile-kind distributions that are discrete on VALUES up to mass 2*delta: the
    constant tails are the point masses at 0 and 1, a flat stretch the one at 0.5."""
    vals, lvs = [], []
    for p0, p1, _ in p:
        lvs.append([p0, p0 + delta, p0 + p1, p0 + p1 + delta])
        vals.append([0.0, 0.5, 0.5, 1.0])
    # one level grid per distribution: evaluate one at a time and stack the bounds
    return [RewardDistribution.from_quantiles(torch.tensor([v], dtype=torch.float64), torch.tensor(lv, dtype=torch.float64))
            for v, lv in zip(vals, lvs)]  # fmt: skip


def draw(counts: np.ndarray, n_raters: int, rng: np.random.Generator) -> list[list[float]]:
    p = counts / counts.sum(1, keepdims=True)
    return [rng.choice(VALUES, size=n_raters, p=pi).tolist() for pi in p]


def random_counts(n: int, rng: np.random.Generator, total: int = 100) -> np.ndarray:
    p = rng.dirichlet([1.0, 1.0, 1.0], size=n)
    c = np.floor(p * total).astype(int)
    c[:, 1] += total - c.sum(1)  # rows sum to total
    return c


# ------------------------------------------------------------------------ F(y-), F(y)
def test_cdf_bounds_ensemble_and_flat_tails_exact():
    d = members(np.array([[2, 5, 3]]))
    lo, hi = cdf_bounds(d, [[0.0, 0.5, 1.0, 0.25, -1.0, 2.0]])
    assert lo[0] == pytest.approx([0.0, 0.2, 0.7, 0.2, 0.0, 1.0], abs=1e-15)
    assert hi[0] == pytest.approx([0.2, 0.7, 1.0, 0.2, 0.0, 1.0], abs=1e-15)
    # quantile kind, levels 0.2, 0.4, 0.7, values 0, 0.5, 0.5: mass 0.2 AT 0 (lower tail),
    # 0.2 spread linearly over (0, 0.5), 0.6 AT 0.5 (flat stretch + upper tail)
    q = RewardDistribution.from_quantiles(torch.tensor([[0.0, 0.5, 0.5]], dtype=torch.float64), [0.2, 0.4, 0.7])
    lo, hi = cdf_bounds(q, [[0.0, 0.25, 0.5, 1.0, -1.0]])
    assert lo[0] == pytest.approx([0.0, 0.3, 0.4, 1.0, 0.0], abs=1e-12)
    assert hi[0] == pytest.approx([0.2, 0.3, 1.0, 1.0, 0.0], abs=1e-12)
    # F(y) is RewardDistribution.cdf; F(y-) its limit from below
    for y in (0.0, 0.25, 0.5):
        assert hi[0][[0.0, 0.25, 0.5].index(y)] == pytest.approx(float(q.cdf(y)[0]), abs=1e-12)
        assert lo[0][[0.0, 0.25, 0.5].index(y)] == pytest.approx(float(q.cdf(y - 1e-9)[0]), abs=1e-8)


def test_cdf_bounds_batch_matches_one_at_a_time_and_ragged_raters():
    rng = np.random.default_rng(3)
    c = random_counts(300, rng)
    raters = [rng.choice(VALUES, size=k).tolist() for k in rng.integers(1, 9, size=300)]
    lo, hi = cdf_bounds(members(c), raters)  # several chunks, ragged rows
    for i in (0, 151, 299):
        l1, h1 = cdf_bounds(members(c[i : i + 1]), [raters[i]])
        assert lo[i] == pytest.approx(l1[0]) and hi[i] == pytest.approx(h1[0])
        assert len(lo[i]) == len(raters[i])
    with pytest.raises(ValueError):
        cdf_bounds(members(c[:2]), [[0.0]])


# ------------------------------------------------------------------------ uniform when right
def test_randomized_pit_uniform_when_prediction_is_the_true_discrete_distribution():
    """5,000 (item, rater) pairs, 3-valued ratings drawn from each item's own distribution,
    prediction = that distribution: KS p > 0.05 (seeded), and for most seeds."""
    rng = np.random.default_rng(0)
    c = random_counts(500, rng)
    raters = draw(c, 10, rng)
    d = members(c)
    z = randomized_pit(d, raters, seed=0)
    assert len(z) == 5000 and z.min() >= 0 and z.max() <= 1
    s = pit_summary(z)
    assert s["pit_ks_p"] > 0.05 and s["pit_ks"] < 0.02
    assert s["pit_w1"] < 0.01 and s["pit_chi2_p"] > 0.01
    for k, cov in s["pit_coverage"].items():
        assert cov == pytest.approx(float(k), abs=0.03)
    # over 20 seeds of (ratings, V) a 5% test rejects rarely
    passed = 0
    for seed in range(20):
        r2 = draw(c, 10, np.random.default_rng(100 + seed))
        passed += kstest(randomized_pit(d, r2, seed=seed), "uniform").pvalue > 0.05
    assert passed >= 16
    # ties: the NON-randomized F(y) of the same pairs is far from uniform (three values)
    _, hi = cdf_bounds(d, raters)
    assert kstest(np.concatenate(hi), "uniform").pvalue < 1e-6


def test_randomized_pit_uniform_for_quantile_kind_with_flat_tails():
    """The same with a quantile-function prediction whose point masses are its constant
    tails and a flat stretch (the QRM's representation)."""
    rng = np.random.default_rng(1)
    p = rng.dirichlet([2.0, 2.0, 2.0], size=250)
    p = np.clip(p, 0.02, None)
    p /= p.sum(1, keepdims=True)
    dists = near_discrete_quantiles(p)
    raters = [rng.choice(VALUES, size=20, p=pi).tolist() for pi in p]
    z = np.concatenate([randomized_pit(d, [r], seed=i) for i, (d, r) in enumerate(zip(dists, raters))])
    assert len(z) == 5000
    assert kstest(z, "uniform").pvalue > 0.05


def test_expected_pit_histogram_is_exactly_flat_for_exact_proportions():
    """Raters exactly in the predicted proportions: the non-randomized PIT CDF is u."""
    c = np.array([[2, 5, 3], [1, 1, 8], [4, 4, 2]])
    raters = [np.repeat(VALUES, ci).tolist() for ci in c]
    m = calibration_metrics(members(c), raters)["summary"]
    assert m["pit_hist_expected"] == pytest.approx([0.1] * 10, abs=1e-12)
    assert m["pit_coverage_expected"] == pytest.approx({"0.5": 0.5, "0.8": 0.8, "0.9": 0.9}, abs=1e-12)
    lo, hi = cdf_bounds(members(c), raters)
    u = np.linspace(0, 1, 101)
    assert expected_pit_cdf(np.concatenate(lo), np.concatenate(hi), u) == pytest.approx(u, abs=1e-12)


# ------------------------------------------------------------------------ wrong predictions
def test_overconfident_prediction_gives_u_shape_and_low_central_coverage():
    """Raters p = (.25, .5, .25) on (0, .5, 1); prediction (.05, .9, .05): y=0 -> Z ~ U(0, .05),
    y=.5 -> U(.05, .95), y=1 -> U(.95, 1). Expected 50% coverage: .5 * .5 / .9."""
    n = 500
    truth = np.tile([25, 50, 25], (n, 1))
    pred = np.tile([5, 90, 5], (n, 1))
    raters = draw(truth, 10, np.random.default_rng(2))
    m = calibration_metrics(members(pred), raters, seed=0)["summary"]
    h = np.asarray(m["pit_hist"])
    assert h[0] > 2 * h[4] and h[-1] > 2 * h[5]  # U shape
    assert m["pit_coverage"]["0.5"] < 0.35 and m["pit_coverage"]["0.9"] < 0.7
    assert m["pit_ks_p"] < 1e-6 and m["pit_hist_w"] > 0.3
    # exact expectation for exact proportions
    exact = calibration_metrics(members(pred[:1]), [np.repeat(VALUES, [25, 50, 25]).tolist()])["summary"]
    assert exact["pit_coverage_expected"]["0.5"] == pytest.approx(0.5 * 0.5 / 0.9, abs=1e-12)
    assert exact["pit_hist_expected"][0] == pytest.approx(0.25 + 0.5 * 0.05 / 0.9, abs=1e-12)
    # interval coverage on the raw ratings is degenerate here: the central 50% interval is the
    # point {0.5}, so it covers exactly the raters at 0.5 (~50%: looks calibrated, is not)
    share_mid = float(np.mean(np.concatenate(raters) == 0.5))
    assert m["coverage"]["0.5"] == pytest.approx(share_mid, abs=1e-12) and abs(share_mid - 0.5) < 0.05


def test_continuous_overconfident_prediction_of_discrete_ratings():
    """A narrow Gaussian (QRM-like) around 0.5 vs ratings on {0, .5, 1}: ratings outside its
    range get PIT exactly 0 or 1 (below q_1 / above q_K), so central coverage collapses."""
    from distrm.eval.calibration import gaussian_quantiles
    from distrm.distribution import default_levels

    n = 400
    d = gaussian_quantiles(torch.full((n,), 0.5), torch.full((n,), 0.05), default_levels(19, torch.float64))
    raters = draw(np.tile([30, 40, 30], (n, 1)), 8, np.random.default_rng(4))
    m = calibration_metrics(d, raters)
    z = m["pit"]
    y = np.concatenate(raters)
    assert np.all(z[y == 0.0] == 0.0) and np.all(z[y == 1.0] == 1.0)
    assert m["summary"]["pit_coverage"]["0.8"] < 0.5


def test_underdispersed_ratings_give_a_hump_and_high_central_coverage():
    """Raters agree more than predicted: p = (.05, .9, .05), prediction (.25, .5, .25):
    y=.5 -> Z ~ U(.25, .75) for 90% of pairs."""
    n = 500
    raters = draw(np.tile([5, 90, 5], (n, 1)), 10, np.random.default_rng(5))
    m = calibration_metrics(members(np.tile([25, 50, 25], (n, 1))), raters, seed=1)["summary"]
    h = np.asarray(m["pit_hist"])
    assert h[4] > 2 * h[0] and h[5] > 2 * h[-1]  # hump
    assert m["pit_coverage"]["0.5"] > 0.8
    assert m["pit_ks_p"] < 1e-6
    exact = calibration_metrics(members(np.array([[25, 50, 25]])), [np.repeat(VALUES, [5, 90, 5]).tolist()])["summary"]
    assert exact["pit_coverage_expected"]["0.5"] == pytest.approx(0.9, abs=1e-12)


def test_biased_prediction_is_far_from_uniform():
    rng = np.random.default_rng(6)
    c = random_counts(500, rng)
    raters = draw(c, 10, rng)
    wrong = c[:, ::-1]  # mirror every item's distribution
    right = calibration_metrics(members(c), raters)["summary"]
    bad = calibration_metrics(members(wrong), raters)["summary"]
    assert bad["pit_ks_p"] < 1e-6 and bad["pit_ks"] > 5 * right["pit_ks"]
    assert bad["pit_w1"] > 3 * right["pit_w1"]
    assert bad["crps"] > right["crps"]  # CRPS kept and agrees


# ------------------------------------------------------------------------ helpers
def test_uniform_w1_exact():
    assert uniform_w1(np.array([0.5])) == pytest.approx(0.25, abs=1e-15)
    assert uniform_w1(np.array([0.0, 1.0])) == pytest.approx(0.25, abs=1e-15)
    assert uniform_w1((np.arange(10) + 0.5) / 10) == pytest.approx(10 * 2 * (0.05**2 / 2), abs=1e-15)
    z = np.random.default_rng(7).random(50)
    assert uniform_w1(z) == pytest.approx(wasserstein_distance(z, (np.arange(200000) + 0.5) / 200000), abs=1e-6)


def test_pit_summary_point_mass_and_seed():
    s = pit_summary(np.full(100, 0.5))
    assert s["pit_ks"] == pytest.approx(0.5) and s["pit_hist"][5] == 1.0
    assert s["pit_hist_w"] == pytest.approx(3.0)  # sqrt(10 * (0.81 + 9 * 0.01))
    assert s["pit_coverage"]["0.5"] == 1.0
    c = np.array([[2, 5, 3]] * 4)
    raters = [[0.0, 0.5, 1.0]] * 4
    assert np.array_equal(randomized_pit(members(c), raters, seed=3), randomized_pit(members(c), raters, seed=3))
    assert not np.array_equal(randomized_pit(members(c), raters, seed=3), randomized_pit(members(c), raters, seed=4))
    assert np.array_equal(calibration_metrics(members(c), raters, seed=3)["pit"], randomized_pit(members(c), raters, seed=3))


def test_rater_entropy_ties_and_units():
    h = rater_entropy([[0.5, 0.5, 0.5], [0.0, 1.0], [0.0, 0.5, 1.0], [0.1 + 0.2, 0.3]])
    assert h == pytest.approx([0.0, np.log(2), np.log(3), 0.0], abs=1e-12)  # 0.1+0.2 == 0.3 after rounding


def test_spread_correlation_with_variance_and_entropy_signs():
    """Two kinds of disagreement rank differently: a 50/50 split on {0, 1} has the larger
    variance (1/4 vs 1/6), an even three-way split on {0, .5, 1} the larger entropy
    (ln 3 vs ln 2). A predicted spread that follows the variance correlates positively
    with the variance and negatively with the entropy."""
    split2 = [0.0, 1.0] * 3  # var 1/4, H ln 2
    split3 = [0.0, 0.5, 1.0] * 2  # var 1/6, H ln 3
    agree = [0.5] * 6  # var 0, H 0
    raters = [split2] * 10 + [split3] * 10 + [agree] * 10
    # prediction by variance: widest for split2, middle for split3 (but ordered split2 > split3)
    width = np.array([0.9] * 10 + [0.6] * 10 + [0.1] * 10) + np.linspace(0, 1e-3, 30)
    mid = torch.full((30,), 0.5, dtype=torch.float64)
    lv = torch.tensor([0.1, 0.9], dtype=torch.float64)
    d = RewardDistribution.from_quantiles(torch.stack([mid - torch.tensor(width) / 2, mid + torch.tensor(width) / 2], -1), lv)
    s = calibration_metrics(d, raters)["summary"]
    assert s["spread_spearman_var"] > 0.8 and s["spread_spearman_var"] == pytest.approx(s["spread_spearman_std"])
    assert s["spread_spearman_entropy"] is not None
    # among the disagreeing items only, variance and entropy rank oppositely
    s2 = calibration_metrics(d[torch.arange(20)], raters[:20])["summary"]
    assert s2["spread_spearman_var"] > 0.8 and s2["spread_spearman_entropy"] < -0.8
    # a prediction that follows the entropy: the signs flip
    d3 = RewardDistribution.from_quantiles(
        torch.stack([mid[:20] - torch.tensor(width[:20][::-1].copy()) / 2, mid[:20] + torch.tensor(width[:20][::-1].copy()) / 2], -1), lv
    )
    s3 = calibration_metrics(d3, raters[:20])["summary"]
    assert s3["spread_spearman_entropy"] > 0.8 and s3["spread_spearman_var"] < -0.8


# ------------------------------------------------------------------------ table, JSON, report
def test_grouped_metrics_table_json_and_report(tmp_path):
    from distrm.eval import common
    from distrm.eval.report import build_report, calibration_section

    rng = np.random.default_rng(8)
    c = random_counts(40, rng)
    raters = draw(c, 6, rng)
    items = MultiRaterItems(["p"] * 40, [f"r{i}" for i in range(40)], ["safe"] * 20 + ["harm"] * 20, raters, ["dices-990"] * 40)
    cal = grouped_metrics(members(c), items)
    g = cal["dices-990/safe"]
    for k in ("pit_ks", "pit_w1", "pit_chi2", "pit_hist_w", "pit_hist", "pit_coverage", "spread_spearman_var", "spread_spearman_entropy", "crps"):
        assert k in g
    assert g["n_pit"] == sum(len(r) for r in raters[:20])
    assert "rater_entropy" in g["per_item"]
    table = format_table({"m": cal})
    assert "PIT_KS" in table and "pcov80" in table and "rho_H" in table and len(table.splitlines()) == 3
    j = common.write_json(tmp_path / "cal.json", {"kind": "calibration", "results": {"m": cal}, "metrics_note": "x", "scale": "y"})
    json.loads(j.read_text())
    html = build_report([j])
    assert "Randomized PIT histograms" in html and "PIT cov 80" in html
    # JSON written before the PIT existed still renders (n/a cells, no histogram)
    old = {k: v for k, v in g.items() if not k.startswith("pit_") and k not in ("n_pit", "spread_spearman_entropy", "spread_spearman_var")}
    sec = calibration_section({"results": {"m": {"dices-990/safe": old}}})
    assert "n/a" in sec and "Randomized PIT histograms" not in sec
    assert "n/a" in format_table({"m": {"dices-990/safe": old}})


def test_expected_histogram_matches_randomized_at_bin_edges():
    """Degenerate PIT values ON bin edges (0, 0.5, 1: a continuous prediction at its median,
    ratings outside its range) fall in the same bins in both histograms."""
    from distrm.distribution import default_levels
    from distrm.eval.calibration import gaussian_quantiles

    n = 300
    d = gaussian_quantiles(torch.full((n,), 0.5), torch.full((n,), 0.1), default_levels(19, torch.float64))
    raters = draw(np.tile([30, 40, 30], (n, 1)), 5, np.random.default_rng(9))  # PIT exactly 0, 0.5 or 1
    m = calibration_metrics(d, raters)["summary"]
    assert m["pit_hist_expected"] == pytest.approx(m["pit_hist"], abs=1e-12)
    assert m["pit_coverage_expected"] == pytest.approx(m["pit_coverage"], abs=1e-12)
    # with atoms: the mean of many randomized histograms converges to the expected one
    c = random_counts(50, np.random.default_rng(10), total=10)
    r = draw(c, 4, np.random.default_rng(11))
    hs = [calibration_metrics(members(c), r, seed=s)["summary"]["pit_hist"] for s in range(200)]
    e = calibration_metrics(members(c), r)["summary"]["pit_hist_expected"]
    assert np.mean(hs, 0) == pytest.approx(e, abs=0.01)
