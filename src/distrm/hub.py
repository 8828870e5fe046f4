"""Load any saved distrm reward model, from a folder or a Hugging Face Hub id, by reading its
``config.json``: :class:`AutoRewardModel` / :func:`load_reward_model`.

A name that is not an existing folder is resolved as a Hub repo id through ``huggingface_hub``
(``revision`` = branch, tag or commit): online it downloads into the Hugging Face cache;
offline (``HF_HUB_OFFLINE=1``) it reads that cache and fails with a clear message when the id
is not there.

``"model_type": "ensemble"`` -> :class:`~distrm.ensemble.EnsembleRewardModel`; a config
without ``model_type`` (what ``DistributionalRewardModel.save_pretrained`` writes) -> the
QRM :class:`~distrm.model.DistributionalRewardModel`. Anything else is an error naming the
type, so a directory from a newer version is not misread as a QRM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distrm.model import CONFIG_NAME

KNOWN_TYPES = ("qrm", "ensemble")


def resolve_model_dir(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local model folder, or the snapshot folder of a Hub repo id (downloaded or cached)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    s = str(name_or_path)
    if s.count("/") != 1 or s.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model directory not found: {s} (and not a Hub repo id owner/name)")
    import os

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(s, revision=revision, local_files_only=offline))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{s}{'@' + revision if revision else ''}: not in the local Hugging Face cache and the Hub is "
            f"{'disabled (HF_HUB_OFFLINE=1)' if offline else 'not reachable'}; download it where there is a network, "
            "or pass a local folder") from None
    except Exception as e:  # repository not found, revision not found, network errors
        raise FileNotFoundError(f"{s}: could not be resolved on the Hugging Face Hub ({e.__class__.__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_reward_model(path: str | Path, backbone: Any = None, revision: str | None = None) -> Any:
    """The right model class for a saved folder (``config.json`` + ``model.safetensors``) or Hub id."""
    path = resolve_model_dir(path, revision)
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} missing: not a saved distrm model directory")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON: {e}") from None
    kind = raw.get("model_type", "qrm") if isinstance(raw, dict) else None
    if kind == "ensemble":
        from distrm.ensemble import EnsembleRewardModel

        return EnsembleRewardModel.from_pretrained(path, backbone=backbone)
    if kind == "qrm":
        from distrm.model import DistributionalRewardModel

        return DistributionalRewardModel.from_pretrained(path, backbone=backbone)
    raise ValueError(f"{cfg_path}: unknown model_type {kind!r}; known: {list(KNOWN_TYPES)}")


class AutoRewardModel:
    """``AutoRewardModel.from_pretrained(name_or_path, revision=None)``: the model class the
    folder's ``config.json`` names (QRM or ensemble), from a folder or a Hub id."""

    @staticmethod
    def from_pretrained(name_or_path: str | Path, revision: str | None = None, backbone: Any = None) -> Any:
        return load_reward_model(name_or_path, backbone=backbone, revision=revision)
