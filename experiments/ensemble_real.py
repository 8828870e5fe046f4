"""Ensemble reward model on the real shared preference data with frozen backbone features.

    PYTHONPATH=src python experiments/ensemble_real.py [--out experiments/results/ensemble_real.json]

Same data, caps, backbone and feature store as ``benchmarks/table1.py`` (so no feature is
computed twice): training pairs = ``distrm.training.qrm.load_training_data`` of the ensemble
config (``src/distrm/configs/ensemble-minilm.yaml``) with ``data.max_rows_per_source``
capped as table1; evaluation = every shared preference set through
``distrm.eval.pairs`` (held-out split for sets used in training, LLMBar / Auto-J whole,
the same seeded per-set sample as table1). Features: ``distrm.features.backbones`` +
``distrm.features.extract`` on the on-disk store. Heads: ``distrm.heads.ensemble``.

Variants (each 10 linear BT heads, one pass, summed loss, hyperparameters from the config):
  paper      -- independent random init, Adam mini-batches, no bootstrap (the paper's recipe
                on a frozen backbone; what ``distrm train`` with ``model: ensemble`` fits);
  bootstrap  -- the same plus a bootstrap resample of the pairs per member;
  single     -- one head fit first (L-BFGS), the 10 heads attached at it, then trained.
Reference: one BT head fit to convergence (``BTHead``, L-BFGS).

Reports per variant: held-out accuracy of the ensemble mean per set and per section, every
member's accuracy, how different the members are, and Figure 6 (per-pair member variance
of the chosen reward and of the margin, per section) as a PNG next to the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from distrm.features.backbones import Backbone  # noqa: E402
from distrm.eval.disagreement import ensemble_disagreement  # noqa: E402
from distrm.eval.disagreement import member_diversity  # noqa: E402
from distrm.eval.pairs import evaluate_pairs  # noqa: E402
from distrm.models.bt_ensemble import EnsembleRewardModel  # noqa: E402
from distrm.eval import pairs as pe  # noqa: E402
from distrm.features import extract  # noqa: E402
from distrm.heads.baselines import BTHead  # noqa: E402
from distrm.heads.ensemble import BTEnsembleHeads  # noqa: E402
from distrm.training.qrm import load_training_data  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import table1  # noqa: E402

VARIANTS = {
    "paper": dict(bootstrap=False, init="random"),
    "bootstrap": dict(bootstrap=True, init="random"),
    "single": dict(bootstrap=False, init="single_head"),
}
SECTION_ORDER = ["Chat", "Chat Hard", "Safety"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="experiments/results/ensemble_real.json")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--dtype", default=None, help="backbone.dtype (bfloat16 for SmolLM2 on CPU, as table1)")
    ap.add_argument("--store", default=".cache/distrm/features")
    ap.add_argument("--max-train-rows", type=int, default=300, help="data.max_rows_per_source (table1's cap)")
    ap.add_argument("--max-eval-pairs", type=int, default=200, help="per evaluation set (table1's cap, same seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()

    t_start = time.perf_counter()
    # table1's own config builder: the ensemble config with table1's caps, store and dtype
    targs = argparse.Namespace(store=args.store, batch_size=16, runs="runs/table1", max_train_rows=args.max_train_rows,
                               gate_epochs=None, data_dir=args.data_dir, dtype=args.dtype)  # fmt: skip
    cfg = table1._cfg(targs, args.backbone, "BT ensemble (10)", args.seed)
    ec = cfg.ensemble
    _, train, reports = load_training_data(cfg)
    srcs = {p.source for p in train}
    psets = [pe.cap_pairs(pe.load_shared_set(n, args.data_dir, srcs, cfg.data.test_fraction), args.max_eval_pairs) for n in pe.SHARED_PAIR_SETS]
    test = [p for ps in psets for p in ps.pairs]
    set_of = [ps.name for ps in psets for _ in ps.pairs]
    sections = [pe.section_of(pe.subset_name(p, s), "plain") for p, s in zip(test, set_of)]
    print(f"pairs: {len(train)} train, {len(test)} held-out over {[ps.name for ps in psets]}", flush=True)

    bb = Backbone.from_pretrained(args.backbone, max_length=cfg.backbone.max_length, dtype=cfg.backbone.dtype)
    kw = dict(store=args.store, batch_size=16, progress=True)

    def feats(ps):
        c = extract(bb, [p.prompt for p in ps], [p.chosen for p in ps], **kw)
        r = extract(bb, [p.prompt for p in ps], [p.rejected for p in ps], **kw)
        return torch.as_tensor(np.asarray(c.reward)).double(), torch.as_tensor(np.asarray(r.reward)).double()

    t0 = time.perf_counter()
    Xc, Xr = feats(train)
    Tc, Tr = feats(test)
    t_feat = time.perf_counter() - t0
    print(f"features: {tuple(Xc.shape)} train, {tuple(Tc.shape)} held-out in {t_feat:.0f}s", flush=True)
    # evaluate_pairs groups by p.source; label the held-out pairs by section for the per-section numbers
    by_section = [type(p)(p.prompt, p.chosen, p.rejected, sec, p.id, subset=p.subset) for p, sec in zip(test, sections)]

    out_path = Path(args.out)
    result: dict = {
        "pipeline": "distrm.training.qrm.load_training_data + distrm.eval.pairs sets; distrm.features.backbones + distrm.features store; distrm.heads.ensemble",
        "backbone": args.backbone,
        "backbone_identity": getattr(bb, "identity", None),
        "data": {
            "train_pairs": len(train),
            "heldout_pairs": len(test),
            "heldout_by_set": {ps.name: {"n": len(ps.pairs), "split": ps.split, "report": ps.report} for ps in psets},
            "heldout_by_section": {s: sections.count(s) for s in SECTION_ORDER},
            "test_fraction": cfg.data.test_fraction,
            "max_rows_per_source": args.max_train_rows,
            "max_eval_pairs": args.max_eval_pairs,
        },
        "hyperparameters": {**{k: getattr(ec, k) for k in ("n_members", "epochs", "lr", "l2", "init_std", "batch_size", "optimizer")}, "seed": args.seed},
        "timings_s": {"features": round(t_feat, 1)},
        "variants": {},
    }

    t0 = time.perf_counter()
    if ec.l2 is None:  # the config's default: the penalty chosen on held-out pairs (as distrm train does)
        from distrm.data.splits import split_key
        from distrm.heads.baselines import BTHeadCV

        ec.l2 = BTHeadCV(seed=args.seed).fit(Xc, Xr, groups=[split_key(p.prompt) for p in train]).l2_
        result["hyperparameters"]["l2"] = ec.l2
    single = BTHead(l2=ec.l2, max_iter=500).fit(Xc, Xr)
    ref_ens = EnsembleRewardModel.from_heads(type("H", (), {"coef_": single.coef_[None]})(), backbone=args.backbone)
    result["reference_single_bt_lbfgs"] = {
        "heldout": evaluate_pairs(ref_ens, test, (Tc, Tr)),
        "heldout_by_section": evaluate_pairs(ref_ens, by_section, (Tc, Tr))["by_source"],
        "train_accuracy": single.train_accuracy_,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"reference single BT head (L-BFGS): held-out {result['reference_single_bt_lbfgs']['heldout']['accuracy']:.4f}", flush=True)

    for name in args.variants.split(","):
        t0 = time.perf_counter()
        heads = BTEnsembleHeads(
            n_members=ec.n_members, l2=ec.l2, lr=ec.lr, epochs=ec.epochs, init_std=ec.init_std, batch_size=ec.batch_size,
            optimizer=ec.optimizer, seed=args.seed, **VARIANTS[name],
        ).fit(Xc, Xr)
        secs = time.perf_counter() - t0
        model = EnsembleRewardModel.from_heads(heads, backbone=args.backbone, backbone_identity=result["backbone_identity"])
        ev = evaluate_pairs(model, test, (Tc, Tr))
        ev["by_section"] = evaluate_pairs(model, by_section, (Tc, Tr))["by_source"]
        ev["section_mean_accuracy"] = float(np.mean([v["accuracy"] for v in ev["by_section"].values()]))
        mc, mr = model.member_rewards(Tc), model.member_rewards(Tr)
        W = heads.coef_
        cos = torch.nn.functional.normalize(W, dim=1) @ torch.nn.functional.normalize(W, dim=1).T
        off = ~torch.eye(W.shape[0], dtype=torch.bool)
        # member disagreement on held-out pairs: per-member accuracy per dataset
        per_src = {}
        for s in sorted({p.source for p in test}):
            ix = [i for i, p in enumerate(test) if p.source == s]
            per_src[s] = ((mc[ix] > mr[ix]).double().mean(0)).tolist()
        fig = ensemble_disagreement(
            mc.numpy(), mr.numpy(), sections, section_order=SECTION_ORDER,
            png_path=out_path.with_name(f"{out_path.stem}_fig6_{name}.png"),
            title=f"{ec.n_members} BT heads on frozen {args.backbone} ({name}): held-out pairs",
        )
        result["variants"][name] = {
            "settings": VARIANTS[name],
            "fit_seconds": round(secs, 1),
            "heldout": ev,
            "member_heldout_accuracy_by_source": per_src,
            "member_train_accuracy": heads.train_accuracy_.tolist(),
            "final_member_loss": heads.member_losses(Xc, Xr).tolist(),
            "max_member_grad_norm": float(heads.member_gradients(Xc, Xr).norm(dim=1).max()),
            "weight_cosine": {"mean": float(cos[off].mean()), "min": float(cos[off].min())},
            "weight_norm": W.norm(dim=1).tolist(),
            "diversity_heldout_chosen": member_diversity(mc),
            "figure6": fig,
        }
        acc = ev["accuracy"]
        print(
            f"[{name}] held-out mean acc {acc:.4f}; members {min(ev['member_accuracy']):.4f}..{max(ev['member_accuracy']):.4f}; "
            f"weight cos mean {float(cos[off].mean()):.4f}; per source "
            + ", ".join(f"{s}={v['accuracy']:.3f}" for s, v in ev["by_section"].items()),
            flush=True,
        )
    result["timings_s"]["total"] = round(time.perf_counter() - t_start, 1)
    result["reports"] = reports if isinstance(reports, dict) else str(reports)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
