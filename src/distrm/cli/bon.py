"""``distrm bon MODEL``: risk-aware best-of-N on RewardBench's AlpacaEval-BoN data.

Scores every candidate with a saved distrm model (QRM or ensemble), picks one per prompt by
the mean and by each ``--risk``, and reports the judge's win and loss rates of the picks with
95% bootstrap CIs and paired CIs against mean-picking (see :mod:`distrm.rl.bon`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bon", help="risk-aware best-of-N: pick 1 of N candidates by the mean or by a risk measure",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a saved distrm reward model directory")
    p.add_argument("--data-dir", default=None, help="shared data root (default: ../shared/data or DISTRM_DATA_DIR)")
    p.add_argument("--n-candidates", type=int, default=11, help="candidates per prompt (those with judge verdicts: <= 11)")
    p.add_argument("--max-prompts", type=int, default=None, help="seeded sample of prompts (default: all 805)")
    p.add_argument("--risk", action="append", default=None, help="risk measure, repeatable, e.g. cvar:alpha=0.2 "
                   "(default: cvar:alpha=0.2, quantile:tau=0.1, mean_minus_std:c=1/2); mean is always the baseline")
    p.add_argument("--n-boot", type=int, default=10_000)
    p.add_argument("--store", default=".cache/distrm/features", help="feature store directory")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--plot", default=None, help="write a PNG bar chart of win rates with CIs here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distrm.models.auto import load_reward_model
    from distrm.rl.bon import DEFAULT_RISKS, bon_with_cis, load_rewardbench_bon, plot_bon, score_candidates
    from distrm.rl.prompts import default_data_dir
    from distrm.risk import parse_risk

    for spec in args.risk or []:
        parse_risk(spec)  # the risk vocabulary: fail before loading data or the model
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    data = load_rewardbench_bon(data_dir / "rewardbench-bon", args.n_candidates, args.max_prompts)
    model = load_reward_model(args.model)
    dist = score_candidates(model, data, store=args.store, batch_size=args.batch_size)
    res = bon_with_cis(dist, data, args.risk or list(DEFAULT_RISKS), n_boot=args.n_boot)
    res["model"] = str(args.model)
    print(f"best-of-{res['n_candidates']} on rewardbench-bon, {res['n_prompts']} prompts (95% CIs; diff = paired vs mean)")
    print(f"{'rule':<34} {'win %':>6} {'CI':>15} {'loss %':>7} {'diff win':>9} {'diff CI':>17}")
    for spec, v in res["by_risk"].items():
        w, c = v["ci"]["win"], v["ci"]["win"].get("diff_ci")
        diff = f"{100 * w['diff']:+9.1f} [{100 * c[0]:+.1f}, {100 * c[1]:+.1f}]" if c else f"{'':>9} {'':>17}"
        print(f"{spec:<34} {100 * v['win_rate']:6.1f} [{100 * w['ci'][0]:5.1f}, {100 * w['ci'][1]:5.1f}] "
              f"{100 * v['loss_rate']:7.1f} {diff}")
    r = res["random_pick"]
    print(f"{'random pick':<34} {100 * r['win_rate']:6.1f}   oracle {100 * res['oracle']['win_rate']:.1f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.out}")
    if args.plot:
        print(f"wrote {plot_bon(res, args.plot)}")
    return 0
