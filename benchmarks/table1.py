"""Table 1 of the QRM paper, on backbones we can run on a CPU: QRM vs ArmoRM-style ridge +
gate vs a linear Bradley-Terry head vs a BT ensemble, on the same frozen features, the same
training data (train split of the default shared sets) and the same held-out splits.

    PYTHONPATH=src python benchmarks/table1.py                      # minilm + smollm2-135m, 3 seeds
    PYTHONPATH=src python benchmarks/table1.py --backbones minilm --seeds 0 --max-train-rows 300  # smoke

What varies with the seed (and what does not, so a std of 0 is expected there):
* QRM: quantile heads are an exact convex solve, with alpha chosen per attribute by CV whose
  folds depend on the seed; the gate's initialisation and batch order vary.
* ridge + gate: ridge heads fitted once per backbone (alpha picked on a seed-0 validation
  split), shared; the gate varies.
* BT head: L-BFGS on a strictly convex loss (L2 chosen by CV on held-out pairs): one optimum,
  the same for every seed.
* ensemble: 10 BT heads, Adam from seeded random initialisations.

Both QRM and ridge models come from the same ``distrm.training.qrm.train`` as ``distrm train``
(default embedded config; only backbone, head kind, seed and caps changed). Features come
from the feature store, so a rerun (or another seed) costs no backbone time.

Accuracy: ``distrm.eval.pairs`` plain weighting (sections pooled, ties wrong) on every
shared preference set (held-out split for sets used in training). Calibration:
``distrm.eval.calibration`` on held-out multi-rater items; the ridge row is scored as
ridge + Gaussian residual spread (the point-estimate baseline); BT and the ensemble
predict no attribute ratings, so they have no calibration columns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
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
from distrm.eval import pairs as pe  # noqa: E402
from distrm.eval.common import write_json  # noqa: E402

SECTIONS = ("Chat", "Chat Hard", "Safety")
CAL_KEYS = ("crps", "w1", "pinball")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default="minilm,smollm2-135m")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-train-rows", type=int, default=None, help="cap per training source (data.max_rows_per_source)")
    p.add_argument("--max-eval-pairs", type=int, default=None, help="cap per evaluation pair set (seeded sample)")
    p.add_argument("--max-cal-items", type=int, default=None, help="cap per calibration set (seeded sample)")
    p.add_argument("--gate-epochs", type=int, default=None, help="override gate.epochs (default: the embedded config's)")
    p.add_argument("--alpha", type=float, default=None, help="override heads.alpha (the quantile heads' L1 penalty)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--store", default=".cache/distrm/features")
    p.add_argument("--runs", default="runs/table1", help="where the trained models go")
    p.add_argument("--out", default="benchmarks/results/table1.json")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--merge", default=None, help="comma-separated table1 JSON files (e.g. one per backbone) to merge into --out; no training")
    p.add_argument("--dtype", default=None, help="backbone.dtype (e.g. bfloat16: ~3x faster SmolLM2 on AMX CPUs), for every backbone or per "
                   "backbone as name=dtype,...; default: device default")
    return p.parse_args(argv)


def _cfg(args: argparse.Namespace, backbone: str, kind: str, seed: int) -> TrainConfig:
    ov = [f"backbone.name={backbone}", f"heads.kind={kind}", f"seed={seed}", f"backbone.store={args.store}", "progress=false",
          f"backbone.batch_size={args.batch_size}", f"output_dir={args.runs}/{backbone}/{kind}/seed{seed}"]  # fmt: skip
    if args.max_train_rows:
        ov.append(f"data.max_rows_per_source={args.max_train_rows}")
    if args.gate_epochs:
        ov.append(f"gate.epochs={args.gate_epochs}")
    if args.alpha is not None:
        ov.append(f"heads.alpha={args.alpha}")
    if args.data_dir:
        ov.append(f"data.data_dir={args.data_dir}")
    dtype = backbone_dtype(args, backbone)
    if dtype:
        ov.append(f"backbone.dtype={dtype}")
    if kind == "ensemble":  # the ensemble recipe's own config (10 BT heads), same data/backbone/caps
        ov = [o for o in ov if not o.startswith("heads.kind=")]
        # the same inputs as the QRM rows: the embedded default's max_length (and caps)
        max_len = load_config(TrainConfig, default_config_path()).backbone.max_length
        return load_config(TrainConfig, str(resources.files("distrm") / "configs" / "ensemble-minilm.yaml"), ov + [f"backbone.max_length={max_len}"])
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


def _share_checkpoints(args: argparse.Namespace, backbone: str, kind: str, seed: int) -> None:
    """Point every seed's checkpoint dir at one shared dir: heads are fitted once."""
    shared = Path(args.runs) / backbone / kind / "checkpoints"
    shared.mkdir(parents=True, exist_ok=True)
    link = Path(args.runs) / backbone / kind / f"seed{seed}" / "checkpoints"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        os.symlink(shared.resolve(), link)


