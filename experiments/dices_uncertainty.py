"""Aleatoric vs epistemic uncertainty of a bootstrap QRM against DICES human disagreement.

    PYTHONPATH=src python experiments/dices_uncertainty.py [--out experiments/results/dices_uncertainty.json]

DICES (judge-bench copy in ../shared/data): conversations rated for safety by 69-123
individual crowd raters each (Yes = safe, No = unsafe, Unsure). Every rater is a separate
target (``distrm.data`` loader, scores in [0, 1]). Per dataset:

1. split items by prompt hash (``distrm.data.splits.split``, 20% held out: the same held-out
   items as ``distrm eval calibration`` and ``benchmarks/table1.py``);
2. MiniLM features through ``distrm.features.backbones`` and the on-disk feature store (frozen; the
   same store and backbone identity as table1, so its DICES features are reused);
3. ``BootstrapQuantileHeads``: B QuantileHeads fits (19 levels, L1 alpha as QRM, the
   embedded train config's solver tolerance) on bootstrap resamples of the training
   *items*, each item's distinct scores weighted by their rater counts;
4. on held-out items, the law-of-total-variance split per item,
   Var = E_b[Var_b] (aleatoric) + Var_b[E_b] (epistemic);
5. Spearman correlation of each part with the raters' disagreement per item: the
   population variance of their scores and the entropy (nats) of their label distribution.
   95% intervals: percentile bootstrap over held-out items (2000 resamples).

Context reported alongside: Spearman of the predicted mean with the raters' mean (does the
model learn the item at all), and of m (1 - m) -- the variance a Bernoulli with the
predicted mean would have -- with the raters' variance, because for (almost) binary labels
disagreement is largely a function of the mean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from distrm.eval.metrics import spearman  # noqa: E402
from distrm.heads.ensemble import BootstrapQuantileHeads  # noqa: E402
from distrm.training.qrm import build_targets  # noqa: E402


def entropy(scores: list[float]) -> float:
    """Entropy (nats) of the empirical distribution of the distinct rater scores."""
    c = np.array(list(Counter(np.round(scores, 6)).values()), dtype=float)
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def spearman_ci(x: np.ndarray, y: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rho = spearman(x, y)
    bs = []
    for _ in range(n_boot):
        ix = rng.integers(0, len(x), len(x))
        r = spearman(x[ix], y[ix])
        if r is not None:
            bs.append(r)
    lo, hi = np.percentile(bs, [2.5, 97.5]) if bs else (None, None)
    return {"rho": rho, "ci95": [float(lo), float(hi)] if bs else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="experiments/results/dices_uncertainty.json")
    ap.add_argument("--datasets", default="dices-990,dices-350")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--store", default=".cache/distrm/features")
    ap.add_argument("--dtype", default=None, help="backbone.dtype (bfloat16 for SmolLM2 on CPU, as table1)")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--n-boot", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.003)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-2, help="quantile-head solver tolerance (the embedded train config's)")
    ap.add_argument("--max-iter", type=int, default=1000, help="quantile-head solver iterations (the embedded train config's)")
    args = ap.parse_args()

    from distrm.features.backbones import Backbone
    from distrm.data import registry
    from distrm.data.splits import split
    from distrm.features import extract

    from distrm.heads.quantile import QuantileHeads

    def heads(levels, alpha, device):  # the same solver settings as `distrm train`'s embedded config
        return QuantileHeads(levels=levels, alpha=alpha, device=device, tol=args.tol, max_iter=args.max_iter)

    load_rated = registry.load_rated
    # the same backbone settings (identity) as benchmarks/table1.py: its DICES features are reused
    bb = Backbone.from_pretrained(args.backbone, max_length=512, dtype=args.dtype)
    pipeline = "distrm.data.registry + distrm.data.splits; distrm.features.backbones + distrm.features store; distrm.heads.ensemble.BootstrapQuantileHeads"
    result: dict = {
        "pipeline": pipeline,
        "backbone": args.backbone,
        "backbone_identity": getattr(bb, "identity", None),
        "n_boot": args.n_boot,
        "solver": {"tol": args.tol, "max_iter": args.max_iter},
        "targets": "distinct rater scores per item weighted by their rater counts (distrm.training.qrm.build_targets)",
        "alpha": args.alpha,
        "test_fraction": args.test_fraction,
        "datasets": {},
    }
    for name in args.datasets.split(","):
        t_start = time.perf_counter()
        loaded = load_rated(name, data_dir=args.data_dir)
        recs = loaded.records
        train, test = split(recs, "train", test_fraction=args.test_fraction), split(recs, "test", test_fraction=args.test_fraction)
        tt = build_targets(train)
        attrs = tt.attributes
        print(f"{name}: {len(train)} train / {len(test)} held-out items, {len(tt.y)} training targets, attributes {attrs}", flush=True)
        kw = dict(store=args.store, batch_size=16, progress=True)
        X = torch.as_tensor(np.asarray(extract(bb, tt.prompts, tt.responses, **kw).reward)).double()
        Xt = torch.as_tensor(np.asarray(extract(bb, [r.prompt for r in test], [r.response for r in test], **kw).reward)).double()
        t0 = time.perf_counter()
        bq = BootstrapQuantileHeads(n_boot=args.n_boot, alpha=args.alpha, seed=args.seed, base=heads).fit(
            X, tt.y, attribute=tt.attribute, index=tt.index, n_attributes=len(attrs), sample_weight=tt.weight
        )
        fit_s = time.perf_counter() - t0
        dec = {k: v.numpy() for k, v in bq.decompose(Xt).items()}
        per_attr = {}
        for m, a in enumerate(attrs):
            keep = [i for i, r in enumerate(test) if r.rater_scores(a)]
            raters = [test[i].rater_scores(a) for i in keep]
            rv = np.array([np.var(r) for r in raters])
            ent = np.array([entropy(r) for r in raters])
            rmean = np.array([np.mean(r) for r in raters])
            parts = {k: dec[k][keep, m] for k in ("total", "aleatoric", "epistemic")}
            mean = dec["mean"][keep, m]
            gap = float(np.abs(parts["total"] - parts["aleatoric"] - parts["epistemic"]).max())
            bern = np.clip(mean, 0, 1) * (1 - np.clip(mean, 0, 1))
            per_attr[a] = {
                "n_heldout_items": len(keep),
                "raters_per_item": {"min": int(min(map(len, raters))), "max": int(max(map(len, raters)))},
                "spearman_vs_rater_variance": {k: spearman_ci(v, rv) for k, v in parts.items()},
                "spearman_vs_rater_entropy": {k: spearman_ci(v, ent) for k, v in parts.items()},
                "context": {
                    "spearman_pred_mean_vs_rater_mean": spearman_ci(mean, rmean),
                    "spearman_bernoulli_var_of_pred_mean_vs_rater_variance": spearman_ci(bern, rv),
                    "spearman_aleatoric_vs_epistemic": spearman(parts["aleatoric"], parts["epistemic"]),
                },
                "means": {
                    **{k: float(v.mean()) for k, v in parts.items()},
                    "epistemic_share_of_total": float((parts["epistemic"] / np.maximum(parts["total"], 1e-12)).mean()),
                    "rater_variance": float(rv.mean()),
                },
                "max_abs_total_minus_sum": gap,
            }
            s = per_attr[a]["spearman_vs_rater_variance"]

            def f(x):
                return "undefined" if x is None else f"{x:.3f}"

            print(
                f"  [{a}] Spearman with rater variance: aleatoric {f(s['aleatoric']['rho'])} {s['aleatoric']['ci95']}, "
                f"epistemic {f(s['epistemic']['rho'])} {s['epistemic']['ci95']}, total {f(s['total']['rho'])}; "
                f"pred mean vs rater mean {f(per_attr[a]['context']['spearman_pred_mean_vs_rater_mean']['rho'])}",
                flush=True,
            )
        rep = loaded.report
        result["datasets"][name] = {
            "items": {"train": len(train), "heldout": len(test)},
            "training_targets": int(len(tt.y)),
            "load_report": {"rows_read": rep.rows_read, "skipped": dict(rep.skipped)},
            "fit_seconds": round(fit_s, 1),
            "seconds": round(time.perf_counter() - t_start, 1),
            "attributes": per_attr,
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
