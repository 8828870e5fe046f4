"""``distrm bon MODEL``: risk-aware best-of-N on RewardBench's AlpacaEval-BoN data.

Scores every candidate with a saved distrm model (QRM or ensemble), picks one per prompt by
the mean and by each ``--risk``, and reports the judge's win and loss rates of the picks with
95% bootstrap CIs and paired CIs against mean-picking (see :mod:`distrm.rl.bon`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from distrm.config import add_config_arguments, config_from_args
from distrm.risk import parse_risk


@dataclass
class BonConfig:
    """``distrm bon``."""

    model: str = field(default="", metadata={"positional": True})  # a saved distrm reward model: folder or Hub id
    revision: str | None = None  # Hub branch, tag or commit (with a Hub id)
    data_dir: str | None = None  # shared data root (default: ../shared/data or DISTRM_DATA_DIR)
    n_candidates: int = 11  # candidates per prompt (those with judge verdicts: <= 11)
    max_prompts: int | None = None  # seeded sample of prompts (default: all 805)
    # risk measures, e.g. cvar:alpha=0.2 (default: cvar:alpha=0.2, quantile:tau=0.1, mean_minus_std:c=1/2); mean is always the baseline
    risk: list[str] | None = None
    n_boot: int = 10_000
    store: str = ".cache/distrm/features"  # feature store directory
    batch_size: int = 32
    out: str | None = None  # write the JSON report here
    plot: str | None = None  # write a PNG bar chart of win rates with CIs here

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("give the model (a folder or a Hub id)")
        if not 1 <= self.n_candidates <= 11:
            raise ValueError(f"n_candidates must be in 1..11 (candidates with judge verdicts), got {self.n_candidates}")
        if self.n_boot < 1 or self.batch_size < 1:
            raise ValueError("n_boot and batch_size must be >= 1")
        for spec in self.risk or []:
            parse_risk(spec)  # the risk vocabulary: fail before loading data or the model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bon", help="risk-aware best-of-N: pick 1 of N candidates by the mean or by a risk measure",
                       description=__doc__.split("\n\n")[0])
    add_config_arguments(p, BonConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distrm.models.auto import load_reward_model
    from distrm.rl.bon import DEFAULT_RISKS, bon_with_cis, load_rewardbench_bon, plot_bon, score_candidates
    from distrm.rl.prompts import default_data_dir

    cfg = config_from_args(BonConfig, args)
    if args.print_config:
        return 0
    data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
    data = load_rewardbench_bon(data_dir / "rewardbench-bon", cfg.n_candidates, cfg.max_prompts)
    model = load_reward_model(cfg.model, revision=cfg.revision)
    dist = score_candidates(model, data, store=cfg.store, batch_size=cfg.batch_size)
    res = bon_with_cis(dist, data, cfg.risk or list(DEFAULT_RISKS), n_boot=cfg.n_boot)
    res["model"] = str(cfg.model)
    print(f"best-of-{res['n_candidates']} on rewardbench-bon, {res['n_prompts']} prompts (95% CIs; diff = paired vs mean)")
    print(f"{'rule':<34} {'win %':>6} {'CI':>15} {'loss %':>7} {'diff win':>9} {'diff CI':>17}")
    for spec, v in res["by_risk"].items():
        w, c = v["ci"]["win"], v["ci"]["win"].get("diff_ci")
        diff = f"{100 * w['diff']:+9.1f} [{100 * c[0]:+.1f}, {100 * c[1]:+.1f}]" if c else f"{'':>9} {'':>17}"
        print(f"{spec:<34} {100 * v['win_rate']:6.1f} [{100 * w['ci'][0]:5.1f}, {100 * w['ci'][1]:5.1f}] "
              f"{100 * v['loss_rate']:7.1f} {diff}")
    r = res["random_pick"]
    print(f"{'random pick':<34} {100 * r['win_rate']:6.1f}   oracle {100 * res['oracle']['win_rate']:.1f}")
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {cfg.out}")
    if cfg.plot:
        print(f"wrote {plot_bon(res, cfg.plot)}")
    return 0
