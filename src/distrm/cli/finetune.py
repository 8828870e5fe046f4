"""``distrm finetune-backbone``: Bradley-Terry reward-model fine-tuning of a causal LM with TRL's
RewardTrainer (LoRA by default), saved as a normal backbone directory (see distrm.training.finetune).

    distrm finetune-backbone --config src/distrm/configs/finetune-smollm2-cpu.yaml
    distrm finetune-backbone --set base_model=gemma3-270m --set max_pairs=500 --output-dir runs/rm-gemma
    distrm finetune-backbone --set trainer.learning_rate=1e-4 --set trainer.report_to=wandb   # any trl.RewardConfig option
    distrm train --set backbone.name=runs/rm-smollm2-135m      # QRM on the reward-tuned backbone
"""

from __future__ import annotations

import argparse
from importlib import resources

from distrm.config import add_config_arguments, config_from_args
from distrm.training.finetune import FinetuneConfig


def default_config_path() -> str:
    return str(resources.files("distrm") / "configs" / "finetune-smollm2-cpu.yaml")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune-backbone",
        help="fine-tune a causal LM as a Bradley-Terry reward model (TRL, LoRA) and save it as a backbone",
        description="Bradley-Terry reward-model fine-tuning with TRL's RewardTrainer on the training split of the "
        "preference sets; the merged model is saved as a backbone directory that distrm train / ensembles / the "
        "feature store / the server load by path. --set key=value overrides any config field "
        "(e.g. --set lora.r=8 --set max_pairs=2000 --set margin=score_gap); the trainer: section is trl.RewardConfig's "
        "options, passed as is (e.g. --set trainer.learning_rate=1e-4 --set trainer.save_strategy=steps "
        "--set trainer.resume_from_checkpoint=true). Writes OUT (backbone), OUT/reward_model (distrm reward model) "
        "and OUT/seq_cls (AutoModelForSequenceClassification checkpoint).",
    )
    add_config_arguments(p, FinetuneConfig, flags=["output_dir", "data.data_dir"], default_config=default_config_path())
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distrm.training.finetune import finetune, validate

    cfg = config_from_args(FinetuneConfig, args, default_config_path())
    validate(cfg)
    if not args.print_config:
        finetune(cfg)
    return 0
