"""Table 1 of the QRM paper, on backbones we can run on a CPU, with every model type distrm
trains on frozen features, and the papers' claims checked against it.

Rows (one per model type; every one trained by the library's own ``distrm train`` code path on
the same frozen features, the same training data -- train split of the embedded default
config's shared sets -- and the same held-out splits):

* QRM: quantile heads per attribute + gate (``distrm.training.qrm.train``), ranked by its mean;
* ridge+gate: ArmoRM-style point heads + the same gate (``heads.kind=ridge``);
* BT head: one linear Bradley-Terry head, L2 chosen by CV on held-out pairs;
* BT ensemble (10): ``model: ensemble`` (bootstrap members), ranked by the ensemble mean;
* quantile ensemble (5): ``model: quantile_ensemble`` (bootstrap QRM heads, fixed weights);
* DPL mean-variance / DPL categorical: ``model: dpl`` (pairs only), ranked by the mean;
* longer wins: the length heuristic (backbone-independent, one row).

Columns: pairwise accuracy on every shared evaluation split (held-out split for sets used in
training, LLMBar and Auto-J whole) and their unweighted mean; calibration on held-out
multi-rater items: exact CRPS and the randomized-PIT distance from uniform (KS) of the
attribute distributions (models that predict ratings: QRM, quantile ensemble, and ridge scored
as ridge + Gaussian residual spread), and for every model with a spread the Spearman
correlation of its predicted spread with the raters' std (mean over (set, attribute) groups).
Pairwise-only models (BT ensemble, DPL) predict a reward on an arbitrary scale, not a rating:
CRPS and PIT do not apply to them, the rank correlation of their spread does.

    PYTHONPATH=src python benchmarks/table1.py --backbones minilm,.cache/backbones/minilm-tuned,smollm2-135m \\
        --dtype smollm2-135m=bfloat16 --max-eval-pairs 200 --max-cal-items 120        # the committed table
    PYTHONPATH=src python benchmarks/table1.py --backbones minilm --seeds 0 --max-train-rows 100 --max-eval-pairs 50  # smoke
    PYTHONPATH=src python benchmarks/table1.py --reaggregate        # table and claims again from --out's per-seed results

What varies with the seed (a std of 0 is expected elsewhere): QRM's alpha-CV folds and gate;
the gate of ridge+gate (ridge heads are fitted once); the ensembles' bootstrap resamples; the
categorical DPL head's initialisation. The BT head and the mean-variance DPL head are convex
solves with a CV'd penalty: one optimum for every seed.

Claims (:data:`CLAIMS`): each statement of the two papers (and of DPL) that these rows can test,
per backbone, judged on the mean of sets (or the calibration metric) against two noise levels:
the seed spread (sqrt of the two rows' seed variances) and a paired bootstrap over the
evaluation pairs (resampled within each set, the two rows scored on the same resample).
Features come from the feature store, so a rerun costs no backbone time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from distrm.cli.train import default_config_path  # noqa: E402
from distrm.config import TrainConfig, load_config  # noqa: E402
from distrm.eval import calibration as cal  # noqa: E402
from distrm.eval import metrics as em  # noqa: E402
from distrm.eval import pairs as pe  # noqa: E402
from distrm.eval.common import write_json  # noqa: E402

SETS = tuple(pe.SHARED_PAIR_SETS)
SAFETY_SETS = ("hh-rlhf-harmless", "pku-saferlhf")
LOWER_Q = "quantile:tau=0.1"  # the risk-averse ranking of the distributional rows
# row -> (run folder, config overrides on the embedded default; None = not a `distrm train` model)
ROWS: dict[str, tuple[str, list[str]] | None] = {
    "QRM": ("quantile", ["heads.kind=quantile"]),
    "ridge+gate": ("ridge", ["heads.kind=ridge"]),
    "BT head": None,
    "BT ensemble (10)": ("ensemble", ["model=ensemble"]),
    "quantile ensemble (5)": ("quantile_ensemble", ["model=quantile_ensemble"]),
    "DPL mean-variance": ("dpl-mean_variance", ["model=dpl", "dpl.head=mean_variance"]),
    "DPL categorical": ("dpl-categorical", ["model=dpl", "dpl.head=categorical"]),
    "longer wins": None,
}
RATING_ROWS = ("QRM", "ridge+gate", "quantile ensemble (5)")  # predict attribute ratings: CRPS / PIT apply
# summary keys: means over (set, attribute) groups (coverage: the central interval; pit_coverage: on the PIT)
CAL_KEYS = ("crps", "w1", "pinball", "pit_ks", "pit_w1", "pit_hist_w")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default="minilm,.cache/backbones/minilm-tuned,smollm2-135m",
                   help="aliases, HF names or directories written by distrm finetune-backbone")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to run (default: all)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-train-rows", type=int, default=None, help="cap per training source (data.max_rows_per_source; "
                   "default: the embedded config's)")
    p.add_argument("--max-eval-pairs", type=int, default=None, help="cap per evaluation pair set (seeded sample)")
    p.add_argument("--max-cal-items", type=int, default=None, help="cap per calibration set (seeded sample)")
    p.add_argument("--gate-epochs", type=int, default=None, help="override gate.epochs (default: the embedded config's)")
    p.add_argument("--alpha", type=float, default=None, help="override heads.alpha (the quantile heads' L1 penalty)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--store", default=".cache/distrm/features")
    p.add_argument("--runs", default="runs/table1", help="where the trained models go")
    p.add_argument("--out", default="benchmarks/results/table1.json")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-boot", type=int, default=2000, help="paired bootstrap resamples of the evaluation pairs (claims)")
    p.add_argument("--update", action="store_true", help="rerun only --backbones and keep --out's per-seed results of its "
                   "other backbones (the table shows them all)")
    p.add_argument("--reaggregate", action="store_true", help="rebuild the table and claims from --out's per-seed results (no training)")
    p.add_argument("--merge", default=None, help="comma-separated table1 JSON files of runs with the same caps (e.g. one backbone "
                   "each, run side by side) to merge into --out: table and claims rebuilt, no training")
    p.add_argument("--dtype", default=None, help="backbone.dtype (e.g. bfloat16: ~3x faster SmolLM2 on AMX CPUs), for every backbone or per "
                   "backbone as name=dtype,...; default: device default")
    return p.parse_args(argv)


def _cfg(args: argparse.Namespace, backbone: str, row: str, seed: int) -> TrainConfig:
    """The `distrm train` config of ``row`` (:data:`ROWS`): the embedded default with only the
    backbone, model type, seed and caps changed."""
    run, extra = ROWS[row] or ("quantile", ["heads.kind=quantile"])
    ov = [f"backbone.name={backbone}", f"seed={seed}", f"backbone.store={args.store}", "progress=false",
          f"backbone.batch_size={args.batch_size}", f"output_dir={args.runs}/{backbone}/{run}/seed{seed}", *extra]  # fmt: skip
    for flag, key in (("max_train_rows", "data.max_rows_per_source"), ("gate_epochs", "gate.epochs"), ("alpha", "heads.alpha"),
                      ("data_dir", "data.data_dir")):  # fmt: skip
        if getattr(args, flag, None) is not None:
            ov.append(f"{key}={getattr(args, flag)}")
    dtype = backbone_dtype(args, backbone)
    if dtype:
        ov.append(f"backbone.dtype={dtype}")
    if row == "BT ensemble (10)":  # the ensemble recipe's own config (10 BT heads) at the default's inputs and data
        d = load_config(TrainConfig, default_config_path())
        same = [f"backbone.max_length={d.backbone.max_length}", f"data.test_fraction={d.data.test_fraction}"]
        if args.max_train_rows is None:  # the recipe reads every row: cap it as the other rows are
            same.append(f"data.max_rows_per_source={d.data.max_rows_per_source}")
        return load_config(TrainConfig, str(resources.files("distrm") / "configs" / "ensemble-minilm.yaml"),
                           [o for o in ov if o != "model=ensemble"] + same)
    return load_config(TrainConfig, default_config_path(), ov)


def backbone_dtype(args: argparse.Namespace, backbone: str) -> str | None:
    """``--dtype bfloat16`` (every backbone) or ``--dtype smollm2-135m=bfloat16,minilm=float32``."""
    spec = getattr(args, "dtype", None)
    if not spec:
        return None
    if "=" not in spec:
        return spec
    m = dict(kv.split("=", 1) for kv in spec.split(",") if kv.strip())
    return m.get(backbone)


def _share_checkpoints(args: argparse.Namespace, backbone: str, run: str, seed: int) -> None:
    """Point every seed's checkpoint dir at one shared dir: heads are fitted once."""
    shared = Path(args.runs) / backbone / run / "checkpoints"
    shared.mkdir(parents=True, exist_ok=True)
    link = Path(args.runs) / backbone / run / f"seed{seed}" / "checkpoints"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        os.symlink(shared.resolve(), link)


