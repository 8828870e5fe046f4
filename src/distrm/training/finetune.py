"""``distrm finetune-backbone``: turn a causal LM or an encoder (BERT family, e.g. MiniLM) into a
Bradley-Terry reward model with TRL's ``RewardTrainer`` (LoRA or full), then save it as a normal
backbone directory.

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
   than ``max_length`` (TRL's behaviour; the count is reported). Encoders: the backbone's own
   pair encoding (prompt text, response; ``longest_first``), segment ids included.
3. Margins: ``none``, ``constant`` (``margin_value``) or ``score_gap`` (``margin_scale`` x the
   difference of the two responses' rated scores where the source has them -- UltraFeedback's
   overall score, PKU's is_safe -- else 0, counted). TRL's loss is
   ``-logsigmoid(r_c - r_r - margin) + center_rewards_coefficient * mean((r_c + r_r)^2)``.
4. Train: ``AutoModelForSequenceClassification`` (num_labels=1, the score head starts random;
   encoders: :class:`distrm.training.reward_encoder.MeanPoolRewardModel`, the score on the
   mean-pooled feature the backbone extracts -- not the classifier's ``[CLS]`` pooler)
   + ``peft.LoraConfig`` (score head in ``modules_to_save``) or full fine-tuning, with TRL's
   ``RewardTrainer``; the config's ``trainer:`` section is ``trl.RewardConfig``'s options, passed
   as is (checked against its fields when the config loads), so checkpoints, resuming, reporting,
   DeepSpeed/FSDP and the rest work as TRL / transformers define them.
5. Save: LoRA merged (``merge_and_unload``), the transformer body copied into the base
   *causal LM* (so ``Backbone.from_pretrained(out)``, the feature store, ``distrm train
   backbone.name=<out>``, ensembles and the server load it like any other backbone), tokenizer
   with its chat template, the score head (``reward_head.safetensors`` + ``.json``), a
   one-member ensemble reward model in ``reward_model/`` (servable as is; its backbone is
   recorded as ``..``, so the whole folder can move), the standard
   ``AutoModelForSequenceClassification`` checkpoint in ``seq_cls/`` (what TRL, OpenRLHF and
   RewardBench load; causal LMs only: no standard class mean-pools an encoder), and
   ``distrm_finetune.json`` (config, data counts, train/eval metrics, merge check). An encoder's
   folder is its base ``AutoModel`` (plus the base's sentence-transformers pooling files). Only
   the main process of a multi-process run saves.
   ``config.json`` carries ``distrm_reward_tuned`` with a hash of the weights, so the
   backbone's identity (fingerprint) differs from the raw model's and caches never mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from distrm.config import DataConfig, LoraSettings
from distrm.features.backbones import BACKBONE_MANIFEST
from distrm.features.store import write_file_manifest

logger = logging.getLogger(__name__)

HEAD_NAME = "reward_head.safetensors"
HEAD_CONFIG = "reward_head.json"
LOG_NAME = "distrm_finetune.json"


@dataclass
class FinetuneConfig:
    """Everything ``distrm finetune-backbone`` needs; YAML + ``--set key=value`` like TrainConfig.
    distrm's own settings are fields; the trainer's are the ``trainer:`` section, handed to
    ``trl.RewardConfig`` as is (so every TRL / transformers option works as they define it)."""

    # alias (smollm2-135m, gemma3-270m, minilm), HF causal LM or encoder (BERT family) name, or local dir
    base_model: str = "smollm2-135m"
    output_dir: str = "runs/rm-smollm2-135m"
    seed: int = 0  # pair sampling, score-head init and TRL's seed (RewardConfig.seed is set from it)
    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=lambda: DataConfig(rated=[], pairs=["default"]))
    max_pairs: int | None = None  # total cap after the split (seeded sample); null = all
    holdout_fraction: float = 0.05  # of the TRAIN side (salted prompt hash) for TRL's eval metrics
    margin: Literal["none", "constant", "score_gap"] = "none"
    margin_value: float = 0.0  # margin: constant
    margin_scale: float = 1.0  # margin: score_gap -> scale x (score_chosen - score_rejected), scores in [0, 1]
    # tokens per response: distrm's tokenisation and RewardConfig.max_length (set from it), and
    # the saved backbone's max_length
    max_length: int = 384
    truncation: Literal["left", "filter"] = "left"
    chat_template: str | None = None  # Jinja file used when the tokenizer has none (the Gemma-3 GGUF ships none)
    device: str | None = None  # None: cuda (this process's LOCAL_RANK GPU) if available, else cpu
    save_dtype: Literal["float32", "bfloat16"] = "float32"
    merge_check_pairs: int = 8  # pairs scored by the peft, merged and reloaded model (equivalence check)
    # passed to trl.RewardConfig(**trainer) (TrainingArguments' options included: learning_rate,
    # per_device_train_batch_size, max_steps, warmup_steps, report_to, save_strategy, save_steps,
    # resume_from_checkpoint, deepspeed, fsdp, bf16, activation_checkpointing, ...); keys and types
    # are checked when the config loads. Unset keys take TRL's defaults, except: output_dir
    # <output_dir>/trainer, use_cpu when the device is a CPU, bf16 null/unset = on for bf16 GPUs and
    # AMX-bf16 CPUs; seed and max_length come from the fields above
    trainer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # names and types of trainer keys, checked when the config loads
        self.trainer = trainer_options(self.trainer)


# RewardConfig options that distrm sets from its own fields (it uses the values too)
TRAINER_OWNED = {"seed": "seed", "max_length": "max_length", "chat_template_path": "chat_template"}
# renamed or removed options that old configs (and habits) still use
TRAINER_RENAMED = {"warmup_ratio": "warmup_steps (transformers 5: a value < 1 is a share of the total steps)",
                   "evaluation_strategy": "eval_strategy", "progress": "disable_tqdm"}  # fmt: skip
# YAML types more permissive than RewardConfig's annotation (what Trainer.train itself accepts)
TRAINER_TYPES: dict[str, Any] = {"resume_from_checkpoint": bool | str | None}


def trainer_options(raw: dict[str, Any] | None, where: str = "trainer") -> dict[str, Any]:
    """The ``trainer:`` section checked against ``trl.RewardConfig``'s dataclass fields: an unknown
    key is an error naming it (with close matches), a value is coerced to the field's annotated
    type like any config value (YAML's ``1e-4`` text is a number; YAML 1.1's bare ``no`` -- read
    as false -- is "no" again for a string option such as ``save_strategy``). Values a field's
    type does not pin down (enums, paths, dicts) are checked by :func:`validate`, which builds the
    ``RewardConfig`` once without training."""
    import difflib
    import typing

    from trl import RewardConfig

    from distrm.config import coerce

    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of trl.RewardConfig options, got {raw!r}")
    fields = {f.name for f in dataclasses.fields(RewardConfig) if f.init}
    hints = typing.get_type_hints(RewardConfig)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k in TRAINER_OWNED:
            raise ValueError(f"{where}.{k}: set by distrm from its own field {TRAINER_OWNED[k]!r} (distrm uses the value "
                             f"too): give {TRAINER_OWNED[k]}: ... at the top level")  # fmt: skip
        if k not in fields:
            hint = TRAINER_RENAMED.get(k) or " or ".join(difflib.get_close_matches(str(k), sorted(fields), n=3, cutoff=0.6))
            raise ValueError(f"{where}.{k}: not an option of trl.RewardConfig (transformers TrainingArguments included)"
                             + (f"; did you mean {hint}?" if hint else ""))  # fmt: skip
        tp = TRAINER_TYPES.get(k, hints[k])
        if isinstance(v, bool) and not v and _takes_str_not_bool(tp):
            v = "no"
        out[k] = coerce(v, tp, f"{where}.{k}")
    return out


def _takes_str_not_bool(tp: Any) -> bool:
    import types
    import typing

    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return str in args and bool not in args


def resolve_device(cfg: FinetuneConfig) -> torch.device:
    """``device`` or, unset, this process's GPU (``LOCAL_RANK`` under torchrun / accelerate) or the CPU."""
    if cfg.device:
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def trainer_kwargs(cfg: FinetuneConfig, device: torch.device, has_eval: bool) -> dict[str, Any]:
    """``trl.RewardConfig`` keyword arguments: the ``trainer:`` section + what distrm sets (see
    ``FinetuneConfig.trainer``). Without holdout pairs, evaluation during training is turned off."""
    kw = dict(cfg.trainer)
    kw.setdefault("output_dir", str(Path(cfg.output_dir) / "trainer"))
    kw["seed"] = cfg.seed
    kw["max_length"] = cfg.max_length
    if kw.get("bf16") is None:
        kw["bf16"] = False if kw.get("fp16") else resolve_bf16(device)
    kw.setdefault("use_cpu", device.type == "cpu")
    if not has_eval and str(kw.get("eval_strategy", "no")) != "no":  # TRL would refuse: nothing to evaluate on
        kw["eval_strategy"] = "no"
    return kw


