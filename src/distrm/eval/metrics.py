"""Exact distributional metrics: a predicted distribution vs the empirical distribution of
an item's raters.

A prediction is one row of a :class:`~distrm.distribution.RewardDistribution`: its quantile
function Q(u) is piecewise linear between levels with constant tails (kind="quantile") or a
step function (kind="ensemble"). The raters' scores y_1..y_n define the empirical
distribution G. Every metric below is an exact integral over u in (0, 1), not a sampled
or grid approximation, because a grid would bias the comparison between a 19-level QRM
and a 5-member ensemble differently.

* pinball: mean over the model's levels tau and the raters of rho_tau(y - Q(tau)).
* CRPS: mean over raters of CRPS(F, y_i) = 2 * int_0^1 rho_u(y_i - Q(u)) du (the
  quantile-score representation). Averaging over raters makes it the expected score
  against G; it equals int (F - G)^2 dx + int G (1 - G) dx, so it is >= the raters' own
  disagreement and a point mass at the rater mean cannot reach 0 when raters disagree.
* W1: int_0^1 |Q(u) - Q_G(u)| du.
* coverage: share of raters inside the central interval [Q(1/2 - p/2), Q(1/2 + p/2)],
  endpoints included (ratings are discrete, so an endpoint hit counts as covered).

Ratings are discrete (DICES: three values), so interval coverage is degenerate there: a
rater on an endpoint is "covered" however wide or narrow the interval. The randomized
probability integral transform (PIT; Brockwell 2007, Czado, Gneiting & Held 2009) is the
calibration check that stays exact for discrete ratings:

* F(y) = P(R <= y) is :meth:`RewardDistribution.cdf_at` (right-continuous) and
  F(y-) = P(R < y) = lim_{r -> y from below} F(r) is computed exactly as
  1 - P(-R <= -y), the CDF of the reflected distribution (values -Q(1 - u)), so no
  epsilon is involved. ``R`` is the law of Q(U), U ~ U(0, 1), with Q exactly as above;
  for kind="quantile" the constant tails are point masses: mass tau_1 AT q_1 and mass
  1 - tau_K AT q_K (and a flat stretch q_k = q_{k+1} is a mass tau_{k+1} - tau_k). So a
  rating y == q_1 has [F(y-), F(y)] = [0, tau_1], a rating below q_1 has PIT 0, one above
  q_K has PIT 1, and a rating strictly inside a linear stretch has F(y-) = F(y).
* randomized PIT of one (item, rater) pair: Z = F(y-) + V (F(y) - F(y-)), V ~ U(0, 1)
  drawn from ``numpy.random.default_rng(seed)`` in (item, rater) order. If y is drawn
  from F, Z ~ U(0, 1) exactly, whether F is discrete, continuous or mixed. Pooled over
  all (item, rater) pairs of a group.
* distance from uniform of the pooled Z (n values): Kolmogorov-Smirnov
  sup_u |G_n(u) - u| (+ its p-value), the exact 1-Wasserstein distance
  int_0^1 |G_n^{-1}(u) - u| du, and a 10-bin histogram's chi-square
  sum_j (O_j - n/B)^2 / (n/B) (+ p-value on B - 1 d.o.f.) and its scale-free size
  w = sqrt(chi2 / n) = sqrt(B sum_j (p_j - 1/B)^2) (0 for a flat histogram).
* PIT coverage at c: share of Z inside [(1 - c)/2, (1 + c)/2] (nominal: c). An
  overconfident (too narrow) prediction puts Z near 0 and 1 (U-shaped histogram, coverage
  below c); a too wide one puts Z near 1/2 (hump, coverage above c).
* expected PIT histogram (no randomness): bin masses of the non-randomized PIT CDF
  Fbar(u) = mean over pairs of clip((u - F(y-)) / (F(y) - F(y-)), 0, 1) (a step at F(y)
  when F(y-) = F(y)), which is E_V of the randomized PIT's empirical CDF; bins
  [e_j, e_{j+1}) (last one closed) like the randomized histogram's.
* where the prediction is continuous at y (F(y-) = F(y), e.g. a rating strictly inside a
  QRM's linear stretch) Z = F(y) is not randomized at all: a continuous prediction of
  three-valued ratings shows up as spikes in the PIT histogram, which is the correct
  verdict (it puts no mass on the values raters actually give).
* spread correlation: Spearman of the predicted spread q0.9 - q0.1 against the raters'
  std, IQR, variance (same ranks as the std, so the same rho) and Shannon entropy (nats)
  of the raters' empirical distribution over their distinct values.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from distrm.distribution import RewardDistribution, default_levels

COVERAGE_LEVELS = (0.5, 0.8, 0.9)
PIT_BINS = 10
# nominal central-interval levels for reliability curves
RELIABILITY_LEVELS = tuple(np.round(np.arange(0.1, 0.91, 0.1), 2).tolist())


def _segments_np(dist: RewardDistribution) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t0 [S], t1 [S], a [n, S], b [n, S]) of a batch of distributions, float64 numpy."""
    t0, t1, a, b = dist.to(torch.float64)._segments()
    a = a.detach().cpu().numpy().reshape(-1, a.shape[-1])
    b = b.detach().cpu().numpy().reshape(-1, b.shape[-1])
    return t0.cpu().numpy(), t1.cpu().numpy(), a, b


