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
