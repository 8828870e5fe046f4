"""distrm finetune-backbone: real TRL RewardTrainer on real SmolLM2-135M weights and real shared
pairs, a few steps on a handful of pairs (tiny max_length so it fits CI), then the saved
directory is used as a backbone like any other."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from distrm.features.backbones import Backbone, resolve_model_dir
from distrm.cli import main
from conftest import TINY_FINETUNE, TINY_FINETUNE_MINILM
from distrm.config import load_config
from distrm.training.finetune import HEAD_NAME, LOG_NAME, FinetuneConfig, body_of, load_head, load_seqcls, score_ids, validate

PROMPTS = ["How do I boil an egg?", [{"role": "user", "content": "Say hi."}]]
RESPONSES = ["Put it in boiling water for 8 minutes.", "Hi!"]
@pytest.fixture()
def tuned(finetuned):
    return finetuned


@pytest.mark.slow
def test_cli_writes_a_backbone_dir(tuned):
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", HEAD_NAME, "reward_head.json", LOG_NAME,
                 "reward_model/config.json"):  # fmt: skip
        assert (tuned / name).is_file(), name
    cfg = json.loads((tuned / "config.json").read_text())
    assert cfg["distrm_reward_tuned"]["base_model"] == "smollm2-135m"
    assert cfg["architectures"][0].endswith("ForCausalLM")  # the base causal LM, not the classifier
    log = json.loads((tuned / LOG_NAME).read_text())
    assert log["train"]["global_step"] == 2
    assert log["data"]["train_pairs"] == 12 and log["data"]["pairs_used"] == 12
    assert log["config"]["data"]["test_fraction"] == 0.2
    mc = log["merge_check"]
    assert mc["max_abs_peft_vs_merged"] < 1e-4, mc
    assert mc["max_abs_peft_vs_reloaded_backbone"] < 1e-4, mc
    assert mc["max_abs_peft_vs_seq_cls"] < 1e-4, mc
    assert mc["score_range"] > 1e-3  # not a constant model (the check would be vacuous)
    # the trainer: section reached TRL as is (checkpoints every step, the last one kept)
    assert log["trainer_args"]["save_strategy"] == "steps" and log["trainer_args"]["learning_rate"] == 5e-3
    assert log["trainer_args"]["seed"] == 0 and log["trainer_args"]["max_length"] == 64
    assert [c.name for c in (tuned / "trainer").glob("checkpoint-*")] == ["checkpoint-2"]


@pytest.mark.slow
def test_seq_cls_checkpoint_is_the_standard_one(tuned):
    """OUT/seq_cls loads with plain transformers and scores like the distrm reward model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distrm.features.backbones import as_messages
    from distrm.models.auto import AutoRewardModel

    d = tuned / "seq_cls"
    assert (d / "model.safetensors").is_file() and not list(d.glob("*.bin"))
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"][0].endswith("ForSequenceClassification") and len(cfg["id2label"]) == 1  # num_labels=1
    model = AutoModelForSequenceClassification.from_pretrained(d, dtype=torch.float32).eval()
    assert model.config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.chat_template and model.config.pad_token_id == tok.pad_token_id is not None
    prompts = PROMPTS + ["What is 2 + 2?"]
    responses = RESPONSES + ["4, and a much longer answer than the others so that the batch is padded."]
    texts = [tok.apply_chat_template(as_messages(p) + [{"role": "assistant", "content": r}], tokenize=False)
             for p, r in zip(prompts, responses)]  # fmt: skip
    tok.padding_side = "right"
    batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    assert int((batch["attention_mask"] == 0).sum()) > 0  # padding is exercised
    with torch.inference_mode():
        logits = model(**batch).logits
    assert logits.shape == (3, 1)
    s = AutoRewardModel.from_pretrained(tuned / "reward_model").score(prompts, responses).mean
    assert torch.allclose(logits[:, 0].double(), s.double(), atol=1e-4), (logits[:, 0], s)


