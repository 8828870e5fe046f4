"""Prompt-only sets for RL: HH-RLHF, PKU-SafeRLHF, BeaverTails and IMDB review prefixes.

These are read here, through :func:`~distrm.data.io.read_rows`, so RL gets the same file
handling as every other loader (gz, ``file:line`` locations, counted skips) instead of
opening the files itself; :mod:`distrm.rl.prompts` only deduplicates and splits.

The prompts are RL's own, not the pair loaders' prompts: every row gives one prompt (RL
deduplicates across sources itself), HH-RLHF prompts are the ``chosen`` transcript up to
its last user turn (whether or not the pair would pass the pair loader's checks), and IMDB
prefixes have a random length (the paper's continuation task) where
:func:`~distrm.data.shared.load_imdb_prompts` cuts a fixed one. Skip reasons keep the
names RL's reports have always used ("malformed transcript", "review too short").
"""

from __future__ import annotations

import random
from pathlib import Path

from distrm.data.formats import parse_hh_transcript
from distrm.data.generic import collect, load_prompts_file
from distrm.data.io import Reporter, RowError, read_rows
from distrm.data.records import Loaded, Message, Prompt

RL_SOURCES = ("hh-rlhf", "pku-saferlhf", "beavertails", "imdb")
MALFORMED = "malformed transcript"
TOO_SHORT = "review too short"

_FILES = {
    "hh-rlhf": ("hh-rlhf", "harmless-base-test.jsonl.gz"),
    "pku-saferlhf": ("pku-saferlhf-dpo5k", "pku_seferlhf_realign_dpo_5k.json"),
    "beavertails": ("pku-saferlhf-dpo5k", "BeaverTails_eval_prompts.json"),
    "imdb": ("imdb-sample", "texts.csv"),
}


def hh_dialogue(transcript: str) -> list[Message] | None:
    """``\\n\\nHuman: ..\\n\\nAssistant: ..`` -> chat messages up to (not incl.) the last
    assistant reply, i.e. the prompt the final reply answered. None if malformed."""
    msgs = parse_hh_transcript(transcript)
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    if not msgs or not msgs[-1]["content"]:
        return None
    return msgs


def load_rl_prompts(name: str, data_dir: str | Path, imdb_words: tuple[int, int] = (2, 8), seed: int = 1234) -> Loaded[Prompt]:
    """One RL prompt source from the shared data folder, in file order, duplicates kept.

    Chat sources give ``[{"role": "user", "content": ...}, ...]`` prompts; IMDB gives the
    first ``k`` words of each review with ``k`` drawn from ``imdb_words`` by a
    ``random.Random(seed)`` (only reviews longer than ``imdb_words[1]`` words draw), so the
    prefixes are the same on every run."""
    if name not in _FILES:
        raise ValueError(f"unknown prompt source {name!r}; choose from {list(RL_SOURCES)}")
    path = Path(data_dir).joinpath(*_FILES[name])
    if name in ("pku-saferlhf", "beavertails"):
        loaded = load_prompts_file(path, "prompt", source=name)
        # the prompt column is one user question, stripped as RL always had it
        return Loaded([[{"role": "user", "content": p.strip()}] if isinstance(p, str) else p for p in loaded.records], loaded.report)
    rep = Reporter(name)
    if name == "hh-rlhf":

        def convert(row: dict, where: str):
            msgs = hh_dialogue(row["chosen"]) if isinstance(row.get("chosen"), str) else None
            if msgs is None:
                raise RowError(MALFORMED, "chosen")
            yield msgs

    else:
        rng = random.Random(seed)
        lo, hi = imdb_words

        def convert(row: dict, where: str):
            words = str(row.get("text") or "").replace("<br />", " ").split()
            if len(words) < hi + 1:
                raise RowError(TOO_SHORT, f"{len(words)} words, need more than {hi}")
            yield " ".join(words[: rng.randint(lo, hi)])  # random prefix length, as in the paper

    return Loaded(collect(read_rows(path), rep, convert), rep.report)
