"""Distributional calibration on real multi-rater data (held-out items only).

For every held-out item with at least two raters on an attribute, the model's predicted
distribution for THAT attribute (not the gated mixture: raters scored the attribute; and
before the ranking-time length debiasing, see :func:`rated_attributes`) is
compared with the empirical distribution of the raters' scores; see
:mod:`distrm.eval.metrics` for the exact definitions. Scores are on the records'
normalised [0, 1] scale, so numbers are comparable across datasets.

Baseline ("ridge+gaussian"): the same backbone features, a per-attribute ridge point
estimate (:class:`~distrm.heads.baselines.RidgeHeads`, fit on the model's own training
split) and a Gaussian around it whose sigma is the RMS residual of the individual rater
scores on the training items, per attribute. It is what a point-estimate model plus a
global noise level can say about disagreement: the same width for every item. It is
represented at the same quantile levels as the model, so both go through identical
metric code (the Gaussian's tails beyond the outer levels are cut the same way).

Ratings are discrete (DICES: three values), where central-interval coverage is
degenerate; each group (set/attribute) therefore also gets the randomized PIT pooled over
its (item, rater) pairs (seeded), its distance from U(0, 1) (KS, exact W1, 10-bin
chi-square and its size w), coverage computed on the PIT, and the Spearman correlation of
the predicted spread with the raters' variance and entropy; see :mod:`distrm.eval.metrics`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from distrm.data.records import RatedResponse
from distrm.distribution import RewardDistribution, default_levels
from distrm.eval.metrics import calibration_metrics

logger = logging.getLogger(__name__)

# every shared set with several raters per item: (display name, registry name). The other
# rated sets (UltraFeedback overall, PKU is_safe, the HelpSteer2 fixture) have one score per
# item, so there is no rater distribution to calibrate against.
CALIBRATION_SETS: dict[str, str] = {
    "dices-990": "dices-990",
    "dices-350": "dices-350",
    "prometheus-mt-bench": "prometheus-mtbench",
    "prometheus-vicuna": "prometheus-vicuna",
    "newsroom": "newsroom",
    "recipes": "recipes",
    "convabuse": "convabuse",
}


@dataclass
class MultiRaterItems:
    """Held-out (item, attribute) rows that have >= min_raters individual scores."""

    prompts: list
    responses: list[str]
    attributes: list[str]
    raters: list[list[float]]
    sources: list[str]


def multi_rater_items(records: Sequence[RatedResponse], min_raters: int = 2) -> tuple[MultiRaterItems, dict[str, int]]:
    """One row per (record, attribute) with enough raters; counts what was left out, by reason."""
    out = MultiRaterItems([], [], [], [], [])
    skipped: dict[str, int] = {}
    for r in records:
        for a in sorted(r.scores):
            ys = [float(v) for v in r.rater_scores(a)]
            ys = [v for v in ys if not np.isnan(v)]
            if len(ys) < min_raters:
                skipped[f"fewer than {min_raters} raters"] = skipped.get(f"fewer than {min_raters} raters", 0) + 1
                continue
            out.prompts.append(r.prompt)
            out.responses.append(r.response)
            out.attributes.append(a)
            out.raters.append(ys)
            out.sources.append(r.source)
    return out, skipped


def gaussian_quantiles(mu: torch.Tensor, sigma: torch.Tensor, levels: torch.Tensor) -> RewardDistribution:
    """N(mu, sigma^2) summarised at ``levels``: values [n, K]."""
    z = torch.special.ndtri(levels.double())
    return RewardDistribution(values=mu.double()[:, None] + sigma.double()[:, None] * z[None, :], levels=levels.double())


class GaussianRidgeBaseline:
    """Ridge point estimate per attribute + Gaussian with per-attribute residual sigma."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, X: torch.Tensor, index: np.ndarray, attribute: np.ndarray, y: np.ndarray, attributes: list[str]) -> "GaussianRidgeBaseline":
        from distrm.heads.baselines import RidgeHeads

        X = torch.as_tensor(np.asarray(X), dtype=torch.float64)
        self.attributes_ = list(attributes)
        self.ridge_ = RidgeHeads(seed=self.seed).fit(X, y, attribute=attribute, index=index, n_attributes=len(attributes))
        pred = self.ridge_.predict(X)[:, :, 0].numpy()  # [n, M]
        resid = np.asarray(y, float) - pred[np.asarray(index), np.asarray(attribute)]
        self.sigma_ = np.array(
            [np.sqrt(np.mean(resid[attribute == m] ** 2)) if np.any(attribute == m) else np.nan for m in range(len(attributes))]
        )
        return self

    def predict(self, X: torch.Tensor, attributes: Sequence[str], levels: torch.Tensor) -> RewardDistribution:
        """Distribution of row i for attribute ``attributes[i]``: values [n, K]."""
        idx = np.array([self.attributes_.index(a) for a in attributes])
        mu = self.ridge_.predict(torch.as_tensor(np.asarray(X), dtype=torch.float64))[:, :, 0][torch.arange(len(idx)), torch.as_tensor(idx)]
        sigma = torch.as_tensor(self.sigma_[idx])
        return gaussian_quantiles(mu, sigma, levels)