@pytest.mark.slow
def test_reward_model_folder_moves_with_its_backbone(tuned, tmp_path):
    """Copy OUT elsewhere, take the original away: OUT_COPY/reward_model loads and scores the same."""
    import shutil

    from distrm.models.auto import AutoRewardModel

    raw = json.loads((tuned / "reward_model" / "config.json").read_text())
    assert raw["backbone"] == ".." and raw["backbone_identity"].startswith("local|")
    assert "backbone_revision" in raw and raw["training"]["base_model"] == "smollm2-135m"
    expect = AutoRewardModel.from_pretrained(tuned / "reward_model").score(PROMPTS, RESPONSES).mean
    copy = tmp_path / "moved" / "rm-copy"
    shutil.copytree(tuned, copy)
    hidden = tuned.with_name(tuned.name + "-away")
    tuned.rename(hidden)  # the original path no longer exists while the copy is used
    try:
        rm = AutoRewardModel.from_pretrained(copy / "reward_model")
        got = rm.score(PROMPTS, RESPONSES).mean
        assert rm.backbone.model.name_or_path == str(copy.resolve())
    finally:
        hidden.rename(tuned)
    assert torch.allclose(got, expect, atol=1e-6), (got, expect)


@pytest.mark.slow
def test_saved_backbone_reloads_and_changes_features(tuned):
    raw = Backbone.from_pretrained("smollm2-135m", max_length=64, dtype="float32")
    new = Backbone.from_pretrained(str(tuned), max_length=64, dtype="float32")
    assert new.kind == "causal" and new.hidden_size == raw.hidden_size
    assert new.identity != raw.identity
    assert new.identity.split("|")[1] != raw.identity.split("|")[1]  # the weight fingerprint itself differs
    a, b = raw.embed(PROMPTS, RESPONSES), new.embed(PROMPTS, RESPONSES)
    assert float(abs(a.reward - b.reward).max()) > 1e-3
    # the served reward model (one-member ensemble on the saved backbone) = head @ backbone features
    from distrm.models.auto import load_reward_model

    rm = load_reward_model(tuned / "reward_model")
    s = rm.score(PROMPTS, RESPONSES).mean
    expect = torch.as_tensor(b.reward).double() @ load_head(tuned).double().T
    assert torch.allclose(s, expect[:, 0], atol=1e-4)


@pytest.mark.slow
def test_resume_from_checkpoint(tuned, tmp_path):
    """trainer.resume_from_checkpoint reaches Trainer.train: the run continues from the first run's
    last checkpoint (step 2) to max_steps=3 -- its first two steps are the first run's, logged at
    that run's learning rate, not at the one given now (which a fresh run would log)."""
    import shutil

    out = tmp_path / "rm"
    shutil.copytree(tuned / "trainer", out / "trainer")
    assert main(["finetune-backbone", "--output-dir", str(out), *TINY_FINETUNE, "--set", "trainer.max_steps=3",
                 "--set", "trainer.learning_rate=1e-7", "--set", "trainer.resume_from_checkpoint=true",
                 "--set", "trainer.save_strategy=no"]) == 0  # fmt: skip
    log = json.loads((out / LOG_NAME).read_text())
    first = json.loads((tuned / LOG_NAME).read_text())["train"]["history"]
    assert [h["step"] for h in first] == [1, 2] and first[0]["learning_rate"] > 1e-4
    assert log["train"]["global_step"] == 3
    assert log["train"]["history"][:2] == first and log["train"]["history"][2]["step"] == 3


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_resumes_to_the_same_step_count(tmp_path):
    """A fine-tune SIGKILLed after its first checkpoint (step 2) and one more step (3, lost) resumes
    with trainer.resume_from_checkpoint=true and ends at the same optimiser step count as an
    uninterrupted run of the same config, with the same per-step losses (the lost step is redone
    on the same batch)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    run = [*TINY_FINETUNE_MINILM, "--set", "trainer.max_steps=5", "--set", "trainer.save_steps=2"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(["finetune-backbone", "--output-dir", str(whole), *run]) == 0
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "tests" / "scripts" / "kill_finetune.py"), "3", "--", "--output-dir",
                           str(killed), *run], cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [c.name for c in (killed / "trainer").glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (killed / LOG_NAME).exists()  # killed before anything was saved
    assert main(["finetune-backbone", "--output-dir", str(killed), *run, "--set", "trainer.resume_from_checkpoint=true"]) == 0
    a = json.loads((whole / LOG_NAME).read_text())["train"]
    b = json.loads((killed / LOG_NAME).read_text())["train"]
    assert a["global_step"] == b["global_step"] == 5
    assert [h["step"] for h in b["history"]] == [h["step"] for h in a["history"]] == [1, 2, 3, 4, 5]
    assert b["history"][2]["loss"] == pytest.approx(a["history"][2]["loss"], rel=1e-3)  # step 3 redone on the same batch
    assert [h["loss"] for h in b["history"]] == pytest.approx([h["loss"] for h in a["history"]], rel=1e-3)


@pytest.mark.slow
def test_encoder_finetune_is_a_mean_pooled_backbone(finetuned_minilm):
    """MiniLM (an encoder) fine-tuned: the folder is a BertModel backbone that Backbone loads as an
    encoder with mean pooling, and its features @ the saved head give the trained model's score."""
    from distrm.models.auto import AutoRewardModel

    out = finetuned_minilm
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", HEAD_NAME, LOG_NAME, "reward_model/config.json",
                 "modules.json", "1_Pooling/config.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not (out / "seq_cls").exists()  # no standard class mean-pools an encoder: none written
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertModel"] and cfg["distrm_reward_tuned"]["method"] == "full"
    log = json.loads((out / LOG_NAME).read_text())
    assert log["kind"] == "encoder" and log["train"]["global_step"] == 2
    mc = log["merge_check"]
    assert mc["max_abs_peft_vs_reloaded_backbone"] < 1e-4 and mc["score_range"] > 1e-3, mc
    raw = Backbone.from_pretrained("minilm", max_length=64)
    new = Backbone.from_pretrained(str(out), max_length=64)
    assert new.kind == "encoder" and new.identity.split("|")[1] != raw.identity.split("|")[1]
    a, b = raw.embed(PROMPTS, RESPONSES), new.embed(PROMPTS, RESPONSES)
    assert float(abs(a.reward - b.reward).max()) > 1e-3
    s = AutoRewardModel.from_pretrained(out / "reward_model").score(PROMPTS, RESPONSES).mean
    assert torch.allclose(s, (torch.as_tensor(b.reward).double() @ load_head(out).double().T)[:, 0], atol=1e-5)


