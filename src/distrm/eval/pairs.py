"""Pairwise accuracy, RewardBench style: chosen must score STRICTLY above rejected.

A tie counts as wrong (RewardBench's rule: a constant model scores 0, not 50%), and ties
are reported separately so a model that collapses to a constant is visible.

Two weightings, and the output always says which one was used:

* ``rewardbench`` -- for the real RewardBench file: subsets are grouped into RewardBench's
  four sections, a section score is the example-count-weighted mean of its subsets'
  accuracies (math-prm up-weighted to 984 to equal code), and the overall score is the
  equal mean of the sections present. Constants from allenai/reward-bench
  ``rewardbench/constants.py`` (read at a32e272); the xstest counts are the fixed ones
  (250 should-refuse, 154 should-respond), not ArmoRM's pre-fix values.
* ``plain`` -- everything else (our shared sets): per-subset accuracy, per-section pooled
  accuracy (correct / total over the section's pairs) and the mean of the sections. LLMBar's
  five subsets are RewardBench's Chat Hard subsets (mt-bench-hard missing), so our "Chat
  Hard" equals RewardBench's Chat Hard weighting restricted to those subsets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from distrm.data.records import PreferencePair, prompt_hash
from distrm.data.rewardbench import load_rewardbench_pairs
from distrm.distribution import RewardDistribution
from distrm.risk import parse_risk

logger = logging.getLogger(__name__)

# allenai/reward-bench@a32e272 rewardbench/constants.py
REWARDBENCH_EXAMPLE_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95,
    "mt-bench-easy": 28, "mt-bench-med": 40, "mt-bench-hard": 37,
    "math-prm": 984,  # actual 447, up-weighted to equal code
    "refusals-dangerous": 100, "refusals-offensive": 100,
    "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "xstest-should-refuse": 250, "xstest-should-respond": 154, "donotanswer": 136,
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}  # fmt: skip
REWARDBENCH_SECTIONS: dict[str, list[str]] = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond", "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}  # fmt: skip
# RewardBench's "Prior Sets" (not in the four sections; the QRM paper leaves them out too)
REWARDBENCH_PRIOR_SETS = ("anthropic_harmless", "anthropic_helpful", "anthropic_hhh", "mtbench_gpt4", "mtbench_human", "shp", "summarize")

# Sections for the shared (non-RewardBench) preference sets, by subset name prefix.
SHARED_SECTIONS: dict[str, str] = {
    "llmbar": "Chat Hard",
    "hh-rlhf": "Safety",
    "pku": "Safety",
    "ultrafeedback": "Chat",
    "orca": "Chat",
    "autoj": "Chat",
    "auto-j": "Chat",
}


def section_of(subset: str, weighting: str) -> str | None:
    """The section a subset belongs to (None: reported per subset only)."""
    if weighting == "rewardbench":
        for sec, subs in REWARDBENCH_SECTIONS.items():
            if subset in subs:
                return sec
        return None
    s = subset.lower()
    for prefix, sec in SHARED_SECTIONS.items():
        if s.startswith(prefix):
            return sec
    return "Other"


# ---------------------------------------------------------------------------- counting
@dataclass
class Counts:
    correct: int = 0
    ties: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def add(self, other: "Counts") -> "Counts":
        return Counts(self.correct + other.correct, self.ties + other.ties, self.total + other.total)

    def to_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "ties": self.ties, "total": self.total, "accuracy": self.accuracy}


def compare(chosen: np.ndarray | torch.Tensor, rejected: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(correct [n] bool, tie [n] bool): correct only if chosen > rejected strictly."""
    c = np.asarray(torch.as_tensor(chosen).double().cpu().numpy() if isinstance(chosen, torch.Tensor) else chosen, float)
    r = np.asarray(torch.as_tensor(rejected).double().cpu().numpy() if isinstance(rejected, torch.Tensor) else rejected, float)
    if c.shape != r.shape:
        raise ValueError(f"chosen scores {c.shape} and rejected scores {r.shape} differ in shape")
    if np.isnan(c).any() or np.isnan(r).any():
        raise ValueError("NaN score: refusing to count it as a win or a loss")
    return c > r, c == r


