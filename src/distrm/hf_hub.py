"""Hugging Face Hub resolution, shared by backbones (``distrm.features``) and saved models
(``distrm.models``): a name that is not a local folder is a Hub repo id, resolved through
``huggingface_hub`` (online it downloads into the Hugging Face cache; with
``HF_HUB_OFFLINE=1`` it reads that cache and fails with a clear message when the id is not
there). The snapshot folder's name is the commit hash, which is what a saved model records
as its backbone's revision."""

from __future__ import annotations

import os
from pathlib import Path


def is_hub_id(name: str) -> bool:
    """``owner/name`` (no leading ``.``, ``/`` or ``~``, not an existing path)."""
    s = str(name)
    return s.count("/") == 1 and not s.startswith((".", "/", "~")) and not Path(s).expanduser().exists()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def snapshot_dir(repo_id: str, revision: str | None = None, allow_patterns: list[str] | None = None) -> Path:
    """The local snapshot folder of a Hub repo (downloaded or cached); its name is the commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=offline(),
                                      allow_patterns=allow_patterns))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{repo_id}{'@' + revision if revision else ''}: not in the local Hugging Face cache and the Hub is "
            f"{'disabled (HF_HUB_OFFLINE=1)' if offline() else 'not reachable'}; download it where there is a network, "
            "or pass a local folder") from None
    except Exception as e:  # repository not found, revision not found, network errors
        raise FileNotFoundError(f"{repo_id}: could not be resolved on the Hugging Face Hub ({e.__class__.__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None


def commit_of(snapshot: Path) -> str | None:
    """The commit hash of a snapshot folder of the Hugging Face cache (its name), else None."""
    name = Path(snapshot).name
    return name if Path(snapshot).parent.name == "snapshots" and len(name) == 40 else None