def rated_attributes(model: Any, reward_features: torch.Tensor, responses: Sequence[str]) -> RewardDistribution:
    """The model's prediction of each attribute's RATING: its heads before the ranking-time
    length debiasing (``r_m - p_m v(y)`` is a correction for ranking pairs, not a prediction
    of what a rater scores; with p up to 0.95 it shifts an attribute by up to ~0.5 on the
    [0, 1] scale)."""
    return model.attribute_distribution(reward_features, list(responses), debias=False)


def select_attribute(attrs: RewardDistribution, names: Sequence[str], wanted: Sequence[str]) -> tuple[RewardDistribution, np.ndarray]:
    """Row i's distribution for attribute ``wanted[i]`` from per-attribute values [n, M, K];
    returns (distribution [n_kept, K], kept mask) -- attributes the model lacks are dropped."""
    keep = np.array([w in names for w in wanted], bool)
    rows = np.nonzero(keep)[0]
    cols = [names.index(wanted[i]) for i in rows]
    vals = attrs.values[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)]
    return RewardDistribution(values=vals, levels=attrs.levels, kind=attrs.kind), keep


def baseline_distribution(baseline: GaussianRidgeBaseline, X: torch.Tensor, items: MultiRaterItems,
                          levels: torch.Tensor) -> tuple[RewardDistribution, np.ndarray]:
    """The baseline's distribution of each item's rated attribute (rows [n_kept, K]) and the
    kept mask: :func:`select_attribute`'s counterpart (attributes it was not fitted on are
    dropped)."""
    keep = np.array([a in baseline.attributes_ for a in items.attributes], bool)
    rows = np.nonzero(keep)[0]
    return baseline.predict(X[torch.as_tensor(rows)], [items.attributes[i] for i in rows], levels), keep