def _quantile_score_integral(t0: np.ndarray, t1: np.ndarray, a: np.ndarray, b: np.ndarray, y: np.ndarray) -> np.ndarray:
    """int_0^1 rho_u(y_j - Q(u)) du for one distribution (segments [S]) and raters y [n] -> [n].

    On each segment Q is linear and nondecreasing; split it where Q crosses y. On each
    piece the integrand (y - Q(u)) (u - 1{y < Q(u)}) is a quadratic in u, which Simpson's
    rule integrates exactly."""
    y = y[:, None]
    h = t1 - t0
    span = b - a
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(span > 0, (y - a) / np.where(span > 0, span, 1.0), np.where(y >= a, 1.0, 0.0))
    uc = t0 + np.clip(frac, 0.0, 1.0) * h  # Q <= y on [t0, uc], Q >= y on [uc, t1]

    def q(u):
        return a + span * np.where(h > 0, (u - t0) / np.where(h > 0, h, 1.0), 0.0)

    def simpson(lo, hi, ind):
        mid = (lo + hi) / 2
        f = lambda u: (y - q(u)) * (u - ind)  # noqa: E731
        return (hi - lo) / 6 * (f(lo) + 4 * f(mid) + f(hi))

    return (simpson(t0, uc, 0.0) + simpson(uc, t1, 1.0)).sum(-1)


def crps(dist: RewardDistribution, raters: Sequence[Sequence[float]]) -> np.ndarray:
    """Exact CRPS per item, averaged over that item's raters. ``dist`` has batch [n]."""
    t0, t1, a, b = _segments_np(dist)
    _check(a, raters)
    return np.array([2 * _quantile_score_integral(t0, t1, a[i], b[i], np.asarray(r, float)).mean() for i, r in enumerate(raters)])


def pinball(dist: RewardDistribution, raters: Sequence[Sequence[float]], levels: torch.Tensor | None = None) -> np.ndarray:
    """Mean pinball loss over ``levels`` (default: the model's own, or 19 for ensembles)."""
    if levels is None:
        levels = dist.levels if dist.levels is not None else default_levels(19, torch.float64)
    lv = torch.as_tensor(levels, dtype=torch.float64)
    q = dist.to(torch.float64).quantile(lv).cpu().numpy().reshape(-1, len(lv))
    _check(q, raters)
    tau = lv.numpy()
    out = []
    for i, r in enumerate(raters):
        d = np.asarray(r, float)[:, None] - q[i][None, :]
        out.append(np.maximum(tau * d, (tau - 1) * d).mean())
    return np.array(out)