def count_by_subset(subsets: Sequence[str], correct: np.ndarray, ties: np.ndarray) -> dict[str, Counts]:
    out: dict[str, Counts] = {}
    for s, ok, t in zip(subsets, correct, ties):
        c = out.setdefault(s, Counts())
        c.correct += int(ok)
        c.ties += int(t)
        c.total += 1
    return dict(sorted(out.items()))


def summarize(per_subset: dict[str, Counts], weighting: str) -> dict[str, Any]:
    """Per-subset counts -> sections and overall under ``weighting`` ("rewardbench"|"plain")."""
    if weighting not in ("rewardbench", "plain"):
        raise ValueError(f"weighting must be 'rewardbench' or 'plain', got {weighting!r}")
    sections: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[str]] = {}
    for s in per_subset:
        sec = section_of(s, weighting)
        if sec is not None:
            groups.setdefault(sec, []).append(s)
    order = list(REWARDBENCH_SECTIONS) if weighting == "rewardbench" else ["Chat", "Chat Hard", "Safety", "Other"]
    for sec in [g for g in order if g in groups] + sorted(set(groups) - set(order)):
        subs = groups[sec]
        pooled = Counts()
        for s in subs:
            pooled = pooled.add(per_subset[s])
        if weighting == "rewardbench":
            w = np.array([REWARDBENCH_EXAMPLE_COUNTS[s] for s in subs], float)
            acc = float(np.sum(w * np.array([per_subset[s].accuracy for s in subs])) / w.sum())
        else:
            acc = pooled.accuracy
        sections[sec] = {**pooled.to_dict(), "accuracy": acc, "subsets": subs}
    accs = [v["accuracy"] for v in sections.values()]
    missing = (
        sorted(set(REWARDBENCH_EXAMPLE_COUNTS) - set(per_subset)) if weighting == "rewardbench" else []
    )
    return {
        "weighting": weighting,
        "subsets": {s: {**c.to_dict(), "section": section_of(s, weighting)} for s, c in per_subset.items()},
        "sections": sections,
        "overall": float(np.mean(accs)) if accs else float("nan"),
        "mean_subset_accuracy": float(np.mean([c.accuracy for c in per_subset.values()])) if per_subset else float("nan"),
        "missing_rewardbench_subsets": missing,
    }


WEIGHTING_NOTES = {
    "rewardbench": "RewardBench weighting: section = example-count-weighted mean of subset accuracies "
    "(allenai/reward-bench constants, math-prm up-weighted to 984); overall = equal mean of the sections present. "
    "Ties count as wrong.",
    "plain": "Plain weighting (not a RewardBench score): section = pooled accuracy over its pairs; "
    "overall = equal mean of the sections. Ties count as wrong.",
}


# ---------------------------------------------------------------------------- data
@dataclass
class PairSet:
    """Pairs to evaluate, with where they came from and which split was used."""

    name: str
    pairs: list[PreferencePair]
    split: str  # "test" (set also used in training) or "all"
    report: dict[str, Any] = field(default_factory=dict)


def subset_name(p: PreferencePair, set_name: str) -> str:
    return p.subset or set_name


def load_rewardbench_file(path_or_hub: str, split: str = "filtered") -> PairSet:
    """A file in RewardBench's format (columns prompt, chosen, rejected, subset[, id]):
    JSON, JSONL, CSV or Parquet (``.gz`` too), or a hub dataset name (needs network).

    Read by :func:`distrm.data.rewardbench.load_rewardbench_pairs` (the data layer owns file
    reading and its ``file:line`` errors); this only wraps the pairs as an evaluation set."""
    loaded = load_rewardbench_pairs(path_or_hub, split)
    rep = loaded.report
    return PairSet(rep.source, loaded.records, "all", {"rows_read": rep.rows_read, "skipped": dict(rep.skipped), "examples": rep.examples})


