"""Shared plumbing for the evaluation commands: load any distrm model, score texts through
the feature store, read a model's training config (to evaluate on the matching held-out
split), and write JSON that survives numpy/NaN values."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

DEFAULT_STORE = ".cache/distrm/features"


def load_any_model(path: str | Path) -> Any:
    """QRM, ridge baseline or ensemble: whatever ``path`` holds (the hub loader dispatches on
    the folder's ``model_type``)."""
    from distrm.models.auto import load_reward_model

    return load_reward_model(path)


def model_label(model: Any, path: str | Path) -> str:
    head = getattr(getattr(model, "config", None), "head", None)
    kind = {"qrm": "ridge+gate" if head == "ridge" else "QRM"}.get(getattr(model, "model_type", ""), getattr(model, "model_type", "model"))
    return f"{kind}:{Path(str(path).rstrip('/')).name}"


def train_config_of(path: str | Path) -> dict[str, Any]:
    """The ``config`` block of ``train_log.json`` next to a saved model ({} if absent)."""
    p = Path(path) / "train_log.json"
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("config", {})
    except (json.JSONDecodeError, AttributeError):
        return {}


def test_fraction_of(path: str | Path, default: float = 0.2) -> float:
    return float(train_config_of(path).get("data", {}).get("test_fraction", default))


def data_dir_default(data_dir: str | None) -> str:
    return data_dir or os.environ.get("DISTRM_DATA_DIR") or str(Path("..") / "shared" / "data")


def features(
    model: Any, prompts: Sequence, responses: Sequence[str], store: str | None = DEFAULT_STORE, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(reward features [n, d], prompt features [n, d]) from the model's backbone, cached
    in the feature store so every later evaluation of the same texts is free."""
    from distrm.features import extract

    f = extract(model.backbone, list(prompts), list(responses), store=store, batch_size=batch_size, progress=False)
    return torch.as_tensor(np.asarray(f.reward)), torch.as_tensor(np.asarray(f.prompt))


def score(model: Any, prompts: Sequence, responses: Sequence[str], store: str | None = DEFAULT_STORE, batch_size: int = 32):
    """``model.score_features`` on cached features: a ScoreOutput-like object with
    ``.reward`` (RewardDistribution) and, for attribute models, ``.attributes``/``.weights``."""
    R, P = features(model, prompts, responses, store, batch_size)
    return model.score_features(R, P, list(responses))


def _clean(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, torch.Tensor):
        return _clean(o.tolist())
    return o


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomic JSON write; NaN/inf become null (JSON has no NaN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # per process: concurrent writers never share it
    try:
        tmp.write_text(json.dumps(_clean(obj), indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
