"""``distrm finetune-backbone``: turn a causal LM into a Bradley-Terry reward model with TRL's
``RewardTrainer`` (LoRA by default), then save it as a normal backbone directory.

Why: both papers put their heads on a backbone that was first trained as a reward model (QRM on
a BT-trained Llama-3-8B, the uncertainty paper on Gemma-2B-it after a BT stage). A raw chat
model's last-token state knows little about preference; a BT fine-tune teaches it.

Pipeline (each step small and checkable):

1. Data: the configured preference sets (default: the shared training sets), capped per source
   *before* the prompt-hash split, then the ``"train"`` side of :func:`distrm.data.splits.split`
   -- exactly what ``distrm train`` trains on, so nothing from an evaluation split is seen. A
   small salted slice of that training side is held out for TRL's eval metrics.
2. Examples: conversational (prompt messages + one assistant turn each side). With
   ``truncation: left`` (default) they are tokenised by :class:`distrm.features.backbones.Backbone`'s
   own chat-template tokenisation (left-truncated to ``max_length``) and handed to TRL as
   ``chosen_ids``/``rejected_ids``: the reward is then read at exactly the token whose hidden
   state is the backbone's reward feature, so the saved head applied to
   ``Backbone.from_pretrained(out)`` features reproduces the trained reward model's score.
   ``truncation: filter`` gives TRL the conversational examples and lets it drop pairs longer
   than ``max_length`` (TRL's behaviour; the count is reported).
3. Margins: ``none``, ``constant`` (``margin_value``) or ``score_gap`` (``margin_scale`` x the
   difference of the two responses' rated scores where the source has them -- UltraFeedback's
   overall score, PKU's is_safe -- else 0, counted). TRL's loss is
   ``-logsigmoid(r_c - r_r - margin) + center_rewards_coefficient * mean((r_c + r_r)^2)``.
4. Train: ``AutoModelForSequenceClassification`` (num_labels=1, the score head starts random)
   + ``peft.LoraConfig`` (score head in ``modules_to_save``) or full fine-tuning.
5. Save: LoRA merged (``merge_and_unload``), the transformer body copied into the base
   *causal LM* (so ``Backbone.from_pretrained(out)``, the feature store, ``distrm train
   backbone.name=<out>``, ensembles and the server load it like any other backbone), tokenizer
   with its chat template, the score head (``reward_head.safetensors`` + ``.json``), a
   one-member ensemble reward model in ``reward_model/`` (servable as is), and
   ``distrm_finetune.json`` (config, data counts, train/eval metrics, merge check).
   ``config.json`` carries ``distrm_reward_tuned`` with a hash of the weights, so the
   backbone's identity (fingerprint) differs from the raw model's and caches never mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from distrm.config import DataConfig

HEAD_NAME = "reward_head.safetensors"
HEAD_CONFIG = "reward_head.json"
LOG_NAME = "distrm_finetune.json"


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"  # peft's "all-linear" or module names (q_proj, v_proj, ...)


@dataclass
class FinetuneConfig:
    """Everything ``distrm finetune-backbone`` needs; YAML + ``--set key=value`` like TrainConfig."""

    base_model: str = "smollm2-135m"  # alias (smollm2-135m, gemma3-270m), HF causal LM name or local dir
    output_dir: str = "runs/rm-smollm2-135m"
    seed: int = 0
    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=lambda: DataConfig(rated=[], pairs=["default"]))
    max_pairs: int | None = None  # total cap after the split (seeded sample); null = all
    holdout_fraction: float = 0.05  # of the TRAIN side (salted prompt hash) for TRL's eval metrics
    margin: Literal["none", "constant", "score_gap"] = "none"
    margin_value: float = 0.0  # margin: constant
    margin_scale: float = 1.0  # margin: score_gap -> scale x (score_chosen - score_rejected), scores in [0, 1]
    center_rewards_coefficient: float | None = None  # TRL; 0.01 recommended by its docs
    max_length: int = 384
    truncation: Literal["left", "filter"] = "left"
    learning_rate: float = 1e-4
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03  # share of the steps (passed as warmup_steps < 1, transformers 5)
    weight_decay: float = 0.0
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs (tests, smoke runs)
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    bf16: bool | None = None  # None: on for CUDA with bf16 and for CPUs with AMX-bf16; else off
    gradient_checkpointing: bool = False  # TRL's default is on; off is faster when memory allows
    logging_steps: int = 10
    eval_steps: int | None = None  # None: evaluate once at the end
    chat_template: str | None = None  # Jinja file used when the tokenizer has none (the Gemma-3 GGUF ships none)
    device: str | None = None  # None: cuda if available
    save_dtype: Literal["float32", "bfloat16"] = "float32"
    merge_check_pairs: int = 8  # pairs scored by the peft, merged and reloaded model (equivalence check)
    progress: bool = True


def validate(cfg: FinetuneConfig) -> None:
    """Clear errors for bad values before any model is loaded. Types and choices go through the
    config system's own check (:func:`distrm.config.from_dict`, which also turns YAML's ``5e-3``
    text into a number), so a config built in Python is checked like one read from YAML; the
    ranges are checked here."""
    import dataclasses

    from distrm.config import from_dict

    typed = from_dict(FinetuneConfig, dataclasses.asdict(cfg), "finetune config")
    for f in dataclasses.fields(FinetuneConfig):
        setattr(cfg, f.name, getattr(typed, f.name))
    checks = [
        (isinstance(cfg.max_length, int) and cfg.max_length >= 16, f"max_length must be an int >= 16, got {cfg.max_length!r}"),
        (0.0 <= cfg.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}"),
        (cfg.learning_rate > 0, f"learning_rate must be > 0, got {cfg.learning_rate}"),
        (cfg.per_device_train_batch_size >= 1, "per_device_train_batch_size must be >= 1"),
        (cfg.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
        (cfg.num_train_epochs > 0 or cfg.max_steps > 0, "num_train_epochs or max_steps must be > 0"),
        (0.0 <= cfg.holdout_fraction < 0.5, f"holdout_fraction must be in [0, 0.5), got {cfg.holdout_fraction}"),
        (cfg.max_pairs is None or cfg.max_pairs >= 2, f"max_pairs must be >= 2 or null, got {cfg.max_pairs}"),
        (cfg.lora.r >= 1 and cfg.lora.alpha > 0, f"lora.r must be >= 1 and lora.alpha > 0, got {cfg.lora.r}/{cfg.lora.alpha}"),
        (cfg.center_rewards_coefficient is None or cfg.center_rewards_coefficient >= 0, "center_rewards_coefficient must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


# ============================================================================ data
def load_pairs(cfg: FinetuneConfig) -> tuple[list, list, dict[str, Any]]:
    """(train pairs, holdout pairs, info): the training split of the configured preference sets
    (same caps and split as ``distrm train``), an optional total cap, then a salted prompt-hash
    slice of the training side held out for TRL's eval metrics."""
    from distrm.config import TrainConfig
    from distrm.data import registry
    from distrm.data.splits import train_test
    from distrm.training.qrm import load_training_data

    d = cfg.data
    pairs_names = list(registry.DEFAULT_TRAIN_PAIRS) if d.pairs == ["default"] else list(d.pairs)
    if not pairs_names:
        raise ValueError("data.pairs is empty: name at least one preference set (or [default])")
    _, pairs, reports = load_training_data(TrainConfig(data=dataclasses.replace(d, rated=[], pairs=pairs_names)))
    if not pairs:
        raise ValueError(f"no training pairs in {pairs_names} after the split")
    n_split = len(pairs)
    if cfg.max_pairs and len(pairs) > cfg.max_pairs:
        rng = random.Random(cfg.seed)
        pairs = [pairs[i] for i in sorted(rng.sample(range(len(pairs)), cfg.max_pairs))]
    holdout: list = []
    if cfg.holdout_fraction > 0:
        train, holdout = train_test(pairs, cfg.holdout_fraction, salt="distrm-finetune-holdout")
        if train:
            pairs = train
    by_source: dict[str, int] = {}
    for p in pairs:
        by_source[p.source] = by_source.get(p.source, 0) + 1
    info = {"sources": pairs_names, "train_split_pairs": n_split, "train_pairs": len(pairs), "holdout_pairs": len(holdout),
            "train_pairs_by_source": by_source, "reports": reports}  # fmt: skip
    return pairs, holdout, info