def detect_weighting(subsets: Iterable[str]) -> str:
    """'rewardbench' when every subset is a RewardBench subset (the real file), else 'plain'."""
    subs = set(subsets)
    known = set(REWARDBENCH_EXAMPLE_COUNTS) | set(REWARDBENCH_PRIOR_SETS)
    core = subs & set(REWARDBENCH_EXAMPLE_COUNTS)
    # the shared LLMBar subsets alone are RewardBench subsets too, but not the benchmark
    non_llmbar = {s for s in core if not s.startswith("llmbar")}
    return "rewardbench" if subs <= known and non_llmbar else "plain"


# ---------------------------------------------------------------------------- scoring
Scorer = Callable[[list, list[str]], Any]


def length_scores(prompts: Sequence, responses: Sequence[str]) -> np.ndarray:
    """The 'longer response wins' reference: characters of the response."""
    return np.array([len(r) for r in responses], float)


def risk_scores(reward: RewardDistribution, spec: str) -> np.ndarray:
    name, params = parse_risk(spec)
    return reward.risk(name, **params).detach().double().cpu().numpy().reshape(-1)


def evaluate_scores(
    pairs: Sequence[PreferencePair], set_names: Sequence[str], chosen: np.ndarray, rejected: np.ndarray
) -> dict[str, Counts]:
    correct, ties = compare(chosen, rejected)
    subsets = [subset_name(p, s) for p, s in zip(pairs, set_names)]
    return count_by_subset(subsets, correct, ties)


def format_table(rows: list[dict[str, Any]], subsets: Sequence[str] | None = None) -> str:
    """Text table: one line per (model, risk) row, columns sections + overall, then subsets."""
    if not rows:
        return "(no rows)"
    secs = list(rows[0]["result"]["sections"])
    subs = list(subsets if subsets is not None else rows[0]["result"]["subsets"])
    w = max(24, max(len(r["name"]) for r in rows) + 2)
    lines = [f"{'':{w}}" + "".join(f"{s[:12]:>13}" for s in secs) + f"{'Overall':>10}"]
    for r in rows:
        res = r["result"]
        lines.append(
            f"{r['name']:{w}}" + "".join(f"{100 * res['sections'][s]['accuracy']:>13.1f}" for s in secs) + f"{100 * res['overall']:>10.1f}"
        )
    lines.append("")
    cw = max(20, max(len(r["name"]) for r in rows) + 2)
    lines.append(f"{'subset':28}" + "".join(f"{r['name']:>{cw}}" for r in rows))
    for s in subs:
        cells = []
        for r in rows:
            c = r["result"]["subsets"].get(s)
            cells.append(f"{c['correct']}/{c['total']} ({100 * c['accuracy']:.1f})" if c else "-")
        lines.append(f"{s[:27]:28}" + "".join(f"{c:>{cw}}" for c in cells))
        if any(r["result"]["subsets"].get(s, {}).get("ties") for r in rows):
            lines.append(f"{'  ties':28}" + "".join(f"{r['result']['subsets'].get(s, {}).get('ties', 0):>{cw}}" for r in rows))
    return "\n".join(lines)


def example_payload(out: Any, i: int) -> dict[str, Any]:
    """Distribution of one scored response for the report (quantiles, attributes, gate)."""
    rw = out.reward
    d: dict[str, Any] = {
        "kind": rw.kind,
        "values": rw.values[i].double().tolist(),
        "levels": None if rw.levels is None else rw.levels.double().tolist(),
        "mean": float(rw.mean()[i]),
    }
    attrs = getattr(out, "attributes", None)
    if attrs is not None and getattr(out, "attribute_names", None):
        d["attributes"] = {
            name: {"weight": float(out.weights[i, m]), "values": attrs.values[i, m].double().tolist()}
            for m, name in enumerate(out.attribute_names)
        }
        d["attribute_levels"] = None if attrs.levels is None else attrs.levels.double().tolist()
        d["attribute_kind"] = attrs.kind
    return d


