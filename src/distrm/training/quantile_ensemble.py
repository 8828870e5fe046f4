"""Training of :class:`~distrm.models.quantile_ensemble.QuantileEnsembleRewardModel`
(``distrm train`` with ``model: quantile_ensemble``): the QRM's rated data, targets and
frozen features (:mod:`distrm.training.qrm`'s helpers), its heads settings (``heads``: levels,
solver, tolerance, standardisation), fitted once per bootstrap resample of the rated items.

What it leaves out of the QRM pipeline, and why: the gate (the attribute weights are fixed,
``quantile_ensemble.weights``), the length debiasing (a ranking-time shift fitted on pairs;
it would move every member alike and so change no uncertainty) and the per-attribute alpha
CV (it would run once per member; one ``quantile_ensemble.alpha`` is used instead).
Preference pairs are not fitted on; when there are any, the log reports how well the
model's mean ranks them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from distrm.config import HeadsConfig, TrainConfig
from distrm.distribution import default_levels
from distrm.models.quantile_ensemble import QuantileEnsembleRewardModel

logger = logging.getLogger(__name__)


def fixed_weights(weights: dict[str, float] | None, attributes: Sequence[str]) -> list[float] | None:
    """``quantile_ensemble.weights`` (attribute -> weight) as one weight per trained attribute
    (unnamed ones 0); None stays None (uniform). Names that were not trained are an error."""
    if weights is None:
        return None
    unknown = sorted(set(weights) - set(attributes))
    if unknown:
        raise ValueError(f"quantile_ensemble.weights names attributes that were not trained {unknown}; trained: {list(attributes)}")
    w = [float(weights.get(a, 0.0)) for a in attributes]
    if any(x < 0 for x in w) or not sum(w) > 0:
        raise ValueError(f"quantile_ensemble.weights must be non-negative with a positive sum, got {weights}")
    return w


def member_heads(hc: HeadsConfig, attributes: Sequence[str], bar: Any, reports: list) -> Callable[..., Any]:
    """The ``base`` factory for :class:`BootstrapQuantileHeads`: the QRM's heads with the
    ``heads`` settings, each recording its report and ticking ``bar`` once fitted (the
    bootstrap loop is the heads', so this is where a member's end can be seen)."""
    from distrm.heads.quantile import QuantileHeads

    class Member(QuantileHeads):
        def fit(self, *args: Any, **kwargs: Any) -> "Member":
            super().fit(*args, **kwargs)
            reports.append(self.report(attributes))
            bar.update(1)
            return self

    def make(levels: torch.Tensor, alpha: float, device: str | None) -> Member:
        return Member(levels=levels, alpha=alpha, standardize=hc.standardize, solver=hc.solver, device=device,
                      tol=hc.tol, max_iter=hc.max_iter)

    return make


def train_quantile_ensemble(cfg: TrainConfig) -> QuantileEnsembleRewardModel:
    """Rated data (training split) -> frozen features -> B bootstrap quantile-head models ->
    saved model + train_log.json."""
    from distrm.features import extract
    from distrm.features.backbones import Backbone
    from distrm.heads.ensemble import BootstrapQuantileHeads
    from distrm.training.qrm import build_targets, load_rated_training_data, pair_report, record_training_prompts, start_run

    qc, hc = cfg.quantile_ensemble, cfg.heads
    seed = qc.seed if qc.seed is not None else cfg.seed
    out, log = start_run(cfg)
    t0 = time.perf_counter()
    rated, pairs, reports, thin = load_rated_training_data(cfg, logger)
    if not rated:
        raise ValueError("a quantile ensemble needs rated responses (data.rated)")
    targets = build_targets(rated)
    weights = fixed_weights(qc.weights, targets.attributes)
    log["data"] = {"rated_rows": len(rated), "items": len(targets.prompts), "pairs": len(pairs), "reports": reports,
                   "thin_attributes_left_out": thin}
    logger.info("data: %d rated items, %d rater scores over %d attributes; %d pairs (not fitted on, reported)",
                len(targets.prompts), int(targets.weight.sum()), len(targets.attributes), len(pairs))
    log["timings_s"]["data"] = time.perf_counter() - t0

    bc = cfg.backbone
    backbone = Backbone.from_pretrained(bc.name, device=bc.device, dtype=bc.dtype, max_length=bc.max_length)
    kw = dict(store=bc.store, store_dtype=bc.store_dtype, batch_size=bc.batch_size, progress=cfg.progress)
    t0 = time.perf_counter()
    X = torch.as_tensor(np.asarray(extract(backbone, targets.prompts, targets.responses, **kw).reward), dtype=torch.float64)
    log["timings_s"]["features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    member_reports: list[list[dict]] = []
    with tqdm(total=qc.n_members, desc="bootstrap members", disable=not cfg.progress, leave=False) as bar:
        heads = BootstrapQuantileHeads(
            n_boot=qc.n_members, levels=default_levels(hc.n_levels, torch.float64), alpha=qc.alpha, seed=seed,
            base=member_heads(hc, targets.attributes, bar, member_reports), device=hc.device,
        ).fit(X, targets.y, attribute=targets.attribute, index=targets.index, n_attributes=len(targets.attributes),
              sample_weight=targets.weight)
    log["timings_s"]["heads"] = time.perf_counter() - t0
    log["members"] = [{"max_duality_gap": max(r["duality_gap"] for r in rep),
                       "nonzero_median": {r["attribute"]: r["nonzero_median"] for r in rep}} for rep in member_reports]
    logger.info("heads: %d members x %d attributes x %d levels fitted in %.1fs (alpha %g)", qc.n_members,
                len(targets.attributes), hc.n_levels, log["timings_s"]["heads"], qc.alpha)

    model = QuantileEnsembleRewardModel.from_heads(
        heads, targets.attributes, backbone=bc.name, weights=weights, mix=cfg.mix,
        backbone_identity=getattr(backbone, "identity", None), backbone_revision=getattr(backbone, "revision", None),
        backbone_max_length=bc.max_length, backbone_dtype=bc.dtype,
        training={**dataclasses.asdict(qc), "seed": seed, "n_levels": hc.n_levels, "solver": hc.solver,
                  "n_items": len(targets.prompts), "n_rater_scores": int(targets.weight.sum())},
    )
    model._backbone = backbone
    u = model.uncertainty(X)
    share = u["epistemic"] / u["total"].clamp_min(1e-12)
    log["uncertainty_on_training_items"] = {"aleatoric_mean": float(u["aleatoric"].mean()),
                                            "epistemic_mean": float(u["epistemic"].mean()),
                                            "epistemic_share_median": float(share.median())}
    logger.info("reward variance on the training items: aleatoric %.3g, epistemic %.3g (median share %.2f)",
                *log["uncertainty_on_training_items"].values())
    if pairs:
        t0 = time.perf_counter()
        fc = extract(backbone, [p.prompt for p in pairs], [p.chosen for p in pairs], **kw)
        fr = extract(backbone, [p.prompt for p in pairs], [p.rejected for p in pairs], **kw)
        rep = pair_report(model, torch.as_tensor(np.asarray(fc.reward)), torch.as_tensor(np.asarray(fr.reward)), None, pairs)
        log["pairs"] = rep
        log["timings_s"]["pairs"] = time.perf_counter() - t0
        logger.info("pairs (training split, not fitted on): mean-reward accuracy %.3f vs longer-wins %.3f",
                    rep["accuracy"], rep["longer_wins_accuracy"])
    record_training_prompts(model, rated)
    model.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(log, indent=2, default=str) + "\n", encoding="utf-8")
    logger.info("saved quantile ensemble to %s", out)
    return model
