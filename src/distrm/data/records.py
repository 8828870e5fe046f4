"""The two record types every loader produces and every later step consumes.

* :class:`PreferencePair` -- a prompt with a preferred and a dispreferred response
  (gating / Bradley-Terry training, pairwise evaluation).
* :class:`RatedResponse` -- a prompt and one response with absolute scores per attribute
  (quantile-head training, calibration). A score is either one number or the list of the
  individual raters' numbers: keeping raters separate is the point of a distributional
  model (their disagreement becomes predicted spread instead of averaged-away noise).

Scores are normalised to [0, 1]; the original scale is kept in ``scales`` so results can
be reported on it again. Prompts are plain text or chat messages
(``[{"role": "user", "content": ...}, ...]``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Generic, Iterable, TypeVar, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]
Score = Union[float, list[float]]


def prompt_key(prompt: Prompt) -> str:
    """Canonical text of a prompt: used for hashing, splitting and caching."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)


def prompt_hash(prompt: Prompt) -> str:
    """Stable hex digest of a prompt (same on every machine and Python version)."""
    return hashlib.sha256(prompt_key(prompt).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PreferencePair:
    prompt: Prompt
    chosen: str
    rejected: str
    source: str
    id: str
    subset: str | None = None


@dataclass(frozen=True)
class RatedResponse:
    prompt: Prompt
    response: str
    # attribute -> score in [0, 1], or the list of individual raters' scores in [0, 1]
    scores: dict[str, Score]
    source: str
    id: str
    # attribute -> (low, high) of the original scale, so x_orig = low + x * (high - low)
    scales: dict[str, tuple[float, float]] = field(default_factory=dict)
    subset: str | None = None

    def rater_scores(self, attribute: str) -> list[float]:
        """The individual scores for ``attribute`` (one element if only a mean is known)."""
        s = self.scores.get(attribute)
        if s is None:
            return []
        return list(s) if isinstance(s, (list, tuple)) else [float(s)]


def distinct_items_per_attribute(rated: Iterable[RatedResponse]) -> dict[str, int]:
    """Distinct (prompt, response) items rated on each attribute: the count that decides
    whether an attribute has enough data for a head (``data.min_items_per_attribute``)."""
    items: dict[str, set] = {}
    for r in rated:
        for a in r.scores:
            items.setdefault(a, set()).add((prompt_key(r.prompt), r.response))
    return {a: len(v) for a, v in items.items()}


R = TypeVar("R", PreferencePair, RatedResponse)


@dataclass
class LoadReport:
    """What a loader read and what it skipped, by reason: nothing is dropped silently."""

    source: str
    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    # first few "file:line: reason" messages per reason, for the user to look at
    examples: dict[str, list[str]] = field(default_factory=dict)
    # things noted but not skipped (duplicate rows kept, "Unsure" ratings mapped, ...)
    counts: Counter = field(default_factory=Counter)

    def skip(self, reason: str, where: str, max_examples: int = 3) -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < max_examples:
            ex.append(where)

    def note(self, what: str, n: int = 1, example: str | None = None, max_examples: int = 3) -> None:
        """Count something kept but worth knowing (a duplicate, a conflict), with an
        optional ``file:line`` example (kept in ``examples`` under the same name)."""
        self.counts[what] += n
        if example is not None:
            ex = self.examples.setdefault(what, [])
            if len(ex) < max_examples:
                ex.append(example)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        parts = [f"{self.source}: read {self.rows_read} rows, skipped {self.n_skipped}"]
        for reason, n in self.skipped.most_common():
            parts.append(f"  {reason}: {n}  (e.g. {'; '.join(self.examples.get(reason, []))})")
        for what, n in self.counts.most_common():
            ex = self.examples.get(what)
            parts.append(f"  note: {what}: {n}" + (f"  (e.g. {'; '.join(ex)})" if ex else ""))
        return "\n".join(parts)

    def to_dict(self) -> dict:
        """JSON-ready form (for --json output and run manifests)."""
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "skipped": dict(self.skipped),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "counts": dict(self.counts),
        }


@dataclass
class Loaded(Generic[R]):
    """Records plus the report of what was skipped while reading them."""

    records: list[R]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)