def pair_summary(pairs: list, set_names: list[str], sc: np.ndarray, sr: np.ndarray) -> dict[str, Any]:
    return pe.summarize(pe.evaluate_scores(pairs, set_names, sc, sr), "plain")


def cal_summary(groups: dict[str, Any]) -> dict[str, Any]:
    """Mean over (set, attribute) groups, each group weighted equally."""
    out: dict[str, Any] = {k: float(np.mean([g[k] for g in groups.values()])) for k in CAL_KEYS}
    for lvl in ("0.5", "0.8", "0.9"):
        out[f"cov{lvl}"] = float(np.mean([g["coverage"][lvl] for g in groups.values()]))
    rhos = [g["spread_spearman_std"] for g in groups.values() if g["spread_spearman_std"] is not None]
    out["spread_rho"] = float(np.mean(rhos)) if rhos else None
    return out


def run_backbone(args: argparse.Namespace, backbone: str, seeds: list[int], log: dict[str, Any]) -> dict[str, dict[int, Any]]:
    from distrm.features.backbones import Backbone
    from distrm.features import extract
    from distrm.data.splits import split_key
    from distrm.heads.baselines import BTHeadCV
    from distrm.training.qrm import load_training_data, train

    timings: dict[str, float] = {}
    base = _cfg(args, backbone, "quantile", seeds[0])
    t0 = time.perf_counter()
    _, train_pairs, _ = load_training_data(base)
    srcs, hashes, tf = pe.training_sources(dataclasses.asdict(base), args.data_dir)
    psets = [pe.cap_pairs(pe.load_shared_set(n, args.data_dir, srcs, tf), args.max_eval_pairs) for n in pe.SHARED_PAIR_SETS]
    items, cal_info = cal.load_items(list(cal.CALIBRATION_SETS.values()), args.data_dir, tf, args.max_cal_items)
    timings["data_s"] = time.perf_counter() - t0
    ev_pairs = [p for ps in psets for p in ps.pairs]
    ev_sets = [ps.name for ps in psets for _ in ps.pairs]
    log["data"][backbone] = {
        "train_pairs": len(train_pairs),
        "eval_sets": {ps.name: {"split": ps.split, "n": len(ps.pairs), "report": ps.report} for ps in psets},
        "train_prompt_overlap": pe.prompt_overlap(ev_pairs, hashes),
        "backbone_dtype": base.backbone.dtype or "default (fp32 on CPU)",
        "calibration": cal_info,
    }

    bb = Backbone.from_pretrained(backbone, max_length=base.backbone.max_length, dtype=base.backbone.dtype)
    kw = dict(store=args.store, batch_size=args.batch_size, progress=True)
    t0 = time.perf_counter()
    prompts = [p.prompt for p in ev_pairs]
    fc = extract(bb, prompts, [p.chosen for p in ev_pairs], **kw)
    fr = extract(bb, prompts, [p.rejected for p in ev_pairs], **kw)
    fcal = extract(bb, items.prompts, items.responses, **kw)
    timings["eval_features_s"] = time.perf_counter() - t0
    Ec, Er = torch.as_tensor(np.asarray(fc.reward)).double(), torch.as_tensor(np.asarray(fr.reward)).double()
    Pc = torch.as_tensor(np.asarray(fc.prompt)).double()
    Xcal = torch.as_tensor(np.asarray(fcal.reward)).double()
    chosen_txt, rejected_txt = [p.chosen for p in ev_pairs], [p.rejected for p in ev_pairs]

    res: dict[str, dict[int, Any]] = {"QRM": {}, "ridge+gate": {}, "BT head": {}, "BT ensemble (10)": {}, "longer wins": {}}
    for kind, name in (("quantile", "QRM"), ("ridge", "ridge+gate")):
        for s in seeds:
            cfg = _cfg(args, backbone, kind, s)
            _share_checkpoints(args, backbone, kind, s)
            t0 = time.perf_counter()
            model = train(cfg)  # training features come from the store after the first run
            timings[f"train_{kind}_seed{s}_s"] = time.perf_counter() - t0
            oc, orj = model.score_features(Ec, Pc, chosen_txt), model.score_features(Er, Pc, rejected_txt)
            entry: dict[str, Any] = {"pairs": pair_summary(ev_pairs, ev_sets, oc.mean.numpy(), orj.mean.numpy())}
            if kind == "quantile":
                entry["pairs_cvar0.1"] = pair_summary(ev_pairs, ev_sets, oc.reward.cvar(0.1).numpy(), orj.reward.cvar(0.1).numpy())
                attrs = cal.rated_attributes(model, Xcal, items.responses)  # before the ranking-time length debias
                d, keep = cal.select_attribute(attrs, list(model.config.attributes), items.attributes)
                dd, kk = cal.select_attribute(model.attribute_distribution(Xcal, items.responses), list(model.config.attributes), items.attributes)
                debiased = cal.grouped_metrics(dd, items, kk)
                entry["calibration_debiased_attributes"] = cal_summary({g: {k: v for k, v in x.items() if k != "per_item"} for g, x in debiased.items()})
            else:
                t = _train_targets(cfg)
                Xtr = torch.as_tensor(np.asarray(extract(bb, t.prompts, t.responses, **kw).reward)).double()
                b = cal.GaussianRidgeBaseline(seed=0).fit(Xtr, t.index, t.attribute, t.y, t.attributes)
                keep = np.array([a in b.attributes_ for a in items.attributes], bool)
                rows = np.nonzero(keep)[0]
                d = b.predict(Xcal[torch.as_tensor(rows)], [items.attributes[i] for i in rows], model.levels if model.levels is not None else cal.baseline_levels(model))
                entry["gaussian_sigma"] = dict(zip(b.attributes_, b.sigma_.tolist()))
            groups = cal.grouped_metrics(d, items, keep)
            for g in groups.values():
                g.pop("per_item", None)
            entry["calibration_groups"] = groups
            entry["calibration"] = cal_summary(groups)
            res[name][s] = entry
            print(f"[{backbone}] {name} seed {s}: overall {100 * entry['pairs']['overall']:.1f}  CRPS {entry['calibration']['crps']:.4f}")

    # BT head and ensemble on the training pairs' features (from the store)
    cfg = _cfg(args, backbone, "quantile", seeds[0])
    _, tp, _ = load_training_data(cfg)
    tpc = extract(bb, [p.prompt for p in tp], [p.chosen for p in tp], **kw)
    tpr = extract(bb, [p.prompt for p in tp], [p.rejected for p in tp], **kw)
    Xc, Xr = torch.as_tensor(np.asarray(tpc.reward)).double(), torch.as_tensor(np.asarray(tpr.reward)).double()
    t0 = time.perf_counter()
    bt = BTHeadCV(seed=seeds[0]).fit(Xc, Xr, groups=[split_key(p.prompt) for p in tp])  # L2 chosen on held-out pairs
    timings["bt_fit_s"] = time.perf_counter() - t0
    for s in seeds:  # deterministic: the same numbers for every seed (reported as such)
        res["BT head"][s] = {"pairs": pair_summary(ev_pairs, ev_sets, bt.predict(Ec).numpy(), bt.predict(Er).numpy())}
    # the ensemble through the library's recipe (distrm.models.bt_ensemble.train_ensemble = `distrm train`
    # with model: ensemble): 10 BT heads, one pass, seeded inits; features from the store
    from distrm.training.bt_ensemble import train_ensemble

    for s in seeds:
        t0 = time.perf_counter()
        ens = train_ensemble(_cfg(args, backbone, "ensemble", s))
        timings[f"ensemble_seed{s}_s"] = time.perf_counter() - t0
        oc, orj = ens.score_features(Ec), ens.score_features(Er)
        res["BT ensemble (10)"][s] = {
            "pairs": pair_summary(ev_pairs, ev_sets, oc.mean.numpy(), orj.mean.numpy()),
            "member_accuracy": ((oc.members > orj.members).double().mean(0)).tolist(),
            "mean_member_variance_chosen": float(oc.variance.mean()),
        }
    lc = pe.length_scores(prompts, chosen_txt)
    lr = pe.length_scores(prompts, rejected_txt)
    for s in seeds:
        res["longer wins"][s] = {"pairs": pair_summary(ev_pairs, ev_sets, lc, lr)}
    log["timings"][backbone] = timings
    return res


