"""``distrm train``: data -> features -> heads -> debias -> gate -> saved model.

Every stage is resumable: features come from the on-disk feature store (a killed
extraction resumes shard by shard), fitted heads are checkpointed under
``output_dir/checkpoints`` keyed by a fingerprint of (backbone, heads config, targets), so
a rerun after a crash in the gate stage does not refit them.

Streaming (``backbone.stream``; automatic above :data:`STREAM_AUTO_BYTES`): the features stay
in the store as :class:`~distrm.features.store.StoredFeatures` views; the heads and the gate
read them in row blocks, and every per-pair quantity (attribute means for the debias and the
gate, train and validation accuracy) is computed block by block with
:func:`~distrm.heads.blocks.map_row_blocks`, so memory is a block and the d x d solver state,
not the data. The in-memory path runs the same code with the whole tensors as one block.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from distrm.config import TrainConfig
from distrm.data.records import PreferencePair, RatedResponse, distinct_items_per_attribute, prompt_key
from distrm.data.splits import is_test, split_key
from distrm.heads.debias import fit_debias, length_signal
from distrm.distribution import default_levels
from distrm.heads.gate import GatingNetwork
from distrm.training.gate import train_gate
from distrm.heads.baselines import RidgeHeads
from distrm.heads.blocks import DEFAULT_BLOCK_ROWS, is_row_source, map_row_blocks, select_rows
from distrm.heads.quantile import QuantileHeads, QuantileHeadsCV
from distrm.models.qrm import DistributionalRewardModel, ModelConfig

logger = logging.getLogger(__name__)

# backbone.stream: null streams above this many bytes of float64 features (see the config field)
STREAM_AUTO_BYTES = 2 << 30


@dataclass
class AttributeTargets:
    """Unique (prompt, response) items and long-format targets over them."""

    prompts: list
    responses: list[str]
    index: np.ndarray
    attribute: np.ndarray
    y: np.ndarray
    weight: np.ndarray  # how many raters gave exactly this (item, attribute, score)
    attributes: list[str]
    scales: dict[str, list[float]]


def drop_thin_attributes(rated: list[RatedResponse], min_items: int) -> tuple[list[RatedResponse], dict[str, int]]:
    """Remove attributes rated on fewer than ``min_items`` distinct items (returned with their
    counts, so the caller reports them); rows left with no attribute are removed too."""
    thin = {a: n for a, n in distinct_items_per_attribute(rated).items() if n < min_items}
    if not thin:
        return rated, {}
    kept = []
    for r in rated:
        scores = {a: v for a, v in r.scores.items() if a not in thin}
        if scores:
            kept.append(dataclasses.replace(r, scores=scores))
    return kept, dict(sorted(thin.items()))


def build_targets(rated: list[RatedResponse]) -> AttributeTargets:
    """One row per (item, attribute, distinct rater score) with the number of raters who gave
    it as weight -- the same pinball objective as one row per rater (scores are discrete, so
    DICES' ~70 raters per item become at most 3 weighted rows). Identical (prompt, response)
    texts share a feature row. Attributes are ordered by name for a stable model layout."""
    attributes = sorted({a for r in rated for a in r.scores})
    a_idx = {a: i for i, a in enumerate(attributes)}
    item_idx: dict[tuple[str, str], int] = {}
    prompts, responses = [], []
    counts: dict[tuple[int, int, float], int] = {}
    scales: dict[str, list[float]] = {}
    for r in rated:
        key = (prompt_key(r.prompt), r.response)
        if key not in item_idx:
            item_idx[key] = len(prompts)
            prompts.append(r.prompt)
            responses.append(r.response)
        i = item_idx[key]
        for a in r.scores:
            for s in r.rater_scores(a):
                counts[(i, a_idx[a], float(s))] = counts.get((i, a_idx[a], float(s)), 0) + 1
            if a in r.scales:
                scales.setdefault(a, list(r.scales[a]))
    rows = sorted(counts)
    return AttributeTargets(
        prompts,
        responses,
        np.asarray([r[0] for r in rows], np.int64),
        np.asarray([r[1] for r in rows], np.int64),
        np.asarray([r[2] for r in rows], np.float64),
        np.asarray([counts[r] for r in rows], np.float64),
        attributes,
        scales,
    )


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def load_training_data(cfg: TrainConfig) -> tuple[list[RatedResponse], list[PreferencePair], dict]:
    """Training split of the configured rated and preference sources, plus load reports."""
    from distrm.data import registry
    from distrm.data.splits import split

    d = cfg.data
    if d.rated == ["default"] and d.pairs == ["default"]:
        rated, pairs, reports = registry.load_default_training_data(d.data_dir, strict=d.strict)
    else:
        rated, pairs, reports = [], [], {}
        for name in d.rated:
            loaded = registry.load_rated(name, data_dir=d.data_dir, strict=d.strict)
            rated += loaded.records
            reports[name] = loaded.report
        for name in d.pairs:
            loaded = registry.load_pairs(name, data_dir=d.data_dir, strict=d.strict)
            pairs += loaded.records
            reports[name] = loaded.report
    if d.max_rows_per_source:
        rated = _cap_per_source(rated, d.max_rows_per_source)
        pairs = _cap_per_source(pairs, d.max_rows_per_source)
    rated = split(rated, "train", test_fraction=d.test_fraction)
    pairs = split(pairs, "train", test_fraction=d.test_fraction)
    return rated, pairs, {k: _report_dict(v) for k, v in reports.items()}


def load_rated_training_data(cfg: TrainConfig, log: logging.Logger = logger) -> tuple[list[RatedResponse], list[PreferencePair], dict, dict[str, int]]:
    """:func:`load_training_data`, less the attributes rated on fewer than
    ``data.min_items_per_attribute`` distinct items (:func:`drop_thin_attributes`), with a
    warning on ``log`` naming them: (rated, pairs, load reports, thin attribute -> items)."""
    rated, pairs, reports = load_training_data(cfg)
    rated, thin = drop_thin_attributes(rated, cfg.data.min_items_per_attribute)
    if thin:
        log.warning("data: left out %d attributes rated on < %d items: %s", len(thin), cfg.data.min_items_per_attribute,
                    ", ".join(f"{a} ({n})" for a, n in thin.items()))
    return rated, pairs, reports, thin


def start_run(cfg: Any) -> tuple[Path, dict[str, Any]]:
    """What every ``distrm train`` model type does first: seed torch, create the output folder,
    and start the train log (the config and a ``timings_s`` section)."""
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out, {"config": dataclasses.asdict(cfg), "timings_s": {}}


def record_training_prompts(model: Any, *record_lists: Any) -> None:
    """What every ``distrm train`` model type does before saving: record the prompts of its
    training data (the records of the training split it fits on) in ``config.json``
    (``training_prompts``), so ``distrm eval pairs`` can count, and drop, evaluation pairs
    whose prompt the model has seen, without the training data at hand."""
    from distrm.data.splits import pack_prompt_digests

    model.config.training_prompts = pack_prompt_digests(*record_lists)


def _report_dict(rep) -> dict:
    if isinstance(rep, dict):
        return rep
    return {"rows_read": rep.rows_read, "skipped": dict(rep.skipped), "examples": rep.examples}


def _cap_per_source(records, cap: int):
    seen: dict[str, int] = {}
    out = []
    for r in records:
        if seen.get(r.source, 0) < cap:
            out.append(r)
            seen[r.source] = seen.get(r.source, 0) + 1
    return out


def fit_heads(cfg: TrainConfig, X: Any, t: AttributeTargets, ckpt_dir: Path, backbone_id: str):
    """Fit (or reload from checkpoint) the attribute heads on ``X`` [n_items, d]: a float64
    tensor, or a row source (a streamed store view) the quantile heads read in blocks of
    ``backbone.stream_block_rows``.

    Returns (coef [M,K,d], intercept [M,K], levels, report): ``report`` has one row per
    attribute (chosen alpha, held-out pinball loss of the heads and of the marginal model,
    non-zero coefficients, certified duality gap, informative?)."""
    hc = cfg.heads
    M = len(t.attributes)
    fp = _fingerprint(dataclasses.asdict(hc), backbone_id, t.attributes, t.index, t.attribute, t.y, t.weight, cfg.seed)
    path = ckpt_dir / f"heads-{fp}.safetensors"
    report_path = path.with_suffix(".json")
    if path.is_file() and report_path.is_file():
        s = load_file(str(path))
        levels = s["levels"].tolist() if "levels" in s else None
        logger.info("heads: reusing checkpoint %s", path)
        return s["coef"], s["intercept"], levels, json.loads(report_path.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    if hc.kind == "quantile":
        levels = default_levels(hc.n_levels, torch.float64)
        common = dict(levels=levels, standardize=hc.standardize, solver=hc.solver, device=hc.device, tol=hc.tol,
                      max_iter=hc.max_iter, block_rows=cfg.backbone.stream_block_rows if is_row_source(X) else None)
        if hc.alpha is None:
            cv_levels = None if hc.cv_levels is None else default_levels(hc.cv_levels, torch.float64)
            heads = QuantileHeadsCV(n_alphas=hc.n_alphas, alpha_min_ratio=hc.alpha_min_ratio, cv=hc.cv_folds,
                                    cv_levels=cv_levels, seed=cfg.seed, progress=cfg.progress, **common)
            groups = [split_key(p) for p in t.prompts]
            heads.fit(X, t.y, attribute=t.attribute, index=t.index, n_attributes=M, sample_weight=t.weight, groups=groups)
        else:
            heads = QuantileHeads(alpha=hc.alpha, **common)
            heads.fit(X, t.y, attribute=t.attribute, index=t.index, n_attributes=M, sample_weight=t.weight)
        report = heads.report(t.attributes)
        coef, intercept, lv = heads.coef_.double().cpu(), heads.intercept_.double().cpu(), levels
    elif hc.kind == "ridge":
        rep = t.weight.astype(np.int64)  # back to one row per rater: ridge fits their mean
        if is_row_source(X):  # RidgeHeads solves on the rows in memory (the baseline, not the paper-scale path)
            logger.info("heads: kind=ridge reads the %d x %d rated features into memory (streaming covers quantile "
                        "heads, the debias and the gate)", *X.shape)
            X = torch.as_tensor(np.asarray(X), dtype=torch.float64)
        heads = RidgeHeads(seed=cfg.seed).fit(
            X, np.repeat(t.y, rep), attribute=np.repeat(t.attribute, rep), index=np.repeat(t.index, rep), n_attributes=M
        )
        coef, intercept, lv = heads.coef_.unsqueeze(1), heads.intercept_.unsqueeze(1), None
        report = [{"attribute": a, "ridge_alpha": float(heads.alpha_[m])} for m, a in enumerate(t.attributes)]
    else:
        raise ValueError(f"heads.kind must be 'quantile' or 'ridge', got {hc.kind!r}")
    logger.info("heads: fitted %d attributes x %d levels on %d targets in %.1fs", M, coef.shape[1], len(t.y),
                time.perf_counter() - t0)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors = {"coef": coef.contiguous(), "intercept": intercept.contiguous()}
    if lv is not None:
        tensors["levels"] = torch.as_tensor(lv, dtype=torch.float64)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp_r = report_path.with_suffix(".json.tmp")
    tmp_r.write_text(json.dumps(report, indent=1), encoding="utf-8")
    tmp.replace(path)
    tmp_r.replace(report_path)
    return coef, intercept, (lv.tolist() if lv is not None else None), report


def should_stream(setting: bool | None, rated_reward: Any, n_pairs: int) -> bool:
    """``backbone.stream``: forced by true / false; null streams when the float64 copies the
    in-memory path would make (rated items + chosen, rejected and prompt features of every pair)
    exceed :data:`STREAM_AUTO_BYTES`. Arrays (no store to stream from) are never streamed."""
    if not is_row_source(rated_reward):
        if setting:
            logger.warning("backbone.stream=true but the features are not in a store: training in memory")
        return False
    if setting is not None:
        return bool(setting)
    n, d = rated_reward.shape
    return (n + 3 * n_pairs) * d * 8 > STREAM_AUTO_BYTES


def format_heads_report(report: list[dict]) -> str:
    """The per-attribute table ``distrm train`` prints."""
    if not report or "heldout_pinball" not in report[0]:
        return ""
    lines = [f"{'attribute':<32}{'alpha':>10}{'held-out':>10}{'marginal':>10}{'gain':>8}{'nonzero':>9}{'gap':>9}"]
    for r in report:
        alpha = "marginal" if r["alpha"] is None else f"{r['alpha']:.2e}"
        ho = "" if r["heldout_pinball"] is None else f"{r['heldout_pinball']:.4f}"
        mg = "" if r["marginal_pinball"] is None else f"{r['marginal_pinball']:.4f}"
        gain = "" if r["improvement"] is None else f"{100 * r['improvement']:+.1f}%"
        flag = "" if r["informative"] in (True, None) else "  <- no better than its marginal"
        lines.append(f"{r['attribute']:<32}{alpha:>10}{ho:>10}{mg:>10}{gain:>8}{r['nonzero_median']:>9.0f}"
                     f"{r['duality_gap']:>9.1e}{flag}")
    return "\n".join(lines)


def train(cfg: TrainConfig) -> DistributionalRewardModel:
    from distrm.features.backbones import Backbone
    from distrm.features import extract

    out, log = start_run(cfg)
    t0 = time.perf_counter()
    rated, pairs, reports, thin = load_rated_training_data(cfg)
    log["data"] = {"rated_rows": len(rated), "pairs": len(pairs), "reports": reports, "thin_attributes_left_out": thin}
    if not rated:
        raise ValueError("no rated responses to train the attribute heads on")
    targets = build_targets(rated)
    logger.info(
        "data: %d rated items, %d rater scores (%d distinct) over %d attributes; %d pairs", len(targets.prompts),
        int(targets.weight.sum()), len(targets.y), len(targets.attributes), len(pairs))
    n_empty = sum(not r.strip() for r in targets.responses) + sum(not p.chosen.strip() or not p.rejected.strip() for p in pairs)
    if n_empty:
        logger.warning("data: %d empty responses in the training data (kept and scored like any other)", n_empty)
    log["timings_s"]["data"] = time.perf_counter() - t0

    bc = cfg.backbone
    backbone = Backbone.from_pretrained(bc.name, device=bc.device, dtype=bc.dtype, max_length=bc.max_length)
    # views first (nothing read yet): whether to stream depends on d
    kw = dict(store=bc.store, store_dtype=bc.store_dtype, batch_size=bc.batch_size, progress=cfg.progress, stream=True)
    t0 = time.perf_counter()
    rated_feats = extract(backbone, targets.prompts, targets.responses, **kw)
    pair_c = extract(backbone, [p.prompt for p in pairs], [p.chosen for p in pairs], **kw)
    pair_r = extract(backbone, [p.prompt for p in pairs], [p.rejected for p in pairs], **kw)
    log["timings_s"]["features"] = time.perf_counter() - t0
    stream = should_stream(bc.stream, rated_feats.reward, len(pairs))
    log["streamed"] = stream
    B = bc.stream_block_rows
    if stream:
        logger.info("features: streamed from the store in blocks of %d rows (backbone.stream=%s)", B, bc.stream)
        X, Rc_all, Rr_all, Pc_all = rated_feats.reward, pair_c.reward, pair_r.reward, pair_c.prompt
    else:
        X = torch.as_tensor(np.asarray(rated_feats.reward), dtype=torch.float64)
        Rc_all = torch.as_tensor(np.asarray(pair_c.reward))
        Rr_all = torch.as_tensor(np.asarray(pair_r.reward))
        Pc_all = torch.as_tensor(np.asarray(pair_c.prompt))

    t0 = time.perf_counter()
    coef, intercept, levels, heads_report = fit_heads(cfg, X, targets, out / "checkpoints", backbone.identity)
    log["timings_s"]["heads"] = time.perf_counter() - t0
    log["heads"] = heads_report
    table = format_heads_report(heads_report)
    if table:
        logger.info("heads: held-out pinball loss (%d-fold CV by prompt) vs the marginal (intercept-only) model\n%s",
                    cfg.heads.cv_folds, table)
    flat = [r["attribute"] for r in heads_report if r.get("informative") is False]
    if flat:
        logger.warning(
            "heads: %d of %d attributes predict held-out ratings no better than their marginal distribution "
            "(their scores will not depend on the response): %s. %s", len(flat), len(heads_report), ", ".join(flat),
            "Leaving them out (heads.drop_uninformative=true)." if cfg.heads.drop_uninformative and len(flat) < len(heads_report)
            else "Set heads.drop_uninformative=true to leave them out, or add rated data for them.")
        if cfg.heads.drop_uninformative:
            keep = [m for m, r in enumerate(heads_report) if r.get("informative") is not False]
            if not keep:  # nothing would be left: keep them all, the model is then a constant
                logger.warning("heads: no attribute beats its marginal: keeping all of them; this model's scores do "
                               "not depend on the response (more rated data, or heads.alpha, may help)")
            else:
                coef, intercept = coef[keep], intercept[keep]
                targets = dataclasses.replace(targets, attributes=[targets.attributes[m] for m in keep])
                log["dropped_uninformative"] = flat

    gc = cfg.gate
    M = len(targets.attributes)
    fixed = None
    if gc.kind == "fixed":
        if not gc.fixed_weights:
            raise ValueError("gate.kind=fixed needs gate.fixed_weights (attribute -> weight)")
        missing = sorted(set(gc.fixed_weights) - set(targets.attributes))
        if missing:
            raise ValueError(f"gate.fixed_weights names unknown attributes {missing}; trained: {targets.attributes}")
        fixed = [float(gc.fixed_weights.get(a, 0.0)) for a in targets.attributes]
    dc = cfg.debias
    mcfg = ModelConfig(
        backbone=bc.name,
        feature_dim=X.shape[1],
        attributes=targets.attributes,
        head="quantile" if cfg.heads.kind == "quantile" else "ridge",
        levels=levels,
        gate=gc.kind,
        gate_hidden=gc.hidden,
        gate_n_hidden=gc.n_hidden,
        gate_temperature=gc.temperature,
        gate_dropout=gc.dropout if gc.kind == "learned" else 0.0,
        fixed_weights=fixed,
        debias_source=dc.source if dc.enabled else None,
        mix=cfg.mix,
        backbone_identity=backbone.identity,
        backbone_revision=getattr(backbone, "revision", None),
        backbone_max_length=bc.max_length,
        backbone_dtype=bc.dtype,
        scales=targets.scales,
    )
    gate = GatingNetwork(X.shape[1], M, gc.hidden, gc.n_hidden, gc.temperature, gc.dropout) if gc.kind == "learned" else None
    if gate is None and fixed is None:
        raise ValueError(f"gate.kind must be 'learned' or 'fixed', got {gc.kind!r}")
    model = DistributionalRewardModel(mcfg, coef, intercept, gate=gate, backbone=backbone)

    # held-out pairs for the report: whole prompts, an independent hash of the training side
    val = np.array([is_test(p.prompt, gc.val_fraction, salt="distrm-gate-validation") for p in pairs], dtype=bool)
    if val.sum() < 20 or (~val).sum() < 2:
        val[:] = False
    tr_idx, va_idx = np.nonzero(~val)[0], np.nonzero(val)[0]
    Rc, Rr, Pc = (select_rows(F, tr_idx) for F in (Rc_all, Rr_all, Pc_all))
    chosen_txt = [pairs[i].chosen for i in tr_idx]
    rejected_txt = [pairs[i].rejected for i in tr_idx]

    def attribute_means(R, texts: list[str]) -> torch.Tensor:
        """[n, M] attribute distribution means of reward features ``R`` (in row blocks)."""
        return map_row_blocks(lambda rows, b: model.attribute_distribution(b, texts[rows]).mean(), R, block_rows=B)

    log["data"]["gate_pairs"] = {"train": len(tr_idx), "validation": len(va_idx)}
    if dc.enabled and len(tr_idx):
        # debias on raw attribute means of the training pairs, chosen and rejected pooled
        model.debias = torch.zeros(M, dtype=torch.float64)
        raw = torch.cat([attribute_means(Rc, chosen_txt), attribute_means(Rr, rejected_txt)])
        if dc.source == "length":
            v, vi = length_signal(chosen_txt + rejected_txt), None
        elif dc.source in targets.attributes:
            vi = targets.attributes.index(dc.source)
            v = raw[:, vi]
        else:
            raise ValueError(f"debias.source must be 'length' or a trained attribute {targets.attributes}, got {dc.source!r}")
        model.debias = fit_debias(raw, v, dc.threshold, vi)
        log["debias"] = dict(zip(targets.attributes, model.debias.tolist()))
        logger.info("debias p: %s", {a: round(p, 3) for a, p in log["debias"].items() if p})

    t0 = time.perf_counter()
    if gate is not None:
        if not len(tr_idx):
            raise ValueError("a learned gate needs preference pairs (or use gate.kind=fixed)")
        mc, mr = attribute_means(Rc, chosen_txt), attribute_means(Rr, rejected_txt)
        log["gate"] = train_gate(gate, Pc if stream else Pc.float(), mc, mr, gc, seed=cfg.seed, progress=cfg.progress,
                                 block_rows=B)
        model.gate = gate.eval()
    log["timings_s"]["gate"] = time.perf_counter() - t0
    if len(tr_idx):
        s = map_row_blocks(lambda rows, c, r, p: model.score_features(c, p, chosen_txt[rows]).mean
                           - model.score_features(r, p, rejected_txt[rows]).mean, Rc, Rr, Pc, block_rows=B)
        log["train_pair_accuracy"] = float((s > 0).double().mean())
    if len(va_idx):
        vp = [pairs[i] for i in va_idx]
        rep = pair_report(model, *(select_rows(F, va_idx) for F in (Rc_all, Rr_all, Pc_all)), vp, block_rows=B)
        log["validation"] = rep
        logger.info(
            "gate: held-out pairs (%d, whole prompts): mixture accuracy %.3f (train %.3f) vs longer-wins %.3f; "
            "agrees with shorter-wins on %.3f of pairs of unequal length",
            rep["n_pairs"], rep["accuracy"], log.get("train_pair_accuracy", float("nan")), rep["longer_wins_accuracy"],
            rep["agreement_with_shorter_wins"])
    record_training_prompts(model, rated, pairs)
    model.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(log, indent=2, default=str) + "\n", encoding="utf-8")
    logger.info("saved model to %s", out)
    return model


def pair_report(model: DistributionalRewardModel, Rc: Any, Rr: Any, Pc: Any, pairs: list[PreferencePair],
                block_rows: int = DEFAULT_BLOCK_ROWS) -> dict:
    """Held-out pair accuracy of the mixture mean beside the length heuristics (a tie counts
    as wrong, as in RewardBench), and how often the model agrees with "the shorter wins".
    Features: tensors, or row sources scored in blocks of ``block_rows`` rows."""
    sc, sr = map_row_blocks(lambda rows, c, r, p: (model.score_features(c, p, [q.chosen for q in pairs[rows]]).mean,
                                                   model.score_features(r, p, [q.rejected for q in pairs[rows]]).mean),
                            Rc, Rr, Pc, block_rows=block_rows)
    lc = np.array([len(p.chosen.split()) for p in pairs])
    lr = np.array([len(p.rejected.split()) for p in pairs])
    pick_chosen = (sc > sr).numpy()
    unequal = lc != lr
    prefers_shorter = np.where(pick_chosen, lc < lr, lr < lc)
    return {
        "n_pairs": len(pairs),
        "accuracy": float(pick_chosen.mean()),
        "longer_wins_accuracy": float((lc > lr).mean()),
        "shorter_wins_accuracy": float((lc < lr).mean()),
        "agreement_with_shorter_wins": float(prefers_shorter[unequal].mean()) if unequal.any() else float("nan"),
        "ties": int((sc == sr).sum()),
    }
