"""Does the default model learn? ``distrm train`` with the embedded default config (MiniLM),
checked on held-out shared data, over several seeds:

1. per attribute: held-out pinball loss of the quantile heads (before the ranking-time length
   debias: the heads' prediction of a rater's score) vs the marginal model's (each level's
   weighted quantile of the attribute's training ratings), on the test split of the rated sets;
2. PKU-SafeRLHF test pairs (safe vs unsafe response): how often the ``pku-is_safe`` attribute
   mean ranks the safe response first, beside a logistic-regression probe fitted on the same
   features and the same training labels (the attribute should come within 2 points);
3. every shared evaluation split: the mixture mean's pair accuracy beside a linear BT head
   (penalty chosen by CV) and "the longer response wins", and how often the mixture agrees
   with "the shorter response wins" on pairs of unequal length (a length rule in disguise
   would agree almost always).

    PYTHONPATH=src python benchmarks/default_model.py --seeds 0,1,2
    PYTHONPATH=src python benchmarks/default_model.py --seeds 0 --set data.max_rows_per_source=null  # full data

Writes benchmarks/results/default_model.json (and prints the tables).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from distrm.cli.train import default_config_path  # noqa: E402
from distrm.config import TrainConfig, load_config  # noqa: E402
from distrm.eval import pairs as pe  # noqa: E402
from distrm.eval.common import write_json  # noqa: E402

PKU_ATTRIBUTE = "pku-is_safe"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--config", default=None, help="train config (default: the embedded default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--store", default=None, help="feature store (default: the config's)")
    p.add_argument("--runs", default="runs/default_model")
    p.add_argument("--max-eval-pairs", type=int, default=None, help="cap per evaluation set (seeded sample)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="benchmarks/results/default_model.json")
    return p.parse_args(argv)


def _cfg(args: argparse.Namespace, seed: int) -> TrainConfig:
    ov = [f"seed={seed}", f"output_dir={args.runs}/seed{seed}", "progress=false", *args.set]
    if args.store:
        ov.append(f"backbone.store={args.store}")
    if args.data_dir:
        ov.append(f"data.data_dir={args.data_dir}")
    return load_config(TrainConfig, args.config or default_config_path(), ov)


def _test_rated(cfg: TrainConfig):
    """(train targets, test targets) of the configured rated sets: the same caps, the same
    prompt-hash split and the same thin-attribute rule as ``distrm train``."""
    from distrm.data import registry
    from distrm.data.splits import split
    from distrm.training.qrm import _cap_per_source, build_targets, drop_thin_attributes, load_training_data

    d = cfg.data
    if d.rated == ["default"]:
        rated, _, _ = registry.load_default_training_data(d.data_dir)
    else:
        rated = [r for name in d.rated for r in registry.load_rated(name, data_dir=d.data_dir).records]
    if d.max_rows_per_source:
        rated = _cap_per_source(rated, d.max_rows_per_source)
    test = split(rated, "test", test_fraction=d.test_fraction)
    train_rated, _, _ = load_training_data(cfg)
    train_rated, _ = drop_thin_attributes(train_rated, d.min_items_per_attribute)
    return build_targets(train_rated), build_targets(test)


def attribute_losses(model, bb, store, tr, te) -> list[dict[str, Any]]:
    """Held-out pinball loss per attribute: heads vs marginal (weighted, averaged over levels)."""
    from distrm.features import extract
    from distrm.heads.objective import pinball
    from distrm.heads.quantile import weighted_quantile

    X = torch.as_tensor(np.asarray(extract(bb, te.prompts, te.responses, store=store, progress=False).reward)).double()
    dist = model.attribute_distribution(X, te.responses, debias=False)
    tau = dist.levels
    rows = []
    for a in model.config.attributes:
        if a not in te.attributes or a not in tr.attributes:
            continue
        m_te, m_tr, m_model = te.attributes.index(a), tr.attributes.index(a), list(model.config.attributes).index(a)
        sel = te.attribute == m_te
        if not sel.any():
            continue
        y = torch.as_tensor(te.y[sel])
        w = torch.as_tensor(te.weight[sel])
        q = dist.values[torch.as_tensor(te.index[sel]), m_model]  # [n, K]
        heads = float(((w[:, None] * pinball(y[:, None] - q, tau)).sum(0) / w.sum()).mean())
        trs = tr.attribute == m_tr
        marg_q = weighted_quantile(torch.as_tensor(tr.y[trs]), torch.as_tensor(tr.weight[trs]), tau)
        marg = float(((w[:, None] * pinball(y[:, None] - marg_q[None, :], tau)).sum(0) / w.sum()).mean())
        rows.append({"attribute": a, "test_targets": int(sel.sum()), "test_items": int(len(np.unique(te.index[sel]))),
                     "heads_pinball": heads, "marginal_pinball": marg, "improvement": (marg - heads) / marg})
    return rows


def pku_probe(model, bb, store, cfg: TrainConfig, tr, data_dir) -> dict[str, Any]:
    """The pku-is_safe attribute vs a logistic-regression probe on the PKU test pairs."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from distrm.features import extract

    srcs, _, tf = pe.training_sources(dataclasses.asdict(cfg), data_dir)
    ps = pe.load_shared_set("pku-saferlhf", data_dir, srcs, tf)
    prompts = [p.prompt for p in ps.pairs]
    fc = extract(bb, prompts, [p.chosen for p in ps.pairs], store=store, progress=False)
    fr = extract(bb, prompts, [p.rejected for p in ps.pairs], store=store, progress=False)
    Xc, Xr = torch.as_tensor(np.asarray(fc.reward)).double(), torch.as_tensor(np.asarray(fr.reward)).double()
    m = list(model.config.attributes).index(PKU_ATTRIBUTE)
    out: dict[str, Any] = {"n_pairs": len(ps.pairs), "split": ps.split}
    for label, debias in (("attribute (as scored, debiased)", True), ("attribute (heads only)", False)):
        ac = model.attribute_distribution(Xc, [p.chosen for p in ps.pairs], debias=debias).mean()[:, m]
        ar = model.attribute_distribution(Xr, [p.rejected for p in ps.pairs], debias=debias).mean()[:, m]
        out[label] = float((ac > ar).double().mean())
    # the probe: the same training labels (pku-is_safe rated items, train split), the same features
    a_tr = tr.attributes.index(PKU_ATTRIBUTE)
    sel = tr.attribute == a_tr
    rows = tr.index[sel]
    Xtr = np.asarray(extract(bb, [tr.prompts[i] for i in rows], [tr.responses[i] for i in rows], store=store, progress=False).reward)
    ytr = (tr.y[sel] > 0.5).astype(int)
    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=3, max_iter=2000)).fit(Xtr, ytr, logisticregressioncv__sample_weight=tr.weight[sel])
    pc, pr = probe.decision_function(Xc.numpy()), probe.decision_function(Xr.numpy())
    out["logistic probe"] = float((pc > pr).mean())
    out["probe_C"] = float(probe[-1].C_[0])
    out["gap_to_probe_points"] = 100 * (out["logistic probe"] - out["attribute (as scored, debiased)"])
    return out