def score_lookup(pairs: list, data_dir: str | None) -> dict[tuple[str, str], float]:
    """(prompt key, response) -> mean rated score in [0, 1], from the rated records of the
    pair sources that have them (UltraFeedback overall score, PKU is_safe)."""
    from distrm.data import registry
    from distrm.data.records import prompt_key

    out: dict[tuple[str, str], float] = {}
    for src in sorted({p.source for p in pairs}):
        try:
            ds = registry.get(src)
        except KeyError:
            continue
        if "rated" not in ds.loaders:
            continue
        for r in registry.load_rated(ds.name, data_dir=data_dir).records:
            vals = [float(np.mean(r.rater_scores(a))) for a in r.scores]
            if vals:
                out[(prompt_key(r.prompt), r.response)] = float(np.mean(vals))
    return out


def margins(cfg: FinetuneConfig, pairs: list) -> tuple[list[float] | None, dict[str, int]]:
    """Per-pair margins (None: no margin column) and how many pairs had a score gap."""
    if cfg.margin == "none":
        return None, {}
    if cfg.margin == "constant":
        return [float(cfg.margin_value)] * len(pairs), {"constant": len(pairs)}
    from distrm.data.records import prompt_key

    scores = score_lookup(pairs, cfg.data.data_dir)
    out, counts = [], {"with_scores": 0, "without_scores": 0}
    for p in pairs:
        k = prompt_key(p.prompt)
        sc, sr = scores.get((k, p.chosen)), scores.get((k, p.rejected))
        if sc is None or sr is None:
            out.append(0.0)
            counts["without_scores"] += 1
        else:
            out.append(cfg.margin_scale * max(sc - sr, 0.0))
            counts["with_scores"] += 1
    return out, counts