# ---------------------------------------------------------------------------------- evaluation data
@dataclass
class EvalData:
    """The held-out data every row is scored on, and its features (from the store)."""

    pairs: list
    sets: list[str]  # evaluation set of each pair
    items: Any  # cal.MultiRaterItems
    chosen: torch.Tensor  # reward features [n_pairs, d]
    rejected: torch.Tensor
    prompt: torch.Tensor  # prompt features of the pairs (the gate's input)
    cal: torch.Tensor  # reward features of the multi-rater items


def pair_entry(ev: EvalData, sc: np.ndarray, sr: np.ndarray) -> dict[str, Any]:
    """Accuracy summary (plain weighting), per-set accuracy and the per-pair outcome string
    (1 = right; ties wrong) that the paired bootstrap of the claims resamples."""
    summary = pe.summarize(pe.evaluate_scores(ev.pairs, ev.sets, sc, sr), "plain")
    correct, _ = pe.compare(sc, sr)
    per = {s: float(np.mean(correct[[n == s for n in ev.sets]])) for s in SETS if s in ev.sets}
    return {"overall": summary["overall"], "sections": summary["sections"], "subsets": summary["subsets"], "sets": per,
            "correct": "".join("1" if c else "0" for c in correct)}  # fmt: skip


def cal_summary(groups: dict[str, Any]) -> dict[str, Any]:
    """Means over (set, attribute) groups, each group weighted equally (keys a row lacks are
    left out: pairwise-only rows have a spread correlation only)."""
    g = list(groups.values())
    out: dict[str, Any] = {k: float(np.mean([x[k] for x in g])) for k in CAL_KEYS if g and all(x.get(k) is not None for x in g)}
    for lvl in ("0.5", "0.8", "0.9"):
        if g and "coverage" in g[0]:
            out[f"cov{lvl}"] = float(np.mean([x["coverage"][lvl] for x in g]))
            out[f"pit_cov{lvl}"] = float(np.mean([x["pit_coverage"][lvl] for x in g]))
    rhos = [x["spread_spearman_std"] for x in g if x.get("spread_spearman_std") is not None]
    out["spread_rho"] = float(np.mean(rhos)) if rhos else None
    out["spread_rho_positive_groups"] = f"{sum(r > 0 for r in rhos)}/{len(rhos)}"
    return out


