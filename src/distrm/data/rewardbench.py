"""Files in RewardBench's format (``prompt, chosen, rejected, subset[, id]``), for evaluation.

Read here through :func:`~distrm.data.io.read_rows` so the evaluation gets the one reader
per file format (JSONL / JSON / CSV / Parquet, ``.gz``) and its ``file:line`` locations.
Unlike :func:`~distrm.data.generic.load_pairs_file` this keeps every row RewardBench
would score: prompt, chosen and rejected must be text, and nothing else is judged (a pair
with identical responses stays in, to be scored as the tie it is), so accuracies match
RewardBench's own counts. A damaged row (bad JSON, bad bytes) is an error naming its
``file:line``: a benchmark file that does not parse is not one to report a score on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from distrm.data.io import DataError, Reporter, Row, read_rows_or_fail
from distrm.data.records import Loaded, PreferencePair

NOT_AN_OBJECT = "not an object"
TEXT_FIELDS = ("prompt", "chosen", "rejected")
_HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name; anything else that is not a file is a missing file


def load_rewardbench_pairs(path_or_hub: str | Path, split: str = "filtered", strict: bool = False) -> Loaded[PreferencePair]:
    """Pairs from a local file, or from a Hub dataset name (``owner/name``, needs network).

    ``source`` is the file's stem (or the dataset's name), ``subset`` the row's ``subset``
    (else the source), ``id`` the row's ``id`` (else its 0-based row index). Rows without
    text prompt/chosen/rejected are counted by reason (``missing/non-text chosen``) with
    located examples; a file with no usable row raises :class:`DataError` with the counts."""
    p = Path(path_or_hub)
    if p.exists():
        name, rows = p.stem, read_rows_or_fail(p)
    elif _HUB_NAME.fullmatch(str(path_or_hub)):
        name, rows = str(path_or_hub).split("/")[-1], _hub_rows(str(path_or_hub), split)
    else:
        raise FileNotFoundError(f"{path_or_hub}: no such file, and not a hub dataset name (owner/name)")
    rep = Reporter(name, strict)
    pairs = []
    for i, row in enumerate(rows):
        rep.read()
        r = row.data
        if not isinstance(r, dict):
            rep.skip(NOT_AN_OBJECT, row.where, f"got {type(r).__name__}")
            continue
        missing = [k for k in TEXT_FIELDS if not isinstance(r.get(k), str)]
        if missing:
            rep.skip(f"missing/non-text {','.join(missing)}", row.where)
            continue
        pairs.append(PreferencePair(r["prompt"], r["chosen"], r["rejected"], source=name, id=str(r.get("id", i)), subset=r.get("subset") or name))
    if not pairs:
        first = next((ex[0] for ex in rep.report.examples.values() if ex), None)
        raise DataError(
            f"{path_or_hub}: no rows with text prompt/chosen/rejected among {rep.report.rows_read} read "
            f"(skipped: {dict(rep.report.skipped)}" + (f"; e.g. {first}" if first else "") + ")"
        )
    return Loaded(pairs, rep.report)


def _hub_rows(name: str, split: str) -> Iterable[Row]:
    """Rows of a Hub dataset, located as ``hf:name[split]:#index`` like the file rows."""
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split=split)
    except Exception as e:  # offline machines: say so in one line
        raise FileNotFoundError(f"could not load hub dataset {name!r} split {split!r}: {e}") from None
    return (Row(f"hf:{name}[{split}]:#{i}", r) for i, r in enumerate(ds))
