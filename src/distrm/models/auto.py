"""One loader for every model type: :class:`AutoRewardModel` reads ``config.json`` of a saved
folder or Hub id and returns the class its ``model_type`` names.

Model types are registered in :data:`distrm.models.base.MODEL_TYPES` by import path (so loading one type never imports the
others' dependencies). A ``config.json`` without ``model_type`` is a QRM (what distrm 0.1
wrote); an unknown type is an error naming the known ones, so a folder from a newer
version is never misread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distrm.models.base import KNOWN_TYPES, MODEL_TYPES, RewardModel, model_class, resolve_model_dir  # noqa: F401

def load_reward_model(path: str | Path, backbone: Any = None, revision: str | None = None) -> Any:
    """The right model class for a saved folder (``config.json`` + ``model.safetensors``) or Hub id."""
    return RewardModel.from_pretrained(path, backbone=backbone, revision=revision)


class AutoRewardModel:
    """``AutoRewardModel.from_pretrained(name_or_path, revision=None)``: the model class the
    folder's ``config.json`` names, from a folder or a Hub id."""

    @staticmethod
    def from_pretrained(name_or_path: str | Path, revision: str | None = None, backbone: Any = None) -> Any:
        return load_reward_model(name_or_path, backbone=backbone, revision=revision)