def rating_calibration(dist: Any, items: Any, keep: np.ndarray) -> dict[str, Any]:
    """CRPS, PIT, coverage and spread correlation of attribute distributions vs the raters."""
    groups = cal.grouped_metrics(dist, items, keep)
    for x in groups.values():
        x.pop("per_item", None)
    return {"calibration_groups": groups, "calibration": cal_summary(groups)}


def spread_calibration(spread: np.ndarray, items: Any) -> dict[str, Any]:
    """For a reward distribution on its own scale (pairwise-only models): per (set, attribute)
    group, the Spearman correlation of the predicted spread with the raters' std."""
    rater_std = em.rater_spread(items.raters)["std"]
    groups: dict[str, Any] = {}
    for src, att in sorted(set(zip(items.sources, items.attributes))):
        rows = [i for i, k in enumerate(zip(items.sources, items.attributes)) if k == (src, att)]
        groups[f"{src}/{att}"] = {"source": src, "attribute": att, "n_items": len(rows),
                                  "spread_spearman_std": em.spearman(spread[rows], rater_std[rows])}  # fmt: skip
    return {"calibration_groups": groups, "calibration": cal_summary(groups)}


def _tensor(feats: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(feats)).double()


def eval_pair_sets(args: argparse.Namespace, base: TrainConfig) -> tuple[list, set[str], float]:
    """Every shared evaluation set (held-out split of the sets ``base`` trains on, a seeded
    sample of at most ``--max-eval-pairs``), the training prompts' hashes and the test fraction."""
    srcs, hashes, tf = pe.training_sources(dataclasses.asdict(base), args.data_dir)
    return [pe.cap_pairs(pe.load_shared_set(n, args.data_dir, srcs, tf), args.max_eval_pairs) for n in SETS], hashes, tf


def load_eval(args: argparse.Namespace, backbone: str, bb: Any, log: dict[str, Any]) -> EvalData:
    from distrm.features import extract

    base = _cfg(args, backbone, "QRM", 0)
    psets, hashes, tf = eval_pair_sets(args, base)
    items, cal_info = cal.load_items(list(cal.CALIBRATION_SETS.values()), args.data_dir, tf, args.max_cal_items)
    pairs = [p for ps in psets for p in ps.pairs]
    log["data"][backbone] = {
        "eval_sets": {ps.name: {"split": ps.split, "n": len(ps.pairs), "report": ps.report} for ps in psets},
        "train_prompt_overlap": pe.prompt_overlap(pairs, hashes),
        "backbone_dtype": base.backbone.dtype or "default (fp32 on CPU)",
        "calibration": cal_info,
    }
    kw = dict(store=args.store, batch_size=args.batch_size, progress=True)
    prompts = [p.prompt for p in pairs]
    fc = extract(bb, prompts, [p.chosen for p in pairs], **kw)
    fr = extract(bb, prompts, [p.rejected for p in pairs], **kw)
    fcal = extract(bb, items.prompts, items.responses, **kw)
    return EvalData(pairs, [ps.name for ps in psets for _ in ps.pairs], items, _tensor(fc.reward), _tensor(fr.reward),
                    _tensor(fc.prompt), _tensor(fcal.reward))  # fmt: skip


# ---------------------------------------------------------------------------------- the rows
def score_pairs(ev: EvalData, model: Any) -> tuple[Any, Any]:
    """The model's outputs for the chosen and the rejected responses (the served model: gate
    and length debias included where the model has them)."""
    return (model.score_features(ev.chosen, ev.prompt, [p.chosen for p in ev.pairs]),
            model.score_features(ev.rejected, ev.prompt, [p.rejected for p in ev.pairs]))


def distribution_entry(ev: EvalData, model: Any, attrs: bool) -> dict[str, Any]:
    """Accuracy (mean and lower-quantile ranking) of a model with a reward distribution, and its
    calibration: against the raters' ratings (``attrs``: it predicts attribute ratings) or by
    the rank correlation of its spread."""
    oc, orj = score_pairs(ev, model)
    entry = {"pairs": pair_entry(ev, oc.mean.numpy(), orj.mean.numpy())}
    if oc.reward.kind != "ensemble":
        entry["pairs_lower_q"] = pair_entry(ev, pe.risk_scores(oc.reward, LOWER_Q), pe.risk_scores(orj.reward, LOWER_Q))
    if attrs:
        dist, keep = cal.select_attribute(cal.rated_attributes(model, ev.cal, ev.items.responses), model.attribute_names, ev.items.attributes)
        entry.update(rating_calibration(dist, ev.items, keep))
    else:
        entry.update(spread_calibration(model.score_features(ev.cal).reward.std().numpy(), ev.items))
    return entry


