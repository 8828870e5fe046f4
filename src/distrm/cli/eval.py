"""``distrm eval pairs`` and ``distrm eval calibration``: tables on stdout, JSON + markdown
files in ``--output-dir`` (counts, not only percentages)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distrm.config import add_config_arguments, config_from_args
from distrm.risk import parse_risk


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


@dataclass
class _EvalCommon:
    data_dir: str | None = None  # shared data directory (default $DISTRM_DATA_DIR or ../shared/data)
    store: str | None = None  # feature store directory (default .cache/distrm/features)
    batch_size: int = 32
    output_dir: str = "runs/eval"  # where the JSON and markdown tables go

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class EvalPairsConfig(_EvalCommon):
    """``distrm eval pairs``."""

    model: list[str] = field(default_factory=list)  # model folder or Hub id (repeatable); none: length heuristic only
    sets: str = "all"  # shared sets, comma-separated registry names, 'all' or 'none'
    file: list[str] = field(default_factory=list)  # RewardBench-format JSON/JSONL/Parquet file or hub name (repeatable): RewardBench, its prior sets or RewardBench 2
    # the format of every --file: auto detects it per file (chosen/rejected lists: RewardBench 2; message-list
    # prompts or a prior-set name as file/split/subset: prior sets; else RewardBench), see distrm.data.rewardbench
    file_format: Literal["auto", "rewardbench", "prior-sets", "rewardbench2"] = "auto"
    risk: list[str] = field(default_factory=list)  # also rank by a risk measure, e.g. cvar:alpha=0.1
    weighting: Literal["auto", "rewardbench", "plain"] = "auto"
    max_pairs: int | None = None  # cap per set (seeded random sample, recorded in the JSON)
    examples: int = 6  # pairs whose distributions go into the JSON for the report
    length: bool = field(default=True, metadata={"flag": "--no-length"})  # the 'longer response wins' reference row
    # drop the pairs whose prompt a --model was trained on (by the prompts the model recorded when it was trained;
    # counted per set either way)
    exclude_train_overlap: bool = False
    bootstrap: int = 1000  # resamples for the accuracy and AUROC intervals (percentile bootstrap, seeded)
    seed: int = 0  # seed of the bootstrap resamples

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bootstrap < 100:
            raise ValueError(f"bootstrap must be >= 100 resamples for a 95% interval, got {self.bootstrap}")
        for spec in self.risk:
            parse_risk(spec)  # the risk vocabulary: fail before any model loads


@dataclass
class EvalCalibrationConfig(_EvalCommon):
    """``distrm eval calibration``."""

    model: list[str] = field(default_factory=list)  # model folder or Hub id (repeatable, at least one)
    sets: str = "all"  # multi-rater sets, comma-separated registry names or 'all'
    max_items: int | None = None  # cap per set (seeded random sample)
    min_raters: int = 2
    baseline: bool = True  # the ridge + Gaussian baseline on the first model's backbone

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model:
            raise ValueError("give at least one --model")
        if self.min_raters < 2:
            raise ValueError(f"min_raters must be >= 2, got {self.min_raters}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="pairwise accuracy and distributional calibration")
    esub = p.add_subparsers(dest="eval_command", metavar="WHAT")

    pp = esub.add_parser(
        "pairs",
        help="pairwise accuracy (chosen strictly above rejected; ties are wrong)",
        description="Pairwise accuracy per subset and section on the shared preference sets (held-out split where a "
        "set is used in training) and on RewardBench-format files. The real RewardBench file gets RewardBench's own "
        "section weighting, its prior sets (allenai/pref-test-sets) the official Prior Sets score at half weight, "
        "RewardBench 2 files (allenai/reward-bench-2: one chosen vs three rejected, Ties) their best-of-N and Ties "
        "scoring; everything else plain per-subset / pooled accuracies. The output says which, and prints the "
        "official leaderboards' tables. Every pair accuracy and RewardBench 2 score comes with a 95% bootstrap "
        "interval (--bootstrap resamples, --seed); per set it prints "
        "the rows skipped (by reason), empty responses, identical chosen/rejected pairs and the pairs whose prompt "
        "each model was trained on (--exclude-train-overlap drops them), and per model how well each of its "
        "uncertainties (ensemble variance, quantile spread, aleatoric / epistemic) flags its wrong decisions "
        "(AUROC with a 95% bootstrap interval).",
    )
    add_config_arguments(pp, EvalPairsConfig)
    pp.set_defaults(func=run_pairs_cmd)

    pc = esub.add_parser(
        "calibration",
        help="predicted attribute distributions vs real rater distributions (held-out items)",
        description="Pinball, exact CRPS, exact W1, central-interval coverage and spread correlation against each "
        "held-out item's raters, for the model and a ridge + Gaussian baseline on the same backbone.",
    )
    add_config_arguments(pc, EvalCalibrationConfig)
    pc.set_defaults(func=run_calibration_cmd)

    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def run_pairs_cmd(args: argparse.Namespace) -> int:
    from distrm.eval import pairs

    cfg = config_from_args(EvalPairsConfig, args)
    if args.print_config:
        return 0

    sets = list(pairs.SHARED_PAIR_SETS) if cfg.sets == "all" else ([] if cfg.sets == "none" else _csv(cfg.sets))
    res = pairs.run_pairs(
        cfg.model,
        sets=sets,
        files=cfg.file,
        risks=cfg.risk,
        data_dir=cfg.data_dir,
        store=cfg.store,
        batch_size=cfg.batch_size,
        max_pairs=cfg.max_pairs,
        n_examples=cfg.examples,
        weighting=cfg.weighting,
        length_row=cfg.length,
        file_format=cfg.file_format,
        exclude_train_overlap=cfg.exclude_train_overlap,
        n_boot=cfg.bootstrap,
        seed=cfg.seed,
    )
    data = pairs.format_data(res["data"])
    table = pairs.format_table(res["rows"])
    boards = pairs.format_leaderboards(res["leaderboards"])
    unc = pairs.format_uncertainty(res["uncertainty"])
    print(res["weighting_note"])
    print(data)
    print(table)
    for block in (boards, unc):
        if block:
            print("\n" + block)
    _write_results(Path(cfg.output_dir), "pairs", res, res["weighting_note"], [data, table, boards, unc])
    return 0


def run_calibration_cmd(args: argparse.Namespace) -> int:
    from distrm.eval import calibration

    cfg = config_from_args(EvalCalibrationConfig, args)
    if args.print_config:
        return 0

    sets = list(calibration.CALIBRATION_SETS.values()) if cfg.sets == "all" else _csv(cfg.sets)
    res = calibration.run_calibration(
        cfg.model,
        sets=sets,
        data_dir=cfg.data_dir,
        store=cfg.store,
        batch_size=cfg.batch_size,
        baseline=cfg.baseline,
        max_items=cfg.max_items,
        min_raters=cfg.min_raters,
    )
    table = calibration.format_table(res["results"])
    print(table)
    _write_results(Path(cfg.output_dir), "calibration", res, res["metrics_note"], [table])
    return 0


def _write_results(out: Path, name: str, res: dict, note: str, tables: list[str]) -> None:
    """``OUT/NAME.json`` (every count, for the report) and ``OUT/NAME.md`` (the note and the
    printed tables), then say where they are."""
    from distrm.eval import common

    j = common.write_json(out / f"{name}.json", res)
    md = f"{note}\n" + "".join(f"\n```\n{t}\n```\n" for t in tables if t)
    (out / f"{name}.md").write_text(md, encoding="utf-8")
    print(f"wrote {j} and {out / f'{name}.md'}")
