"""Deterministic train/test splits that never put one prompt on both sides.

A record goes to "test" when the hash of its prompt, read as a number in [0, 1), is below
``test_fraction``. So the split

* depends on the prompt text only: the same on every machine, Python version, seed and
  record order, and the same for a prompt in any dataset (an HH-RLHF prompt that also
  occurs in PKU lands on the same side in both);
* never separates records that share a prompt (all responses to a prompt, both sides of
  a pair, every rater of an item go together), so no test prompt is ever trained on;
* is nested: raising ``test_fraction`` only moves prompts from train to test.

The hashed text is :func:`split_key`: :func:`records.prompt_key` after dropping system
messages (a system prompt does not make another task) and stripping whitespace, with a
chat of a single user turn reduced to its text, so ``"hi"`` and
``[{"role": "user", "content": "hi"}]`` are one prompt.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable, Literal, Sequence, TypeVar

from distrm.data.records import Prompt, prompt_key

T = TypeVar("T")
Part = Literal["train", "test"]


def split_key(prompt: Prompt) -> str:
    """Canonical prompt text for splitting (see the module docstring)."""
    if isinstance(prompt, str):
        return prompt.strip()
    msgs = [{"role": m["role"], "content": m["content"].strip()} for m in prompt if m.get("role") != "system"]
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return prompt_key(msgs)


def split_position(prompt: Prompt, salt: str = "") -> float:
    """The prompt's position in [0, 1) (first 64 bits of SHA-256 of salt + key)."""
    h = hashlib.sha256((salt + split_key(prompt)).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def is_test(prompt: Prompt, test_fraction: float = 0.2, salt: str = "") -> bool:
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    return split_position(prompt, salt) < test_fraction


def _prompt_of(item: Any) -> Prompt:
    return item.prompt if hasattr(item, "prompt") else item


def split(records: Iterable[T], part: Part, test_fraction: float = 0.2, salt: str = "") -> list[T]:
    """The records (anything with ``.prompt``, or bare prompts) on one side, in input order.
    ``salt`` gives an independent split (e.g. for cross-validation); default: none."""
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    want = part == "test"
    return [r for r in records if is_test(_prompt_of(r), test_fraction, salt) == want]


def train_test(records: Sequence[T], test_fraction: float = 0.2, salt: str = "") -> tuple[list[T], list[T]]:
    """Both sides at once."""
    train, test = [], []
    for r in records:
        (test if is_test(_prompt_of(r), test_fraction, salt) else train).append(r)
    return train, test


# A model records the prompts it was trained on as these digests (``config.json``
# ``training_prompts``), so an evaluation can count its prompts the model has seen without
# the training data at hand. The digest is of :func:`split_key`, the same canonical text the
# split hashes: a prompt counts as seen whatever its system message or chat wrapping. 64 bits
# make a false match between a few thousand evaluation and a few ten thousand training
# prompts about one in 10^10, at 16 characters per prompt.
PROMPT_DIGEST_CHARS = 16


def prompt_digest(prompt: Prompt) -> str:
    """The first :data:`PROMPT_DIGEST_CHARS` hex digits of SHA-256 of the prompt's split key."""
    return hashlib.sha256(split_key(prompt).encode("utf-8")).hexdigest()[:PROMPT_DIGEST_CHARS]


def pack_prompt_digests(*record_lists: Iterable[Any]) -> str:
    """The distinct prompts of records (anything with ``.prompt``, or bare prompts) as one
    string: their sorted digests concatenated (compact in JSON, independent of record order)."""
    return "".join(sorted({prompt_digest(_prompt_of(r)) for records in record_lists for r in records}))


def unpack_prompt_digests(packed: str, where: str = "training_prompts") -> frozenset[str]:
    """The digest set of :func:`pack_prompt_digests`; ``where`` names the field in errors."""
    n = PROMPT_DIGEST_CHARS
    if len(packed) % n or not re.fullmatch(r"[0-9a-f]*", packed):
        raise ValueError(f"{where}: expected concatenated {n}-character lowercase hex digests "
                         f"(length a multiple of {n}), got {len(packed)} characters")
    return frozenset(packed[i : i + n] for i in range(0, len(packed), n))
