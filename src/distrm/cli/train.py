"""``distrm train`` and ``distrm score``."""

from __future__ import annotations

import argparse
import json
from importlib import resources

from distrm.config import TrainConfig, add_config_arguments, config_from_args, format_field_help

DEFAULT_CONFIG = "qrm-minilm.yaml"


def default_config_path() -> str:
    return str(resources.files("distrm") / "configs" / DEFAULT_CONFIG)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="extract features, fit quantile heads and the gate, save the model",
        description="Train a distributional reward model. Every hyperparameter is in the YAML config; "
        "--set section.key=value overrides (e.g. --set gate.epochs=10 --set backbone.name=smollm2-135m). "
        "Values are checked against each key's type and choices before any work starts.",
        epilog=format_field_help(TrainConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p, TrainConfig, flags=["output_dir", "data.data_dir"], default_config=default_config_path())
    p.set_defaults(func=run_train)

    s = sub.add_parser("score", help="score (prompt, response) pairs with a saved model")
    s.add_argument("model", help="model folder written by distrm train, or a Hugging Face Hub id")
    s.add_argument("--revision", default=None, help="Hub branch, tag or commit (with a Hub id)")
    s.add_argument("--prompt", action="append", default=[], help="prompt text (repeat for several)")
    s.add_argument("--response", action="append", default=[], help="response text (one per --prompt, or several for one --prompt)")
    s.add_argument("--input", default=None, help="file with prompt/response fields (JSONL, JSON, CSV or Parquet) instead of --prompt/--response")
    s.add_argument("--risk", action="append", default=[], help="risk measure, e.g. cvar:alpha=0.1, exp_utility:lam=2")
    s.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    s.set_defaults(func=run_score)


def run_train(args: argparse.Namespace) -> int:
    from distrm.training.qrm import train

    cfg = config_from_args(TrainConfig, args, default_config_path())
    if args.print_config:
        return 0
    if cfg.model == "ensemble":
        from distrm.training.bt_ensemble import train_ensemble

        train_ensemble(cfg)
        return 0
    if cfg.model == "quantile_ensemble":
        from distrm.training.quantile_ensemble import train_quantile_ensemble

        train_quantile_ensemble(cfg)
        return 0
    if cfg.model == "dpl":
        from distrm.training.dpl import train_dpl

        train_dpl(cfg)
        return 0
    if cfg.model != "qrm":
        raise ValueError(f"model must be 'qrm', 'ensemble', 'quantile_ensemble' or 'dpl', got {cfg.model!r}")
    train(cfg)
    return 0


def _read_inputs(args) -> tuple[list, list[str]]:
    """(prompts, responses) from --input or --prompt/--response.

    --input goes through the data layer's one reader per file format
    (:func:`distrm.data.io.read_rows_or_fail`), so JSONL, JSON, CSV and Parquet (``.gz``
    too) all work and every error names ``file:line``. Scoring must not silently score fewer
    rows than were given, so a bad row is an error here, not a counted skip."""
    if args.input:
        from distrm.data.io import read_rows_or_fail

        prompts, responses = [], []
        for row in read_rows_or_fail(args.input):
            if not isinstance(row.data, dict) or "prompt" not in row.data or "response" not in row.data:
                raise ValueError(f"{row.where}: expected an object with 'prompt' and 'response'")
            prompts.append(row.data["prompt"])
            responses.append(row.data["response"])
        return prompts, responses
    if len(args.prompt) == 1 and len(args.response) > 1:  # one prompt, several responses to compare
        return args.prompt * len(args.response), args.response
    if len(args.prompt) != len(args.response) or not args.prompt:
        raise ValueError("give one --response per --prompt, or one --prompt and several --response (or --input FILE)")
    return args.prompt, args.response


def run_score(args: argparse.Namespace) -> int:
    from distrm.risk import parse_risk
    from distrm.models.auto import AutoRewardModel

    for spec in args.risk:
        parse_risk(spec)  # fail before loading anything
    prompts, responses = _read_inputs(args)
    model = AutoRewardModel.from_pretrained(args.model, revision=args.revision)
    out = model.score(prompts, responses)
    risks = args.risk or ["cvar:alpha=0.1"]
    rows = out.to_dict(risks)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    for i, r in enumerate(rows):
        print(f"=== pair {i}: mean reward {r['mean']:.4f}  " + "  ".join(f"{k} {v:.4f}" for k, v in r["risk"].items()))
        if len(r.get("members", ())) > 1:  # an ensemble: its members are the distribution
            print(f"  variance across {len(r['members'])} members {r['variance']:.4g}: " + " ".join(f"{m:.3f}" for m in r["members"]))
        if r.get("levels"):
            lv, q = r["levels"], r["quantiles"]
            picks = [j for j, t in enumerate(lv) if round(t, 2) in (0.05, 0.25, 0.5, 0.75, 0.95)]
            print("  mixture quantiles: " + "  ".join(f"q{lv[j]:.2f}={q[j]:.3f}" for j in picks))
        if r.get("attributes"):
            print(f"  {'attribute':<28} {'weight':>7} {'mean':>7}   lowest .. highest quantile")
            for name, a in r["attributes"].items():
                qs = a["quantiles"]
                print(f"  {name:<28} {a['weight']:7.3f} {a['mean']:7.3f}   {qs[0]:.3f} .. {qs[-1]:.3f}")
    return 0