def _train_targets(cfg: TrainConfig):
    from distrm.training.qrm import build_targets, load_training_data

    rated, _, _ = load_training_data(cfg)
    return build_targets(rated)


def _ms(vals: list[float | None], scale: float = 1.0, fmt: str = ".1f") -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "n/a"
    return f"{np.mean(v) * scale:{fmt}} ± {np.std(v) * scale:{fmt}}"


def aggregate(results: dict[str, dict[str, dict[int, Any]]]) -> tuple[list[dict[str, Any]], str]:
    rows, lines = [], []
    head = ["backbone", "method", "Overall", *SECTIONS, "CRPS", "W1", "cov80", "cov90", "rho(spread, rater sd)"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for bb, methods in results.items():
        for m, by_seed in methods.items():
            for variant in ("pairs", "pairs_cvar0.1"):
                entries = [e for e in by_seed.values() if variant in e]
                if not entries:
                    continue
                label = m if variant == "pairs" else f"{m} (ranked by CVaR 0.1)"
                acc = {s: [e[variant]["sections"].get(s, {}).get("accuracy") for e in entries] for s in SECTIONS}
                overall = [e[variant]["overall"] for e in entries]
                calib = [e.get("calibration") for e in entries if e.get("calibration")] if variant == "pairs" else []
                row = {
                    "backbone": bb, "method": label, "n_seeds": len(entries),
                    "overall": {"mean": float(np.mean(overall)), "std": float(np.std(overall)), "values": overall},
                    "sections": {s: {"mean": float(np.mean(acc[s])), "std": float(np.std(acc[s]))} for s in SECTIONS},
                }  # fmt: skip
                if calib:
                    row["calibration"] = {
                        k: {"mean": float(np.mean([c[k] for c in calib if c[k] is not None] or [np.nan])),
                            "std": float(np.std([c[k] for c in calib if c[k] is not None] or [np.nan]))}
                        for k in ("crps", "w1", "pinball", "cov0.5", "cov0.8", "cov0.9", "spread_rho")
                    }  # fmt: skip
                rows.append(row)
                cells = [bb, label, _ms(overall, 100), *[_ms(acc[s], 100) for s in SECTIONS]]
                if calib:
                    cells += [_ms([c["crps"] for c in calib], 1, ".4f"), _ms([c["w1"] for c in calib], 1, ".4f"),
                              _ms([c["cov0.8"] for c in calib], 1, ".3f"), _ms([c["cov0.9"] for c in calib], 1, ".3f"),
                              _ms([c["spread_rho"] for c in calib], 1, ".3f")]  # fmt: skip
                else:
                    cells += ["n/a"] * 5
                lines.append("| " + " | ".join(cells) + " |")
    return rows, "\n".join(lines)


def _seed_keys_to_int(results: dict[str, Any]) -> dict[str, Any]:
    return {bb: {m: {int(k): v for k, v in by_seed.items()} for m, by_seed in methods.items()} for bb, methods in results.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    log: dict[str, Any] = {"data": {}, "timings": {}}
    results: dict[str, Any] = {}
    t_all = time.perf_counter()
    if args.merge:  # runs made separately (one per backbone, e.g. with different dtypes)
        caps_seen = []
        for f in args.merge.split(","):
            part = json.loads(Path(f).read_text(encoding="utf-8"))
            results.update(_seed_keys_to_int(part["per_seed"]))
            for k in ("data", "timings"):
                log[k].update(part["log"][k])
            log.setdefault("merged_from", []).append({"file": f, "caps": part["caps"], "seeds": part["seeds"], "wall_s": part["wall_s"]})
            caps_seen.append(part["caps"])
            seeds = part["seeds"]
        if any(c != caps_seen[0] for c in caps_seen):
            raise ValueError(f"refusing to merge runs with different caps: {caps_seen}")
        args.max_train_rows, args.max_eval_pairs = caps_seen[0]["max_train_rows_per_source"], caps_seen[0]["max_eval_pairs_per_set"]
        args.max_cal_items, args.gate_epochs = caps_seen[0]["max_cal_items_per_set"], caps_seen[0]["gate_epochs"]
    else:
        for bb in [b.strip() for b in args.backbones.split(",") if b.strip()]:
            results[bb] = run_backbone(args, bb, seeds, log)
    rows, md = aggregate(results)
    note = (
        "Accuracy in % (plain weighting: sections pooled over the shared sets' held-out pairs; ties wrong; "
        "Chat Hard = LLMBar's five RewardBench subsets; not a RewardBench score). Calibration: exact CRPS / W1 / "
        "coverage of the attribute distributions vs held-out raters ([0, 1] scale), mean over (set, attribute) "
        "groups; ridge+gate is scored as ridge + Gaussian residual spread. mean ± std over seeds "
        f"{seeds}; BT head is deterministic (std 0 by construction)."
    )
    caps = {"max_train_rows_per_source": args.max_train_rows, "max_eval_pairs_per_set": args.max_eval_pairs,
            "max_cal_items_per_set": args.max_cal_items, "gate_epochs": args.gate_epochs}  # fmt: skip
    out = {
        "kind": "table1", "note": note, "caps": caps, "seeds": seeds, "rows": rows, "markdown": md,
        "per_seed": results, "log": log, "wall_s": time.perf_counter() - t_all,
    }  # fmt: skip
    path = write_json(args.out, out)
    Path(args.out).with_suffix(".md").write_text(f"{note}\n\nCaps: {json.dumps(caps)}\n\n{md}\n", encoding="utf-8")
    print(md)
    print(f"wrote {path} and {Path(args.out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