def validate(cfg: FinetuneConfig) -> None:
    """Clear errors for bad values before any model is loaded. Types and choices go through the
    config system's own check (:func:`distrm.config.from_dict`, which also turns YAML's ``5e-3``
    text into a number), so a config built in Python is checked like one read from YAML; the
    ranges are checked here, and the ``trainer:`` section by building ``trl.RewardConfig`` from it
    once (a dry run: nothing is trained, loaded or written)."""
    from trl import RewardConfig

    from distrm.config import from_dict

    typed = from_dict(FinetuneConfig, dataclasses.asdict(cfg), "finetune config")
    for f in dataclasses.fields(FinetuneConfig):
        setattr(cfg, f.name, getattr(typed, f.name))
    checks = [
        (isinstance(cfg.max_length, int) and cfg.max_length >= 16, f"max_length must be an int >= 16, got {cfg.max_length!r}"),
        (0.0 <= cfg.holdout_fraction < 0.5, f"holdout_fraction must be in [0, 0.5), got {cfg.holdout_fraction}"),
        (cfg.max_pairs is None or cfg.max_pairs >= 2, f"max_pairs must be >= 2 or null, got {cfg.max_pairs}"),
        (cfg.lora.r >= 1 and cfg.lora.alpha > 0, f"lora.r must be >= 1 and lora.alpha > 0, got {cfg.lora.r}/{cfg.lora.alpha}"),
    ]  # fmt: skip
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
    try:
        RewardConfig(**trainer_kwargs(cfg, resolve_device(cfg), has_eval=cfg.holdout_fraction > 0))
    except (ValueError, TypeError, ImportError) as e:
        raise ValueError(f"trainer: trl.RewardConfig refuses these options: {e}") from None


