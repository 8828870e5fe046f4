"""distrm finetune-backbone: real TRL RewardTrainer on real SmolLM2-135M weights and real shared
pairs, a few steps on a handful of pairs (tiny max_length so it fits CI), then the saved
directory is used as a backbone like any other."""

import json

import pytest
import torch

from distrm.features.backbones import Backbone, resolve_model_dir
from distrm.cli import main
from distrm.config import load_config
from distrm.training.finetune import HEAD_NAME, LOG_NAME, FinetuneConfig, body_of, load_head, load_seqcls, score_ids, validate

PROMPTS = ["How do I boil an egg?", [{"role": "user", "content": "Say hi."}]]
RESPONSES = ["Put it in boiling water for 8 minutes.", "Hi!"]
TINY = ["--set", "max_pairs=12", "--set", "holdout_fraction=0", "--set", "max_length=64", "--set", "max_steps=2",
        "--set", "per_device_train_batch_size=2", "--set", "gradient_accumulation_steps=1", "--set", "warmup_ratio=0",
        "--set", "learning_rate=5e-3", "--set", "bf16=false", "--set", "merge_check_pairs=3", "--set", "progress=false",
        "--set", "lora.r=4", "--set", "lora.alpha=8", "--set", "data.max_rows_per_source=30"]  # fmt: skip


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "rm"
    assert main(["finetune-backbone", "--output-dir", str(out), *TINY]) == 0
    return out


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
    assert mc["score_range"] > 1e-3  # not a constant model (the check would be vacuous)


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
    with pytest.raises(ValueError, match="learning_rate: expected a number"):
        validate(load_config(FinetuneConfig, None, ["learning_rate=fast"]))
    assert (validate(c := load_config(FinetuneConfig, None, ["learning_rate=5e-3"])) or c.learning_rate) == 5e-3  # YAML text
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

    for name in ("finetune-smollm2-cpu.yaml", "finetune-smollm2-gpu.yaml", "finetune-gemma3-cpu.yaml"):
        path = str(resources.files("distrm") / "configs" / name)
        validate(load_config(FinetuneConfig, path))
        assert main(["finetune-backbone", "--config", path, "--print-config"]) == 0
    assert "base_model" in capsys.readouterr().out
