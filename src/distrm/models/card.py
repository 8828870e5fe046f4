"""The model card (``README.md`` with Hugging Face front matter) written beside every saved
model, so a folder pushed to the Hub says what it is: what it outputs, its attributes and
levels, its backbone and data, and how to load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CARD_NAME = "README.md"


def write_model_card(path: str | Path, model_type: str, config: dict[str, Any], summary: str,
                     training: dict[str, Any] | None = None) -> Path:
    """Write ``path/README.md``; ``summary`` is one paragraph on what the model outputs."""
    from distrm import __version__

    backbone = str(config.get("backbone", "unknown"))
    front = ["---", "library_name: distrm", f"base_model: {json.dumps(_hub_id(backbone))}",
             "tags:", "- reward-model", "- distributional-reward-model", f"- {model_type}", "---", ""]
    lines = [f"# distrm {model_type} reward model", "", summary, ""]
    if config.get("attributes"):
        lines += ["## Attributes", "", ", ".join(f"`{a}`" for a in config["attributes"]), ""]
    if config.get("levels"):
        lines += ["## Quantile levels", "", ", ".join(f"{t:.3g}" for t in config["levels"]), ""]
    lines += ["## Backbone", "", f"`{backbone}` (identity `{config.get('backbone_identity')}`), max length "
              f"{config.get('backbone_max_length')} tokens, dtype {config.get('backbone_dtype') or 'device default'}.", ""]
    if training:
        lines += ["## Training", "", "```json", json.dumps(training, indent=1, default=str)[:4000], "```", ""]
    lines += ["## Use", "", "```python", "from distrm import AutoRewardModel", "",
              'rm = AutoRewardModel.from_pretrained("<this folder or Hub id>")',
              'out = rm.score(["How do I pick a lock?"], ["Call a locksmith."])',
              "out.reward.mean(), out.reward.cvar(0.1)", "```", "",
              f"Written by distrm {__version__}.", ""]
    p = Path(path) / CARD_NAME
    p.write_text("\n".join(front + lines), encoding="utf-8")
    return p


def _hub_id(backbone: str) -> str:
    aliases = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
               "gemma3-270m": "google/gemma-3-270m"}
    return aliases.get(backbone, backbone)