LEGACY_TRAINER_KEYS = ("learning_rate", "lr_scheduler_type", "weight_decay", "num_train_epochs", "max_steps",
                       "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "logging_steps",
                       "center_rewards_coefficient")  # fmt: skip


def upgrade_legacy_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A finetune config dict from before the ``trainer:`` section (e.g. the ``config`` of an older
    ``distrm_finetune.json``) in today's shape: the re-declared RewardConfig fields move under
    ``trainer`` (``warmup_ratio`` -> ``warmup_steps``, ``gradient_checkpointing`` ->
    ``activation_checkpointing``, ``eval_steps`` -> ``eval_strategy``/``eval_steps``,
    ``progress`` -> ``disable_tqdm``) and the old fixed ``save_strategy: no``/``report_to: none``
    are made explicit. A dict already in today's shape is returned unchanged (a copy)."""
    raw = dict(raw)
    if "trainer" in raw:
        return raw
    tr: dict[str, Any] = {"save_strategy": "no", "report_to": "none"}
    for k in LEGACY_TRAINER_KEYS:
        if k in raw:
            tr[k] = raw.pop(k)
    if "per_device_train_batch_size" in tr:
        tr["per_device_eval_batch_size"] = tr["per_device_train_batch_size"]
    if "warmup_ratio" in raw:
        tr["warmup_steps"] = raw.pop("warmup_ratio")
    if "gradient_checkpointing" in raw:
        tr["activation_checkpointing"] = raw.pop("gradient_checkpointing")
    if "eval_steps" in raw:
        steps = raw.pop("eval_steps")
        tr.update({"eval_strategy": "steps", "eval_steps": steps} if steps else {"eval_strategy": "no"})
    if "progress" in raw:
        tr["disable_tqdm"] = not raw.pop("progress")
    raw["trainer"] = tr
    return raw


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
    """A ``datasets.Dataset`` for TRL: pre-tokenised by the backbone (truncation: left; always for
    encoders) or conversational (truncation: filter, TRL tokenises and drops over-long pairs)."""
    from datasets import Dataset

    rows: list[dict[str, Any]] = []
    n_trunc = 0
    for i, p in enumerate(pairs):
        if backbone.kind == "encoder":  # the backbone's own pair encoding (longest_first), segment ids included
            (c_ids,), c_types, tc = backbone._encoder_ids([p.prompt], [p.chosen])
            (r_ids,), r_types, tr = backbone._encoder_ids([p.prompt], [p.rejected])
            n_trunc += bool(tc or tr)
            row = {"chosen_ids": c_ids, "rejected_ids": r_ids}
            if c_types is not None:
                row.update(chosen_types=c_types[0], rejected_types=r_types[0])
        elif cfg.truncation == "left":
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


