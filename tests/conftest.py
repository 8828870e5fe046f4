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
