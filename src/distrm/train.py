"""``distrm train``: data -> features -> heads -> debias -> gate -> saved model.

Every stage is resumable: features come from the on-disk feature store (a killed
extraction resumes shard by shard), fitted heads are checkpointed under
``output_dir/checkpoints`` keyed by a fingerprint of (backbone, heads config, targets), so
a rerun after a crash in the gate stage does not refit them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from distrm.config import TrainConfig
from distrm.data.records import PreferencePair, RatedResponse, distinct_items_per_attribute, prompt_key
from distrm.debias import fit_debias, length_signal
from distrm.distribution import default_levels
from distrm.gate import GateTrainConfig, GatingNetwork, train_gate
from distrm.heads.baselines import RidgeHeads
from distrm.heads.quantile import QuantileHeads
from distrm.model import DistributionalRewardModel, ModelConfig


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


def fit_heads(cfg: TrainConfig, X: torch.Tensor, t: AttributeTargets, ckpt_dir: Path, backbone_id: str):
    """Fit (or reload from checkpoint) the attribute heads. Returns (coef [M,K,d], intercept [M,K], levels)."""
    hc = cfg.heads
    M = len(t.attributes)
    fp = _fingerprint(dataclasses.asdict(hc), backbone_id, t.attributes, t.index, t.attribute, t.y, t.weight)
    path = ckpt_dir / f"heads-{fp}.safetensors"
    if path.is_file():
        s = load_file(str(path))
        levels = s["levels"].tolist() if "levels" in s else None
        print(f"heads: reusing checkpoint {path}")
        return s["coef"], s["intercept"], levels
    t0 = time.perf_counter()
    if hc.kind == "quantile":
        levels = default_levels(hc.n_levels, torch.float64)
        heads = QuantileHeads(levels=levels, alpha=hc.alpha, device=hc.device, tol=hc.tol, max_iter=hc.max_iter, verbose=cfg.progress)
        heads.fit(X, t.y, attribute=t.attribute, index=t.index, n_attributes=M, sample_weight=t.weight)
        gap = float(heads.duality_gap_.max())
        print(f"heads: certified relative duality gap <= {gap:.2e} (tol {hc.tol:.0e})")
        coef, intercept, lv = heads.coef_.double().cpu(), heads.intercept_.double().cpu(), levels
    elif hc.kind == "ridge":
        rep = t.weight.astype(np.int64)  # back to one row per rater: ridge fits their mean
        heads = RidgeHeads(seed=cfg.seed).fit(
            X, np.repeat(t.y, rep), attribute=np.repeat(t.attribute, rep), index=np.repeat(t.index, rep), n_attributes=M
        )
        coef, intercept, lv = heads.coef_.unsqueeze(1), heads.intercept_.unsqueeze(1), None
    else:
        raise ValueError(f"heads.kind must be 'quantile' or 'ridge', got {hc.kind!r}")
    print(f"heads: fitted {M} attributes x {coef.shape[1]} levels on {len(t.y)} targets in {time.perf_counter() - t0:.1f}s")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors = {"coef": coef.contiguous(), "intercept": intercept.contiguous()}
    if lv is not None:
        tensors["levels"] = torch.as_tensor(lv, dtype=torch.float64)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return coef, intercept, (lv.tolist() if lv is not None else None)


def train(cfg: TrainConfig) -> DistributionalRewardModel:
    from distrm.backbones import Backbone
    from distrm.features import extract

    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log: dict = {"config": dataclasses.asdict(cfg), "timings_s": {}}
    t0 = time.perf_counter()
    rated, pairs, reports = load_training_data(cfg)
    rated, thin = drop_thin_attributes(rated, cfg.data.min_items_per_attribute)
    if thin:
        print(f"data: left out {len(thin)} attributes rated on < {cfg.data.min_items_per_attribute} items: "
              + ", ".join(f"{a} ({n})" for a, n in thin.items()))
    log["data"] = {"rated_rows": len(rated), "pairs": len(pairs), "reports": reports, "thin_attributes_left_out": thin}
    if not rated:
        raise ValueError("no rated responses to train the attribute heads on")
    targets = build_targets(rated)
    print(
        f"data: {len(targets.prompts)} rated items, {int(targets.weight.sum())} rater scores "
        f"({len(targets.y)} distinct) over {len(targets.attributes)} attributes; {len(pairs)} pairs"
    )
    log["timings_s"]["data"] = time.perf_counter() - t0

    bc = cfg.backbone
    backbone = Backbone.from_pretrained(bc.name, device=bc.device, dtype=bc.dtype, max_length=bc.max_length)
    kw = dict(store=bc.store, batch_size=bc.batch_size, progress=cfg.progress)
    t0 = time.perf_counter()
    rated_feats = extract(backbone, targets.prompts, targets.responses, **kw)
    pair_c = extract(backbone, [p.prompt for p in pairs], [p.chosen for p in pairs], **kw)
    pair_r = extract(backbone, [p.prompt for p in pairs], [p.rejected for p in pairs], **kw)
    log["timings_s"]["features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    X = torch.as_tensor(np.asarray(rated_feats.reward), dtype=torch.float64)
    coef, intercept, levels = fit_heads(cfg, X, targets, out / "checkpoints", backbone.identity)
    log["timings_s"]["heads"] = time.perf_counter() - t0

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
        fixed_weights=fixed,
        debias_source=dc.source if dc.enabled else None,
        mix=cfg.mix,
        backbone_identity=backbone.identity,
        backbone_max_length=bc.max_length,
        backbone_dtype=bc.dtype,
        scales=targets.scales,
    )
    gate = GatingNetwork(X.shape[1], M, gc.hidden, gc.n_hidden, gc.temperature, gc.dropout) if gc.kind == "learned" else None
    if gate is None and fixed is None:
        raise ValueError(f"gate.kind must be 'learned' or 'fixed', got {gc.kind!r}")
    model = DistributionalRewardModel(mcfg, coef, intercept, gate=gate, backbone=backbone)

    Rc = torch.as_tensor(np.asarray(pair_c.reward))
    Rr = torch.as_tensor(np.asarray(pair_r.reward))
    Pc = torch.as_tensor(np.asarray(pair_c.prompt))
    chosen_txt, rejected_txt = [p.chosen for p in pairs], [p.rejected for p in pairs]
    if dc.enabled and pairs:
        # debias on raw attribute means of the training pairs, chosen and rejected pooled
        model.debias = torch.zeros(M, dtype=torch.float64)
        raw = torch.cat(
            [model.attribute_distribution(Rc, chosen_txt).mean(), model.attribute_distribution(Rr, rejected_txt).mean()]
        )
        if dc.source == "length":
            v, vi = length_signal(chosen_txt + rejected_txt), None
        elif dc.source in targets.attributes:
            vi = targets.attributes.index(dc.source)
            v = raw[:, vi]
        else:
            raise ValueError(f"debias.source must be 'length' or a trained attribute {targets.attributes}, got {dc.source!r}")
        model.debias = fit_debias(raw, v, dc.threshold, vi)
        log["debias"] = dict(zip(targets.attributes, model.debias.tolist()))
        print("debias p:", {a: round(p, 3) for a, p in log["debias"].items()})

    t0 = time.perf_counter()
    if gate is not None:
        if not pairs:
            raise ValueError("a learned gate needs preference pairs (or use gate.kind=fixed)")
        mc = model.attribute_distribution(Rc, chosen_txt).mean()
        mr = model.attribute_distribution(Rr, rejected_txt).mean()
        tc = GateTrainConfig(gc.lr, gc.batch_size, gc.weight_decay, gc.epochs, cfg.seed, cfg.progress)
        log["gate"] = train_gate(gate, Pc.float(), mc, mr, tc)
        model.gate = gate.eval()
    log["timings_s"]["gate"] = time.perf_counter() - t0
    if pairs:
        s = model.score_features(Rc, Pc, chosen_txt).mean - model.score_features(Rr, Pc, rejected_txt).mean
        log["train_pair_accuracy"] = float((s > 0).double().mean())
        print(f"train pair accuracy (mixture mean): {log['train_pair_accuracy']:.3f} on {len(pairs)} pairs")
    model.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(log, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"saved model to {out}")
    return model