def pick_examples(
    pairs: Sequence[PreferencePair], out_c: Any, out_r: Any, set_names: Sequence[str], n: int = 6
) -> list[dict[str, Any]]:
    """Examples for the report: the pairs whose chosen/rejected distributions overlap most,
    the most confidently correct/wrong, and the most spread-out (likely bimodal) ones."""
    if n <= 0 or len(pairs) == 0 or out_c.reward.kind != "quantile" and out_c.reward.values.shape[-1] < 2:
        return []
    mc, mr = out_c.reward.mean().double(), out_r.reward.mean().double()
    sc, sr = out_c.reward.std().double(), out_r.reward.std().double()
    z = ((mc - mr) / (sc + sr).clamp_min(1e-9)).numpy()
    spread = torch.maximum(sc, sr).numpy()
    picks: list[tuple[int, str]] = []

    def add(idx: Iterable[int], why: str) -> None:
        for j in idx:
            j = int(j)
            if j not in [p for p, _ in picks]:
                picks.append((j, why))
                return

    order_overlap = np.argsort(np.abs(z))
    add(order_overlap, "distributions overlap most")
    add(np.argsort(-z), "most confidently correct")
    add(np.argsort(z), "most confidently wrong")
    add(np.argsort(-spread), "widest distribution")
    k = 0
    while len(picks) < min(n, len(pairs)) and k < len(pairs):
        add(order_overlap[k:], "overlapping")
        k += 1
    out = []
    for j, why in picks[:n]:
        p = pairs[j]
        prompt = p.prompt if isinstance(p.prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in p.prompt)
        out.append(
            {
                "why": why,
                "set": set_names[j],
                "subset": subset_name(p, set_names[j]),
                "id": p.id,
                "prompt": prompt[:600],
                "chosen_text": p.chosen[:600],
                "rejected_text": p.rejected[:600],
                "chosen": example_payload(out_c, j),
                "rejected": example_payload(out_r, j),
            }
        )
    return out


def variance_payload(chosen: RewardDistribution, rejected: RewardDistribution, sections: Sequence[str]) -> dict[str, Any]:
    """Per-pair variances for the report's histograms, with per-section summaries.

    Ensembles (the uncertainty-aware paper's Figure 6): sample variance (ddof=1) across
    members of the chosen reward and of the chosen-minus-rejected margin
    (:func:`distrm.eval.disagreement.ensemble_disagreement`). Quantile models: the variance of
    the predicted chosen-reward distribution (``var_margin`` is None: the model has no
    joint distribution of the two rewards; a one-member point estimate has variance 0)."""
    if chosen.kind == "ensemble" and chosen.values.shape[-1] >= 2:
        from distrm.eval.disagreement import ensemble_disagreement

        C, R = chosen.values.double().cpu().numpy(), rejected.values.double().cpu().numpy()
        stats = ensemble_disagreement(C, R, list(sections))
        var_c, var_m = C.var(axis=1, ddof=1), (C - R).var(axis=1, ddof=1)
        what = "sample variance across ensemble members (epistemic)"
    else:
        var_c, var_m = chosen.variance().double().cpu().numpy(), None
        stats = {"sections": {}}
        for sec in sorted(set(sections)):
            v = var_c[np.array([x == sec for x in sections])]
            stats["sections"][sec] = {"n": int(v.size), "var_chosen": {"mean": float(v.mean()), "median": float(np.median(v))}}
        what = "variance of the predicted reward distribution"
    return {
        "kind": chosen.kind,
        "what": what,
        "sections": list(sections),
        "var_chosen": np.asarray(var_c, float).round(8).tolist(),
        "var_margin": None if var_m is None else np.asarray(var_m, float).round(8).tolist(),
        "summary": stats["sections"],
    }


def prompt_overlap(pairs: Sequence[PreferencePair], train_hashes: set[str]) -> int:
    """How many evaluation pairs share a prompt with the training data (should be 0)."""
    return sum(prompt_hash(p.prompt) in train_hashes for p in pairs)