def resolve_bf16(device: torch.device) -> bool:
    """distrm's default for ``trainer.bf16`` (unset or null): on for bf16 GPUs and AMX-bf16 CPUs."""
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


def load_trainable(kind: str, path: str, device: torch.device):
    """The model TRL trains: a causal LM's sequence classifier (:func:`load_seqcls`) or an
    encoder under a mean-pooled score (:class:`distrm.training.reward_encoder.MeanPoolRewardModel`)."""
    if kind == "causal":
        return load_seqcls(path, device)
    from distrm.training.reward_encoder import MeanPoolRewardModel

    return MeanPoolRewardModel.from_encoder(path, device)


def body_of(seqcls):
    """The transformer body (``LlamaModel``, ``Gemma3TextModel``, ``BertModel``, ...) of a sequence
    classifier or causal LM; a bare body (``BertModel``) is its own."""
    return getattr(seqcls, seqcls.base_model_prefix, seqcls)


@torch.inference_mode()
def score_ids(model, ids: list[list[int]], pad_id: int, types: list[list[int]] | None = None) -> torch.Tensor:
    """Scores of token-id rows (and an encoder's segment ids) with a (peft or plain) reward model, fp32."""
    L = max(map(len, ids))
    x = torch.full((len(ids), L), pad_id, dtype=torch.long)
    m = torch.zeros_like(x)
    t = torch.zeros_like(x)
    for i, row in enumerate(ids):
        x[i, : len(row)] = torch.tensor(row)
        m[i, : len(row)] = 1
        if types is not None:
            t[i, : len(row)] = torch.tensor(types[i])
    dev = next(model.parameters()).device
    kw = {"token_type_ids": t.to(dev)} if types is not None else {}
    return model(input_ids=x.to(dev), attention_mask=m.to(dev), **kw).logits[:, 0].float().cpu()