def grouped_metrics(dist: RewardDistribution, items: MultiRaterItems, mask: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
    """Metrics per (source, attribute) group (``seed``: the randomized PIT's V, per group)."""
    idx = np.arange(len(items.raters)) if mask is None else np.nonzero(mask)[0]
    out: dict[str, Any] = {}
    keys = sorted({(items.sources[i], items.attributes[i]) for i in idx})
    pos = {int(i): j for j, i in enumerate(idx)}  # item row -> row of dist
    for src, att in keys:
        rows = [i for i in idx if items.sources[i] == src and items.attributes[i] == att]
        d = dist[torch.as_tensor([pos[int(i)] for i in rows])]
        m = calibration_metrics(d, [items.raters[i] for i in rows], seed=seed)
        out[f"{src}/{att}"] = {
            "source": src,
            "attribute": att,
            **m["summary"],
            "per_item": {k: m["per_item"][k] for k in ("pred_spread", "rater_std", "rater_entropy", "pred_mean", "rater_mean")},
        }
    return out


def baseline_levels(model: Any) -> torch.Tensor:
    lv = getattr(model, "levels", None)
    return lv.double() if isinstance(lv, torch.Tensor) else default_levels(19, torch.float64)


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """results: method -> group -> summary. One line per (group, method)."""
    head = (
        f"{'set/attribute':34}{'method':22}{'n':>6}{'pinball':>9}{'CRPS':>8}{'W1':>8}{'cov50':>7}{'cov80':>7}{'cov90':>7}{'rho_sd':>8}"
        f"{'rho_H':>7}{'PIT_KS':>8}{'PIT_W1':>8}{'PIT_w':>7}{'pcov50':>7}{'pcov80':>7}{'pcov90':>7}"
    )
    lines = [head]

    def num(x: Any, w: int, p: int) -> str:
        return f"{x:>{w}.{p}f}" if x is not None else f"{'n/a':>{w}}"

    groups = sorted({g for r in results.values() for g in r})
    for g in groups:
        for method, res in results.items():
            s = res.get(g)
            if not s:
                continue
            rho = s["spread_spearman_std"]
            lines.append(
                f"{g[:33]:34}{method[:21]:22}{s['n_items']:>6}{s['pinball']:>9.4f}{s['crps']:>8.4f}{s['w1']:>8.4f}"
                + "".join(f"{s['coverage'][k]:>7.2f}" for k in ("0.5", "0.8", "0.9"))
                + num(rho, 8, 3)
                + num(s.get("spread_spearman_entropy"), 7, 3)
                + num(s.get("pit_ks"), 8, 4)
                + num(s.get("pit_w1"), 8, 4)
                + num(s.get("pit_hist_w"), 7, 3)
                + "".join(num(s.get("pit_coverage", {}).get(k), 7, 2) for k in ("0.5", "0.8", "0.9"))
            )
    return "\n".join(lines)


def load_items(
    sets: Sequence[str], data_dir: str | None, test_fraction: float, max_items: int | None = None, min_raters: int = 2, log=logger.info
) -> tuple[MultiRaterItems, dict[str, Any]]:
    """Held-out multi-rater items of the named rated sets (registry names)."""
    from distrm.data import registry
    from distrm.data.splits import split

    all_items = MultiRaterItems([], [], [], [], [])
    info: dict[str, Any] = {}
    for name in sets:
        loaded = registry.load_rated(name, data_dir=data_dir)
        test = split(list(loaded.records), "test", test_fraction=test_fraction)
        items, skipped = multi_rater_items(test, min_raters)
        n_before = len(items.raters)
        if max_items and n_before > max_items:
            keep = np.sort(np.random.default_rng(0).choice(n_before, max_items, replace=False))
            items = MultiRaterItems(*[[getattr(items, f)[i] for i in keep] for f in ("prompts", "responses", "attributes", "raters", "sources")])
        rep = loaded.report
        info[name] = {
            "records": len(loaded.records),
            "test_records": len(test),
            "items": len(items.raters),
            "items_before_cap": n_before,
            "cap": max_items,
            "skipped": skipped,
            "load_skipped": dict(rep.skipped) if hasattr(rep, "skipped") else {},
            "raters_per_item": [int(min(map(len, items.raters), default=0)), int(max(map(len, items.raters), default=0))],
        }
        log(f"{name}: {len(items.raters)} held-out (item, attribute) rows with >= {min_raters} raters")
        for f in ("prompts", "responses", "attributes", "raters", "sources"):
            getattr(all_items, f).extend(getattr(items, f))
    return all_items, info


def fit_baseline(model: Any, train_config: dict[str, Any], data_dir: str | None, store: str, batch_size: int, seed: int = 0) -> GaussianRidgeBaseline:
    """Ridge + Gaussian on the model's own training split and backbone features."""
    from distrm.config import TrainConfig, from_dict
    from distrm.eval import common
    from distrm.training.qrm import build_targets, load_training_data

    cfg = from_dict(TrainConfig, train_config or {}, "train config")
    if data_dir:
        cfg.data.data_dir = data_dir
    rated, _, _ = load_training_data(cfg)
    t = build_targets(rated)
    X, _ = common.features(model, t.prompts, t.responses, store, batch_size)
    return GaussianRidgeBaseline(seed=seed).fit(X, t.index, t.attribute, t.y, t.attributes)


def run_calibration(
    models: Sequence[str],
    sets: Sequence[str] = tuple(CALIBRATION_SETS.values()),
    data_dir: str | None = None,
    store: str | None = None,
    batch_size: int = 32,
    baseline: bool = True,
    max_items: int | None = None,
    min_raters: int = 2,
    log=logger.info,
) -> dict[str, Any]:
    """Calibration of each model's attribute distributions (+ the ridge+Gaussian baseline
    on the first model's backbone) on held-out multi-rater items."""
    from distrm.eval import common

    if not models:
        raise ValueError("give at least one --model")
    store = store or common.DEFAULT_STORE
    loaded = [(m, common.load_any_model(m)) for m in models]
    train_cfg = common.train_config_of(models[0])
    tf = common.test_fraction_of(models[0])
    items, info = load_items(sets, data_dir, tf, max_items, min_raters, log)
    if not items.raters:
        raise ValueError("no held-out items with several raters in the given sets")
    results: dict[str, dict[str, Any]] = {}
    notes: dict[str, Any] = {}
    for path, model in loaded:
        label = common.model_label(model, path)
        R, _ = common.features(model, items.prompts, items.responses, store, batch_size)
        dist, keep = select_attribute(rated_attributes(model, R, items.responses), model.attribute_names, items.attributes)
        results[label] = grouped_metrics(dist, items, keep)
        notes[label] = {"model": str(path), "attributes_missing": sorted({a for a, k in zip(items.attributes, keep) if not k})}
        log(f"{label}: scored {int(keep.sum())} rows")
    if baseline:
        path, model = loaded[0]
        b = fit_baseline(model, train_cfg, data_dir, store, batch_size)
        X, _ = common.features(model, items.prompts, items.responses, store, batch_size)
        d, keep = baseline_distribution(b, X, items, baseline_levels(model))
        label = f"ridge+gaussian:{model.describe()['backbone']}"
        results[label] = grouped_metrics(d, items, keep)
        notes[label] = {
            "sigma": dict(zip(b.attributes_, b.sigma_.tolist())),
            "ridge_alpha": dict(zip(b.attributes_, b.ridge_.alpha_.tolist())),
            "attributes_missing": sorted({a for a, k in zip(items.attributes, keep) if not k}),
        }
    return {
        "kind": "calibration",
        "scale": "scores normalised to [0, 1] per attribute (records' scale)",
        "metrics_note": "pinball: mean over the model's levels and raters; CRPS: exact, mean over raters; W1: exact vs the "
        "raters' empirical distribution; coverage: share of raters inside the central interval (endpoints included); "
        "spread: Spearman of q0.9 - q0.1 vs rater std / IQR / variance (rho_sd; same ranks as the std) / entropy (rho_H, "
        "nats over the distinct scores) (null when undefined, e.g. constant predicted spread). Randomized PIT: "
        "Z = F(y-) + V (F(y) - F(y-)), V ~ U(0,1) seeded, per (item, rater), pooled per set/attribute (F: the exact CDF "
        "of the predicted quantile function, constant tails = point masses at the outer quantiles); uniform iff "
        "calibrated, also for discrete ratings. PIT_KS: Kolmogorov-Smirnov sup|G(u) - u|; PIT_W1: exact W1 to U(0,1); "
        "PIT_w: sqrt(chi2 / n) of a 10-bin histogram (0 = flat); pcov c: share of Z in [(1-c)/2, (1+c)/2] (nominal c; "
        "below c: overconfident, above: too wide).",
        "test_fraction": tf,
        "data": info,
        "methods": notes,
        "results": results,
    }