# ---------------------------------------------------------------------------- driver
# shared preference sets (registry names); subsets come from the records
SHARED_PAIR_SETS: tuple[str, ...] = ("llmbar", "hh-rlhf-harmless", "pku-saferlhf", "ultrafeedback", "orca-dpo", "autoj-pairwise")


def training_sources(train_config: dict[str, Any] | None, data_dir: str | None) -> tuple[set[str], set[str], float]:
    """(sources used in training, training prompt hashes, test_fraction) for a model's
    training config (the default config when None): decides which sets need their
    held-out split, and lets the output prove there is no prompt overlap."""
    from distrm.config import TrainConfig, from_dict
    from distrm.training.qrm import load_training_data

    cfg = from_dict(TrainConfig, train_config or {}, "train_log.json config")
    if data_dir:
        cfg.data.data_dir = data_dir
    rated, pairs, _ = load_training_data(cfg)
    srcs = {r.source for r in rated} | {p.source for p in pairs}
    hashes = {prompt_hash(r.prompt) for r in rated} | {prompt_hash(p.prompt) for p in pairs}
    return srcs, hashes, cfg.data.test_fraction


def load_shared_set(name: str, data_dir: str | None, train_srcs: set[str], test_fraction: float, strict: bool = False) -> PairSet:
    """A shared preference set through the registry; its test split when it (or a set
    with the same source name) was used in training."""
    from distrm.data import registry
    from distrm.data.splits import split

    loaded = registry.load_pairs(name, data_dir=data_dir, strict=strict)
    recs = list(loaded.records)
    rep = loaded.report
    report = {"rows_read": rep.rows_read, "skipped": dict(rep.skipped)} if hasattr(rep, "rows_read") else dict(rep)
    if {p.source for p in recs} & train_srcs:
        return PairSet(name, split(recs, "test", test_fraction=test_fraction), "test", report)
    return PairSet(name, recs, "all", report)


def cap_pairs(ps: PairSet, cap: int | None, seed: int = 0) -> PairSet:
    """At most ``cap`` pairs per set, a seeded random sample (documented in the output)."""
    if not cap or len(ps.pairs) <= cap:
        return ps
    idx = np.sort(np.random.default_rng(seed).choice(len(ps.pairs), cap, replace=False))
    ps.report = {**ps.report, "capped_from": len(ps.pairs), "cap": cap}
    return PairSet(ps.name, [ps.pairs[i] for i in idx], ps.split, ps.report)