def weights_digest(model) -> str:
    """sha256 over every parameter (names + bytes): the identity of the trained weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_backbone(out: Path, base_path: str, merged, tokenizer, info: dict[str, Any], save_dtype: str, kind: str = "causal") -> str:
    """Copy the merged body into the base causal LM (an encoder: the base encoder) and save it
    (safetensors) with the tokenizer; ``config.json`` gets ``distrm_reward_tuned`` (weight hash +
    provenance). An encoder folder keeps the base's sentence-transformers files (its pooling is
    the mean the head was trained on). Returns the hash."""
    from transformers import AutoModel, AutoModelForCausalLM

    causal = (AutoModelForCausalLM if kind == "causal" else AutoModel).from_pretrained(base_path, dtype=torch.float32)
    body_of(causal).load_state_dict(body_of(merged).state_dict(), strict=True)
    if kind == "causal" and causal.config.tie_word_embeddings:  # a full fine-tune may move the embeddings: keep the head tied
        causal.tie_weights()
    digest = weights_digest(body_of(causal))
    causal.config.distrm_reward_tuned = {"weights_sha256_16": digest, **info}
    causal.to(torch.bfloat16 if save_dtype == "bfloat16" else torch.float32)
    # every file written whole into a hidden staging folder, then renamed into ``out`` between
    # removing the backbone manifest and writing it anew (last): a save killed at any step
    # leaves the old backbone, the new one, or a folder without a manifest, which
    # Backbone.from_pretrained refuses -- never new weights read with an old config. A killed
    # save's staging folder is removed by the next one (and ignored meanwhile: hidden)
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{BACKBONE_STAGING}*"):
        shutil.rmtree(old, ignore_errors=True)
    stage = out / f"{BACKBONE_STAGING}{os.getpid()}"
    stage.mkdir()
    try:
        causal.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
        if kind == "encoder":
            for name in SENTENCE_TRANSFORMERS_FILES:
                src = Path(base_path) / name
                if src.is_dir():
                    shutil.copytree(src, stage / name)
                elif src.is_file():
                    shutil.copy2(src, stage / name)
        new = {f.name for f in stage.iterdir()}
        (out / BACKBONE_MANIFEST).unlink(missing_ok=True)
        for f in out.iterdir():  # weight shards of an earlier save that this one does not overwrite
            if f.is_file() and f.name not in new and (f.suffix == ".safetensors" and f.name.startswith("model")
                                                      or f.name == "model.safetensors.index.json"):
                f.unlink()
        for f in sorted(stage.iterdir(), key=lambda f: f.name == "config.json"):
            if f.is_dir() and (out / f.name).is_dir():
                shutil.rmtree(out / f.name)
            os.replace(f, out / f.name)
        write_file_manifest(out, sorted(n for n in new if (out / n).is_file()), BACKBONE_MANIFEST, weights_sha256_16=digest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return digest


BACKBONE_STAGING = ".backbone-save-"
# what sentence-transformers reads next to the weights (mean pooling for all-MiniLM-L6-v2)
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling")


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


SEQCLS_DIR = "seq_cls"


def save_seqcls(dst: Path, merged, tokenizer, info: dict[str, Any], save_dtype: str) -> None:
    """The merged model as the standard ``AutoModelForSequenceClassification`` checkpoint
    (num_labels=1, the trained score head, ``pad_token_id`` set -- the classifier reads the
    score at the last non-pad token -- safetensors, tokenizer with its chat template): what TRL,
    OpenRLHF and RewardBench load as is. Converts ``merged`` to ``save_dtype`` in place."""
    if int(merged.config.num_labels) != 1:
        raise ValueError(f"expected a 1-output score head, got num_labels={merged.config.num_labels}")
    merged.config.pad_token_id = tokenizer.pad_token_id
    if hasattr(merged.config, "get_text_config"):
        merged.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    merged.config.distrm_reward_tuned = info
    merged.to(torch.bfloat16 if save_dtype == "bfloat16" else torch.float32)
    merged.save_pretrained(dst, safe_serialization=True)
    tokenizer.save_pretrained(dst)


def is_sharded(trainer) -> bool:
    """Parameters split across processes (FSDP, DeepSpeed ZeRO-3): no process holds the whole model."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None) if getattr(trainer, "is_deepspeed_enabled", False) else None
    return plugin is not None and int(getattr(plugin, "zero_stage", 0) or 0) == 3


