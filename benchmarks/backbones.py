"""Raw vs reward-tuned backbones (issue 6): does a Bradley-Terry fine-tune of the backbone help
the heads on top?

For each backbone (MiniLM and SmolLM2-135M raw, each after ``distrm finetune-backbone``,
optionally Gemma-3 raw/tuned) it runs :func:`table1.run_backbone` -- the same training data
(train split of the default shared sets), the same held-out evaluation splits, the same feature
store and caps as Table 1 -- and reports, per shared evaluation set, the pairwise accuracy of

* a linear BT head and the QRM (3 seeds) on the frozen features,
* the BT ensemble (10 heads): on a reward-tuned backbone this is the uncertainty-aware paper's
  recipe end to end (fine-tuned single-head RM -> frozen backbone -> N heads),
* the fine-tuned reward model's own score head (tuned backbones only: head @ features),
* the "longer answer wins" heuristic.

    PYTHONPATH=src python benchmarks/backbones.py \\
        --backbones minilm,smollm2-135m,runs/rm-smollm2-135m-cpu --dtype bfloat16 --max-train-rows 400 --max-eval-pairs 250
    PYTHONPATH=src python benchmarks/backbones.py --update --backbones minilm,.cache/backbones/minilm-tuned   # keep the other rows

Nothing is tuned on the evaluation splits: the fine-tune's pairs are checked to share no prompt
with them (``finetune_prompt_overlap`` in the JSON must be 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import table1 as t1  # noqa: E402

from distrm.eval import pairs as pe  # noqa: E402
from distrm.eval.common import write_json  # noqa: E402

CHAT_SETS = ("llmbar", "ultrafeedback", "orca-dpo", "autoj-pairwise")  # Chat + Chat Hard sections
DPL_HEADS = {"mean_variance": "DPL mean-variance", "categorical": "DPL categorical"}
METHODS = ("BT head", "QRM", "BT ensemble (10)", *DPL_HEADS.values(), "RM head (fine-tuned)", "longer wins")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default="minilm,smollm2-135m,runs/rm-smollm2-135m-cpu",
                   help="aliases, HF names or directories written by distrm finetune-backbone")
    p.add_argument("--out", default="benchmarks/results/backbones.json")
    p.add_argument("--runs", default="runs/backbones")
    p.add_argument("--reaggregate", action="store_true", help="rebuild the table and targets from --out's per-seed results (no training)")
    p.add_argument("--no-dpl", action="store_true", help="leave out the DPL heads' rows")
    p.add_argument("--update", action="store_true", help="rerun only --backbones and keep --out's per-seed results of its other "
                   "backbones (the table shows them all)")
    args, rest = p.parse_known_args(argv)
    targs = t1.parse_args(rest + ["--runs", args.runs, "--out", args.out])  # caps, seeds, store, dtype: table1's options
    return args, targs


def eval_pairs(targs: argparse.Namespace, backbone: str) -> tuple[list, list[str], dict[str, str]]:
    """The evaluation pairs exactly as table1.run_backbone builds them, and subset -> set name."""
    psets = t1.eval_pair_sets(targs, t1._cfg(targs, backbone, "QRM", 0))[0]
    pairs = [p for ps in psets for p in ps.pairs]
    names = [ps.name for ps in psets for _ in ps.pairs]
    sub2set = {pe.subset_name(p, n): n for p, n in zip(pairs, names)}
    return pairs, names, sub2set


def per_set(entry: dict[str, Any], sub2set: dict[str, str]) -> dict[str, float]:
    """Pooled accuracy per evaluation set (LLMBar's five subsets pooled) from a pair summary."""
    tot: dict[str, list[int]] = {}
    for sub, c in entry["subsets"].items():
        t = tot.setdefault(sub2set[sub], [0, 0])
        t[0] += c["correct"]
        t[1] += c["total"]
    return {s: ct[0] / ct[1] for s, ct in tot.items()}


def finetune_info(backbone: str, ev_pairs: list) -> dict[str, Any] | None:
    """For a finetune-backbone dir: its log, and the proof that its training pairs share no
    prompt with the evaluation pairs."""
    log_path = Path(backbone) / "distrm_finetune.json"
    if not log_path.is_file():
        return None
    from distrm.config import from_dict
    from distrm.data.records import prompt_hash
    from distrm.training.finetune import FinetuneConfig, load_pairs, upgrade_legacy_config

    log = json.loads(log_path.read_text())
    cfg = from_dict(FinetuneConfig, upgrade_legacy_config(log["config"]), str(log_path))
    train, holdout, _ = load_pairs(cfg)
    seen = {prompt_hash(p.prompt) for p in train + holdout}
    overlap = sum(prompt_hash(p.prompt) in seen for p in ev_pairs)
    keys = ("train_pairs", "holdout_pairs", "pairs_truncated", "train_pairs_by_source")
    return {"data": {k: log["data"].get(k) for k in keys}, "holdout_eval": log.get("eval_holdout"),
            "train_runtime_s": log["train"].get("train_runtime"), "merge_check": log.get("merge_check"),
            "finetune_prompt_overlap": overlap, "config": log["config"]}  # fmt: skip


def eval_features(targs: argparse.Namespace, backbone: str, ev_pairs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected reward features of the evaluation pairs (from the store: already extracted)."""
    from distrm.features.backbones import Backbone
    from distrm.features import extract

    base = t1._cfg(targs, backbone, "QRM", 0)
    bb = Backbone.from_pretrained(backbone, max_length=base.backbone.max_length, dtype=base.backbone.dtype)
    kw = dict(store=targs.store, batch_size=targs.batch_size, progress=False)
    prompts = [p.prompt for p in ev_pairs]
    fc = torch.as_tensor(np.asarray(extract(bb, prompts, [p.chosen for p in ev_pairs], **kw).reward)).double()
    fr = torch.as_tensor(np.asarray(extract(bb, prompts, [p.rejected for p in ev_pairs], **kw).reward)).double()
    return fc, fr


def rm_head_scores(targs: argparse.Namespace, backbone: str, ev_pairs: list) -> tuple[np.ndarray, np.ndarray]:
    """The fine-tuned score head on the backbone's features."""
    from distrm.training.finetune import load_head

    w = load_head(backbone).double()
    fc, fr = eval_features(targs, backbone, ev_pairs)
    return (fc @ w.T)[:, 0].numpy(), (fr @ w.T)[:, 0].numpy()


def _ms(v: list[float]) -> str:
    return f"{100 * np.mean(v):.1f}" + (f" ± {100 * np.std(v):.1f}" if len(v) > 1 and np.std(v) > 1e-9 else "")


def table(results: dict[str, dict[str, dict[int, Any]]], sub2set: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
    sets = list(pe.SHARED_PAIR_SETS)
    head = ["backbone", "method", *sets, "mean of sets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = []
    length_done = False
    for bb, methods in results.items():
        for m in METHODS:
            if m not in methods or not methods[m]:
                continue
            if m == "longer wins":
                if length_done:
                    continue  # backbone-independent: one row
                length_done = True
            seeds = sorted(methods[m])
            accs = [per_set(methods[m][s]["pairs"], sub2set) for s in seeds]
            means = [float(np.mean([a[k] for k in sets])) for a in accs]
            row = {"backbone": "-" if m == "longer wins" else bb, "method": m, "seeds": seeds,
                   "sets": {k: {"mean": float(np.mean([a[k] for a in accs])), "std": float(np.std([a[k] for a in accs]))} for k in sets},
                   "mean_of_sets": {"mean": float(np.mean(means)), "std": float(np.std(means)), "values": means}}  # fmt: skip
            rows.append(row)
            lines.append("| " + " | ".join([row["backbone"], m, *[_ms([a[k] for a in accs]) for k in sets], _ms(means)]) + " |")
    return rows, "\n".join(lines)


def targets(rows: list[dict[str, Any]], tuned: list[str], raw: list[str]) -> dict[str, Any]:
    """The issue's targets, as measured: the tuned backbone's mean vs every raw backbone's (per
    head), and vs the length heuristic on each chat-style set."""
    get = {(r["backbone"], r["method"]): r for r in rows}
    length = get.get(("-", "longer wins"))
    out: dict[str, Any] = {}
    for t in tuned:
        for m in ("BT head", "QRM", "BT ensemble (10)", *DPL_HEADS.values(), "RM head (fine-tuned)"):
            if (t, m) not in get:
                continue
            r = get[(t, m)]
            best_raw = max((get[(b, mm)]["mean_of_sets"]["mean"], b, mm) for b in raw
                           for mm in ("BT head", "QRM", "BT ensemble (10)", *DPL_HEADS.values()) if (b, mm) in get)
            vs_len = {k: r["sets"][k]["mean"] - length["sets"][k]["mean"] for k in CHAT_SETS} if length else {}
            same = {b: r["mean_of_sets"]["mean"] - get[(b, m)]["mean_of_sets"]["mean"] for b in raw if (b, m) in get}
            # the seed spread the difference is judged against: the larger std of the two rows' means of sets
            spread = {b: max(r["mean_of_sets"]["std"], get[(b, m)]["mean_of_sets"]["std"]) for b in raw if (b, m) in get}
            out[f"{t} / {m}"] = {
                "mean_of_sets": r["mean_of_sets"]["mean"],
                "minus_same_head_on_raw_backbones": same,
                "same_head_seed_std": spread,
                "best_raw": {"backbone": best_raw[1], "method": best_raw[2], "mean_of_sets": best_raw[0]},
                "beats_every_raw_backbone_by": r["mean_of_sets"]["mean"] - best_raw[0],
                "minus_length_heuristic_on_chat_sets": vs_len,
                "beats_length_on_every_chat_set": bool(vs_len) and all(v > 0 for v in vs_len.values()),
            }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    args, targs = parse_args(argv)
    seeds = [int(s) for s in targs.seeds.split(",")]
    run = [b.strip() for b in args.backbones.split(",") if b.strip()]
    t_all = time.perf_counter()
    results, log, backbones, old = t1.previous_results(args.out, run, args.update, args.reaggregate, ("data", "timings", "finetune"))
    sub2set = eval_pairs(targs, backbones[0])[2]  # the evaluation pairs do not depend on the backbone
    for bb in [] if args.reaggregate else run:
        print(f"=== {bb}", flush=True)
        rows = [r for r in METHODS if r in t1.ROWS and not (args.no_dpl and r in DPL_HEADS.values())]
        res = t1.run_backbone(targs, bb, seeds, log, rows)
        ev_pairs, ev_sets, _ = eval_pairs(targs, bb)
        info = finetune_info(bb, ev_pairs)
        if info is not None:
            log["finetune"][bb] = info
            if info["finetune_prompt_overlap"]:
                raise RuntimeError(f"{bb}: {info['finetune_prompt_overlap']} evaluation pairs share a prompt with its fine-tuning data")
            sc, sr = rm_head_scores(targs, bb, ev_pairs)
            res["RM head (fine-tuned)"] = {s: {"pairs": pe.summarize(pe.evaluate_scores(ev_pairs, ev_sets, sc, sr), "plain")} for s in seeds}
        results[bb] = res
    tuned = [b for b in backbones if b in log["finetune"]]
    raw = [b for b in backbones if b not in log["finetune"]]
    results = {b: results[b] for b in raw + tuned}  # raw rows first in the table
    rows, md = table(results, sub2set)
    tg = targets(rows, tuned, raw)
    caps = old["caps"] if args.reaggregate else {"max_train_rows_per_source": targs.max_train_rows, "max_eval_pairs_per_set": targs.max_eval_pairs,
            "max_cal_items_per_set": targs.max_cal_items, "gate_epochs": targs.gate_epochs, "dtype": targs.dtype}  # fmt: skip
    note = ("Pairwise accuracy in % on each shared evaluation set (held-out split for sets used in training, whole "
            "LLMBar / Auto-J), ties wrong; mean ± std over seeds " + str(seeds) + " (BT head and RM head are deterministic). "
            "'mean of sets' = unweighted mean of the six set accuracies. 'longer wins' = the longer response is preferred.")  # fmt: skip
    out = {"kind": "backbones", "note": note, "caps": caps, "seeds": seeds, "backbones": backbones, "rows": rows,
           "targets": tg, "markdown": md, "per_seed": results, "log": log, "wall_s": time.perf_counter() - t_all}  # fmt: skip
    path = write_json(args.out, out)
    Path(args.out).with_suffix(".md").write_text(f"{note}\n\nCaps: {json.dumps(caps)}\n\n{md}\n", encoding="utf-8")
    print(md)
    for k, v in tg.items():
        print(f"{k}: mean {100 * v['mean_of_sets']:.1f}; minus the same head on raw backbones: "
              + ", ".join(f"{b} {100 * d:+.1f}" for b, d in v["minus_same_head_on_raw_backbones"].items()))
        print(f"  vs best raw {100 * v['best_raw']['mean_of_sets']:.1f} "
              f"({v['best_raw']['backbone']} / {v['best_raw']['method']}): {100 * v['beats_every_raw_backbone_by']:+.1f} pts; "
              f"vs length on chat sets: " + ", ".join(f"{s} {100 * d:+.1f}" for s, d in v["minus_length_heuristic_on_chat_sets"].items()))  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
