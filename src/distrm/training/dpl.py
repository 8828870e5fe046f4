"""Training of :class:`~distrm.models.dpl.DPLRewardModel` (``distrm train`` with ``model: dpl``):
preference pairs -> frozen features -> a DPL head (mean-variance or categorical) -> saved model.

The data path is the ensemble's (:func:`distrm.training.bt_ensemble.pair_training_features`):
the training split of the configured preference sets, features from the feature store, and --
when ``dpl.l2`` is null -- the penalty one Bradley-Terry head picks on held-out pair likelihood
(whole prompts held out, :func:`~distrm.training.bt_ensemble.bt_l2`). The BT head's own training accuracy and log-likelihood are logged beside the DPL
head's, so the train log shows what the distribution costs or gains against the point model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import torch

from distrm.models.dpl import DPLRewardModel

logger = logging.getLogger(__name__)


def build_dpl_heads(dc: Any, l2: float, seed: int) -> Any:
    """The unfitted head ``dc`` (a :class:`~distrm.config.DPLConfig`) names."""
    from distrm.heads.dpl import CategoricalDPLHeads, MeanVarianceDPLHeads

    if dc.head == "mean_variance":
        return MeanVarianceDPLHeads(l2=l2, variance_penalty=dc.variance_penalty, max_iter=dc.max_iter,
                                    n_levels=dc.n_levels, seed=seed)
    return CategoricalDPLHeads(n_bins=dc.n_bins, l2=l2, entropy_weight=dc.entropy_weight, max_iter=dc.max_iter,
                               init_std=dc.init_std, support_min=dc.support_min, support_max=dc.support_max,
                               n_levels=dc.n_levels, seed=seed)


def train_dpl(cfg: Any) -> DPLRewardModel:
    """``distrm train`` with ``model: dpl``: preference pairs (training split) -> frozen
    backbone features -> one DPL head -> saved model + train_log.json."""
    from distrm.heads.baselines import BTHead, pair_log_likelihood
    from distrm.training.bt_ensemble import backbone_fields, bt_l2, pair_training_features
    from distrm.training.qrm import record_training_prompts, start_run

    dc = cfg.dpl
    out, log = start_run(cfg)
    pairs, backbone, Xc, Xr = pair_training_features(cfg, log, "a DPL reward model")
    t0 = time.perf_counter()
    l2 = bt_l2(cfg, dc.l2, Xc, Xr, pairs, log, "dpl")
    bt = BTHead(l2=l2).fit(Xc, Xr)  # the point-model baseline at the same penalty, for the log
    seed = dc.seed if dc.seed is not None else cfg.seed
    heads = build_dpl_heads(dc, l2, seed).fit(Xc, Xr)
    log["timings_s"]["heads"] = time.perf_counter() - t0
    model = DPLRewardModel.from_heads(
        heads,
        **backbone_fields(cfg, backbone),
        training={**dataclasses.asdict(dc), "l2": l2, "n_pairs": len(pairs)},
    )
    model._backbone = backbone
    sc, sr = model.score_features(Xc), model.score_features(Xr)
    log["train_pair_accuracy"] = float((sc.mean > sr.mean).double().mean())
    log["train_log_likelihood_per_pair"] = float(torch.log(heads.predict_pair_proba(Xc, Xr).clamp_min(1e-300)).mean())
    log["bt_baseline"] = {"l2": l2, "train_pair_accuracy": bt.train_accuracy_,
                          "train_log_likelihood_per_pair": pair_log_likelihood(bt.coef_, Xc, Xr)}
    std = torch.cat([sc.std, sr.std])
    log["reward_std"] = {"mean": float(std.mean()), "min": float(std.min()), "max": float(std.max())}
    log["lbfgs_evaluations"] = len(heads.loss_history_)
    logger.info("dpl (%s): train pair accuracy %.3f (BT head %.3f), log-likelihood per pair %.4f (BT head %.4f), "
                "reward std %.3g..%.3g", dc.head, log["train_pair_accuracy"], bt.train_accuracy_,
                log["train_log_likelihood_per_pair"], log["bt_baseline"]["train_log_likelihood_per_pair"],
                log["reward_std"]["min"], log["reward_std"]["max"])
    record_training_prompts(model, pairs)
    model.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(log, indent=2, default=str) + "\n", encoding="utf-8")
    logger.info("saved DPL model to %s", out)
    return model
