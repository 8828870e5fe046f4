"""Risk-aware best-of-N: pick 1 of N candidates by the mean or by a risk measure.

Best-of-N by the mean picks the candidate the reward model likes most *on average*; with a
distributional (or ensemble) model a candidate can have a high mean and a fat left tail
(some raters / members think it is bad). Picking by CVaR, a low quantile, mean - c*std or
a certainty equivalent trades a little expected reward for fewer picked losers.

Evaluation data: RewardBench's AlpacaEval-BoN (``rewardbench-bon``): 805 prompts x 16
tulu-2-dpo-13b samples; samples 0..10 carry GPT-4-turbo's weighted AlpacaEval verdict
against GPT-3.5-turbo: ``preference`` in [1, 2] = 1 + P(the tulu sample wins). A pick
"wins" when preference > 1.5 and "loses" when preference < 1.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from distrm.data.bon import load_bon_folder
from distrm.data.records import LoadReport
from distrm.distribution import RewardDistribution
from distrm.risk import RiskMeasure

N_ANNOTATED = 11  # samples 0..10 have judge verdicts


def candidate_scores(dist: RewardDistribution, n_candidates: int, risk: "str | RiskMeasure") -> torch.Tensor:
    """Risk value of each candidate: ``dist`` holds P*N distributions in prompt-major order
    (prompt 0's N candidates first); returns ``[P, N]``."""
    vals = RiskMeasure.parse(risk)(dist)
    if vals.numel() % n_candidates:
        raise ValueError(f"{vals.numel()} scores is not a multiple of {n_candidates} candidates")
    return vals.reshape(-1, n_candidates)


def select(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the best candidate per prompt (``[P, N] -> [P]``).

    Invalid (masked) or NaN candidates are never picked; ties go to the lowest index, so
    the choice is deterministic. A prompt with no valid candidate gets -1."""
    s = scores.double().clone()
    bad = torch.isnan(s)
    if valid is not None:
        bad |= ~valid.bool()
    s[bad] = float("-inf")
    # argmax returns the first maximal index (lowest) on ties
    idx = s.argmax(dim=1)
    idx[bad.all(dim=1)] = -1
    return idx


@dataclass
class BonMetrics:
    n_prompts: int
    win_rate: float  # share of picks the judge prefers over the reference (preference > 1.5)
    soft_win_rate: float  # mean judge win probability of the pick (preference - 1)
    loss_rate: float  # share of picks the judge marked as losing (preference < 1.5)

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def evaluate_picks(picks: torch.Tensor, preference: torch.Tensor) -> BonMetrics:
    """Judge metrics of the picked candidates; ``preference`` is ``[P, N]`` in [1, 2]."""
    ok = picks >= 0
    p = preference[ok.nonzero(as_tuple=True)[0], picks[ok]].double()
    if p.numel() == 0:
        raise ValueError("no prompt has a pick")
    return BonMetrics(
        n_prompts=int(p.numel()),
        win_rate=float((p > 1.5).double().mean()),
        soft_win_rate=float((p - 1).mean()),
        loss_rate=float((p < 1.5).double().mean()),
    )


@dataclass
class BonData:
    ids: list[str]
    instructions: list[str]
    candidates: list[list[str]]  # [P][N]
    preference: torch.Tensor  # [P, N]
    datasets: list[str]
    report: LoadReport | None = None  # what the data layer read and skipped


def load_rewardbench_bon(data_dir: str | Path, n_candidates: int = N_ANNOTATED, max_prompts: int | None = None, seed: int = 0) -> BonData:
    """The annotated candidates of rewardbench-bon, aligned by prompt id (checked, not assumed).

    ``data_dir`` is the ``rewardbench-bon`` folder itself. The files are read by
    :func:`distrm.data.bon.load_bon_folder` (one reader, located and counted skips); this
    only keeps the prompts whose first ``n_candidates`` samples all have a verdict for the
    very text in the sample file, orders them by id and turns the verdicts into the
    ``[P, N]`` preference tensor (``preference = 1 + win probability``, in [1, 2]).

    ``max_prompts`` takes a seeded random subset (the same for every scorer)."""
    root = Path(data_dir)
    if not (root / "outputs").is_dir():
        raise FileNotFoundError(f"{root}/outputs missing: expected the rewardbench-bon folder")
    if not 1 <= n_candidates <= N_ANNOTATED:
        raise ValueError(f"only samples 0..{N_ANNOTATED - 1} have judge verdicts")
    bon = load_bon_folder(root, n_samples=n_candidates)
    unjudged = [k for k in range(n_candidates) if k not in bon.judged_samples]
    if unjudged:
        raise FileNotFoundError(f"{root}/annotations_gpt4t_vs_gpt35: no verdict file for sample(s) {unjudged}")
    usable = sorted(
        (bp for bp in bon.prompts if all(w is not None for w in bp.win_prob)),
        key=lambda bp: int(bp.file_id) if bp.file_id.isdigit() else bp.file_id,
    )
    if max_prompts and max_prompts < len(usable):
        g = torch.Generator().manual_seed(seed)
        keep = sorted(torch.randperm(len(usable), generator=g)[:max_prompts].tolist())
        usable = [usable[k] for k in keep]
    return BonData(
        ids=[bp.file_id for bp in usable],
        instructions=[bp.prompt for bp in usable],
        candidates=[list(bp.candidates) for bp in usable],
        # win_prob = preference - 1 exactly (Sterbenz: x - 1 is exact for x in [1, 2]), so this is the file's value
        preference=torch.tensor([[w + 1.0 for w in bp.win_prob] for bp in usable]),
        datasets=[bp.dataset for bp in usable],
        report=bon.report,
    )


def best_of_n_report(dist: RewardDistribution, data: BonData, risks: Sequence[str]) -> dict[str, Any]:
    """Pick by each risk measure; report judge metrics plus random / oracle / worst bounds."""
    n = data.preference.shape[1]
    pref = data.preference
    report: dict[str, Any] = {
        "n_prompts": len(data.ids),
        "n_candidates": n,
        "random_pick": {
            "win_rate": float((pref > 1.5).double().mean()),
            "soft_win_rate": float((pref - 1).double().mean()),
            "loss_rate": float((pref < 1.5).double().mean()),
        },
        "oracle": evaluate_picks(pref.argmax(1), pref).to_dict(),
        "by_risk": {},
    }
    for spec in risks:
        scores = candidate_scores(dist, n, spec)
        picks = select(scores)
        m = evaluate_picks(picks, pref).to_dict()
        m["agreement_with_mean_pick"] = None
        report["by_risk"][RiskMeasure.parse(spec).spec] = {"metrics": m, "picks": picks.tolist()}
    mean_picks = torch.tensor(report["by_risk"].get("mean", {}).get("picks", [])) if "mean" in report["by_risk"] else None
    if mean_picks is not None:
        for v in report["by_risk"].values():
            v["metrics"]["agreement_with_mean_pick"] = float((torch.tensor(v["picks"]) == mean_picks).double().mean())
    return report


# ---------------------------------------------------------------------------- uncertainty of the rates
def pick_outcomes(picks: torch.Tensor, preference: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-prompt outcomes of one picking rule (``[P]`` each, float64): ``win`` (judge
    preference > 1.5), ``loss`` (< 1.5), ``soft_win`` (the judge's win probability)."""
    if (picks < 0).any():
        raise ValueError("every prompt needs a pick for paired comparisons")
    p = preference[torch.arange(preference.shape[0]), picks].double()
    return {"win": (p > 1.5).double(), "loss": (p < 1.5).double(), "soft_win": p - 1}


def random_pick_outcomes(preference: torch.Tensor) -> dict[str, torch.Tensor]:
    """Expected per-prompt outcomes of a uniformly random pick among the N candidates."""
    p = preference.double()
    return {"win": (p > 1.5).double().mean(1), "loss": (p < 1.5).double().mean(1), "soft_win": (p - 1).mean(1)}


def paired_bootstrap(
    outcomes: dict[str, dict[str, torch.Tensor]],
    baseline: str = "mean",
    n_boot: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Percentile bootstrap CIs over prompts for each rule's rates, and *paired* CIs for each
    rule's difference from ``baseline``: every bootstrap draw resamples the same prompts for
    all rules, so the prompt-to-prompt difficulty cancels in the difference.

    ``outcomes``: rule -> metric -> ``[P]`` per-prompt values (from :func:`pick_outcomes`).
    Returns rule -> metric -> {value, ci, and for non-baseline rules diff, diff_ci,
    p_two_sided (bootstrap share of differences on the other side of 0, doubled)}."""
    if baseline not in outcomes:
        raise ValueError(f"baseline {baseline!r} is not among the rules {list(outcomes)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    metrics = list(outcomes[baseline])
    P = outcomes[baseline][metrics[0]].numel()
    for rule, ms in outcomes.items():
        for m in metrics:
            if m not in ms or ms[m].numel() != P:
                raise ValueError(f"rule {rule!r}: metric {m!r} missing or not one value per prompt ({P})")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, P, (n_boot, P), generator=g)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out: dict[str, dict[str, Any]] = {}
    for rule, ms in outcomes.items():
        out[rule] = {}
        for m in metrics:
            v = ms[m].double()
            boots = v[idx].mean(1)
            rec: dict[str, Any] = {"value": float(v.mean()), "ci": [float(boots.quantile(lo_q)), float(boots.quantile(hi_q))]}
            if rule != baseline:
                d = v - outcomes[baseline][m].double()
                db = d[idx].mean(1)
                rec["diff"] = float(d.mean())
                rec["diff_ci"] = [float(db.quantile(lo_q)), float(db.quantile(hi_q))]
                rec["p_two_sided"] = float(min(1.0, 2 * min(float((db <= 0).double().mean()), float((db >= 0).double().mean()))))
            out[rule][m] = rec
    return out


# ---------------------------------------------------------------------------- end to end
DEFAULT_RISKS = ("mean", "cvar:alpha=0.2", "quantile:tau=0.1", "mean_minus_std:c=1", "mean_minus_std:c=2")


def candidate_inputs(data: BonData) -> tuple[list[list[dict[str, str]]], list[str]]:
    """(prompts, responses) for every candidate, ``P * N`` rows, prompt-major."""
    n = data.preference.shape[1]
    prompts = [[{"role": "user", "content": ins}] for ins in data.instructions for _ in range(n)]
    return prompts, [c for cs in data.candidates for c in cs]


def score_candidates(model: Any, data: BonData, store: str | Path | None = ".cache/distrm/features", batch_size: int = 32,
                     progress: bool = True) -> RewardDistribution:
    """Every candidate's reward distribution, ``P * N`` rows, prompt-major. Features go
    through the feature store, so re-scoring with another risk measure costs no backbone time."""
    import numpy as np

    from distrm.features import extract

    prompts, texts = candidate_inputs(data)
    feats = extract(model.backbone, prompts, texts, store=store, batch_size=batch_size, progress=progress)
    return model.score_features(torch.as_tensor(np.asarray(feats.reward)), torch.as_tensor(np.asarray(feats.prompt)), texts).reward


def bon_with_cis(dist: RewardDistribution, data: BonData, risks: Sequence[str], n_boot: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """:func:`best_of_n_report` plus 95% bootstrap CIs of each rule's win / loss rate and paired
    CIs of its difference from mean-picking (``mean`` is always included as the baseline).
    ``picks``: rule -> the candidate index picked for each prompt."""
    risks = list(dict.fromkeys(["mean", *risks]))
    rep = best_of_n_report(dist, data, risks)
    outcomes = {spec: pick_outcomes(torch.tensor(v["picks"]), data.preference) for spec, v in rep["by_risk"].items()}
    outcomes["random"] = random_pick_outcomes(data.preference)
    cis = paired_bootstrap(outcomes, baseline="mean", n_boot=n_boot, seed=seed)
    return {
        "n_prompts": rep["n_prompts"],
        "n_candidates": rep["n_candidates"],
        "bootstrap": {"n_boot": n_boot, "level": 0.95, "unit": "prompt", "paired_baseline": "mean"},
        "random_pick": rep["random_pick"] | {"ci": {m: cis["random"][m]["ci"] for m in ("win", "loss")}},
        "oracle": rep["oracle"],
        "by_risk": {spec: v["metrics"] | {"ci": cis[spec]} for spec, v in rep["by_risk"].items()},
        "picks": {spec: v["picks"] for spec, v in rep["by_risk"].items()},
    }


def plot_bon(res: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of :func:`bon_with_cis` output: each rule's win rate against the reference with
    its 95% CI, beside random picking and the oracle (the judge's own best candidate), so a
    reader sees at once whether any risk rule separates from mean-picking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = list(res["by_risk"])
    win = [100 * res["by_risk"][r]["win_rate"] for r in rules]
    ci = [[100 * x for x in res["by_risk"][r]["ci"]["win"]["ci"]] for r in rules]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rules) + 2.0))
    y = list(range(len(rules)))[::-1]
    ax.barh(y, win, color="#4c72b0", alpha=0.8)
    ax.errorbar(win, y, xerr=[[w - c[0] for w, c in zip(win, ci)], [c[1] - w for w, c in zip(win, ci)]],
                fmt="none", ecolor="black", capsize=3)
    ax.axvline(100 * res["random_pick"]["win_rate"], color="grey", ls="--", label="random pick")
    ax.axvline(100 * res["oracle"]["win_rate"], color="#dd8452", ls=":", label="oracle (judge's best)")
    ax.set_yticks(y, rules)
    ax.set_xlabel("win rate vs reference, % (95% bootstrap CI over prompts)")
    ax.set_title(f"best-of-{res['n_candidates']}, {res['n_prompts']} prompts")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