def test_encoder_training_forward_is_the_backbone_feature(tmp_path):
    """What TRL trains on for an encoder -- the collated batch (segment ids included) through
    MeanPoolRewardModel -- is the score head on exactly Backbone.embed's mean-pooled reward feature."""
    from trl import RewardConfig

    from distrm.data.records import PreferencePair
    from distrm.training.finetune import build_dataset, load_trainable
    from distrm.training.reward_encoder import EncoderPairCollator, EncoderRewardTrainer

    torch.manual_seed(0)
    model = load_trainable("encoder", resolve_model_dir("minilm"), torch.device("cpu"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_dir("minilm"))
    bb = Backbone("minilm", body_of(model), tok, "encoder", 64, torch.device("cpu"), torch.float32)
    pair = PreferencePair(prompt="How do I boil an egg?", chosen="Put it in boiling water for 8 minutes.", rejected="No.",
                          source="test", id="0")  # fmt: skip
    ds, _ = build_dataset(load_config(FinetuneConfig, None, []), [pair], bb, None)
    args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=1, report_to="none")
    trainer = EncoderRewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                                   data_collator=EncoderPairCollator(pad_token_id=tok.pad_token_id))  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    assert int(batch["token_type_ids"].sum()) > 0  # the response's segment ids reached the model
    model.eval()
    with torch.inference_mode():
        logits = model(**batch).logits[:, 0]
    e = bb.embed([pair.prompt] * 2, [pair.chosen, pair.rejected])
    expect = torch.as_tensor(e.reward) @ model.score.weight.detach().T
    assert torch.allclose(logits, expect[:, 0], atol=1e-5), (logits, expect)