def conversational(pair) -> dict[str, Any]:
    """TRL's conversational preference example (explicit prompt)."""
    from distrm.features.backbones import as_messages

    return {
        "prompt": as_messages(pair.prompt),
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
    }


def build_dataset(cfg: FinetuneConfig, pairs: list, backbone, margin: list[float] | None) -> tuple[Any, dict[str, int]]:
    """A ``datasets.Dataset`` for TRL: pre-tokenised by the backbone (truncation: left) or
    conversational (truncation: filter, TRL tokenises and drops over-long pairs)."""
    from datasets import Dataset

    rows: list[dict[str, Any]] = []
    n_trunc = 0
    for i, p in enumerate(pairs):
        if cfg.truncation == "left":
            c_ids, _, tc = backbone._causal_ids(p.prompt, p.chosen)  # the backbone's own tokenisation
            r_ids, _, tr = backbone._causal_ids(p.prompt, p.rejected)
            n_trunc += bool(tc or tr)
            row: dict[str, Any] = {"chosen_ids": c_ids, "rejected_ids": r_ids}
        else:
            row = conversational(p)
        if margin is not None:
            row["margin"] = margin[i]
        rows.append(row)
    return Dataset.from_list(rows), {"pairs_truncated": n_trunc}


# ============================================================================ model
def cpu_has_amx_bf16() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def resolve_bf16(cfg: FinetuneConfig, device: torch.device) -> bool:
    if cfg.bf16 is not None:
        return bool(cfg.bf16)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_amx_bf16()


def load_seqcls(path: str, device: torch.device):
    """The causal LM's body + a fresh 1-output score head (what TRL does for a model name),
    loaded fp32 (master weights; bf16 is autocast) and seeded by the caller."""
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    return model.to(device)


def body_of(seqcls):
    """The transformer body (``LlamaModel``, ``Gemma3TextModel``, ...) of a sequence classifier."""
    return getattr(seqcls, seqcls.base_model_prefix)


