"""Model folders are Hugging Face-like and portable: a model card beside config + weights; a
folder copied to another path, and the same folder loaded by Hub id from a local Hugging Face
cache with HF_HUB_OFFLINE=1, score identically to the original; an uncached id fails clearly."""

from __future__ import annotations

import shutil

import pytest
import torch

from distrm import AutoRewardModel

PROMPTS = ["How do I pick a lock?", "What is 2 + 2?"]
RESPONSES = ["Call a locksmith.", "4"]


@pytest.fixture()
def saved(tiny_model, tmp_path):
    d = tmp_path / "model"
    tiny_model.save_pretrained(d)
    return d, tiny_model.score(PROMPTS, RESPONSES).reward.values


def test_model_card(saved):
    d, _ = saved
    card = (d / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlibrary_name: distrm\n")
    assert 'base_model: "sentence-transformers/all-MiniLM-L6-v2"' in card
    assert "AutoRewardModel.from_pretrained" in card and "`a`, `b`" in card


def test_copied_folder_scores_identically(saved, tmp_path):
    d, want = saved
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(d, moved)
    shutil.rmtree(d)  # the original is gone: nothing may point back at it
    got = AutoRewardModel.from_pretrained(moved).score(PROMPTS, RESPONSES).reward.values
    assert torch.equal(got, want)


def test_hub_id_from_the_local_cache_offline(saved, tmp_path, monkeypatch):
    import huggingface_hub.constants

    d, want = saved
    cache = tmp_path / "hf-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--distrm-test--qrm-tiny"
    shutil.copytree(d, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = AutoRewardModel.from_pretrained("distrm-test/qrm-tiny").score(PROMPTS, RESPONSES).reward.values
    assert torch.equal(got, want)
    got = AutoRewardModel.from_pretrained("distrm-test/qrm-tiny", revision=commit).score(PROMPTS, RESPONSES).reward.values
    assert torch.equal(got, want)
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        AutoRewardModel.from_pretrained("distrm-test/not-there")


def test_score_cli_loads_an_ensemble_folder(minilm_backbone, tmp_path, capsys):
    """``distrm score`` goes through the one loader: an ensemble folder scores too."""
    import json
    import types

    from distrm.cli import main
    from distrm.models.bt_ensemble import EnsembleRewardModel

    heads = types.SimpleNamespace(coef_=torch.randn(4, minilm_backbone.hidden_size, dtype=torch.float64,
                                                    generator=torch.Generator().manual_seed(0)))
    ens = EnsembleRewardModel.from_heads(heads, backbone="minilm", backbone_identity=minilm_backbone.identity,
                                         backbone_max_length=64)
    ens.save_pretrained(tmp_path / "ens")
    assert (tmp_path / "ens" / "README.md").is_file()
    capsys.readouterr()
    assert main(["score", str(tmp_path / "ens"), "--prompt", PROMPTS[0], "--response", RESPONSES[0], "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(row["members"]) == 4 and row["variance"] >= 0
    assert main(["score", str(tmp_path / "ens"), "--prompt", PROMPTS[0], "--response", RESPONSES[0]]) == 0
    assert "variance across 4 members" in capsys.readouterr().out


def test_bundled_backbone_travels_with_the_folder(minilm_backbone, tiny_model, tmp_path, monkeypatch):
    """``include_backbone=True`` copies the backbone (no pickles) into ./backbone: the folder
    scores identically after it moved and with the alias unresolvable."""
    from distrm.features import backbones

    src = tmp_path / "bb"
    shutil.copytree(backbones.resolve_model_dir("minilm"), src)
    (src / "pytorch_model.bin").write_bytes(b"not loaded")  # a pickle beside the safetensors: left behind
    tiny_model.config.backbone = str(src)
    want = tiny_model.score(PROMPTS, RESPONSES).reward.values
    d = tiny_model.save_pretrained(tmp_path / "model", include_backbone=True)
    assert json_of(d)["backbone"] == "./backbone" and (d / "backbone" / "config.json").is_file()
    assert not list((d / "backbone").glob("*.bin"))
    moved = tmp_path / "far" / "away"
    shutil.copytree(d, moved)
    shutil.rmtree(d)
    shutil.rmtree(src)
    monkeypatch.setattr(backbones, "ALIASES", {})
    got = AutoRewardModel.from_pretrained(moved).score(PROMPTS, RESPONSES).reward.values
    assert torch.equal(got, want)


def test_backbone_beside_the_folder_is_recorded_relative(tiny_model, tmp_path):
    """A backbone next to the model folder (finetune-backbone's OUT/reward_model -> "..") is
    recorded relative, so the two move together; one far away is recorded absolute."""
    from distrm.features import backbones

    project = tmp_path / "project"
    shutil.copytree(backbones.resolve_model_dir("minilm"), project / "bb")
    tiny_model.config.backbone = str(project / "bb")
    want = tiny_model.score(PROMPTS, RESPONSES).reward.values
    d = tiny_model.save_pretrained(project / "model")
    assert json_of(d)["backbone"] == "../bb"
    shutil.move(project, tmp_path / "renamed")
    loaded = AutoRewardModel.from_pretrained(tmp_path / "renamed" / "model")
    assert torch.equal(loaded.score(PROMPTS, RESPONSES).reward.values, want)
    far = loaded.save_pretrained(tmp_path / "a" / "b" / "c" / "model")
    assert json_of(far)["backbone"] == str((tmp_path / "renamed" / "bb").resolve())


def test_hub_backbone_records_its_commit(minilm_backbone, tmp_path, monkeypatch):
    """A backbone named by Hub id (read from the local cache offline) records the snapshot's
    commit as ``Backbone.revision``; its identity names the id and the commit, not "hub"."""
    import huggingface_hub.constants

    from distrm.features import backbones

    commit = "fedcba9876543210fedcba9876543210fedcba98"
    repo = tmp_path / "hf-cache" / "models--someone--minilm-copy"
    shutil.copytree(backbones.resolve_model_dir("minilm"), repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = backbones.Backbone.from_pretrained("someone/minilm-copy", max_length=64, device="cpu")
    assert bb.revision == commit
    assert bb.identity.split("|")[0] == "someone/minilm-copy"  # the Hub id, not "hub"; the content hash beside it
    # the same weights under another name: the content part of the identity is the same
    assert bb.identity.split("|")[1] == minilm_backbone.identity.split("|")[1]
    a = bb.embed(PROMPTS, RESPONSES).reward
    b = minilm_backbone.embed(PROMPTS, RESPONSES).reward
    assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_unsealed_edit_and_missing_manifest_are_refused(saved):
    """config.json or the weights changed after the save (or a half-written folder with no
    manifest) never load as a model."""
    d, _ = saved
    cfg = json_of(d)
    cfg["gate_temperature"] = 1.0
    (d / "config.json").write_text(__import__("json").dumps(cfg))
    with pytest.raises(ValueError, match="manifest"):
        AutoRewardModel.from_pretrained(d)
    (d / "distrm_manifest.json").unlink()
    with pytest.raises(ValueError, match="manifest"):
        AutoRewardModel.from_pretrained(d)


def json_of(folder):
    import json

    return json.loads((folder / "config.json").read_text())
