"""RL prompt sets from the shared data: HH-RLHF, PKU-SafeRLHF, BeaverTails, IMDB prefixes.

Prompts only (the policy writes the responses). Chat sources become TRL conversational
prompts (``[{"role": "user", "content": ...}, ...]``); IMDB review prefixes stay plain text
(the paper's continuation task). The held-out split is by prompt hash, so it is the same on
every machine and for every seed, and no held-out prompt is ever trained on.

The files are read by :func:`distrm.data.prompts.load_rl_prompts` (the data layer owns
every file read); this module deduplicates across sources, applies the length filter and
splits. Skipped rows are counted in the returned report, never dropped silently.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distrm.data.prompts import RL_SOURCES as SOURCES
from distrm.data.prompts import hh_dialogue, load_rl_prompts
from distrm.data.records import prompt_hash, prompt_key

__all__ = ["SOURCES", "PromptSet", "default_data_dir", "hh_dialogue", "load_prompts"]


def default_data_dir() -> Path:
    """$DISTRM_DATA_DIR, else ../shared/data next to the checkout, else /work/shared/data."""
    env = os.environ.get("DISTRM_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return Path("../shared/data")


@dataclass
class PromptSet:
    train: list[Any]
    eval: list[Any]
    report: dict[str, Any] = field(default_factory=dict)


def load_prompts(
    sources: list[str],
    data_dir: str | Path | None = None,
    n_train: int | None = None,
    n_eval: int | None = 32,
    eval_fraction: float = 0.1,
    max_prompt_chars: int | None = 1500,
    imdb_words: tuple[int, int] = (2, 8),
    seed: int = 0,
) -> PromptSet:
    """Deduplicated prompts from ``sources``, split by hash into train / held-out.

    ``max_prompt_chars`` stands in for the paper's "fewer than 348 tokens" filter without
    tokenising every prompt (about 4 characters per token). ``seed`` only orders the train
    prompts and picks the subsets; the split itself does not depend on it.
    """
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir} (set DISTRM_DATA_DIR)")
    skipped: Counter = Counter()
    per_source: dict[str, int] = {}
    seen: set[str] = set()
    train, held = [], []
    for name in sources:
        loaded = load_rl_prompts(name, data_dir, tuple(imdb_words))
        skipped.update({f"{name}: {reason}": n for reason, n in loaded.report.skipped.items()})
        rows = loaded.records
        kept = 0
        for p in rows:
            key = prompt_key(p)
            if key in seen:
                skipped[f"{name}: duplicate prompt"] += 1
                continue
            if max_prompt_chars and len(key) > max_prompt_chars:
                skipped[f"{name}: prompt longer than {max_prompt_chars} chars"] += 1
                continue
            seen.add(key)
            kept += 1
            # held-out by hash: stable across runs and seeds
            (held if int(prompt_hash(p)[:8], 16) / 0xFFFFFFFF < eval_fraction else train).append(p)
        per_source[name] = kept
    rng = random.Random(seed)
    rng.shuffle(train)
    held = sorted(held, key=prompt_key)  # fixed order: the same eval prompts for every seed
    random.Random(0).shuffle(held)
    report = {"data_dir": str(data_dir), "kept_per_source": per_source, "skipped": dict(skipped), "n_train_total": len(train), "n_eval_total": len(held)}
    return PromptSet(train[:n_train] if n_train else train, held[:n_eval] if n_eval else held, report)