def rebuild_trained(state: dict[str, torch.Tensor], base_path: str, peft_config, device: torch.device, kind: str = "causal"):
    """A whole copy of the trained (peft or plain) classifier from its full state dict."""
    model = load_trainable(kind, base_path, torch.device("cpu"))
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model.to(device).eval()


def trained_model(trainer, base_path: str, peft_config, device: torch.device, kind: str = "causal"):
    """The trained classifier, whole and without accelerate's autocast wrapper, on the main
    process (None on the others). Sharded runs gather the full state dict (every process takes
    part; DeepSpeed ZeRO-3 needs ``stage3_gather_16bit_weights_on_model_save``) into a copy."""
    acc = trainer.accelerator
    if not is_sharded(trainer):
        if not trainer.is_world_process_zero():
            return None
        return acc.unwrap_model(trainer.model, keep_fp32_wrapper=False).eval()
    state = acc.get_state_dict(trainer.model)
    if not trainer.is_world_process_zero():
        return None
    return rebuild_trained(state, base_path, peft_config, device, kind)


# ============================================================================ entry point
def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run the whole pipeline (module docstring); returns what ``distrm_finetune.json`` holds.
    In a multi-process run (torchrun / accelerate) every process trains; only the main one
    merges, checks and saves, the others wait for it."""
    from transformers import AutoConfig, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from distrm.features.backbones import Backbone, backbone_kind, read_chat_template, resolve_model_dir

    validate(cfg)
    base_path = resolve_model_dir(cfg.base_model)
    kind = backbone_kind(AutoConfig.from_pretrained(base_path))
    if kind == "encoder" and cfg.truncation != "left":
        raise ValueError(f"truncation: {cfg.truncation!r} is for causal LMs; {cfg.base_model!r} is an encoder, whose pairs are "
                         "always encoded and truncated as its backbone features are (longest_first): use truncation: left")
    t_all = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg)
    log: dict[str, Any] = {"config": dataclasses.asdict(cfg), "device": str(device), "kind": kind, "timings_s": {}}

    t0 = time.perf_counter()
    train_pairs, holdout_pairs, log["data"] = load_pairs(cfg)
    logger.info(f"data: {len(train_pairs)} training pairs ({log['data']['train_pairs_by_source']}), {len(holdout_pairs)} held out "
          f"from the training split for eval metrics")  # fmt: skip

    torch.manual_seed(cfg.seed)  # the score head starts random: seed it
    model = load_trainable(kind, base_path, device)
    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if kind == "causal":  # encoders read plain "role: content" text (the backbone's rendering), no template
        if not tok.chat_template and cfg.chat_template:
            tok.chat_template = read_chat_template(cfg.chat_template)  # saved with the tokenizer: the tuned backbone has it
        if not tok.chat_template:
            raise ValueError(f"{cfg.base_model!r} has no chat template: give one with chat_template=<file.jinja>")
    # a Backbone over the same body: its tokenisation is the one the saved head will see
    bb = Backbone(cfg.base_model, body_of(model), tok, kind, cfg.max_length, device, torch.float32)

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
    targs = trainer_kwargs(cfg, device, eval_ds is not None)
    if targs.get("eval_strategy") != cfg.trainer.get("eval_strategy", targs.get("eval_strategy")):
        logger.info(f"note: no holdout pairs, so trainer.eval_strategy={cfg.trainer['eval_strategy']!r} is turned off")
    log["trainer_args"] = targs
    log["bf16"] = bool(targs["bf16"])
    args = RewardConfig(**targs)
    trainer_cls, extra = RewardTrainer, {}
    if kind == "encoder":  # segment ids padded and kept (see distrm.training.reward_encoder)
        from distrm.training.reward_encoder import EncoderPairCollator, EncoderRewardTrainer

        trainer_cls = EncoderRewardTrainer
        extra["data_collator"] = EncoderPairCollator(pad_token_id=tok.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of)
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok,
                          peft_config=peft_config, **extra)  # fmt: skip
    n_used = len(trainer.train_dataset)
    log["data"]["pairs_used"] = n_used
    log["data"]["pairs_dropped_over_max_length"] = len(train_ds) - n_used
    if n_used == 0:
        raise ValueError(f"every training pair is longer than max_length={cfg.max_length} (truncation: filter); raise it")
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint or None)
    log["timings_s"]["train"] = time.perf_counter() - t0
    log["train"] = {**result.metrics, "global_step": trainer.state.global_step,
                    "history": [h for h in trainer.state.log_history if "loss" in h or "eval_loss" in h]}  # fmt: skip
    if eval_ds is not None:
        t0 = time.perf_counter()
        log["eval_holdout"] = trainer.evaluate()
        log["timings_s"]["eval"] = time.perf_counter() - t0
        logger.info(f"holdout (train split) accuracy: {log['eval_holdout'].get('eval_accuracy', float('nan')):.3f}")

    # ---- merge, check, save: the main process only (the others wait at the end)
    t0 = time.perf_counter()
    trained = trained_model(trainer, base_path, peft_config, device, kind)  # collective when the parameters are sharded
    if trained is not None:
        save_all(cfg, out, log, trained, tok, bb, train_pairs, base_path, device)
        log["timings_s"]["save"] = time.perf_counter() - t0
        log["timings_s"]["total"] = time.perf_counter() - t_all
        (out / LOG_NAME).write_text(json.dumps(log, indent=2, default=str) + "\n", encoding="utf-8")
        mc = log["merge_check"]
        seqcls_note = f", |peft - {SEQCLS_DIR}| <= {mc['max_abs_peft_vs_seq_cls']:.2e}" if "max_abs_peft_vs_seq_cls" in mc else ""
        logger.info(f"merge check: |peft - merged| <= {mc['max_abs_peft_vs_merged']:.2e}, |peft - reloaded backbone + head| <= "
              f"{mc['max_abs_peft_vs_reloaded_backbone']:.2e}{seqcls_note} (score range {mc['score_range']:.2f})")  # fmt: skip
        logger.info(f"saved reward-tuned backbone to {out} (identity {log['identity']['reloaded']}), the reward model to "
              f"{out / 'reward_model'}" + (f", the sequence classifier to {out / SEQCLS_DIR}" if seqcls_note else ""))  # fmt: skip
    trainer.accelerator.wait_for_everyone()
    return log


def save_all(cfg: FinetuneConfig, out: Path, log: dict[str, Any], trained, tok, bb, train_pairs: list, base_path: str,
             device: torch.device) -> None:
    """Merge the LoRA, check the merge, write the backbone, head, reward model and sequence
    classifier, and reload them to check they score like the trained model (into ``log``)."""
    from transformers import AutoModelForSequenceClassification

    from distrm.features.backbones import Backbone
    from distrm.hf_hub import commit_of

    check_pairs = train_pairs[: cfg.merge_check_pairs]
    check_types = None
    if bb.kind == "encoder":
        check_ids, check_types, _ = bb._encoder_ids([p.prompt for p in check_pairs for _ in (0, 1)],
                                                    [r for p in check_pairs for r in (p.chosen, p.rejected)])  # fmt: skip
    else:
        check_ids = [bb._causal_ids(p.prompt, r)[0] for p in check_pairs for r in (p.chosen, p.rejected)]
    pad_id = tok.pad_token_id
    before = score_ids(trained, check_ids, pad_id, check_types)
    merged = trained.merge_and_unload() if cfg.method == "lora" else trained
    after = score_ids(merged, check_ids, pad_id, check_types)
    head = merged.score.weight.detach().float().cpu()
    info = {"base_model": cfg.base_model, "base_path": base_path, "base_revision": commit_of(Path(base_path)),
            "method": cfg.method, "train_pairs": len(train_pairs)}  # fmt: skip
    digest = save_backbone(out, base_path, merged, tok, info, cfg.save_dtype, bb.kind)
    if bb.kind == "encoder":
        feature_note = "Backbone.from_pretrained(dir) reward feature (mean of the final hidden states over the (prompt, response) pair encoding)"
        truncation = "longest_first"
    else:
        feature_note = "Backbone.from_pretrained(dir) reward feature (last-token final hidden state)"
        truncation = cfg.truncation
    save_head(out, head, {"feature": feature_note, "hidden_size": int(head.shape[1]), "bias": False,
                          "max_length": cfg.max_length, "truncation": truncation, "weights_sha256_16": digest})  # fmt: skip
    # the standard classifier reads a causal LM's last token; no standard class mean-pools an
    # encoder (BertForSequenceClassification scores the [CLS] pooler), so encoders get none
    if bb.kind == "causal":
        save_seqcls(out / SEQCLS_DIR, merged, tok, {"weights_sha256_16": digest, **info}, cfg.save_dtype)
    del merged, trained
    reloaded = Backbone.from_pretrained(str(out.resolve()), device=str(device), dtype="float32", max_length=cfg.max_length)
    save_reward_model(out, head, reloaded.identity, cfg.max_length, revision=reloaded.revision,
                      provenance={"base_model": cfg.base_model, "base_revision": info["base_revision"], "method": cfg.method,
                                  "train_pairs": len(train_pairs), "weights_sha256_16": digest})  # fmt: skip
    positions = None if bb.kind == "encoder" else [[len(x) - 1] for x in check_ids]
    feats = reloaded._batched(check_ids, positions, batch_size=8, types=check_types)[:, 0]
    again = torch.as_tensor(feats) @ head.T
    log["merge_check"] = {
        "pairs": len(check_pairs),
        "max_abs_peft_vs_merged": float((before - after).abs().max()),
        "max_abs_peft_vs_reloaded_backbone": float((before - again[:, 0]).abs().max()),
        "score_range": float(before.max() - before.min()),
    }
    if bb.kind == "causal":
        seqcls = AutoModelForSequenceClassification.from_pretrained(out / SEQCLS_DIR, dtype=torch.float32).to(device).eval()
        log["merge_check"]["max_abs_peft_vs_seq_cls"] = float((before - score_ids(seqcls, check_ids, pad_id)).abs().max())
        del seqcls
    log["identity"] = {"reloaded": reloaded.identity, "weights_sha256_16": digest}


def save_reward_model(out: Path, head: torch.Tensor, identity: str, max_length: int, revision: str | None = None,
                      provenance: dict[str, Any] | None = None) -> None:
    """The fine-tuned single-head reward model as a one-member ensemble on the saved backbone
    (fp32 features), so ``distrm serve``/``load_reward_model`` use it as is. The backbone is
    ``out`` itself, recorded relative to ``out/reward_model`` (``..``): the folder works after
    ``out`` is moved or copied as a whole; its identity (a content fingerprint of the weights,
    not a path) and revision are recorded and checked when it loads."""
    from distrm.models.bt_ensemble import EnsembleModelConfig, EnsembleRewardModel

    cfg = EnsembleModelConfig(backbone=str(out.resolve()), feature_dim=int(head.shape[1]), n_members=1, backbone_identity=identity,
                              backbone_max_length=max_length, backbone_dtype="float32", backbone_revision=revision,
                              training={"kind": "finetune-backbone score head", **(provenance or {})})  # fmt: skip
    EnsembleRewardModel(cfg, head.double()).save_pretrained(out / "reward_model")