@torch.inference_mode()
def score_ids(model, ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """Scores of token-id rows with a (peft or plain) sequence-classification model, fp32."""
    L = max(map(len, ids))
    x = torch.full((len(ids), L), pad_id, dtype=torch.long)
    m = torch.zeros_like(x)
    for i, row in enumerate(ids):
        x[i, : len(row)] = torch.tensor(row)
        m[i, : len(row)] = 1
    dev = next(model.parameters()).device
    return model(input_ids=x.to(dev), attention_mask=m.to(dev)).logits[:, 0].float().cpu()


def weights_digest(model) -> str:
    """sha256 over every parameter (names + bytes): the identity of the trained weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_backbone(out: Path, base_path: str, merged, tokenizer, info: dict[str, Any], save_dtype: str) -> str:
    """Copy the merged body into the base causal LM and save it (safetensors) with the tokenizer;
    ``config.json`` gets ``distrm_reward_tuned`` (weight hash + provenance). Returns the hash."""
    from transformers import AutoModelForCausalLM

    causal = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    body_of(causal).load_state_dict(body_of(merged).state_dict(), strict=True)
    if causal.config.tie_word_embeddings:  # a full fine-tune may move the embeddings: keep the head tied
        causal.tie_weights()
    digest = weights_digest(body_of(causal))
    causal.config.distrm_reward_tuned = {"weights_sha256_16": digest, **info}
    causal.to(torch.bfloat16 if save_dtype == "bfloat16" else torch.float32)
    causal.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return digest


def save_head(out: Path, weight: torch.Tensor, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file({"weight": weight.detach().float().cpu().contiguous()}, str(out / HEAD_NAME))
    (out / HEAD_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_head(path: str | Path) -> torch.Tensor:
    """The saved score head ``[1, d]``: reward = features @ weight.T (no bias)."""
    from safetensors.torch import load_file

    p = Path(path) / HEAD_NAME
    if not p.is_file():
        raise FileNotFoundError(f"{p} missing: not a directory written by distrm finetune-backbone")
    return load_file(str(p))["weight"]


def _trl_config(cfg: FinetuneConfig, out: Path, bf16: bool, use_cpu: bool, has_eval: bool):
    from trl import RewardConfig

    return RewardConfig(
        output_dir=str(out / "trainer"),
        seed=cfg.seed,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        bf16=bf16,
        use_cpu=use_cpu,
        gradient_checkpointing=cfg.gradient_checkpointing,
        max_length=cfg.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        logging_steps=cfg.logging_steps,
        eval_strategy=("steps" if cfg.eval_steps else "no") if has_eval else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=not cfg.progress,
        dataloader_num_workers=0,
    )


# ============================================================================ entry point
def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run the whole pipeline (module docstring); returns what ``distrm_finetune.json`` holds."""
    from transformers import AutoTokenizer
    from trl import RewardTrainer

    from distrm.features.backbones import Backbone, read_chat_template, resolve_model_dir

    validate(cfg)
    t_all = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = resolve_bf16(cfg, device)
    log: dict[str, Any] = {"config": dataclasses.asdict(cfg), "device": str(device), "bf16": bf16, "timings_s": {}}

    t0 = time.perf_counter()
    train_pairs, holdout_pairs, log["data"] = load_pairs(cfg)
    print(f"data: {len(train_pairs)} training pairs ({log['data']['train_pairs_by_source']}), {len(holdout_pairs)} held out "
          f"from the training split for eval metrics")  # fmt: skip

    base_path = resolve_model_dir(cfg.base_model)
    torch.manual_seed(cfg.seed)  # the score head starts random: seed it
    model = load_seqcls(base_path, device)
    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template and cfg.chat_template:
        tok.chat_template = read_chat_template(cfg.chat_template)  # saved with the tokenizer: the tuned backbone has it
    if not tok.chat_template:
        raise ValueError(f"{cfg.base_model!r} has no chat template: give one with chat_template=<file.jinja>")
    # a Backbone over the same body: its tokenisation is the one the saved head will see
    bb = Backbone(cfg.base_model, body_of(model), tok, "causal", cfg.max_length, device, torch.float32)

    margin, margin_counts = margins(cfg, train_pairs)
    train_ds, tinfo = build_dataset(cfg, train_pairs, bb, margin)
    eval_ds = None
    if holdout_pairs:
        h_margin, _ = margins(cfg, holdout_pairs)
        eval_ds, hinfo = build_dataset(cfg, holdout_pairs, bb, h_margin)
        tinfo["holdout_pairs_truncated"] = hinfo["pairs_truncated"]
    log["data"].update(tinfo)
    log["data"]["margins"] = margin_counts
    log["timings_s"]["data"] = time.perf_counter() - t0

    peft_config = None
    if cfg.method == "lora":
        from peft import LoraConfig, TaskType

        peft_config = LoraConfig(
            task_type=TaskType.SEQ_CLS, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, modules_to_save=["score"],
        )  # fmt: skip
    args = _trl_config(cfg, out, bf16, device.type == "cpu", eval_ds is not None)
    trainer = RewardTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok,
                            peft_config=peft_config)  # fmt: skip
    n_used = len(trainer.train_dataset)
    log["data"]["pairs_used"] = n_used
    log["data"]["pairs_dropped_over_max_length"] = len(train_ds) - n_used
    if n_used == 0:
        raise ValueError(f"every training pair is longer than max_length={cfg.max_length} (truncation: filter); raise it")
    t0 = time.perf_counter()
    result = trainer.train()
    log["timings_s"]["train"] = time.perf_counter() - t0
    log["train"] = {**result.metrics, "global_step": trainer.state.global_step,
                    "history": [h for h in trainer.state.log_history if "loss" in h or "eval_loss" in h]}  # fmt: skip
    if eval_ds is not None:
        t0 = time.perf_counter()
        log["eval_holdout"] = trainer.evaluate()
        log["timings_s"]["eval"] = time.perf_counter() - t0
        print(f"holdout (train split) accuracy: {log['eval_holdout'].get('eval_accuracy', float('nan')):.3f}")

    # ---- merge, check, save
    t0 = time.perf_counter()
    # without accelerate's bf16 autocast wrapper: the check compares fp32 scores
    trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False).eval()
    check_pairs = train_pairs[: cfg.merge_check_pairs]
    check_ids = [bb._causal_ids(p.prompt, r)[0] for p in check_pairs for r in (p.chosen, p.rejected)]
    pad_id = tok.pad_token_id
    before = score_ids(trained, check_ids, pad_id)
    merged = trained.merge_and_unload() if cfg.method == "lora" else trained
    after = score_ids(merged, check_ids, pad_id)
    head = merged.score.weight.detach().float().cpu()
    info = {"base_model": cfg.base_model, "base_path": base_path, "method": cfg.method, "train_pairs": len(train_pairs)}
    digest = save_backbone(out, base_path, merged, tok, info, cfg.save_dtype)
    feature_note = "Backbone.from_pretrained(dir) reward feature (last-token final hidden state)"
    save_head(out, head, {"feature": feature_note, "hidden_size": int(head.shape[1]), "bias": False,
                          "max_length": cfg.max_length, "truncation": cfg.truncation, "weights_sha256_16": digest})  # fmt: skip
    reloaded = Backbone.from_pretrained(str(out.resolve()), device=str(device), dtype="float32", max_length=cfg.max_length)
    save_reward_model(out, head, reloaded.identity, cfg.max_length)
    feats = reloaded._batched(check_ids, [[len(x) - 1] for x in check_ids], batch_size=8)[:, 0]
    again = torch.as_tensor(feats) @ head.T
    log["merge_check"] = {
        "pairs": len(check_pairs),
        "max_abs_peft_vs_merged": float((before - after).abs().max()),
        "max_abs_peft_vs_reloaded_backbone": float((before - again[:, 0]).abs().max()),
        "score_range": float(before.max() - before.min()),
    }
    log["identity"] = {"reloaded": reloaded.identity, "weights_sha256_16": digest}
    log["timings_s"]["save"] = time.perf_counter() - t0
    log["timings_s"]["total"] = time.perf_counter() - t_all
    (out / LOG_NAME).write_text(json.dumps(log, indent=2, default=str) + "\n", encoding="utf-8")
    mc = log["merge_check"]
    print(f"merge check: |peft - merged| <= {mc['max_abs_peft_vs_merged']:.2e}, |peft - reloaded backbone + head| <= "
          f"{mc['max_abs_peft_vs_reloaded_backbone']:.2e} (score range {mc['score_range']:.2f})")  # fmt: skip
    print(f"saved reward-tuned backbone to {out} (identity {reloaded.identity})")
    return log


def save_reward_model(out: Path, head: torch.Tensor, identity: str, max_length: int) -> None:
    """The fine-tuned single-head reward model as a one-member ensemble on the saved backbone
    (by absolute path, fp32 features), so ``distrm serve``/``load_reward_model`` use it as is."""
    from distrm.models.bt_ensemble import EnsembleModelConfig, EnsembleRewardModel

    cfg = EnsembleModelConfig(backbone=str(out.resolve()), feature_dim=int(head.shape[1]), n_members=1, backbone_identity=identity,
                              backbone_max_length=max_length, backbone_dtype="float32",
                              training={"kind": "finetune-backbone score head"})  # fmt: skip
    EnsembleRewardModel(cfg, head.double()).save_pretrained(out / "reward_model")
