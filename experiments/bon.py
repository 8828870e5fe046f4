"""Risk-aware best-of-N on RewardBench's AlpacaEval-BoN (rewardbench-bon), with bootstrap CIs.

For each prompt, 11 tulu-2-dpo-13b candidates carry GPT-4-turbo verdicts against GPT-3.5.
A distrm reward model (default: the ``uf_ensemble`` of ``experiments/rl_common.py``, 10 BT
heads on MiniLM features trained with ``distrm.models.bt_ensemble.train_ensemble`` on UltraFeedback +
Orca pairs, saved and loaded through ``distrm.models.auto``; or any saved model dir via ``--model``)
scores every candidate as a distribution; one candidate per prompt is picked by the mean or
by a risk measure. Reported per rule: the judge's win rate of the pick and the rate of
picking a judged loser, with 95% percentile-bootstrap CIs over prompts, and the paired
bootstrap CI of each rule's difference from mean-picking (same resampled prompts).

The script refuses a reward model whose held-out pair accuracy is not above 0.5 (the earlier
table used one at ~0.44: see docs/RL.md). Candidate features go through the feature store,
so a re-run or another risk measure costs no extraction.

    PYTHONPATH=src:. python experiments/bon.py --all                 # 805 prompts
    PYTHONPATH=src:. python experiments/bon.py --max-prompts 120     # seeded subset
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from distrm.features import extract  # noqa: E402
from distrm.models.auto import load_reward_model  # noqa: E402
from distrm.rl.bon import bon_with_cis, candidate_inputs, load_rewardbench_bon  # noqa: E402
from distrm.rl.prompts import default_data_dir  # noqa: E402
from experiments.rl_common import STORE, build_uf, describe  # noqa: E402

# risk parameters in units of the model's reward scale are set from --scale below; these
# are the dimensionless ones
RISKS = ["mean", "cvar:alpha=0.2", "quantile:tau=0.1", "mean_minus_std:c=1", "mean_minus_std:c=2"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-prompts", type=int, default=200)
    p.add_argument("--all", action="store_true", help="all 805 prompts")
    p.add_argument("--n-candidates", type=int, default=11)
    p.add_argument("--model", default=None, help="a saved distrm reward model dir (default: rl_common's uf_ensemble)")
    p.add_argument("--n-boot", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--min-heldout-acc", type=float, default=0.5)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bon.json"))
    a = p.parse_args()
    t0 = time.time()
    model_dir = Path(a.model) if a.model else build_uf()
    info = describe(model_dir) if (model_dir / "heldout.json").is_file() else {"dir": str(model_dir)}
    acc = info.get("heldout", {}).get("accuracy")
    if acc is None or acc <= a.min_heldout_acc:
        raise SystemExit(f"{model_dir}: held-out pair accuracy {acc} is not above {a.min_heldout_acc}; refusing to rank with it")
    model = load_reward_model(model_dir)

    data = load_rewardbench_bon(default_data_dir() / "rewardbench-bon", a.n_candidates, None if a.all else a.max_prompts)
    P, N = len(data.ids), a.n_candidates
    prompts, texts = candidate_inputs(data)
    t1 = time.time()
    feats = extract(model.backbone, prompts, texts, store=STORE, batch_size=a.batch_size, progress=True)
    t_feat = time.time() - t1
    out_scored = model.score_features(torch.as_tensor(np.asarray(feats.reward)), None, texts)
    dist = out_scored.reward  # P*N distributions, prompt-major
    Rm = dist.mean().reshape(P, N)
    sd = dist.std().reshape(P, N)
    # scale-aware parameters: lam and beta in units of the typical within-prompt spread of the mean
    scale = float(Rm.std(1).median())
    lam = round(1.0 / scale, 3)
    risks = RISKS + [f"certainty_equivalent:lam={lam}", f"certainty_equivalent:lam={round(3 * lam, 3)}",
                     f"mean_minus_variance:beta={lam}"]
    core = bon_with_cis(dist, data, risks, n_boot=a.n_boot)
    lengths = torch.tensor([[len(c) for c in cs] for cs in data.candidates], dtype=torch.float64)
    for spec, picks in core.pop("picks").items():
        core["by_risk"][spec]["mean_chars_of_pick"] = float(lengths[torch.arange(P), torch.tensor(picks)].mean())
    # does the reward model rank candidates like the judge at all? (per-prompt Spearman, mean over prompts)
    def _rank(x: torch.Tensor) -> torch.Tensor:
        return x.argsort(1).argsort(1).double()
    rr, rp = _rank(Rm), _rank(data.preference)
    rr, rp = rr - rr.mean(1, keepdim=True), rp - rp.mean(1, keepdim=True)
    spearman = (rr * rp).sum(1) / (rr.norm(dim=1) * rp.norm(dim=1)).clamp_min(1e-12)
    ties = int((Rm == Rm.max(1, keepdim=True).values).sum(1).gt(1).sum())

    res = {
        "n_prompts": P, "n_candidates": N,
        "subset": "all" if a.all else f"seeded random {P} of 805",
        "reward_model": info,
        "judge": "GPT-4-turbo weighted AlpacaEval preference vs GPT-3.5-turbo-0613 (win: preference > 1.5, loss: < 1.5)",
        "bootstrap": core["bootstrap"],
        "reward_scale": {"median_within_prompt_sd_of_mean": scale, "median_member_sd": float(sd.median()), "lam_unit": lam},
        "reward_vs_judge_spearman_mean": float(spearman.mean()),
        "prompts_with_tied_top_mean": ties,
        "random_pick": core["random_pick"],
        "oracle": core["oracle"],
        "by_risk": core["by_risk"],
        "features": {"seconds": round(t_feat, 1), "computed": feats.n_computed if hasattr(feats, "n_computed") else None,
                     "truncated": getattr(feats, "n_truncated", None)},
        "seconds": round(time.time() - t0, 1),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    table = markdown_table(res)
    out.with_suffix(".md").write_text(table + "\n")
    plot(res, out.with_suffix(".png"))
    print(table)
    print(json.dumps({k: res[k] for k in ("reward_model", "reward_scale", "reward_vs_judge_spearman_mean", "seconds")}, indent=1))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown_table(res: dict) -> str:
    rows = [
        f"Best-of-{res['n_candidates']} on rewardbench-bon, {res['n_prompts']} prompts; % with 95% bootstrap CIs "
        f"(paired vs mean-picking for the differences).",
        "",
        "| picked by | win rate | loss rate | win − mean-pick (paired CI) | loss − mean-pick (paired CI) | agrees with mean pick |",
        "|---|---|---|---|---|---|",
    ]
    for spec, v in res["by_risk"].items():
        c = v["ci"]
        w, l = c["win"], c["loss"]
        dw = "—" if spec == "mean" else f"{100 * w['diff']:+.1f} [{100 * w['diff_ci'][0]:+.1f}, {100 * w['diff_ci'][1]:+.1f}]"
        dl = "—" if spec == "mean" else f"{100 * l['diff']:+.1f} [{100 * l['diff_ci'][0]:+.1f}, {100 * l['diff_ci'][1]:+.1f}]"
        rows.append(
            f"| {spec} | {_pct(w['value'])} [{_pct(w['ci'][0])}, {_pct(w['ci'][1])}] | {_pct(l['value'])} [{_pct(l['ci'][0])}, {_pct(l['ci'][1])}] "
            f"| {dw} | {dl} | {_pct(v['agreement_with_mean_pick'])} |"
        )
    r = res["random_pick"]
    rows.append(f"| random pick (expected) | {_pct(r['win_rate'])} [{_pct(r['ci']['win'][0])}, {_pct(r['ci']['win'][1])}] "
                f"| {_pct(r['loss_rate'])} [{_pct(r['ci']['loss'][0])}, {_pct(r['ci']['loss'][1])}] | | | |")
    o = res["oracle"]
    rows.append(f"| oracle (best judged) | {_pct(o['win_rate'])} | {_pct(o['loss_rate'])} | | | |")
    return "\n".join(rows)


def plot(res: dict, path: Path) -> None:
    names = list(res["by_risk"])
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    xs = np.arange(len(names))
    for ax, m, title in ((axes[0], "win", "win rate of the pick"), (axes[1], "loss", "rate of picking a judged loser")):
        vals = [res["by_risk"][n]["ci"][m]["value"] for n in names]
        lo = [v - res["by_risk"][n]["ci"][m]["ci"][0] for n, v in zip(names, vals)]
        hi = [res["by_risk"][n]["ci"][m]["ci"][1] - v for n, v in zip(names, vals)]
        ax.bar(xs, vals, 0.6, yerr=[lo, hi], capsize=4, color=["tab:blue"] + ["tab:red"] * (len(names) - 1))
        ax.axhline(res["random_pick"]["win_rate" if m == "win" else "loss_rate"], color="gray", ls="--", label="random pick")
        ax.axhline(res["oracle"]["win_rate"] if m == "win" else res["oracle"]["loss_rate"], color="green", ls=":", label="oracle")
        ax.set_xticks(xs, names, rotation=25, ha="right", fontsize=8)
        ax.set_title(f"{title} (95% bootstrap CI)")
        ax.legend(fontsize=8)
    fig.suptitle(f"best-of-{res['n_candidates']} by mean vs risk measures, {res['n_prompts']} rewardbench-bon prompts, GPT-4-turbo judge")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
