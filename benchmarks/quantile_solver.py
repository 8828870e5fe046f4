"""Benchmark: quantile heads (interior point and ADMM) vs sklearn QuantileRegressor(solver="highs").

Three parts (JSON to benchmarks/results/quantile_solver_<device>.json, table to stdout):

1. ``small``: n=4000, d=384, alpha=0.003, taus {0.05, 0.5, 0.95}: seconds per quantile
   model (ours: whole fit / number of levels fitted together) and the objective gap to
   sklearn's LP optimum, with 3 levels and with the default 19 levels.
2. ``paper``: QRM's configuration, M attributes x 19 levels, 60,000 rows x 4096 features per
   attribute (synthetic, distinct rows per attribute). The gap is the solver's own
   duality-gap certificate (a proof; sklearn cannot run at this size).
3. ``recovery``: bimodal mixture, quantile heads vs a least-squares point model.
4. ``real``: every attribute of the default training data (``distrm train``'s config, its
   train split, MiniLM features from the feature store), standardised as the heads do, at
   each ``--real-alphas`` value: both solvers (the interior-point default and ADMM at its
   former default settings), seconds per model, certified gaps, and the objective gap to
   sklearn's highs for a sample of (attribute, level) heads solved by sklearn in the same run.

Usage: python benchmarks/quantile_solver.py --device cpu --paper-attributes 1
       python benchmarks/quantile_solver.py --device cuda --no-sklearn --paper-attributes 19
       python benchmarks/quantile_solver.py --skip-small --no-recovery --paper-attributes 0 --real
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from distrm.heads.quantile import QuantileHeads  # noqa: E402
from distrm.heads.synthetic import (  # noqa: E402
    BimodalMixture,
    LocationScaleBimodal,
    embedding_features,
    heteroscedastic_targets,
)

TAUS = (0.05, 0.5, 0.95)
RESULTS = Path(__file__).resolve().parent / "results"


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def small(args) -> dict:
    n, d, alpha = 4000, 384, 0.003
    X = embedding_features(n, d, seed=0)
    y = heteroscedastic_targets(X, seed=1)
    out: dict = {"n": n, "d": d, "alpha": alpha, "sklearn": {}, "ours": {}}
    if args.sklearn_taus:
        from sklearn.linear_model import QuantileRegressor

        for t in args.sklearn_taus:
            t0 = time.perf_counter()
            m = QuantileRegressor(quantile=t, alpha=alpha, solver="highs").fit(X, y)
            el = time.perf_counter() - t0
            r = y - X @ m.coef_ - m.intercept_
            obj = float(np.mean(np.maximum(t * r, (t - 1) * r)) + alpha * np.abs(m.coef_).sum())
            out["sklearn"][str(t)] = {"seconds": el, "objective": obj}
            print(f"sklearn tau={t}: {el:.2f} s, objective {obj:.8f}", flush=True)
    elif args.sklearn_json and Path(args.sklearn_json).is_file():
        out["sklearn"] = json.loads(Path(args.sklearn_json).read_text())["small"]["sklearn"]
        out["sklearn_from"] = args.sklearn_json
    Xt = torch.as_tensor(X, device=args.device)
    for name, levels, solver in [(f"{s_} {n_}", lv_, s_) for s_ in args.solvers for n_, lv_ in (("3 levels", list(TAUS)), ("19 levels", None))]:
        kw = dict(levels=levels, alpha=alpha, device=args.device, standardize=False, solver=solver)
        h = QuantileHeads(**kw)
        h.fit(Xt, y[:, None])  # warm-up (CUDA context, kernels) -- timed run below
        _sync(args.device)
        t0 = time.perf_counter()
        h = QuantileHeads(**kw).fit(Xt, y[:, None])
        _sync(args.device)
        el = time.perf_counter() - t0
        lv = h.levels_.tolist()
        obj = h.objective(Xt, y[:, None])[0]
        row = {"seconds_total": el, "levels": len(lv), "seconds_per_model": el / len(lv), "iterations": int(h.n_iter_[0]),
               "max_certified_gap": float(h.duality_gap_.max()), "per_tau": {}}
        for t in TAUS:
            k = min(range(len(lv)), key=lambda i: abs(lv[i] - t))
            ent = {"objective": float(obj[k]), "certified_gap": float(h.duality_gap_[0, k])}
            ref = out["sklearn"].get(str(t))
            if ref:
                ent["gap_vs_sklearn"] = (ent["objective"] - ref["objective"]) / ref["objective"]
            row["per_tau"][str(t)] = ent
        out["ours"][name] = row
    if out["sklearn"]:
        sk = np.mean([v["seconds"] for v in out["sklearn"].values()])
        out["sklearn_seconds_per_model"] = float(sk)
        for row in out["ours"].values():
            row["speedup_per_model"] = float(sk / row["seconds_per_model"])
    return out


def paper_data(M: int, n: int, d: int, device: str, dtype: torch.dtype, seed: int = 0):
    """Synthetic backbone-like features (low rank + noise, not centred) with heteroscedastic
    targets, distinct rows per attribute, built on the device (18 GB at full size in fp32)."""
    g = torch.Generator(device=device).manual_seed(seed)
    r = 32
    basis = torch.randn(r, d, generator=g, device=device, dtype=dtype) * (2.0 / math.sqrt(r))
    spec = (1.0 / torch.sqrt(1.0 + torch.arange(r, device=device, dtype=dtype)))
    mean = torch.randn(d, generator=g, device=device, dtype=dtype) * 0.3
    X = torch.empty(M * n, d, device=device, dtype=dtype)
    ys = []
    for m in range(M):
        Xm = X[m * n : (m + 1) * n]
        Xm.copy_((torch.randn(n, r, generator=g, device=device, dtype=dtype) * spec) @ basis)
        Xm.add_(torch.randn(n, d, generator=g, device=device, dtype=dtype), alpha=0.5).add_(mean)
        a = torch.randn(d, generator=g, device=device, dtype=dtype) * (torch.rand(d, generator=g, device=device) < 0.25)
        c = torch.randn(d, generator=g, device=device, dtype=dtype)
        sa, sc = (Xm @ a), (Xm @ c)
        sa, sc = (sa - sa.mean()) / sa.std(), (sc - sc.mean()) / sc.std()
        ys.append((0.5 + 0.15 * sa + (0.03 + 0.12 * torch.sigmoid(sc)) * torch.randn(n, generator=g, device=device, dtype=dtype)).double())
    y = torch.cat(ys)
    attribute = torch.arange(M, device=device).repeat_interleave(n)
    index = torch.arange(M * n, device=device)
    return X, y, attribute, index


def paper(args) -> dict:
    M, n, d = args.paper_attributes, args.paper_n, args.paper_d
    dtype = torch.float32 if args.device.startswith("cuda") else torch.float64
    t0 = time.perf_counter()
    X, y, a, i = paper_data(M, n, d, args.device, dtype)
    _sync(args.device)
    gen = time.perf_counter() - t0
    kw = {"device": args.device, "max_iter": args.paper_max_iter, "verbose": args.verbose, "standardize": False,
          "solver": args.paper_solver}
    t0 = time.perf_counter()
    h = QuantileHeads(**kw).fit(X, y.cpu(), attribute=a.cpu(), index=i.cpu(), n_attributes=M)
    _sync(args.device)
    el = time.perf_counter() - t0
    gaps = h.duality_gap_
    return {
        "attributes": M, "levels": 19, "rows_per_attribute": n, "d": d, "dtype": str(dtype), "data_seconds": gen,
        "fit_seconds": el, "iterations": h.n_iter_.tolist(), "max_certified_gap": float(gaps.max()),
        "median_certified_gap": float(gaps.median()), "max_iter": args.paper_max_iter,
        "heads_above_1e-3": int((gaps > 1e-3).sum()),
    }


def recovery(args) -> dict:
    """Linear-representable bimodal truth (the test's target) and, reported as is, a bimodal
    mixture whose weight depends on x (its quantiles jump between modes: not linear)."""
    from distrm.heads.baselines import RidgeHeads

    out = {}
    for name in ("location_scale_bimodal", "weight_depends_on_x"):
        d, n = 8, 20000
        if name == "location_scale_bimodal":
            law = LocationScaleBimodal.random(d, seed=0)
            X, Xte = law.features(n, seed=1), law.features(2000, seed=2)
        else:
            rng = np.random.default_rng(0)
            law = BimodalMixture.random(d, seed=0)
            X, Xte = rng.standard_normal((n, d)), rng.standard_normal((2000, d))
        y = law.sample(X, seed=3)
        t0 = time.perf_counter()
        h = QuantileHeads(device=args.device).fit(torch.as_tensor(X), y[:, None])
        el = time.perf_counter() - t0
        truth = law.quantiles(Xte, h.levels_.numpy())
        pred = h.predict(Xte)[:, 0, :].cpu().numpy()
        point = RidgeHeads().fit(X, y[:, None]).predict(Xte)[:, 0, 0].numpy()
        # a point model's best use as a "quantile" is its one number at every level
        out[name] = {
            "n": n, "d": d, "test_rows": len(Xte), "fit_seconds": el,
            "quantile_heads_max_abs_error": float(np.abs(pred - truth).max()),
            "quantile_heads_mean_abs_error": float(np.abs(pred - truth).mean()),
            "point_model_max_abs_error": float(np.abs(point[:, None] - truth).max()),
            "point_model_mean_abs_error": float(np.abs(point[:, None] - truth).mean()),
        }
    return out


def real(args) -> dict:
    """The default config's real attribute problems (see the module docstring)."""
    from distrm.features.backbones import Backbone
    from distrm.config import load_config, TrainConfig
    from distrm.features import extract
    from distrm.heads.quantile import _Problem, _solve, standardizer
    from distrm.cli.train import default_config_path
    from distrm.training.qrm import build_targets, drop_thin_attributes, load_training_data

    cfg = load_config(TrainConfig, args.real_config or default_config_path(), args.real_set)
    rated, _, _ = load_training_data(cfg)
    rated, _ = drop_thin_attributes(rated, cfg.data.min_items_per_attribute)
    t = build_targets(rated)
    bb = Backbone.from_pretrained(cfg.backbone.name, max_length=cfg.backbone.max_length, dtype=cfg.backbone.dtype)
    feats = extract(bb, t.prompts, t.responses, store=args.store or cfg.backbone.store, progress=False)
    X = torch.as_tensor(np.asarray(feats.reward), dtype=torch.float64)
    mean, scale = standardizer(X)
    Z = (X - mean) / scale
    levels = torch.linspace(0, 1, 21, dtype=torch.float64)[1:-1]
    sk_levels = [int(round(t_ / 0.05)) - 1 for t_ in args.real_sklearn_levels]
    out = {"config": args.real_config or "embedded default", "set": args.real_set, "backbone": bb.identity,
           "items": int(X.shape[0]), "d": int(X.shape[1]), "alphas": {}}
    for alpha in args.real_alphas:
        rows = []
        for m, name in enumerate(t.attributes):
            sel = np.nonzero(t.attribute == m)[0]
            prob = _Problem(Z, torch.as_tensor(t.index[sel]), torch.as_tensor(t.y[sel]), torch.as_tensor(t.weight[sel]))
            row = {"attribute": name, "rows": len(sel), "items": int(prob.Z.shape[0]), "solvers": {}}
            for solver, kw in (("ipm", {}), ("admm (former default: tol 1e-2, 1000 it)", {"tol": 1e-2, "max_iter": 1000})):
                key = solver.split()[0]
                if key not in args.real_solvers:
                    continue
                tol = kw.get("tol", 1e-6)
                t0 = time.perf_counter()
                r = _solve(prob, levels, alpha, key, True, tol, kw.get("max_iter", 100), torch.device(args.device))
                el = time.perf_counter() - t0
                row["solvers"][key] = {"seconds_per_model": el / len(levels), "n_iter": int(r["n_iter"]),
                                       "objective": r["objective"].tolist(), "certified_gap_max": float(r["gap"].max()),
                                       "nonzero_median": float((r["beta"] != 0).sum(1).double().median())}
            if not args.no_sklearn and args.real_sklearn_levels:
                from sklearn.linear_model import QuantileRegressor

                Zr = prob.Z[prob.idx].numpy()
                y_, w_ = prob.y.numpy(), prob.om.numpy()
                row["sklearn"] = {}
                for k in sk_levels:
                    tau = float(levels[k])
                    t0 = time.perf_counter()
                    sk = QuantileRegressor(quantile=tau, alpha=alpha, solver="highs").fit(Zr, y_, sample_weight=w_)
                    el = time.perf_counter() - t0
                    res = y_ - Zr @ sk.coef_ - sk.intercept_
                    obj = float((w_ * np.maximum(tau * res, (tau - 1) * res)).sum() / w_.sum() + alpha * np.abs(sk.coef_).sum())
                    ent = {"tau": tau, "seconds": el, "objective": obj, "nonzero": int((sk.coef_ != 0).sum())}
                    for key, sv in row["solvers"].items():
                        ent[f"{key}_rel_gap"] = (sv["objective"][k] - obj) / obj
                    row["sklearn"][str(k)] = ent
            rows.append(row)
            print(_real_line(alpha, row), flush=True)
        out["alphas"][str(alpha)] = rows
    return out


def _real_line(alpha: float, row: dict) -> str:
    parts = [f"alpha={alpha:<7g}{row['attribute']:<30}{row['items']:>6} items{row['rows']:>6} rows"]
    for key, sv in row["solvers"].items():
        parts.append(f"{key}: {sv['seconds_per_model']:.3f} s/model, {sv['n_iter']} it, cert {sv['certified_gap_max']:.1e}, "
                     f"nnz {sv['nonzero_median']:.0f}")
    if row.get("sklearn"):
        sk = row["sklearn"]
        parts.append(f"sklearn {np.mean([e['seconds'] for e in sk.values()]):.2f} s/model")
        for key in row["solvers"]:
            gaps = [e[f"{key}_rel_gap"] for e in sk.values()]
            parts.append(f"{key} vs sklearn max {max(gaps):+.1e}")
    return " | ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sklearn-taus", type=lambda s: [float(x) for x in s.split(",") if x], default=list(TAUS))
    ap.add_argument("--no-sklearn", action="store_true", help="skip sklearn (use --sklearn-json for the reference)")
    ap.add_argument("--sklearn-json", default=str(RESULTS / "quantile_solver_cpu.json"))
    ap.add_argument("--paper-attributes", type=int, default=19, help="0 skips the paper-scale run")
    ap.add_argument("--paper-n", type=int, default=60000)
    ap.add_argument("--paper-d", type=int, default=4096)
    ap.add_argument("--paper-max-iter", type=int, default=5000)
    ap.add_argument("--paper-solver", default="admm", help="admm (default: d x d Newton systems at d=4096 are GPU work) or ipm")
    ap.add_argument("--solvers", type=lambda s: s.split(","), default=["ipm", "admm"], help="solvers for the small part")
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--no-recovery", action="store_true")
    ap.add_argument("--real", action="store_true", help="run the real-data part (needs ../shared/data and the MiniLM package)")
    ap.add_argument("--real-config", default=None, help="train config whose data to use (default: the embedded default)")
    ap.add_argument("--real-set", action="append", default=[], metavar="KEY=VALUE", help="--set overrides of that config")
    ap.add_argument("--real-alphas", type=lambda s: [float(x) for x in s.split(",")], default=[0.003, 0.03])
    ap.add_argument("--real-solvers", type=lambda s: s.split(","), default=["ipm", "admm"])
    ap.add_argument("--real-sklearn-levels", type=lambda s: [float(x) for x in s.split(",") if x], default=[0.05, 0.5, 0.95])
    ap.add_argument("--store", default=None, help="feature store (default: the config's)")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--out", default=None, help="JSON path (default results/quantile_solver_<device>.json)")
    args = ap.parse_args()
    if args.no_sklearn:
        args.sklearn_taus = []
    res: dict = {"device": args.device, "torch": torch.__version__, "platform": platform.platform(),
                 "threads": torch.get_num_threads(), "command": " ".join(sys.argv)}
    if args.device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
    if not args.skip_small:
        res["small"] = s = small(args)
        print(f"\n== n=4000 d=384 alpha=0.003 ({args.device}) ==")
        print(f"{'solver':<22}{'s/model':>10}{'speedup':>9}{'iters':>7}  gap vs sklearn / certified, per tau")
        if s["sklearn"]:
            print(f"{'sklearn highs':<22}{s['sklearn_seconds_per_model']:>10.3f}{'1':>9}{'':>7}")
        for name, row in s["ours"].items():
            g = "  ".join(f"{t}: {v.get('gap_vs_sklearn', float('nan')):+.1e}/{v['certified_gap']:.1e}" for t, v in row["per_tau"].items())
            print(f"{'ours ' + name:<22}{row['seconds_per_model']:>10.4f}{row.get('speedup_per_model', float('nan')):>9.1f}{row['iterations']:>7}  {g}")
    rec = {} if args.no_recovery else recovery(args)
    if rec:
        res["recovery"] = rec
    for name, r in rec.items():
        print(f"\n== recovery: {name} (n={r['n']}, held-out {r['test_rows']}, 19 levels) ==")
        print(f"quantile heads: max abs err {r['quantile_heads_max_abs_error']:.4f} (mean {r['quantile_heads_mean_abs_error']:.4f})")
        print(f"point model   : max abs err {r['point_model_max_abs_error']:.4f} (mean {r['point_model_mean_abs_error']:.4f})")
    if args.paper_attributes > 0:
        res["paper"] = p = paper(args)
        print(f"\n== paper scale: {p['attributes']} attr x 19 levels x {p['rows_per_attribute']} rows x {p['d']} ({args.device}) ==")
        print(f"fit {p['fit_seconds']:.1f} s (data gen {p['data_seconds']:.1f} s), iterations {p['iterations']}, "
              f"certified gap max {p['max_certified_gap']:.2e} median {p['median_certified_gap']:.2e}")
    if args.real:
        print("\n== real attribute data (default training config, MiniLM features, standardised) ==")
        res["real"] = real(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.out) if args.out else RESULTS / f"quantile_solver_{args.device.split(':')[0]}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