def pair_accuracy(model, bb, store, cfg: TrainConfig, args) -> dict[str, Any]:
    """Mixture vs BT head (CV penalty) vs longer-wins on every shared evaluation split."""
    from distrm.data.splits import split_key
    from distrm.features import extract
    from distrm.heads.baselines import BTHeadCV
    from distrm.training.qrm import load_training_data, pair_report

    _, tp, _ = load_training_data(cfg)
    fc = extract(bb, [p.prompt for p in tp], [p.chosen for p in tp], store=store, progress=False)
    fr = extract(bb, [p.prompt for p in tp], [p.rejected for p in tp], store=store, progress=False)
    bt = BTHeadCV(seed=cfg.seed).fit(np.asarray(fc.reward), np.asarray(fr.reward), groups=[split_key(p.prompt) for p in tp])
    srcs, _, tf = pe.training_sources(dataclasses.asdict(cfg), args.data_dir)
    out: dict[str, Any] = {"bt_l2": bt.l2_}
    for name in pe.SHARED_PAIR_SETS:
        ps = pe.cap_pairs(pe.load_shared_set(name, args.data_dir, srcs, tf), args.max_eval_pairs)
        prompts = [p.prompt for p in ps.pairs]
        ec = extract(bb, prompts, [p.chosen for p in ps.pairs], store=store, progress=False)
        er = extract(bb, prompts, [p.rejected for p in ps.pairs], store=store, progress=False)
        Ec, Er = torch.as_tensor(np.asarray(ec.reward)).double(), torch.as_tensor(np.asarray(er.reward)).double()
        rep = pair_report(model, Ec, Er, torch.as_tensor(np.asarray(ec.prompt)).double(), ps.pairs)  # as distrm train reports
        agree = rep["agreement_with_shorter_wins"]
        out[name] = {
            "split": ps.split, "n": len(ps.pairs),
            "mixture": rep["accuracy"],
            "bt_head": float((bt.predict(Ec).numpy() > bt.predict(Er).numpy()).mean()),
            "longer_wins": rep["longer_wins_accuracy"],
            "mixture_agrees_with_shorter_wins": None if np.isnan(agree) else agree,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from distrm.features.backbones import Backbone
    from distrm.training.qrm import train

    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    t_all = time.perf_counter()
    res: dict[str, Any] = {"seeds": seeds, "set": args.set, "per_seed": {}}
    for s in seeds:
        cfg = _cfg(args, s)
        store = cfg.backbone.store
        t0 = time.perf_counter()
        model = train(cfg)
        t_train = time.perf_counter() - t0
        bb = model.backbone
        tr, te = _test_rated(cfg)
        log = json.loads((Path(cfg.output_dir) / "train_log.json").read_text(encoding="utf-8"))
        entry = {
            "train_seconds": t_train,
            "attributes": attribute_losses(model, bb, store, tr, te),
            "heads_cv_report": log.get("heads"),
            "gate_validation": log.get("validation"),
            "pku": pku_probe(model, bb, store, cfg, tr, args.data_dir),
            "pairs": pair_accuracy(model, bb, store, cfg, args),
        }
        res["per_seed"][s] = entry
        _print_seed(s, entry)
    res["summary"] = summarize(res["per_seed"])
    _print_summary(res["summary"])
    res["wall_s"] = time.perf_counter() - t_all
    res["config"] = args.config or "embedded default"
    path = write_json(args.out, res)
    print(f"wrote {path}")
    del Backbone
    return 0


def summarize(per_seed: dict[int, Any]) -> dict[str, Any]:
    seeds = list(per_seed)
    out: dict[str, Any] = {"pairs": {}, "pku": {}}
    for name in pe.SHARED_PAIR_SETS:
        rows = [per_seed[s]["pairs"][name] for s in seeds]
        out["pairs"][name] = {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
                              for k in ("mixture", "bt_head", "longer_wins", "mixture_agrees_with_shorter_wins")
                              if all(r[k] is not None for r in rows)}
        out["pairs"][name]["n"] = rows[0]["n"]
    for k in ("attribute (as scored, debiased)", "attribute (heads only)", "logistic probe", "gap_to_probe_points"):
        v = [per_seed[s]["pku"][k] for s in seeds]
        out["pku"][k] = {"mean": float(np.mean(v)), "std": float(np.std(v))}
    return out


def _print_seed(seed: int, e: dict[str, Any]) -> None:
    print(f"\n== seed {seed}: trained in {e['train_seconds']:.0f} s ==")
    print(f"{'attribute':<32}{'test items':>11}{'heads':>9}{'marginal':>10}{'gain':>8}")
    for r in e["attributes"]:
        print(f"{r['attribute']:<32}{r['test_items']:>11}{r['heads_pinball']:>9.4f}{r['marginal_pinball']:>10.4f}{100 * r['improvement']:>+7.1f}%")
    p = e["pku"]
    print(f"PKU test pairs ({p['n_pairs']}): pku-is_safe ranks the safe response first {100 * p['attribute (as scored, debiased)']:.1f}% "
          f"(heads only {100 * p['attribute (heads only)']:.1f}%) vs logistic probe {100 * p['logistic probe']:.1f}%")


def _print_summary(s: dict[str, Any]) -> None:
    print("\n== pair accuracy on the shared evaluation splits (mean ± std over seeds, %) ==")
    print(f"{'set':<20}{'n':>6}{'mixture':>14}{'BT head':>14}{'longer wins':>13}{'agrees w/ shorter':>19}")
    for name, r in s["pairs"].items():
        f = lambda k: f"{100 * r[k]['mean']:.1f} ± {100 * r[k]['std']:.1f}" if k in r else "n/a"  # noqa: E731
        print(f"{name:<20}{r['n']:>6}{f('mixture'):>14}{f('bt_head'):>14}{100 * r['longer_wins']['mean']:>13.1f}"
              f"{f('mixture_agrees_with_shorter_wins'):>19}")
    p = s["pku"]
    print(f"PKU: attribute {100 * p['attribute (as scored, debiased)']['mean']:.1f} vs probe {100 * p['logistic probe']['mean']:.1f} "
          f"(gap {p['gap_to_probe_points']['mean']:+.1f} points)")


if __name__ == "__main__":
    raise SystemExit(main())