@pytest.mark.slow
def test_lora_merge_equivalence():
    """merge_and_unload of a LoRA with non-zero (random) adapters gives the same scores."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoTokenizer

    path = resolve_model_dir("smollm2-135m")
    torch.manual_seed(0)
    model = load_seqcls(path, torch.device("cpu"))
    tok = AutoTokenizer.from_pretrained(path)
    model.config.pad_token_id = tok.pad_token_id
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules="all-linear",
                                                  modules_to_save=["score"], init_lora_weights=False)).eval()  # fmt: skip
    bb = Backbone("smollm2-135m", body_of(model), tok, "causal", 64, torch.device("cpu"), torch.float32)
    ids = [bb._causal_ids(p, r)[0] for p, r in zip(PROMPTS, RESPONSES)]
    with peft_model.disable_adapter():
        base = score_ids(peft_model, ids, tok.pad_token_id)
    before = score_ids(peft_model, ids, tok.pad_token_id)
    assert float((before - base).abs().max()) > 1e-3  # the adapters do something
    # a sharded run (FSDP / ZeRO-3) rebuilds the trained model from its gathered state dict
    from distrm.training.finetune import rebuild_trained

    peft_config = peft_model.peft_config["default"]
    rebuilt = rebuild_trained(peft_model.state_dict(), path, peft_config, torch.device("cpu"))
    rebuilt.config.pad_token_id = tok.pad_token_id
    assert torch.allclose(score_ids(rebuilt, ids, tok.pad_token_id), before, atol=1e-5)
    after = score_ids(peft_model.merge_and_unload(), ids, tok.pad_token_id)
    assert torch.allclose(before, after, atol=1e-4), (before, after)


def test_training_pairs_come_from_the_train_split_only():
    from distrm.data.splits import is_test
    from distrm.training.finetune import load_pairs

    cfg = load_config(FinetuneConfig, None, ["data.max_rows_per_source=200", "holdout_fraction=0.1"])
    train, holdout, info = load_pairs(cfg)
    assert train and holdout and info["train_pairs"] == len(train)
    assert not any(is_test(p.prompt, 0.2) for p in train + holdout)  # nothing from an evaluation split
    assert not {str(p.prompt) for p in train} & {str(p.prompt) for p in holdout}
    assert {p.source for p in train} == {"hh-rlhf", "ultrafeedback", "pku-saferlhf", "orca-dpo-pairs"}


def test_score_gap_margins():
    from distrm.training.finetune import load_pairs, margins

    cfg = load_config(FinetuneConfig, None, ["data.max_rows_per_source=100", "margin=score_gap", "margin_scale=2.0"])
    train, _, _ = load_pairs(cfg)
    m, counts = margins(cfg, train)
    assert counts["with_scores"] > 0 and counts["without_scores"] > 0  # UF/PKU have scores, HH/Orca do not
    assert all(0.0 <= x <= 2.0 for x in m) and max(m) > 0
    m2, _ = margins(load_config(FinetuneConfig, None, ["margin=constant", "margin_value=0.5"]), train)
    assert set(m2) == {0.5}


def test_config_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown key"):
        load_config(FinetuneConfig, None, ["lora.rank=4"])
    with pytest.raises(ValueError, match="method: expected one of \\[.lora., .full.\\]"):
        validate(load_config(FinetuneConfig, None, ["method=qlora"]))
    with pytest.raises(ValueError, match="max_length"):
        validate(load_config(FinetuneConfig, None, ["max_length=4"]))
    with pytest.raises(ValueError, match="trainer.learning_rate: expected a number"):
        validate(load_config(FinetuneConfig, None, ["trainer.learning_rate=fast"]))
    c = load_config(FinetuneConfig, None, ["trainer.learning_rate=5e-3"])
    assert (validate(c) or c.trainer["learning_rate"]) == 5e-3  # YAML text
    with pytest.raises(ValueError, match="unknown key.*'learning_rate'"):  # the re-declared fields are gone
        load_config(FinetuneConfig, None, ["learning_rate=1e-4"])
    with pytest.raises(ValueError, match="margin(: expected one of| must be)"):
        validate(load_config(FinetuneConfig, None, ["margin=huge"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-4\n")
    assert main(["finetune-backbone", "--config", str(bad)]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["finetune-backbone", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_embedded_configs_parse(capsys):
    from importlib import resources

    names = sorted(p.name for p in resources.files("distrm").joinpath("configs").iterdir() if p.name.startswith("finetune-"))
    assert names == ["finetune-gemma3-cpu.yaml", "finetune-minilm-cpu.yaml", "finetune-smollm2-cpu.yaml", "finetune-smollm2-gpu.yaml"]
    for name in names:
        path = str(resources.files("distrm") / "configs" / name)
        cfg = load_config(FinetuneConfig, path)
        validate(cfg)
        assert {"learning_rate", "per_device_train_batch_size", "report_to", "save_strategy"} <= set(cfg.trainer), name
        assert main(["finetune-backbone", "--config", path, "--print-config", "--set", "trainer.learning_rate=1e-4"]) == 0
        out = capsys.readouterr().out
        assert "base_model" in out and "learning_rate: 0.0001" in out


def test_trainer_section_is_trl_reward_config(tmp_path, capsys, monkeypatch):
    """trainer: keys are RewardConfig's own, checked when the config loads (before any data or
    model work), and reach RewardConfig as given; distrm's own settings fill the rest."""
    import distrm.training.finetune as ft
    from trl import RewardConfig

    with pytest.raises(ValueError, match=r"trainer.learning_rte: not an option of trl.RewardConfig.*did you mean learning_rate"):
        load_config(FinetuneConfig, None, ["trainer.learning_rte=1e-4"])
    with pytest.raises(ValueError, match=r"trainer.warmup_ratio: .*did you mean warmup_steps"):
        load_config(FinetuneConfig, None, ["trainer.warmup_ratio=0.1"])
    with pytest.raises(ValueError, match=r"trainer.max_steps: expected an integer"):
        load_config(FinetuneConfig, None, ["trainer.max_steps=many"])
    with pytest.raises(ValueError, match=r"trainer.seed: set by distrm from its own field 'seed'"):
        load_config(FinetuneConfig, None, ["trainer.seed=3"])
    with pytest.raises(ValueError, match=r"RewardConfig refuses.*cosinex"):  # an enum: RewardConfig's own check
        validate(load_config(FinetuneConfig, None, ["trainer.lr_scheduler_type=cosinex"]))

    def boom(*a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("data or model loaded before the config was validated")

    monkeypatch.setattr(ft, "load_pairs", boom)
    monkeypatch.setattr(ft, "load_seqcls", boom)
    assert main(["finetune-backbone", "--set", "trainer.report_too=wandb"]) == 2
    err = capsys.readouterr().err
    assert "trainer.report_too" in err and "report_to" in err and "Traceback" not in err
    assert main(["finetune-backbone", "--set", "trainer.save_strategy=sometimes"]) == 2
    assert "sometimes" in capsys.readouterr().err

    cfg = load_config(FinetuneConfig, ft_default(), ["trainer.learning_rate=1e-4", "trainer.save_strategy=no",
                                                     "trainer.resume_from_checkpoint=true", "trainer.report_to=[tensorboard]",
                                                     "seed=7", "max_length=128", "holdout_fraction=0"])  # fmt: skip
    validate(cfg)
    assert cfg.trainer["learning_rate"] == 1e-4 and cfg.trainer["save_strategy"] == "no"  # YAML's bare no is false
    kw = ft.trainer_kwargs(cfg, torch.device("cpu"), has_eval=False)
    assert kw["seed"] == 7 and kw["max_length"] == 128 and kw["use_cpu"] is True and isinstance(kw["bf16"], bool)
    assert kw["output_dir"].endswith("trainer") and kw["eval_strategy"] == "no"  # no holdout pairs: nothing to evaluate
    args = RewardConfig(**kw)
    assert args.learning_rate == 1e-4 and args.report_to == ["tensorboard"] and args.resume_from_checkpoint is True
    assert args.center_rewards_coefficient == 0.01 and args.activation_checkpointing is False  # from the embedded YAML
    # fp16 asked for: distrm's bf16 default steps aside
    assert ft.trainer_kwargs(load_config(FinetuneConfig, None, ["trainer.fp16=true"]), torch.device("cpu"), True)["bf16"] is False


def ft_default() -> str:
    from distrm.cli.finetune import default_config_path

    return default_config_path()


def test_legacy_config_upgrade():
    from distrm.config import from_dict
    from distrm.training.finetune import upgrade_legacy_config

    old = {"base_model": "smollm2-135m", "learning_rate": 2e-4, "warmup_ratio": 0.03, "per_device_train_batch_size": 8,
           "gradient_checkpointing": False, "eval_steps": None, "progress": False, "center_rewards_coefficient": 0.01,
           "bf16": None, "max_length": 256}  # fmt: skip
    cfg = from_dict(FinetuneConfig, upgrade_legacy_config(old))
    validate(cfg)
    assert cfg.max_length == 256 and cfg.trainer == {
        "save_strategy": "no", "report_to": "none", "learning_rate": 2e-4, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8, "bf16": None, "center_rewards_coefficient": 0.01, "warmup_steps": 0.03,
        "activation_checkpointing": False, "eval_strategy": "no", "disable_tqdm": True}  # fmt: skip
    assert upgrade_legacy_config({"trainer": {"learning_rate": 1.0}}) == {"trainer": {"learning_rate": 1.0}}


def test_one_lora_settings_type():
    """finetune-backbone and rl rloo share distrm.config.LoraSettings; rloo keeps its own defaults
    (r=32, alpha=64), also for the keys a partial lora: section leaves out."""
    from distrm.config import LoraSettings
    from distrm.rl import rloo
    from distrm.training import finetune

    assert finetune.LoraSettings is LoraSettings and rloo.LoraSettings is LoraSettings
    assert load_config(FinetuneConfig, None, []).lora == LoraSettings(r=16, alpha=32)
    assert load_config(rloo.RLOORunConfig, None, []).lora == LoraSettings(r=32, alpha=64)
    assert load_config(rloo.RLOORunConfig, None, ["lora.r=8"]).lora == LoraSettings(r=8, alpha=64)
    c = load_config(FinetuneConfig, None, ["lora.target_modules=[q_proj, v_proj]"])
    assert c.lora.target_modules == ["q_proj", "v_proj"] and c.lora.alpha == 32


def _tuned_encoder(base: str, shift: float):
    from transformers import AutoModel

    m = AutoModel.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        m.embeddings.word_embeddings.weight.add_(shift)
    return m


def test_backbone_save_interrupted_at_any_step_is_old_new_or_refused(tmp_path, monkeypatch):
    """``save_backbone`` into a folder that holds an earlier reward-tuned backbone, stopped at
    every file rename (the steps that change what is under the real names): the folder loads
    as exactly the old backbone or exactly the new one, or is refused in one line naming the
    missing manifest -- never new weights with an old config."""
    import distrm.training.finetune as ft
    from transformers import AutoTokenizer

    from distrm.features.backbones import BACKBONE_MANIFEST, Backbone, resolve_model_dir

    base = resolve_model_dir("minilm")
    tok = AutoTokenizer.from_pretrained(base)
    info = {"base": "minilm"}

    def features(folder):
        return Backbone.from_pretrained(str(folder)).embed(["p"], ["a response"], 1).reward

    ref = tmp_path / "ref"
    old_digest = ft.save_backbone(ref / "old", base, _tuned_encoder(base, 0.01), tok, info, "float32", "encoder")
    new_digest = ft.save_backbone(ref / "new", base, _tuned_encoder(base, -0.02), tok, info, "float32", "encoder")
    want = {"old": features(ref / "old"), "new": features(ref / "new")}
    assert old_digest != new_digest and not np.allclose(want["old"], want["new"])

    real_replace = os.replace
    outcomes = []
    for k in range(1, 100):
        out = tmp_path / f"k{k}"
        shutil.copytree(ref / "old", out)
        calls = {"n": 0}

        def replace(src, dst, _k=k):
            calls["n"] += 1
            if calls["n"] == _k:
                raise KeyboardInterrupt("killed")  # what a kill leaves: nothing after this step runs
            return real_replace(src, dst)

        monkeypatch.setattr(ft.os, "replace", replace)
        try:
            ft.save_backbone(out, base, _tuned_encoder(base, -0.02), tok, info, "float32", "encoder")
            finished = True
        except KeyboardInterrupt:
            finished = False
        finally:
            monkeypatch.setattr(ft.os, "replace", real_replace)
        try:
            got = features(out)
            which = [name for name, f in want.items() if np.array_equal(f, got)]
            assert len(which) == 1, f"k={k}: features match neither the old nor the new backbone"
            outcomes.append(which[0])
        except ValueError as e:
            assert BACKBONE_MANIFEST in str(e) and "\n" not in str(e), str(e)
            outcomes.append("refused")
        if finished:
            break
    print(f"\nbackbone save stopped at each of {len(outcomes)} renames: {outcomes}")
    assert finished and outcomes[-1] == "new" and "refused" in outcomes