def train_row(args: argparse.Namespace, backbone: str, row: str, seed: int) -> Any:
    from distrm.training.bt_ensemble import train_ensemble
    from distrm.training.dpl import train_dpl
    from distrm.training.qrm import train
    from distrm.training.quantile_ensemble import train_quantile_ensemble

    cfg = _cfg(args, backbone, row, seed)
    if row in ("QRM", "ridge+gate"):
        _share_checkpoints(args, backbone, ROWS[row][0], seed)
    return {"qrm": train, "ensemble": train_ensemble, "quantile_ensemble": train_quantile_ensemble, "dpl": train_dpl}[cfg.model](cfg)


def run_backbone(args: argparse.Namespace, backbone: str, seeds: list[int], log: dict[str, Any],
                 rows: list[str] | None = None) -> dict[str, dict[int, Any]]:
    """Every row of ``rows`` (default: all of :data:`ROWS`) on ``backbone``: row -> seed -> entry."""
    from distrm.data.splits import split_key
    from distrm.eval.disagreement import member_diversity
    from distrm.features import extract
    from distrm.features.backbones import Backbone
    from distrm.heads.baselines import BTHeadCV
    from distrm.training.qrm import load_training_data

    rows = list(ROWS) if rows is None else rows
    timings: dict[str, float] = {}
    base = _cfg(args, backbone, "QRM", seeds[0])
    bb = Backbone.from_pretrained(backbone, max_length=base.backbone.max_length, dtype=base.backbone.dtype)
    t0 = time.perf_counter()
    ev = load_eval(args, backbone, bb, log)
    log.setdefault("set_of_pair", {})[backbone] = ev.sets  # the order of the per-pair outcome strings
    timings["eval_data_and_features_s"] = time.perf_counter() - t0
    kw = dict(store=args.store, batch_size=args.batch_size, progress=True)
    res: dict[str, dict[int, Any]] = {r: {} for r in rows}
    baseline = None  # ridge + Gaussian, the ridge+gate row's calibration
    for row in rows:
        if ROWS[row] is None:
            continue
        for s in seeds:
            t0 = time.perf_counter()
            model = train_row(args, backbone, row, s)  # training features come from the store after the first run
            timings[f"{row} seed{s}_s"] = time.perf_counter() - t0
            if row == "ridge+gate":  # calibration: ridge + Gaussian residual spread (the point-estimate baseline)
                oc, orj = score_pairs(ev, model)
                entry = {"pairs": pair_entry(ev, oc.mean.numpy(), orj.mean.numpy())}
                if baseline is None:  # the same training rows for every seed: fitted once
                    baseline = cal.fit_baseline(model, dataclasses.asdict(_cfg(args, backbone, row, s)), args.data_dir,
                                                args.store, args.batch_size)
                d, keep = cal.baseline_distribution(baseline, ev.cal, ev.items, cal.baseline_levels(model))
                entry.update(rating_calibration(d, ev.items, keep))
                entry["gaussian_sigma"] = dict(zip(baseline.attributes_, baseline.sigma_.tolist()))
            else:
                entry = distribution_entry(ev, model, attrs=row in RATING_ROWS)
            if row == "BT ensemble (10)":
                entry["member_diversity"] = member_diversity(torch.cat([model.member_rewards(ev.chosen), model.member_rewards(ev.rejected)]))
            res[row][s] = entry
            c = entry.get("calibration", {})
            print(f"[{backbone}] {row} seed {s}: mean of sets {100 * np.mean(list(entry['pairs']['sets'].values())):.1f}"
                  f"  CRPS {c.get('crps', float('nan')):.4f}  spread rho {c.get('spread_rho') or float('nan'):+.3f}", flush=True)
    if "BT head" in rows:  # one convex optimum (L2 by CV on held-out pairs): the same numbers for every seed
        _, tp, _ = load_training_data(base)
        Xc = _tensor(extract(bb, [p.prompt for p in tp], [p.chosen for p in tp], **kw).reward)
        Xr = _tensor(extract(bb, [p.prompt for p in tp], [p.rejected for p in tp], **kw).reward)
        t0 = time.perf_counter()
        bt = BTHeadCV(seed=seeds[0]).fit(Xc, Xr, groups=[split_key(p.prompt) for p in tp])
        timings["BT head_s"] = time.perf_counter() - t0
        log["data"][backbone]["train_pairs"] = len(tp)
        for s in seeds:
            res["BT head"][s] = {"pairs": pair_entry(ev, bt.predict(ev.chosen).numpy(), bt.predict(ev.rejected).numpy())}
    if "longer wins" in rows:
        prompts = [p.prompt for p in ev.pairs]
        lc, lr = pe.length_scores(prompts, [p.chosen for p in ev.pairs]), pe.length_scores(prompts, [p.rejected for p in ev.pairs])
        for s in seeds:
            res["longer wins"][s] = {"pairs": pair_entry(ev, lc, lr)}
    log["timings"][backbone] = timings
    return res