def wasserstein1(dist: RewardDistribution, raters: Sequence[Sequence[float]]) -> np.ndarray:
    """Exact W1 between each predicted distribution and its raters' empirical distribution."""
    t0, t1, a, b = _segments_np(dist)
    _check(a, raters)
    knots = np.union1d(t0, t1)
    out = []
    for i, r in enumerate(raters):
        ys = np.sort(np.asarray(r, float))
        n = len(ys)
        grid = np.union1d(knots, np.arange(n + 1) / n)
        lo, hi = grid[:-1], grid[1:]
        keep = hi > lo
        lo, hi = lo[keep], hi[keep]
        # Q_G on (lo, hi]: y_(k) with k = ceil(u n) - 1 evaluated at the interval's midpoint
        g = ys[np.clip(np.ceil((lo + hi) / 2 * n).astype(int) - 1, 0, n - 1)]
        # Q is linear inside each piece; evaluate at interior points (safe at jumps) and
        # extend to the ends
        qa = _q_at(t0, t1, a[i], b[i], lo + (hi - lo) / 4)
        qb = _q_at(t0, t1, a[i], b[i], hi - (hi - lo) / 4)
        slope = (qb - qa) * 2
        dl = qa - slope / 4 - g
        dr = qb + slope / 4 - g
        w = hi - lo
        same = dl * dr >= 0
        s = np.abs(dl) + np.abs(dr)
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = np.where(s > 0, (dl * dl + dr * dr) / (2 * np.where(s > 0, s, 1.0)), 0.0)
        out.append(float(np.sum(w * np.where(same, s / 2, cross))))
    return np.array(out)


