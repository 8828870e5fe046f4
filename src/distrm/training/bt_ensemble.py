"""Training of :class:`~distrm.models.bt_ensemble.EnsembleRewardModel` (``distrm train`` with
``model: ensemble``): preference pairs -> frozen features -> N Bradley-Terry heads in one pass."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import numpy as np
import torch

from distrm.eval.disagreement import member_diversity
from distrm.models.bt_ensemble import EnsembleRewardModel

logger = logging.getLogger(__name__)


def train_ensemble(cfg: Any) -> EnsembleRewardModel:
    """``distrm train`` with ``model: ensemble``: preference pairs (training split) ->
    frozen backbone features -> N BT heads in one pass -> saved model + train_log.json."""
    from distrm.heads.ensemble import BTEnsembleHeads
    from distrm.training.qrm import record_training_prompts, start_run

    ec = cfg.ensemble
    out, log = start_run(cfg)
    pairs, backbone, Xc, Xr = pair_training_features(cfg, log, "an ensemble reward model")
    t0 = time.perf_counter()
    l2 = bt_l2(cfg, ec.l2, Xc, Xr, pairs, log, "ensemble")
    heads = BTEnsembleHeads(
        n_members=ec.n_members,
        bootstrap=ec.bootstrap,
        l2=l2,
        lr=ec.lr,
        epochs=ec.epochs,
        batch_size=ec.batch_size,
        init_std=ec.init_std,
        seed=ec.seed if ec.seed is not None else cfg.seed,
        optimizer=ec.optimizer,
        init=ec.init,
        anchored=ec.anchored,
        prior_scale=ec.prior_scale,
        prior_std=ec.prior_std,
        collapse_corr=ec.collapse_corr,
    ).fit(Xc, Xr)  # logs a warning if the members collapse
    log["timings_s"]["heads"] = time.perf_counter() - t0
    model = EnsembleRewardModel.from_heads(
        heads,
        **backbone_fields(cfg, backbone),
        training={**dataclasses.asdict(ec), "l2": l2, "n_pairs": len(pairs)},
    )
    model._backbone = backbone
    log["member_train_accuracy"] = heads.train_accuracy_.tolist()
    log["final_member_loss"] = heads.member_losses(Xc, Xr).tolist()
    log["diversity"] = member_diversity(model.member_rewards(Xc))
    log["member_correlation"] = heads.member_correlation_  # mean pairwise, chosen + rejected training features
    log["member_disagreement"] = heads.member_disagreement_  # member variance / variance of the mean reward
    log["prior_std"] = heads.prior_std_
    logger.info(
        "ensemble diversity: mean pairwise member correlation %.4f (collapse above %.2f), member variance / "
        "reward variance %.3g (bootstrap=%s, anchored=%s, prior_scale=%g)", heads.member_correlation_,
        ec.collapse_corr, heads.member_disagreement_, ec.bootstrap, ec.anchored, ec.prior_scale,
    )
    acc = float((model.score_features(Xc).mean > model.score_features(Xr).mean).double().mean())
    log["train_pair_accuracy"] = acc
    logger.info("train pair accuracy (ensemble mean): %.3f; members %.3f..%.3f; member reward corr %.3f", acc,
                min(log["member_train_accuracy"]), max(log["member_train_accuracy"]), log["diversity"]["mean_pairwise_corr"])
    record_training_prompts(model, pairs)
    model.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(log, indent=2, default=str) + "\n", encoding="utf-8")
    logger.info("saved ensemble to %s", out)
    return model


def pair_training_features(cfg: Any, log: dict[str, Any], what: str) -> tuple[list, Any, torch.Tensor, torch.Tensor]:
    """The data path of every pair-only model type (ensemble, DPL): the training split of the
    configured preference sets, the frozen backbone, and its reward features of the chosen and
    rejected responses, float64 [n, d] each, from the feature store; data sizes, load reports
    and timings go to ``log``. ``what`` names the model type in the error for no pairs."""
    from distrm.features import extract
    from distrm.features.backbones import Backbone
    from distrm.training.qrm import load_training_data

    t0 = time.perf_counter()
    _, pairs, reports = load_training_data(cfg)
    if not pairs:
        raise ValueError(f"{what} needs preference pairs (data.pairs)")
    log["data"] = {"pairs": len(pairs), "reports": reports}
    logger.info("data: %d training pairs", len(pairs))
    log["timings_s"]["data"] = time.perf_counter() - t0

    bc = cfg.backbone
    backbone = Backbone.from_pretrained(bc.name, device=bc.device, dtype=bc.dtype, max_length=bc.max_length)
    kw = dict(store=bc.store, store_dtype=bc.store_dtype, batch_size=bc.batch_size, progress=cfg.progress)
    t0 = time.perf_counter()
    fc = extract(backbone, [p.prompt for p in pairs], [p.chosen for p in pairs], **kw)
    fr = extract(backbone, [p.prompt for p in pairs], [p.rejected for p in pairs], **kw)
    Xc, Xr = torch.as_tensor(np.asarray(fc.reward)).double(), torch.as_tensor(np.asarray(fr.reward)).double()
    log["timings_s"]["features"] = time.perf_counter() - t0
    return pairs, backbone, Xc, Xr


def bt_l2(cfg: Any, l2: float | None, Xc: torch.Tensor, Xr: torch.Tensor, pairs: list, log: dict[str, Any], what: str) -> float:
    """``l2`` as configured, or (None) one BT head's penalty chosen by 3-fold CV on held-out
    pair likelihood (whole prompts held out), recorded in ``log["l2_cv"]``."""
    if l2 is not None:
        return l2
    from distrm.data.splits import split_key
    from distrm.heads.baselines import BTHeadCV

    cvh = BTHeadCV(seed=cfg.seed).fit(Xc, Xr, groups=[split_key(p.prompt) for p in pairs])
    log["l2_cv"] = {"l2": cvh.l2_, "grid": cvh.cv_l2s_, "heldout_log_likelihood_per_pair": cvh.cv_log_likelihood_}
    logger.info("%s: l2 = %g chosen by 3-fold CV on held-out pair likelihood (grid %s)", what, cvh.l2_, cvh.cv_l2s_)
    return cvh.l2_


def backbone_fields(cfg: Any, backbone: Any) -> dict[str, Any]:
    """The :class:`~distrm.models.base.BackboneFields` of a model trained on ``backbone``
    loaded from ``cfg.backbone``."""
    bc = cfg.backbone
    return dict(backbone=bc.name, backbone_identity=getattr(backbone, "identity", None),
                backbone_revision=getattr(backbone, "revision", None), backbone_max_length=bc.max_length,
                backbone_dtype=bc.dtype)
