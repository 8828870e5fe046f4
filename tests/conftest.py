"""Shared builders for the tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def minilm_backbone():
    """The real MiniLM backbone (PyPI-shipped), short inputs: loads in about a second."""
    from distrm.features.backbones import Backbone

    return Backbone.from_pretrained("minilm", max_length=64, device="cpu")


@pytest.fixture()
def tiny_model(minilm_backbone):
    """A QRM with random heads and a fixed gate on the real MiniLM backbone (scores real text)."""
    from distrm.distribution import default_levels
    from distrm.models.qrm import DistributionalRewardModel, ModelConfig

    torch.manual_seed(0)
    d = minilm_backbone.hidden_size
    cfg = ModelConfig(backbone="minilm", feature_dim=d, attributes=["a", "b"], levels=default_levels(19).tolist(),
                      gate="fixed", fixed_weights=[0.5, 0.5], debias_source="length",
                      backbone_identity=minilm_backbone.identity, backbone_max_length=64)
    coef = torch.randn(2, 19, d, dtype=torch.float64) * 0.01
    return DistributionalRewardModel(cfg, coef, torch.zeros(2, 19, dtype=torch.float64), backbone=minilm_backbone)


def reseal(folder, cfg: dict) -> None:
    """Hand-edit a saved model's config.json and re-seal its manifest, so a test reaches the
    validation behind the manifest check (an unsealed edit is refused by the manifest)."""
    import json

    from distrm.models.base import write_manifest

    (folder / "config.json").write_text(json.dumps(cfg))
    write_manifest(folder, cfg.get("model_type", "qrm"))


def stand_in_backbone(monkeypatch, table, rated=(), pairs=()) -> None:
    """Run ``distrm train`` without a backbone: ``Backbone.from_pretrained`` gives a stand-in
    (identity ``fake@1``), ``extract`` looks each response's reward features up in ``table``
    (response text -> feature vector), and the training data are ``rated`` and ``pairs``."""
    import sys
    import types

    import numpy as np

    import distrm.training.qrm

    class FakeBackbone:
        identity = "fake@1"

        @classmethod
        def from_pretrained(cls, name, **kw):
            return cls()

    def extract(backbone, prompts, responses, **kw):
        return types.SimpleNamespace(reward=np.stack([np.asarray(table[r]) for r in responses]), prompt=None)

    monkeypatch.setitem(sys.modules, "distrm.features.backbones", types.SimpleNamespace(Backbone=FakeBackbone, ALIASES={}, resolve_model_dir=str))
    monkeypatch.setitem(sys.modules, "distrm.features", types.SimpleNamespace(extract=extract))
    monkeypatch.setattr(distrm.training.qrm, "load_training_data", lambda cfg: (list(rated), list(pairs), {}))


# ------------------------------------------------------------------ trained models (slow tier)
# Real runs of the real commands on real shared data, sized for CI; built once per session
# and shared by every slow test that needs a trained folder of that type.
TINY_FINETUNE = ["--set", "max_pairs=12", "--set", "holdout_fraction=0", "--set", "max_length=64",
                 "--set", "trainer.max_steps=2", "--set", "trainer.per_device_train_batch_size=2",
                 "--set", "trainer.gradient_accumulation_steps=1", "--set", "trainer.warmup_steps=0",
                 "--set", "trainer.learning_rate=5e-3", "--set", "trainer.bf16=false", "--set", "merge_check_pairs=3",
                 "--set", "trainer.disable_tqdm=true", "--set", "lora.r=4", "--set", "lora.alpha=8",
                 "--set", "data.max_rows_per_source=30", "--set", "trainer.save_strategy=steps",
                 "--set", "trainer.save_steps=1", "--set", "trainer.save_total_limit=1",
                 "--set", "trainer.logging_steps=1"]  # fmt: skip
# the same tiny run on the encoder MiniLM, fully fine-tuned (the encoder path: mean-pooled score)
TINY_FINETUNE_MINILM = [*TINY_FINETUNE, "--set", "base_model=minilm", "--set", "method=full", "--set", "trainer.learning_rate=1e-3"]


def _train(out, store, *extra) -> None:
    from distrm.cli import main

    assert main(["train", "--output-dir", str(out), "--set", "data.max_rows_per_source=40", "--set", "gate.epochs=3",
                 "--set", "heads.max_iter=200", "--set", f"backbone.store={store}", "--set", "backbone.max_length=128",
                 "--set", "progress=false", *extra]) == 0  # fmt: skip


@pytest.fixture(scope="session")
def feature_store(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="session")
def trained_qrm(tmp_path_factory, feature_store):
    """``distrm train`` (QRM) on the embedded default config, capped at 40 rows per source."""
    out = tmp_path_factory.mktemp("qrm") / "model"
    _train(out, feature_store)
    return out


@pytest.fixture(scope="session")
def trained_ensemble(tmp_path_factory, feature_store):
    """``distrm train --set model=ensemble`` (5 bootstrap BT heads), same data and features."""
    out = tmp_path_factory.mktemp("ens") / "model"
    _train(out, feature_store, "--set", "model=ensemble", "--set", "ensemble.n_members=5",
           "--set", "ensemble.bootstrap=true", "--set", "ensemble.epochs=5", "--set", "ensemble.l2=0.01")
    return out


@pytest.fixture(scope="session")
def trained_quantile_ensemble(tmp_path_factory, feature_store):
    """``distrm train --set model=quantile_ensemble`` (3 bootstrap quantile-head members at the
    alpha the QRM's CV picks on this little data), same data and features."""
    out = tmp_path_factory.mktemp("qens") / "model"
    _train(out, feature_store, "--set", "model=quantile_ensemble", "--set", "quantile_ensemble.n_members=3",
           "--set", "quantile_ensemble.alpha=0.05")
    return out


def _train_dpl(tmp_path_factory, store, head: str):
    out = tmp_path_factory.mktemp(f"dpl-{head}") / "model"
    _train(out, store, "--set", "model=dpl", "--set", f"dpl.head={head}", "--set", "dpl.l2=0.01", "--set", "dpl.max_iter=100")
    return out


@pytest.fixture(scope="session")
def trained_dpl_mean_variance(tmp_path_factory, feature_store):
    """``distrm train --set model=dpl`` (mean-variance DPL head, fixed l2), same data and features."""
    return _train_dpl(tmp_path_factory, feature_store, "mean_variance")


@pytest.fixture(scope="session")
def trained_dpl_categorical(tmp_path_factory, feature_store):
    """``distrm train --set model=dpl --set dpl.head=categorical`` (10 atoms, fixed l2), same data and features."""
    return _train_dpl(tmp_path_factory, feature_store, "categorical")


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory):
    """``distrm finetune-backbone`` on real SmolLM2-135M: two LoRA steps on 12 real pairs."""
    from distrm.cli import main

    out = tmp_path_factory.mktemp("ft") / "rm"
    assert main(["finetune-backbone", "--output-dir", str(out), *TINY_FINETUNE]) == 0
    return out


@pytest.fixture(scope="session")
def finetuned_minilm(tmp_path_factory):
    """``distrm finetune-backbone`` on the real MiniLM encoder: two full fine-tuning steps on 12 real pairs."""
    from distrm.cli import main

    out = tmp_path_factory.mktemp("ft-minilm") / "rm"
    assert main(["finetune-backbone", "--output-dir", str(out), *TINY_FINETUNE_MINILM]) == 0
    return out
