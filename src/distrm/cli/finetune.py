"""``distrm finetune-backbone``: Bradley-Terry reward-model fine-tuning of a causal LM with TRL's
RewardTrainer (LoRA by default), saved as a normal backbone directory (see distrm.training.finetune).

    distrm finetune-backbone --config src/distrm/configs/finetune-smollm2-cpu.yaml
    distrm finetune-backbone --set base_model=gemma3-270m --set max_pairs=500 --output-dir runs/rm-gemma
    distrm train --set backbone.name=runs/rm-smollm2-135m      # QRM on the reward-tuned backbone
"""

from __future__ import annotations

import argparse
from importlib import resources


def default_config_path() -> str:
    return str(resources.files("distrm") / "configs" / "finetune-smollm2-cpu.yaml")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune-backbone",
        help="fine-tune a causal LM as a Bradley-Terry reward model (TRL, LoRA) and save it as a backbone",
        description="Bradley-Terry reward-model fine-tuning with TRL's RewardTrainer on the training split of the "
        "preference sets; the merged model is saved as a backbone directory that distrm train / ensembles / the "
        "feature store / the server load by path. --set key=value overrides any config field "
        "(e.g. --set lora.r=8 --set max_pairs=2000 --set margin=score_gap).",
    )
    p.add_argument("--config", default=None, help="YAML config (default: the embedded finetune-smollm2-cpu.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--output-dir", default=None, help="shortcut for --set output_dir=...")
    p.add_argument("--data-dir", default=None, help="shortcut for --set data.data_dir=...")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distrm.cli.train import config_from_args
    from distrm.training.finetune import FinetuneConfig, finetune, validate

    cfg = config_from_args(FinetuneConfig, args, default_config_path())
    validate(cfg)
    if not args.print_config:
        finetune(cfg)
    return 0
