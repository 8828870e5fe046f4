"""The two RL experiments, run with real TRL RLOO on SmolLM2-135M-Instruct + LoRA.

``risk``  -- QRM Figure 3: risk-neutral (reward = mean of the reward distribution) vs
             risk-aware (certainty equivalent of the exponential utility) RLOO on HH-RLHF /
             PKU-SafeRLHF / BeaverTails prompts. Tracks, on held-out prompts, the training
             reward's mean and left-tail quantiles tau = 0.05..0.25 over training, and scores the
             same responses with an independent judge (SmolLM2-feature BT head trained on
             PKU-SafeRLHF, a different backbone and different data from the MiniLM/HH reward).
``varkl`` -- uncertainty-aware RLHF Figure 7: vanilla RLOO vs variance-weighted KL
             (beta_i = beta * sigma_i^2 / mean sigma^2) on IMDB review prefixes with a 10-head
             sentiment ensemble reward; the judge is VADER. Reports the distribution over seeds
             of the judge's average reward and each run's final KL (for the matched-KL check).

Budgets are CPU-tiny by default (a few steps, short completions, 3 seeds): the curves show
the machinery and the direction of early effects, not converged policies. ``--steps``,
``--seeds`` etc. scale it up; on a GPU use configs/rl/rloo-full.yaml's settings.

    PYTHONPATH=src:. python experiments/rl_experiments.py risk --seeds 0 1 2
    PYTHONPATH=src:. python experiments/rl_experiments.py varkl --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from distrm.rl.rewards import TAIL_LEVELS  # noqa: E402
from distrm.rl.rloo import VaderJudge, load_run_config, run_rloo  # noqa: E402
from distrm.rl.rewards import DistributionalRewardFunction  # noqa: E402

RESULTS = ROOT / "experiments" / "results"


def _cvar(xs: list[float], alpha: float) -> float:
    xs = sorted(xs)
    k = max(1, int(round(alpha * len(xs))))
    return sum(xs[:k]) / k


def _summ(vals: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals}


def run_conditions(config: str, conditions: dict[str, list[str]], seeds: list[int], common: list[str], reward, judges, tag: str) -> dict:
    runs = {}
    # seed-major: an interrupted experiment still has both arms for the seeds it finished
    for seed in seeds:
        for cond, overrides in conditions.items():
            out = ROOT / "runs" / "experiments" / tag / f"{cond}-s{seed}"
            cfg = load_run_config(ROOT / config, [*common, *overrides, f"seed={seed}", f"output_dir={out}"])
            t0 = time.time()
            res = run_rloo(cfg, reward_model=reward, judges=judges)
            runs[f"{cond}/s{seed}"] = {
                "condition": cond,
                "seed": seed,
                "evals": res["evals"],
                "final_train_kl": res["final_train_kl"],
                "eval_rows": res["eval_rows"],
                "train_kl": [x.get("kl") for x in res["train_log"] if "kl" in x],
                "train_reward": [x.get("reward") for x in res["train_log"] if "reward" in x],
                "seconds": round(time.time() - t0, 1),
            }
            print(f"[{tag}] {cond} seed {seed}: {runs[f'{cond}/s{seed}']['seconds']}s final eval {res['evals'][-1]}", flush=True)
    return runs


def paired_by_seed(out: dict, base: str, other: str) -> dict[str, dict[str, float]]:
    """Per-seed differences other - base of the final held-out metrics (same seed = same
    prompts, same eval sampling seed), mean and sd over seeds, and the step-0 reference."""
    keys = ["reward_mean", *[f"q{t:.2f}" for t in TAIL_LEVELS], "judge/judge"]
    by = {(r["condition"], r["seed"]): r["evals"][-1] for r in out["runs"].values()}
    seeds = sorted({s for c, s in by if c == base} & {s for c, s in by if c == other})
    res = {}
    for k in keys:
        d = [by[(other, s)][k] - by[(base, s)][k] for s in seeds]
        res[k] = {"mean": statistics.fmean(d), "sd": statistics.stdev(d) if len(d) > 1 else 0.0, "per_seed": d,
                  "n_seeds_positive": sum(x > 0 for x in d)}
    return res


def paired_response_bootstrap(out: dict, base: str, other: str, n_boot: int = 10_000) -> dict:
    """Response-level paired bootstrap of the final held-out evaluation: for each seed the two
    arms answered the same held-out prompts (same order, same sampling seed), so the items
    (seed, prompt) pair up. Per-response metrics: the training reward's distribution mean and
    q0.05, and the judge. Resamples items (ignores clustering by seed: with 3 seeds, read the
    per-seed table too)."""
    import torch

    from distrm.rl.bon import paired_bootstrap

    by = {(r["condition"], r["seed"]): r["eval_rows"][max(r["eval_rows"], key=int)] for r in out["runs"].values()}
    seeds = sorted({s for c, s in by if c == base} & {s for c, s in by if c == other})
    cols = {"dist_mean": "dist_mean", "q0.05": "q0.05", "judge": "judge/judge"}
    vals: dict[str, dict[str, list[float]]] = {base: {k: [] for k in cols}, other: {k: [] for k in cols}}
    for s in seeds:
        ra, rb = by[(base, s)], by[(other, s)]
        if [json.dumps(x["prompt"]) for x in ra] != [json.dumps(x["prompt"]) for x in rb]:
            raise ValueError(f"seed {s}: the two arms were evaluated on different prompts")
        for x, y in zip(ra, rb):
            if all(x.get(c) is not None and y.get(c) is not None for c in cols.values()):
                for k, c in cols.items():
                    vals[base][k].append(x[c])
                    vals[other][k].append(y[c])
    outcomes = {arm: {k: torch.tensor(v, dtype=torch.float64) for k, v in m.items()} for arm, m in vals.items()}
    res = paired_bootstrap(outcomes, baseline=base, n_boot=n_boot)
    return {"n_items": len(vals[base]["judge"]), "seeds": seeds, "by_arm": res}


def risk_experiment(a: argparse.Namespace) -> None:
    from experiments.rl_common import build_hh, build_safety_judge, describe
    from distrm.models.auto import load_reward_model

    reward_dir, judge_dir = build_hh(), build_safety_judge()
    reward = load_reward_model(reward_dir)
    judge = DistributionalRewardFunction(load_reward_model(judge_dir), "mean", name="judge_pku_smollm2", keep_history=False)
    risk_spec = a.risk
    conditions = {"risk_neutral": ["reward.risk=mean"], "risk_aware": [f"reward.risk={risk_spec}"]}
    common = [
        f"trainer.max_steps={a.steps}", f"trainer.per_device_train_batch_size={a.batch}", f"trainer.max_completion_length={a.max_len}",
        f"eval.every={a.eval_every}", f"prompts.n_eval={a.n_eval}", f"prompts.n_train={a.steps * a.batch}", "kl.weighting=none", f"threads={a.threads}",
        "reward.model=null", f"trainer.beta={a.beta}", f"trainer.learning_rate={a.lr}",
    ]
    runs = run_conditions("configs/rl/rloo-tiny.yaml", conditions, a.seeds, common, reward, {"judge": judge}, "risk")
    summary = {}
    for cond in conditions:
        rs = [r for r in runs.values() if r["condition"] == cond]
        fin = [r["evals"][-1] for r in rs]
        final_rows = [r["eval_rows"][max(r["eval_rows"])] for r in rs]
        summary[cond] = {
            "final_reward_mean": _summ([f["reward_mean"] for f in fin]),
            **{f"final_q{t:.2f}": _summ([f[f"q{t:.2f}"] for f in fin]) for t in TAIL_LEVELS},
            "final_judge_mean": _summ([f["judge/judge"] for f in fin]),
            "final_judge_cvar0.25": _summ([_cvar([x["judge/judge"] for x in rows], 0.25) for rows in final_rows]),
            "final_heldout_kl": _summ([f["kl"] for f in fin]),
            "final_train_kl": _summ([r["final_train_kl"] for r in rs]),
        }
    step0 = [r["evals"][0] for r in runs.values()]
    out = {
        "experiment": "risk-neutral vs risk-aware RLOO (QRM Fig. 3 setting, CPU-tiny budget)",
        "reward": describe(reward_dir) | {"what": "distrm EnsembleRewardModel: 10 BT heads (bootstrap) on MiniLM bf16 features, HH-RLHF harmless-base train pairs"},
        "judge": describe(judge_dir) | {"what": "distrm EnsembleRewardModel: 5 BT heads on SmolLM2-135M bf16 last-token features, PKU-SafeRLHF pairs (mean)"},
        "risk_aware_measure": risk_spec,
        "settings": vars(a) | {"seeds": a.seeds},
        "reference_policy_step0": {"reward_mean": statistics.fmean(s["reward_mean"] for s in step0), "judge_mean": statistics.fmean(s["judge/judge"] for s in step0)},
        "summary": summary,
        "runs": runs,
    }
    out["paired_risk_aware_minus_neutral"] = paired_by_seed(out, "risk_neutral", "risk_aware")
    out["response_level_paired_bootstrap"] = paired_response_bootstrap(out, "risk_neutral", "risk_aware")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rloo_risk.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    plot_risk(out, RESULTS / "rloo_risk.png")


def plot_risk(out: dict, path: Path) -> None:
    conds = list(out["summary"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {"risk_neutral": "tab:blue", "risk_aware": "tab:red"}
    for cond in conds:
        rs = [r for r in out["runs"].values() if r["condition"] == cond]
        steps = [e["step"] for e in rs[0]["evals"]]
        for j, key in enumerate(["reward_mean", *[f"q{t:.2f}" for t in TAIL_LEVELS]]):
            ys = [statistics.fmean(r["evals"][i][key] for r in rs) for i in range(len(steps))]
            ax = axes[0] if key == "reward_mean" else axes[1]
            ax.plot(steps, ys, color=colors.get(cond), alpha=1.0 if key in ("reward_mean", "q0.05") else 0.35 + 0.1 * j,
                    marker="o", ms=3, label=f"{cond}" if key in ("reward_mean", "q0.05") else None)
        js = [r["evals"][-1]["judge/judge"] for r in rs]
        axes[2].scatter([cond] * len(js), js, color=colors.get(cond))
        axes[2].errorbar([cond], [statistics.fmean(js)], yerr=[statistics.stdev(js) if len(js) > 1 else 0], color="k", capsize=6)
    axes[0].set_title("training reward: mean (held-out)")
    axes[1].set_title("training reward: tail quantiles tau=0.05..0.25 (held-out)")
    axes[2].set_title("independent judge, final policy (per seed)")
    for ax in axes[:2]:
        ax.set_xlabel("RLOO step")
        ax.legend()
    fig.suptitle(f"risk-neutral vs risk-aware ({out['risk_aware_measure']}) RLOO, {len(out['settings']['seeds'])} seeds, CPU-tiny budget")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def varkl_experiment(a: argparse.Namespace) -> None:
    from experiments.rl_common import build_imdb, describe
    from distrm.models.auto import load_reward_model

    reward_dir = build_imdb()
    reward = load_reward_model(reward_dir)
    conditions = {"vanilla": ["kl.weighting=none", f"trainer.beta={a.beta}"],
                  "variance_aware": ["kl.weighting=ratio", f"trainer.beta={a.beta_aware or a.beta}"]}
    common = [
        f"trainer.max_steps={a.steps}", f"trainer.per_device_train_batch_size={a.batch}", f"trainer.max_completion_length={a.max_len}",
        f"eval.every={a.eval_every}", f"prompts.n_eval={a.n_eval}", f"prompts.n_train={a.steps * a.batch}", f"trainer.learning_rate={a.lr}",
        f"threads={a.threads}",
    ]
    runs = run_conditions("configs/rl/imdb-varkl-tiny.yaml", conditions, a.seeds, common, reward, {"vader": VaderJudge()}, "varkl")
    summary = {}
    for cond in conditions:
        rs = [r for r in runs.values() if r["condition"] == cond]
        fin = [r["evals"][-1] for r in rs]
        summary[cond] = {
            "final_vader_mean": _summ([f["judge/vader"] for f in fin]),
            "final_reward_mean": _summ([f["reward_mean"] for f in fin]),
            "final_heldout_kl": _summ([f["kl"] for f in fin]),
            "final_train_kl": _summ([r["final_train_kl"] for r in rs]),
        }
    step0 = [r["evals"][0] for r in runs.values()]
    out = {
        "experiment": "vanilla vs variance-weighted-KL RLOO on IMDB prefixes (uncertainty-aware RLHF Fig. 7 setting, CPU-tiny budget)",
        "reward": describe(reward_dir) | {"what": "distrm EnsembleRewardModel: 10 BT heads (bootstrap) on MiniLM bf16 features of (positive > negative) imdb-sample review pairs; reward = ensemble mean"},
        "judge": "VADER compound score of the continuation",
        "settings": vars(a) | {"seeds": a.seeds},
        "reference_policy_step0": {"vader_mean": statistics.fmean(s["judge/vader"] for s in step0)},
        "summary": summary,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "imdb_varkl.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ref = out["reference_policy_step0"]["vader_mean"]
    for i, cond in enumerate(conditions):
        vals = summary[cond]["final_vader_mean"]["values"]
        axes[0].scatter([i] * len(vals), vals, label=cond)
        axes[0].errorbar([i + 0.1], [statistics.fmean(vals)], yerr=[summary[cond]["final_vader_mean"]["std"]], fmt="k_", capsize=6)
        kls = summary[cond]["final_heldout_kl"]["values"]
        axes[1].scatter([i] * len(kls), kls, label=cond)
    axes[0].axhline(ref, color="indigo", ls="--", label="reference policy (step 0)")
    axes[0].set_xticks(range(len(conditions)), list(conditions))
    axes[0].set_title("judge (VADER) average reward per seed, final policy")
    axes[0].legend()
    axes[1].set_xticks(range(len(conditions)), list(conditions))
    axes[1].set_title("held-out KL(pi || pi_ref) per seed (matched-KL check)")
    fig.suptitle(f"vanilla vs variance-aware KL RLOO, IMDB, {len(a.seeds)} seeds, {a.steps} steps (CPU-tiny)")
    fig.tight_layout()
    fig.savefig(RESULTS / "imdb_varkl.png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=["risk", "varkl"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8, help="completions per step (prompts x k=2)")
    p.add_argument("--max-len", type=int, default=24)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--n-eval", type=int, default=16)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--beta-aware", type=float, default=None, help="varkl: beta of the variance-aware runs (tune to match KL)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 behaves far better on a shared, busy CPU)")
    p.add_argument("--risk", default="certainty_equivalent:lam=10", help="risk: the risk-aware measure")
    a = p.parse_args()
    (risk_experiment if a.which == "risk" else varkl_experiment)(a)


if __name__ == "__main__":
    main()