# ---------------------------------------------------------------------------------- the table
def mean_of_sets(pairs: dict[str, Any], sets: tuple[str, ...] = SETS) -> float:
    return float(np.mean([pairs["sets"][s] for s in sets]))


def _seed_values(by_seed: dict[int, Any], get: Any) -> list[float]:
    return [v for v in (get(e) for _, e in sorted(by_seed.items())) if v is not None]


def _ms(v: list[float], scale: float = 100.0, fmt: str = ".1f") -> str:
    if not v:
        return "n/a"
    sd = f"{np.std(v) * scale:{fmt.lstrip('+')}}"
    return f"{np.mean(v) * scale:{fmt}}" + (f" ± {sd}" if len(v) > 1 and float(sd) != 0 else "")


def aggregate(results: dict[str, dict[str, dict[int, Any]]]) -> tuple[list[dict[str, Any]], str]:
    """One row per (backbone, method): per-set accuracy, mean of sets, CRPS, PIT KS, spread
    correlation; mean and std over seeds."""
    head = ["backbone", "method", *SETS, "mean of sets", "CRPS", "PIT KS", "rho(spread, rater sd)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows: list[dict[str, Any]] = []
    length_done = False
    for bb, methods in results.items():
        for m in [r for r in ROWS if methods.get(r)]:
            if m == "longer wins":
                if length_done:
                    continue  # backbone-independent: one row
                length_done = True
            by_seed = methods[m]
            acc = {s: _seed_values(by_seed, lambda e, s=s: e["pairs"]["sets"][s]) for s in SETS}
            mos = _seed_values(by_seed, lambda e: mean_of_sets(e["pairs"]))
            calk = {k: _seed_values(by_seed, lambda e, k=k: e.get("calibration", {}).get(k)) for k in (*CAL_KEYS, "spread_rho")}
            row = {"backbone": "-" if m == "longer wins" else bb, "method": m, "seeds": sorted(by_seed),
                   "sets": {s: {"mean": float(np.mean(v)), "std": float(np.std(v))} for s, v in acc.items()},
                   "mean_of_sets": {"mean": float(np.mean(mos)), "std": float(np.std(mos)), "values": mos},
                   "calibration": {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in calk.items() if v}}  # fmt: skip
            rows.append(row)
            cells = [row["backbone"], m, *[_ms(acc[s]) for s in SETS], _ms(mos), _ms(calk["crps"], 1, ".4f"),
                     _ms(calk["pit_ks"], 1, ".3f"), _ms(calk["spread_rho"], 1, "+.3f")]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return rows, "\n".join(lines)


# ---------------------------------------------------------------------------------- the claims
# test: greater / not_worse (accuracy, A vs B), less (a calibration metric, A vs B),
# positive (a statistic of A above 0), below (a statistic of A under ``threshold``)
CLAIMS: list[dict[str, Any]] = [
    {"id": "qrm_vs_armorm", "source": "QRM paper, §4 / Table 1",
     "claim": "QRM (ranked by its mean) is more accurate than ArmoRM, its point-estimate counterpart (regression heads + the same gate)",
     "a": "QRM", "b": "ridge+gate", "metric": "accuracy", "test": "greater"},
    {"id": "qrm_vs_bt", "source": "QRM paper, §4 / Table 1 (QRM above FsfairX, the Bradley-Terry model under it)",
     "claim": "QRM is more accurate than a Bradley-Terry point model on the same features",
     "a": "QRM", "b": "BT head", "metric": "accuracy", "test": "greater"},
    {"id": "qrm_crps", "source": "QRM paper, abstract (a distribution captures diverse preferences and label noise)",
     "claim": "QRM's attribute distributions are closer to the raters than a point estimate with one global noise level (CRPS below ridge + Gaussian)",
     "a": "QRM", "b": "ridge+gate", "metric": "crps", "test": "less"},
    {"id": "qrm_pit", "source": "QRM paper, abstract (as above)",
     "claim": "QRM's attribute distributions are better calibrated than ridge + Gaussian (randomized-PIT KS distance from uniform lower)",
     "a": "QRM", "b": "ridge+gate", "metric": "pit_ks", "test": "less"},
    {"id": "qrm_spread", "source": "QRM paper, abstract (as above)",
     "claim": "QRM's predicted spread tracks the raters' disagreement (Spearman with rater std > 0)",
     "a": "QRM", "metric": "spread_rho", "test": "positive"},
    {"id": "ens_disagree", "source": "Uncertainty-aware RLHF, §4 (Figures 1 and 6)",
     "claim": "identically trained reward heads on one frozen backbone disagree on the same (prompt, response) "
              "(mean pairwise member correlation on the evaluation responses below 0.99)",
     "a": "BT ensemble (10)", "metric": "member_corr", "test": "below", "threshold": 0.99},
    {"id": "dpl_mv_vs_bt", "source": "DPL paper (Siththaranjan et al. 2023): fitted on the same pairs; its mean is the point reward",
     "claim": "DPL mean-variance (ranked by its mean) is no less accurate than a BT head",
     "a": "DPL mean-variance", "b": "BT head", "metric": "accuracy", "test": "not_worse"},
    {"id": "dpl_cat_vs_bt", "source": "DPL paper (as above)",
     "claim": "DPL categorical (ranked by its mean) is no less accurate than a BT head",
     "a": "DPL categorical", "b": "BT head", "metric": "accuracy", "test": "not_worse"},
    {"id": "dpl_lowerq_safety", "source": "DPL paper, §5 / Figure 5 (lower quantiles prefer the safe response to a jailbreak)",
     "claim": "on the harmlessness sets (HH-RLHF harmless, PKU-SafeRLHF), ranking by DPL mean-variance's 0.1-quantile is more accurate than by its mean",
     "a": "DPL mean-variance", "a_variant": "pairs_lower_q", "b": "DPL mean-variance", "metric": "accuracy", "sets": SAFETY_SETS,
     "test": "greater"},
    {"id": "dpl_spread", "source": "DPL paper, §5 (DPL's variance identifies hidden context)",
     "claim": "DPL mean-variance's sigma tracks the raters' disagreement on real multi-rater items (Spearman with rater std > 0)",
     "a": "DPL mean-variance", "metric": "spread_rho", "test": "positive"},
    {"id": "qens_spread", "source": "distrm, issue 18 (bootstrap quantile ensemble vs DICES-990 raters, Spearman 0.60)",
     "claim": "the bootstrap quantile ensemble's spread tracks the raters' disagreement (Spearman with rater std > 0)",
     "a": "quantile ensemble (5)", "metric": "spread_rho", "test": "positive"},
]  # fmt: skip


def _outcomes(by_seed: dict[int, Any], variant: str, sets: list[str], set_of_pair: np.ndarray) -> dict[str, np.ndarray]:
    """Per set, the seed-averaged per-pair outcomes (1 right, 0 wrong)."""
    arr = np.mean([np.frombuffer(e[variant]["correct"].encode(), np.uint8) - ord("0") for _, e in sorted(by_seed.items())], axis=0)
    return {s: arr[set_of_pair == s] for s in sets}


def paired_bootstrap(a: dict[str, np.ndarray], b: dict[str, np.ndarray], n_boot: int, seed: int = 0) -> list[float] | None:
    """95% percentile interval of mean-over-sets accuracy(A) - accuracy(B), resampling the
    evaluation pairs with replacement within each set (A and B scored on the same resample)."""
    if n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    diffs = [em.bootstrap_counts(len(a[s]), n_boot, rng) @ (a[s] - b[s]) / len(a[s]) for s in a]
    return em.percentile_ci(np.mean(diffs, axis=0))


def judge(test: str, d: float, spread: float, ci: list[float] | None, threshold: float | None = None,
          groups: dict[str, Any] | None = None) -> str:
    """The verdict. A difference counts only if it exceeds twice the seed spread, the pairs'
    bootstrap interval (accuracy claims) excludes 0, and (calibration claims) a one-sided sign
    test over the (set, attribute) groups finds the direction at p < 0.05."""
    if test == "below":
        return "holds" if d < threshold else "does not hold"
    d = -d if test == "less" else d  # lower is better: judged as A beating B

    def clear(sign: int) -> bool:
        side = "better" if sign > 0 else "worse"
        return (abs(d) > 2 * spread and (ci is None or (ci[0] > 0 if sign > 0 else ci[1] < 0))
                and (groups is None or groups[f"p_{side}"] < 0.05))  # fmt: skip

    if test == "not_worse":
        return "does not hold (worse)" if d < 0 and clear(-1) else "holds"
    if d > 0 and clear(1):
        return "holds"
    if d < 0 and clear(-1):
        return "opposite holds"
    return "not resolved (within noise)"


def sign_test(better: list[bool], worse: list[bool]) -> dict[str, Any]:
    """Groups where A is better / worse, and the one-sided sign-test p of each direction."""
    from scipy.stats import binomtest

    n, kb, kw = len(better), int(sum(better)), int(sum(worse))
    p = (lambda k: float(binomtest(k, n, 0.5, alternative="greater").pvalue) if n else 1.0)  # noqa: E731
    return {"n": n, "better": kb, "worse": kw, "p_better": p(kb), "p_worse": p(kw)}


def group_means(by_seed: dict[int, Any], metric: str) -> dict[str, float]:
    """Per (set, attribute) group, ``metric`` averaged over the seeds whose model has that
    group (a QRM seed may leave out an attribute its heads cannot predict)."""
    vals: dict[str, list[float]] = {}
    for e in by_seed.values():
        for g, x in e.get("calibration_groups", {}).items():
            if x.get(metric) is not None:
                vals.setdefault(g, []).append(x[metric])
    return {g: float(np.mean(v)) for g, v in vals.items()}


def check_claims(per_seed: dict[str, dict[str, dict[int, Any]]], set_of_pair: dict[str, np.ndarray], n_boot: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for c in CLAIMS:
        for bb, methods in per_seed.items():
            A, B = methods.get(c["a"]), methods.get(c.get("b")) if c.get("b") else None
            if not A or (c.get("b") and not B):
                continue
            r: dict[str, Any] = {"id": c["id"], "backbone": bb, "test": c["test"]}
            if c["metric"] == "accuracy":
                sets = list(c.get("sets", SETS))
                va, vb = c.get("a_variant", "pairs"), c.get("b_variant", "pairs")
                xa = _seed_values(A, lambda e: mean_of_sets(e[va], tuple(sets)))
                xb = _seed_values(B, lambda e: mean_of_sets(e[vb], tuple(sets)))
                ci = paired_bootstrap(_outcomes(A, va, sets, set_of_pair[bb]), _outcomes(B, vb, sets, set_of_pair[bb]), n_boot)
                r.update(a=float(np.mean(xa)), b=float(np.mean(xb)), diff=float(np.mean(xa) - np.mean(xb)),
                         seed_spread=float(np.hypot(np.std(xa), np.std(xb))), ci95_pairs=ci, scale=100.0)  # fmt: skip
            elif c["test"] == "below":
                xa = _seed_values(A, lambda e: e.get("member_diversity", {}).get("mean_pairwise_corr"))
                if not xa:
                    continue
                r.update(a=float(np.mean(xa)), diff=float(np.mean(xa)), seed_spread=float(np.std(xa)), ci95_pairs=None, scale=1.0)
            elif c["test"] == "positive":
                xa = _seed_values(A, lambda e: e.get("calibration", {}).get(c["metric"]))
                if not xa:
                    continue
                g = group_means(A, "spread_spearman_std")
                r.update(a=float(np.mean(xa)), diff=float(np.mean(xa)), seed_spread=float(np.std(xa)), ci95_pairs=None, scale=1.0,
                         groups=sign_test([v > 0 for v in g.values()], [v < 0 for v in g.values()]))  # fmt: skip
            else:  # "less": a calibration metric of A vs B
                ga, gb = group_means(A, c["metric"]), group_means(B, c["metric"])
                common = sorted(set(ga) & set(gb))  # a QRM may leave out attributes the baseline keeps

                def over_common(e: dict[str, Any]) -> float | None:
                    v = [e["calibration_groups"][g][c["metric"]] for g in common if g in e.get("calibration_groups", {})]
                    return float(np.mean(v)) if v else None

                xa, xb = _seed_values(A, over_common), _seed_values(B, over_common)
                if not xa or not xb:
                    continue
                r.update(a=float(np.mean(xa)), b=float(np.mean(xb)), diff=float(np.mean(xa) - np.mean(xb)),
                         seed_spread=float(np.hypot(np.std(xa), np.std(xb))), ci95_pairs=None, scale=1.0,
                         groups=sign_test([ga[k] < gb[k] for k in common], [ga[k] > gb[k] for k in common]))  # fmt: skip
            r["verdict"] = judge(c["test"], r["diff"], r["seed_spread"], r["ci95_pairs"], c.get("threshold"), r.get("groups"))
            out.append(r)
    return out


def claims_markdown(checked: list[dict[str, Any]]) -> str:
    lines = ["## Claims", "",
             "Each claim the rows can test, per backbone. `diff` = A - B (accuracy: mean over the listed sets, in points; "
             "calibration: the metric, lower is better for CRPS / PIT KS), mean over seeds; `seed spread` = sqrt(std_A^2 + "
             "std_B^2) over seeds; `95% CI` = paired bootstrap over the evaluation pairs (resampled within each set, "
             "outcomes averaged over seeds). A difference counts when |diff| > 2 x seed spread, the CI excludes 0 and, for "
             "calibration claims, a one-sided sign test over the (set, attribute) groups (A better = lower CRPS / PIT KS, or "
             "a positive spread correlation) gives p < 0.05.", ""]  # fmt: skip
    for c in CLAIMS:
        rs = [r for r in checked if r["id"] == c["id"]]
        if not rs:
            continue
        vs = f" vs **{c['b']}**" if c.get("b") else ""
        lines += [f"**{c['id']}**: {c['claim']}. *Source: {c['source']}.* A = **{c['a']}**"
                  + (f" ({c['a_variant']})" if c.get("a_variant") else "") + vs + ".", "",
                  "| backbone | A | B | diff | seed spread | diff / spread | 95% CI (pairs) | detail | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rs:
            k, f = r["scale"], ".1f" if r["scale"] == 100 else ".4f"
            ratio = abs(r["diff"]) / r["seed_spread"] if r["seed_spread"] > 0 else float("inf")
            ci = f"[{r['ci95_pairs'][0] * k:+{f}}, {r['ci95_pairs'][1] * k:+{f}}]" if r.get("ci95_pairs") else "-"
            g = r.get("groups")
            detail = f"A better in {g['better']}/{g['n']} groups (sign test p {g['p_better']:.3g})" if g else ""
            if r["test"] == "less":
                detail += "; means over the groups both rows predict"
            b = f"{r['b'] * k:{f}}" if "b" in r else "-"
            lines.append(f"| {r['backbone']} | {r['a'] * k:{f}} | {b} | {r['diff'] * k:+{f}} | {r['seed_spread'] * k:{f}} | "
                         f"{ratio:.1f} | {ci} | {detail} | {r['verdict']} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- running
def _seed_keys_to_int(results: dict[str, Any]) -> dict[str, Any]:
    return {bb: {m: {int(k): v for k, v in by_seed.items()} for m, by_seed in methods.items()} for bb, methods in results.items()}


def previous_results(out: str | Path, backbones: list[str], update: bool, reaggregate: bool,
                     log_keys: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any], list[str], dict[str, Any] | None]:
    """What an earlier run wrote to ``out`` that this run keeps: every backbone
    (``reaggregate``), the ones not rerun (``update``) or nothing. Returns (per-seed results,
    log, backbones in table order, the earlier file)."""
    log: dict[str, Any] = {k: {} for k in log_keys}
    if not (update or reaggregate) or not Path(out).is_file():
        if reaggregate:
            raise FileNotFoundError(f"--reaggregate needs an earlier run's {out}")
        return {}, log, backbones, None
    old = json.loads(Path(out).read_text(encoding="utf-8"))
    done = [b for b in old["backbones"] if b in old["per_seed"]]  # a stopped run lists backbones it did not finish
    keep = done if reaggregate else [b for b in done if b not in backbones]
    for k in log_keys:
        log[k].update({b: v for b, v in old["log"].get(k, {}).items() if b in keep})
    results = _seed_keys_to_int({b: old["per_seed"][b] for b in keep})
    return results, log, keep + ([] if reaggregate else backbones), old


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; valid: {list(ROWS)}")
    run = [b.strip() for b in args.backbones.split(",") if b.strip()]
    t_all = time.perf_counter()
    if args.merge:  # runs made side by side: one file of them all, then as --reaggregate
        parts = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.merge.split(",") if f.strip()]
        if any(p["caps"] != parts[0]["caps"] or p["seeds"] != parts[0]["seeds"] for p in parts):
            raise SystemExit(f"--merge: the runs differ in caps or seeds: {[(p['caps'], p['seeds']) for p in parts]}")
        merged = {**parts[0], "backbones": [b for p in parts for b in p["backbones"]],
                  "per_seed": {b: v for p in parts for b, v in p["per_seed"].items()},
                  "log": {k: {b: v for p in parts for b, v in p["log"].get(k, {}).items()} for k in ("data", "timings", "set_of_pair")}}  # fmt: skip
        write_json(args.out, merged)
        args.reaggregate = True
    results, log, backbones, old = previous_results(args.out, run, args.update, args.reaggregate, ("data", "timings", "set_of_pair"))
    if old is not None and not args.reaggregate and old["caps"] != caps_of(args):
        raise SystemExit(f"--update: {args.out} was made with caps {old['caps']}, this run's are {caps_of(args)}")
    caps = old["caps"] if args.reaggregate else caps_of(args)
    seeds = old["seeds"] if args.reaggregate else seeds
    note = (
        "Pairwise accuracy in % on each shared evaluation set (held-out split for sets used in training, LLMBar and Auto-J "
        "whole; ties wrong); 'mean of sets' = unweighted mean of the six. Calibration on held-out multi-rater items, "
        "mean over (set, attribute) groups: exact CRPS and randomized-PIT KS distance of the attribute distributions "
        "([0, 1] rating scale; rows that predict ratings; ridge+gate scored as ridge + Gaussian residual spread), and "
        "the Spearman correlation of the predicted spread with the raters' std (every row with a spread; the BT "
        f"ensemble's is the member std, DPL's its utility's). mean ± std over seeds {seeds} (no ± = the same for every seed)."
    )
    out: dict[str, Any] = {"kind": "table1", "note": note, "caps": caps, "seeds": seeds, "backbones": backbones}

    def write(done: list[str]) -> tuple[str, str]:
        """Table and claims of the backbones done so far, written at once (a stopped run
        keeps its finished backbones: rerun the rest with --update)."""
        part = {b: results[b] for b in backbones if b in done}
        out.update(per_seed=part, log=log, wall_s=time.perf_counter() - t_all)
        write_json(args.out, out)  # the raw results first: the table and claims can be rebuilt (--reaggregate)
        rows_out, md = aggregate(part)
        checked = check_claims(part, {b: np.asarray(log["set_of_pair"][b]) for b in part}, args.n_boot)
        cm = claims_markdown(checked)
        out.update(rows=rows_out, claims=checked, markdown=md, claims_markdown=cm)
        write_json(args.out, out)
        Path(args.out).with_suffix(".md").write_text(f"{note}\n\nCaps: {json.dumps(caps)}\n\n{md}\n\n{cm}\n", encoding="utf-8")
        return md, cm

    for bb in [] if args.reaggregate else run:
        print(f"=== {bb}", flush=True)
        results[bb] = run_backbone(args, bb, seeds, log, rows)
        write([b for b in backbones if b in results])
    md, cm = write(backbones)
    print(md)
    print()
    print(cm)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


def caps_of(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_train_rows_per_source": args.max_train_rows, "max_eval_pairs_per_set": args.max_eval_pairs,
            "max_cal_items_per_set": args.max_cal_items, "gate_epochs": args.gate_epochs, "alpha": args.alpha,
            "dtype": args.dtype}  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