def run_pairs(
    models: Sequence[str],
    sets: Sequence[str] = SHARED_PAIR_SETS,
    files: Sequence[str] = (),
    risks: Sequence[str] = (),
    data_dir: str | None = None,
    store: str | None = None,
    batch_size: int = 32,
    max_pairs: int | None = None,
    n_examples: int = 6,
    weighting: str = "auto",
    length_row: bool = True,
    log: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Evaluate models (and the length heuristic) on shared sets and RewardBench-format files."""
    from distrm.eval import common

    for spec in risks:
        parse_risk(spec)  # fail before any scoring
    store = store or common.DEFAULT_STORE
    loaded_models = [(m, common.load_any_model(m)) for m in models]
    train_cfg = common.train_config_of(models[0]) if models else {}
    psets: list[PairSet] = []
    overlap: dict[str, int] = {}
    if sets:
        srcs, hashes, tf = training_sources(train_cfg, data_dir)
        for name in sets:
            ps = cap_pairs(load_shared_set(name, data_dir, srcs, tf), max_pairs)
            overlap[name] = prompt_overlap(ps.pairs, hashes)
            psets.append(ps)
            log(f"{name}: {len(ps.pairs)} pairs ({ps.split} split)")
    for f in files:
        ps = cap_pairs(load_rewardbench_file(f), max_pairs)
        psets.append(ps)
        log(f"{f}: {len(ps.pairs)} pairs")
    pairs = [p for ps in psets for p in ps.pairs]
    set_names = [ps.name for ps in psets for _ in ps.pairs]
    if not pairs:
        raise ValueError("nothing to evaluate: no pairs loaded")
    subsets = [subset_name(p, s) for p, s in zip(pairs, set_names)]
    w = detect_weighting(subsets) if weighting == "auto" else weighting
    prompts = [p.prompt for p in pairs]
    rows: list[dict[str, Any]] = []
    examples: dict[str, list] = {}
    variances: dict[str, dict[str, Any]] = {}
    for path, model in loaded_models:
        label = common.model_label(model, path)
        out_c = common.score(model, prompts, [p.chosen for p in pairs], store, batch_size)
        out_r = common.score(model, prompts, [p.rejected for p in pairs], store, batch_size)
        for spec in ["mean", *risks]:
            sc, sr = risk_scores(out_c.reward, spec), risk_scores(out_r.reward, spec)
            res = summarize(evaluate_scores(pairs, set_names, sc, sr), w)
            rows.append({"name": f"{label} [{spec}]", "model": str(path), "risk": spec, "result": res})
        examples[label] = pick_examples(pairs, out_c, out_r, set_names, n_examples)
        variances[label] = variance_payload(out_c.reward, out_r.reward, [section_of(s, w) or s for s in subsets])
    if length_row:
        lc = length_scores(prompts, [p.chosen for p in pairs])
        lr = length_scores(prompts, [p.rejected for p in pairs])
        rows.append({"name": "longer response wins", "model": None, "risk": None, "result": summarize(evaluate_scores(pairs, set_names, lc, lr), w)})
    return {
        "kind": "pairs",
        "weighting": w,
        "weighting_note": WEIGHTING_NOTES[w],
        "data": {
            ps.name: {"split": ps.split, "n_pairs": len(ps.pairs), "load_report": ps.report, "train_prompt_overlap": overlap.get(ps.name)}
            for ps in psets
        },
        "rows": rows,
        "examples": examples,
        "variance": variances,
    }


def evaluate_pairs(
    model: Any,
    pairs: Sequence[PreferencePair],
    features: tuple[Any, Any] | tuple[Any, Any, Any],
    risk: str = "mean",
) -> dict[str, Any]:
    """Pairwise accuracy of any distrm model on precomputed features.

    ``features`` = (chosen reward features [n, D], rejected reward features [n, D]) and,
    for models with a gate, the prompt features [n, D] third. A pair is correct only if
    score(chosen) > score(rejected) (a tie is wrong, as in RewardBench). Reports overall,
    per ``pair.source`` (and ``pair.subset`` where set) and, for an ensemble, per member.
    """
    Rc, Rr = (torch.as_tensor(np.asarray(f)) for f in features[:2])
    P = torch.as_tensor(np.asarray(features[2])) if len(features) > 2 else None
    if not (len(pairs) == Rc.shape[0] == Rr.shape[0]):
        raise ValueError(f"{len(pairs)} pairs but features for {Rc.shape[0]}/{Rr.shape[0]}")
    sc = model.score_features(Rc, P, [p.chosen for p in pairs])
    sr = model.score_features(Rr, P, [p.rejected for p in pairs])
    name, params = parse_risk(risk)
    correct = (sc.reward.risk(name, **params) > sr.reward.risk(name, **params)).double()
    out: dict[str, Any] = {"risk": risk, "n": len(pairs), "accuracy": float(correct.mean()) if len(pairs) else None}
    for key in ("source", "subset"):
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(pairs):
            g = getattr(p, key)
            if g is not None:
                groups.setdefault(g, []).append(i)
        if groups:
            out[f"by_{key}"] = {g: {"n": len(ix), "accuracy": float(correct[ix].mean())} for g, ix in sorted(groups.items())}
    if sc.reward.levels is None and sc.members.shape[-1] > 1:  # members of an ensemble
        out["member_accuracy"] = ((sc.members > sr.members).double().mean(0)).tolist()
    return out