def _q_at(t0: np.ndarray, t1: np.ndarray, a: np.ndarray, b: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Q(u) for one distribution at points strictly inside segments."""
    idx = np.clip(np.searchsorted(t1, u, side="left"), 0, len(t1) - 1)
    h = t1[idx] - t0[idx]
    w = np.where(h > 0, (u - t0[idx]) / np.where(h > 0, h, 1.0), 0.0)
    return a[idx] + (b[idx] - a[idx]) * w


def coverage(dist: RewardDistribution, raters: Sequence[Sequence[float]], p: float) -> np.ndarray:
    """Share of each item's raters inside the central ``p`` interval (endpoints included)."""
    if not 0 < p < 1:
        raise ValueError("coverage level p must be in (0, 1)")
    lohi = dist.to(torch.float64).quantile(torch.tensor([0.5 - p / 2, 0.5 + p / 2], dtype=torch.float64))
    lohi = lohi.cpu().numpy().reshape(-1, 2)
    _check(lohi, raters)
    eps = 1e-12
    return np.array(
        [np.mean((np.asarray(r, float) >= lohi[i, 0] - eps) & (np.asarray(r, float) <= lohi[i, 1] + eps)) for i, r in enumerate(raters)]
    )


def predicted_spread(dist: RewardDistribution, lo: float = 0.1, hi: float = 0.9) -> np.ndarray:
    """Q(hi) - Q(lo) per item: the model's own statement of disagreement."""
    q = dist.to(torch.float64).quantile(torch.tensor([lo, hi], dtype=torch.float64)).cpu().numpy().reshape(-1, 2)
    return q[:, 1] - q[:, 0]


def rater_spread(raters: Sequence[Sequence[float]]) -> dict[str, np.ndarray]:
    """Population std, variance, interquartile range and entropy (nats, over distinct
    scores) of each item's raters."""
    std = np.array([np.std(np.asarray(r, float)) for r in raters])
    iqr = np.array([np.subtract(*np.percentile(np.asarray(r, float), [75, 25])) for r in raters])
    return {"std": std, "var": std**2, "iqr": iqr, "entropy": rater_entropy(raters)}


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation; None when either side is constant (undefined)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    # constant up to rounding (e.g. mu + sigma * z with one sigma): undefined
    def const(v: np.ndarray) -> bool:
        return bool(np.ptp(v) <= 1e-9 * max(1.0, float(np.abs(v).max())))

    if len(x) < 3 or const(x) or const(y):
        return None
    return float(spearmanr(x, y).statistic)


def rater_entropy(raters: Sequence[Sequence[float]], decimals: int = 9) -> np.ndarray:
    """Shannon entropy (nats) of each item's raters' empirical distribution over their
    distinct scores (scores equal after rounding to ``decimals`` are one value)."""
    out = []
    for r in raters:
        _, counts = np.unique(np.round(np.asarray(r, float), decimals), return_counts=True)
        p = counts / counts.sum()
        out.append(float(-(p * np.log(p)).sum()) + 0.0)
    return np.array(out)


def _reflect(dist: RewardDistribution) -> RewardDistribution:
    """The distribution of -R: quantile function -Q(1 - u)."""
    if dist.kind == "ensemble":
        return RewardDistribution(values=-dist.values, levels=None, kind="ensemble")
    return RewardDistribution(values=-dist.values.flip(-1), levels=1 - dist.levels.flip(0), kind="quantile")


def cdf_bounds(dist: RewardDistribution, raters: Sequence[Sequence[float]], chunk: int = 256) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(F(y-), F(y)) for every rater y of every item: two lists of arrays, one per item.

    F(y) = P(R <= y) from :meth:`RewardDistribution.cdf_at`; F(y-) = P(R < y) =
    1 - P(-R <= -y) from the reflected distribution's ``cdf_at`` (exact, no epsilon).
    Clipped so 0 <= F(y-) <= F(y) <= 1 (rounding in 1 - tau)."""
    d = dist.to(torch.float64)
    vals = d.values.reshape(-1, d.values.shape[-1])
    _check(vals.detach().cpu().numpy(), raters)
    flat = RewardDistribution(values=vals, levels=d.levels, kind=d.kind)
    neg = _reflect(flat)
    lo_out: list[np.ndarray] = []
    hi_out: list[np.ndarray] = []
    for s in range(0, len(raters), chunk):
        rs = [np.asarray(r, float) for r in raters[s : s + chunk]]
        t = max(len(r) for r in rs)
        y = np.zeros((len(rs), t))
        for i, r in enumerate(rs):
            y[i, : len(r)] = r
        yt = torch.as_tensor(y, dtype=torch.float64, device=vals.device)
        idx = slice(s, s + len(rs))
        hi = flat[idx].cdf_at(yt).cpu().numpy()
        lo = 1.0 - neg[idx].cdf_at(-yt).cpu().numpy()
        lo = np.clip(lo, 0.0, 1.0)
        hi = np.clip(hi, 0.0, 1.0)
        lo = np.minimum(lo, hi)
        for i, r in enumerate(rs):
            lo_out.append(lo[i, : len(r)])
            hi_out.append(hi[i, : len(r)])
    return lo_out, hi_out


def randomized_pit(dist: RewardDistribution, raters: Sequence[Sequence[float]], seed: int = 0) -> np.ndarray:
    """Z = F(y-) + V (F(y) - F(y-)), V ~ U(0, 1) seeded, pooled over all (item, rater)
    pairs in (item, rater) order: U(0, 1) exactly when each y is drawn from its F."""
    lo, hi = cdf_bounds(dist, raters)
    lo_a, hi_a = np.concatenate(lo), np.concatenate(hi)
    v = np.random.default_rng(seed).random(len(lo_a))
    return lo_a + v * (hi_a - lo_a)


def expected_pit_cdf(lo: np.ndarray, hi: np.ndarray, u: np.ndarray, left: bool = False) -> np.ndarray:
    """Non-randomized PIT CDF Fbar(u) = mean_i clip((u - lo_i) / (hi_i - lo_i), 0, 1)
    (a step at lo_i where lo_i == hi_i) at points ``u``: E_V of the randomized PIT's
    empirical CDF (Czado, Gneiting & Held 2009). ``left=True``: the limit from below,
    Fbar(u-) (differs only by the steps AT u)."""
    lo, hi, u = np.asarray(lo, float)[None, :], np.asarray(hi, float)[None, :], np.asarray(u, float)[:, None]
    w = hi - lo
    step = (u > lo) if left else (u >= lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(w > 0, np.clip((u - lo) / np.where(w > 0, w, 1.0), 0.0, 1.0), step.astype(float))
    return phi.mean(-1)


def uniform_w1(z: np.ndarray) -> float:
    """Exact 1-Wasserstein distance between the empirical distribution of ``z`` and U(0, 1):
    int_0^1 |z_(k(u)) - u| du with z_(k) on ((k-1)/n, k/n]."""
    z = np.sort(np.asarray(z, float))
    n = len(z)
    lo = np.arange(n) / n
    hi = np.arange(1, n + 1) / n
    below = (hi - lo) * ((lo + hi) / 2 - z)  # z <= lo: int (u - z)
    above = (hi - lo) * (z - (lo + hi) / 2)  # z >= hi: int (z - u)
    inside = ((z - lo) ** 2 + (hi - z) ** 2) / 2
    return float(np.sum(np.where(z <= lo, below, np.where(z >= hi, above, inside))))


def pit_summary(z: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None, bins: int = PIT_BINS) -> dict:
    """Distance from uniform, histogram and central coverage of pooled PIT values ``z``
    (``lo``/``hi``: the F(y-), F(y) they came from, for the exact expected histogram)."""
    from scipy.stats import chi2 as chi2_dist
    from scipy.stats import kstest

    z = np.asarray(z, float)
    n = len(z)
    if n == 0:
        raise ValueError("no PIT values")
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.histogram(z, bins=edges)[0]
    expected = n / bins
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    ks = kstest(z, "uniform")
    out = {
        "n_pit": int(n),
        "pit_ks": float(ks.statistic),
        "pit_ks_p": float(ks.pvalue),
        "pit_w1": uniform_w1(z),
        "pit_chi2": chi2,
        "pit_chi2_p": float(chi2_dist.sf(chi2, bins - 1)),
        "pit_hist_w": float(np.sqrt(chi2 / n)),
        "pit_hist": (counts / n).tolist(),
        "pit_bins": edges.tolist(),
        "pit_coverage": {
            f"{c:g}": float(np.mean((z >= (1 - c) / 2 - 1e-12) & (z <= (1 + c) / 2 + 1e-12))) for c in COVERAGE_LEVELS
        },
    }
    if lo is not None and hi is not None:
        # same bins as np.histogram: [e_j, e_{j+1}) and the last one closed; coverage closed
        below = expected_pit_cdf(lo, hi, edges, left=True)
        below[-1] = expected_pit_cdf(lo, hi, edges[-1:])[0]
        out["pit_hist_expected"] = np.diff(below).tolist()
        out["pit_coverage_expected"] = {
            f"{c:g}": float(expected_pit_cdf(lo, hi, [(1 + c) / 2])[0] - expected_pit_cdf(lo, hi, [(1 - c) / 2], left=True)[0])
            for c in COVERAGE_LEVELS
        }
    return out


def _check(arr: np.ndarray, raters: Sequence[Sequence[float]]) -> None:
    if arr.shape[0] != len(raters):
        raise ValueError(f"{arr.shape[0]} predictions but {len(raters)} rater lists")
    for i, r in enumerate(raters):
        if len(r) == 0:
            raise ValueError(f"item {i} has no rater scores")


def calibration_metrics(dist: RewardDistribution, raters: Sequence[Sequence[float]], seed: int = 0) -> dict:
    """All metrics for a batch of items: per-item arrays (for plots) and their means, plus
    the pooled randomized PIT values ("pit", (item, rater) order; ``seed`` draws V)."""
    per_item = {
        "pinball": pinball(dist, raters),
        "crps": crps(dist, raters),
        "w1": wasserstein1(dist, raters),
        "pred_spread": predicted_spread(dist),
        "pred_mean": dist.to(torch.float64).mean().cpu().numpy().reshape(-1),
        "rater_mean": np.array([np.mean(r) for r in raters]),
        "n_raters": np.array([len(r) for r in raters]),
    }
    per_item.update({f"rater_{k}": v for k, v in rater_spread(raters).items()})
    for p in RELIABILITY_LEVELS:
        per_item[f"cov_{p:g}"] = coverage(dist, raters, p)
    summary = {k: float(np.mean(per_item[k])) for k in ("pinball", "crps", "w1")}
    summary["mae_mean"] = float(np.mean(np.abs(per_item["pred_mean"] - per_item["rater_mean"])))
    summary["coverage"] = {f"{p:g}": float(np.mean(per_item[f"cov_{p:g}"])) for p in COVERAGE_LEVELS}
    summary["reliability"] = {f"{p:g}": float(np.mean(per_item[f"cov_{p:g}"])) for p in RELIABILITY_LEVELS}
    summary["spread_spearman_std"] = spearman(per_item["pred_spread"], per_item["rater_std"])
    summary["spread_spearman_iqr"] = spearman(per_item["pred_spread"], per_item["rater_iqr"])
    summary["spread_spearman_var"] = spearman(per_item["pred_spread"], per_item["rater_var"])
    summary["spread_spearman_entropy"] = spearman(per_item["pred_spread"], per_item["rater_entropy"])
    summary["n_items"] = len(raters)
    summary["n_ratings"] = int(per_item["n_raters"].sum())
    lo, hi = cdf_bounds(dist, raters)
    lo_a, hi_a = np.concatenate(lo), np.concatenate(hi)
    z = lo_a + np.random.default_rng(seed).random(len(lo_a)) * (hi_a - lo_a)  # == randomized_pit(dist, raters, seed)
    summary.update(pit_summary(z, lo_a, hi_a))
    summary["pit_seed"] = int(seed)
    return {"summary": summary, "per_item": per_item, "pit": z}


# ---------------------------------------------------------------------------- ranking and bootstrap
# Does an uncertainty flag the model's wrong decisions? The AUROC of the uncertainty as a
# detector of wrong decisions (wrong = positive) answers it without a threshold: the chance
# that a random wrong pair is more uncertain than a random right one (a tie counts half), so
# 0.5 is an uncertainty that says nothing about errors, whatever its scale. It is computed
# from ranks (Mann-Whitney U) with bootstrap weights, so 1,000 resamples of thousands of
# pairs are a few array operations, not 1,000 sorts.
BOOTSTRAP_RESAMPLES = 1000
CI_LEVEL = 0.95


def _rank_groups(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels in score order as 0/1 floats, starts of the groups of tied scores; None: no ties)."""
    order = np.argsort(score, kind="stable")
    s = score[order]
    tied = s[1:] == s[:-1]
    return positive[order].astype(float), (np.flatnonzero(np.r_[True, ~tied]) if tied.any() else None)


def _weighted_auroc(pos: np.ndarray, starts: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC under per-item ``weights`` [B, n] (each row a resample's counts),
    items in score order (:func:`_rank_groups`) -> [B]; NaN where a row has one class only."""
    gp = weights * pos
    gn = weights - gp
    if starts is not None:
        gp, gn = np.add.reduceat(gp, starts, axis=1), np.add.reduceat(gn, starts, axis=1)
    below = np.cumsum(gn, axis=1) - gn  # negatives strictly below each score
    n_pos, n_neg = gp.sum(1), gn.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), (gp * (below + 0.5 * gn)).sum(1) / (n_pos * n_neg), np.nan)


def auroc(score: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> float | None:
    """P(score of a random positive > score of a random negative) + P(tie) / 2; None when
    one class is empty (undefined)."""
    s, y = np.asarray(score, float), np.asarray(positive, bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"score {s.shape} and labels {y.shape} must be equal-length 1-d arrays")
    if np.isnan(s).any():
        raise ValueError("NaN score: AUROC undefined")
    v = float(_weighted_auroc(*_rank_groups(s, y), np.ones((1, len(s))))[0])
    return None if np.isnan(v) else v


def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] how often each of n items is drawn in each resample (with replacement)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    return np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n).reshape(n_boot, n)


def percentile_ci(replicates: np.ndarray, level: float = CI_LEVEL) -> list[float] | None:
    """Percentile interval of bootstrap replicates (NaN ones left out); None if none is left."""
    r = np.asarray(replicates, float)
    r = r[~np.isnan(r)]
    if not r.size:
        return None
    return [float(v) for v in np.quantile(r, [(1 - level) / 2, (1 + level) / 2])]


def auroc_with_ci(score: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray,
                  n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = CI_LEVEL) -> dict:
    """:func:`auroc` and its percentile bootstrap interval (pairs resampled with
    replacement, ``numpy.random.default_rng(seed)``: the same numbers on every run).
    Undefined when every decision is right or every one is wrong: ``auroc`` None and a
    ``reason``. ``n_undefined`` resamples drew one class only and are left out of the CI."""
    s, y = np.asarray(score, float), np.asarray(positive, bool)
    n_pos = int(y.sum())
    out = {"auroc": auroc(s, y), "ci": None, "level": level, "n": int(len(y)), "n_positive": n_pos, "n_boot": n_boot}
    if out["auroc"] is None:
        out["reason"] = "no wrong decisions" if n_pos == 0 else "no right decisions" if n_pos == len(y) else "no pairs"
        return out
    rng = np.random.default_rng(seed)
    pos, starts = _rank_groups(s, y)
    reps = []
    chunk = max(1, min(n_boot, 2_000_000 // max(len(s), 1)))  # bounded memory for large sets
    for start in range(0, n_boot, chunk):  # resample counts drawn directly on the score order
        reps.append(_weighted_auroc(pos, starts, bootstrap_counts(len(s), min(chunk, n_boot - start), rng)))
    r = np.concatenate(reps)
    out["ci"] = percentile_ci(r, level)
    out["n_undefined"] = int(np.isnan(r).sum())
    return out
