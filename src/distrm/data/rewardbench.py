"""Files in RewardBench's formats, for evaluation: RewardBench (v1), its prior sets, and
RewardBench 2.

* **RewardBench** (``allenai/reward-bench``, split ``filtered``): one row per pair,
  ``prompt`` (text), ``chosen``, ``rejected`` (text), ``subset``, ``id``.
* **Prior sets** (``allenai/pref-test-sets``, also named ``allenai/preference-test-sets``):
  one Hub split per set (``anthropic_helpful``, ``anthropic_harmless``, ``anthropic_hhh``,
  ``mtbench_human``, ``mtbench_gpt4``, ``shp``, ``summarize``), ``prompt`` a list of chat
  messages (every turn before the scored reply), ``chosen``/``rejected`` the reply text. As
  in ``rewardbench/utils.py`` ``load_eval_dataset(core_set=False)`` the *split name* is the
  subset (a row's own ``subset`` column is a sub-subset there) and the ``pku_safer`` /
  ``pku_better`` splits are dropped ("no longer part of the benchmark"). A local file is one
  split named by its stem (``shp.jsonl``), or several splits with a ``subset`` column
  holding the split names (the concatenation ``load_eval_dataset`` builds).
* **RewardBench 2** (``allenai/reward-bench-2``, split ``test``): best-of-N rows,
  ``prompt``, ``chosen`` and ``rejected`` *lists* of replies (one chosen, three rejected;
  the Ties subset has several correct ones), ``num_correct``, ``num_incorrect``,
  ``total_completions``, ``subset`` (Factuality, Precise IF, Math, Safety, Focus, Ties),
  ``id`` (``ref:N`` / ``tied:N`` in Ties, which its scoring groups by). Loaded as
  :class:`BestOfN` items.

Files are read through :func:`~distrm.data.io.read_rows` so the evaluation gets the one
reader per file format (JSONL / JSON / CSV / Parquet, ``.gz``) and its ``file:line``
locations. Unlike :func:`~distrm.data.generic.load_pairs_file` this keeps every row
RewardBench would score: nothing is judged beyond the types (a pair with identical
responses stays in, to be scored as the tie it is), so accuracies match RewardBench's own
counts. A damaged row (bad JSON, bad bytes) is an error naming its ``file:line``: a
benchmark file that does not parse is not one to report a score on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from distrm.data.io import DataError, Reporter, Row, read_rows_or_fail
from distrm.data.records import LoadReport, Loaded, PreferencePair, Prompt

NOT_AN_OBJECT = "not an object"
TEXT_FIELDS = ("prompt", "chosen", "rejected")
_HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name; anything else that is not a file is a missing file

# allenai/reward-bench@05a9005 rewardbench/constants.py SUBSET_NAME_TO_PAPER_READY (the prior sets)
PRIOR_SETS: tuple[str, ...] = ("anthropic_harmless", "anthropic_helpful", "anthropic_hhh", "mtbench_gpt4", "mtbench_human", "shp", "summarize")
# rewardbench/utils.py load_eval_dataset: "remove pku_safer and pku_better ... no longer part of the benchmark"
DROPPED_PRIOR_SPLITS: tuple[str, ...] = ("pku_safer", "pku_better")
# RewardBench 2 subsets (allenai/reward-bench-2 dataset card; scripts/run_v2.py scores "ties" on its own)
REWARDBENCH2_SUBSETS: tuple[str, ...] = ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties")

FORMATS = ("rewardbench", "prior-sets", "rewardbench2")
# rewardbench/utils.py CORE_EVAL_SET / EXTRA_PREF_SETS / CORE_EVAL_SET_V2, with the split each is read from
# (None: every split, the split name being the subset)
HUB_SETS: dict[str, tuple[str, str | None]] = {
    "allenai/reward-bench": ("rewardbench", "filtered"),
    "allenai/pref-test-sets": ("prior-sets", None),
    "allenai/preference-test-sets": ("prior-sets", None),
    "allenai/reward-bench-2": ("rewardbench2", "test"),
}
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")  # a Hub parquet shard name: <split>-00000-of-00001


@dataclass(frozen=True)
class BestOfN:
    """One RewardBench 2 item: a prompt, its correct replies (``chosen``) and its incorrect
    ones (``rejected``). The official code scores ``chosen + rejected`` in that order, the
    first ``num_correct`` being correct."""

    prompt: Prompt
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]
    source: str
    id: str
    subset: str

    @property
    def completions(self) -> tuple[str, ...]:
        return self.chosen + self.rejected

    @property
    def num_correct(self) -> int:
        return len(self.chosen)


@dataclass
class LoadedBestOfN:
    """RewardBench 2 items plus the report of what was skipped while reading them."""

    records: list[BestOfN]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.records)


def is_ties_subset(subset: str) -> bool:
    """scripts/run_v2.py: ``subset.lower() == "ties"`` gets the Ties scoring."""
    return subset.lower() == "ties"


def parse_ties_id(rid: str) -> tuple[str, int]:
    """``"ref:12"`` -> ("ref", 12), as ``process_single_model`` splits it (``id.split(":")``,
    ``int(prompt_id)``); anything else cannot be scored the official way."""
    parts = str(rid).split(":")
    if len(parts) == 2:
        try:
            return parts[0], int(parts[1])
        except ValueError:
            pass
    raise ValueError(f"Ties id {rid!r} is not TYPE:NUMBER (ref:N or tied:N), which RewardBench 2's Ties scoring groups by")


# ---------------------------------------------------------------------------- sources
def _split_of(path: Path) -> str:
    """The split a file holds, from its name (``shp.jsonl``, ``data/shp-00000-of-00001.parquet``)."""
    stem = path.name
    for ext in (".gz", ".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"):
        stem = stem[: -len(ext)] if stem.endswith(ext) else stem
    return _SHARD.sub("", stem)


def _source(path_or_hub: str | Path, split: str | None) -> tuple[str, Iterator[tuple[Row, str | None]], str | None]:
    """(name, rows with the split each came from (None: one split asked for), hub format or None)."""
    p = Path(path_or_hub)
    if p.exists():
        return _split_of(p), ((r, None) for r in read_rows_or_fail(p)), None
    name = str(path_or_hub)
    if not _HUB_NAME.fullmatch(name):
        raise FileNotFoundError(f"{path_or_hub}: no such file, and not a hub dataset name (owner/name)")
    fmt, default_split = HUB_SETS.get(name, (None, None))
    use = split if split is not None else default_split
    return name.split("/")[-1], _hub_rows(name, use), fmt


def _hub_rows(name: str, split: str | None) -> Iterator[tuple[Row, str | None]]:
    """Rows of a Hub dataset, located as ``hf:name[split]:#index`` like the file rows; with
    ``split=None`` every split, each row with its split name."""
    from datasets import load_dataset

    try:
        ds = load_dataset(name) if split is None else load_dataset(name, split=split)
    except Exception as e:  # offline machines: say so in one line
        raise FileNotFoundError(f"could not load hub dataset {name!r} split {split!r}: {e}") from None
    if split is not None:
        yield from ((Row(f"hf:{name}[{split}]:#{i}", r), None) for i, r in enumerate(ds))
    else:
        yield from ((Row(f"hf:{name}[{s}]:#{i}", r), s) for s in ds for i, r in enumerate(ds[s]))


def format_of_row(r: Any, name: str = "", split: str | None = None) -> str:
    """rewardbench2 (``chosen`` is a list), prior-sets (message-list prompt, or a prior-set
    name as the file/split/subset), else rewardbench."""
    if not isinstance(r, dict):
        return "rewardbench"
    if isinstance(r.get("chosen"), (list, tuple)) and not _is_messages(r.get("chosen")):
        return "rewardbench2"
    if isinstance(r.get("prompt"), list) or name in PRIOR_SETS or split in PRIOR_SETS or split in DROPPED_PRIOR_SPLITS or r.get("subset") in PRIOR_SETS:
        return "prior-sets"
    return "rewardbench"


def detect_format(path_or_hub: str | Path, split: str | None = None) -> str:
    """The format of a file or Hub dataset (one of :data:`FORMATS`): known Hub names by
    name, everything else from its first row with a ``chosen`` field."""
    name, rows, fmt = _source(path_or_hub, split)
    if fmt:
        return fmt
    for row, sp in rows:  # the first object with a chosen field decides
        if isinstance(row.data, dict) and "chosen" in row.data:
            return format_of_row(row.data, name, sp)
    return "rewardbench"


# ---------------------------------------------------------------------------- loaders
def _is_messages(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in v)


def _prompt(v: Any) -> Prompt | None:
    """Text, or chat messages (kept as ``{role, content}``); None for anything else."""
    if isinstance(v, str):
        return v
    if _is_messages(v):
        return [{"role": m["role"], "content": m["content"]} for m in v]
    return None


def _object_rows(rows: Iterable[tuple[Row, str | None]], rep: Reporter) -> Iterator[tuple[int, Row, str | None, dict]]:
    """(row index, row, split, its data) for each row whose data is a JSON object; every row
    is counted as read, the others skipped (and counted) as not an object."""
    for i, (row, sp) in enumerate(rows):
        rep.read()
        if not isinstance(row.data, dict):
            rep.skip(NOT_AN_OBJECT, row.where, f"got {type(row.data).__name__}")
            continue
        yield i, row, sp, row.data


def _nothing_usable(path_or_hub: str | Path, wanted: str, rep: Reporter) -> DataError:
    """The error for a source without one usable row: how many were read, why they were
    skipped, and the first located example."""
    first = next((ex[0] for ex in rep.report.examples.values() if ex), None)
    return DataError(
        f"{path_or_hub}: no {wanted} among {rep.report.rows_read} read "
        f"(skipped: {dict(rep.report.skipped)}" + (f"; e.g. {first}" if first else "") + ")"
    )


def load_rewardbench_pairs(
    path_or_hub: str | Path, split: str | None = "filtered", strict: bool = False, prior_sets: bool | None = None
) -> Loaded[PreferencePair]:
    """Pairs from a local file, or from a Hub dataset name (``owner/name``, needs network):
    RewardBench (v1) rows, or the prior sets (``prior_sets=True``; None: detected from the
    rows, see :func:`format_of_row`).

    ``source`` is the file's stem (or the dataset's name), ``subset`` the row's ``subset``
    (else the source) -- for the prior sets the split (Hub) or the file stem when it is a
    prior-set name --, ``id`` the row's ``id`` (else its 0-based row index). The prompt is
    text or a list of ``{role, content}`` messages. Rows without text chosen/rejected (or
    prompt) are counted by reason (``missing/non-text chosen``) with located examples; a
    file with no usable row raises :class:`DataError` with the counts."""
    p = Path(path_or_hub)
    hub_fmt = None if p.exists() else HUB_SETS.get(str(path_or_hub), (None,))[0]
    if hub_fmt == "prior-sets" and prior_sets is None:
        prior_sets = True
    hub_split = None if (prior_sets and hub_fmt == "prior-sets") else split
    if hub_fmt == "rewardbench2":
        raise DataError(f"{path_or_hub}: RewardBench 2 (best-of-N rows); load it with load_rewardbench2")
    name, rows, _ = _source(path_or_hub, hub_split)
    rep = Reporter(name, strict)
    pairs = []
    for i, row, sp, r in _object_rows(rows, rep):
        if prior_sets is None:
            prior_sets = format_of_row(r, name, sp) == "prior-sets"
        prompt = _prompt(r.get("prompt"))
        missing = [k for k in TEXT_FIELDS if (prompt is None if k == "prompt" else not isinstance(r.get(k), str))]
        if missing:
            rep.skip(f"missing/non-text {','.join(missing)}", row.where)
            continue
        if prior_sets:
            subset = sp or (name if name in PRIOR_SETS else (r.get("subset") or name))
            if subset in DROPPED_PRIOR_SPLITS:
                rep.note(f"{subset} rows dropped (not part of RewardBench's prior sets)")
                continue
        else:
            subset = r.get("subset") or sp or name
        pairs.append(PreferencePair(prompt, r["chosen"], r["rejected"], source=name, id=str(r.get("id", i)), subset=subset))
    if not pairs:
        raise _nothing_usable(path_or_hub, "rows with text prompt/chosen/rejected", rep)
    return Loaded(pairs, rep.report)


def load_prior_sets(path_or_hub: str | Path = "allenai/pref-test-sets", strict: bool = False) -> Loaded[PreferencePair]:
    """RewardBench's prior sets (every split of ``allenai/pref-test-sets``, or a local file)."""
    return load_rewardbench_pairs(path_or_hub, split=None, strict=strict, prior_sets=True)


def _replies(v: Any) -> tuple[str, ...] | None:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v):
        return tuple(v)
    return None


def load_rewardbench2(path_or_hub: str | Path = "allenai/reward-bench-2", split: str | None = "test", strict: bool = False) -> LoadedBestOfN:
    """RewardBench 2 items (best-of-N rows) from a local JSON/JSONL/Parquet file or a Hub name.

    A row needs a prompt (text or messages) and non-empty ``chosen`` and ``rejected`` lists
    of text (a lone string counts as a list of one); ``num_correct`` / ``num_incorrect`` /
    ``total_completions``, when present, must agree with them (the official code splits
    ``chosen + rejected`` by ``num_correct``), else the row is skipped and counted. A Ties
    row's ``id`` must be ``TYPE:NUMBER`` (``ref:3``, ``tied:3``); one that is not is an error
    naming the row, since the official scoring cannot group it."""
    name, rows, _ = _source(path_or_hub, split)
    rep = Reporter(name, strict)
    items: list[BestOfN] = []
    for i, row, sp, r in _object_rows(rows, rep):
        prompt, chosen, rejected = _prompt(r.get("prompt")), _replies(r.get("chosen")), _replies(r.get("rejected"))
        missing = [k for k, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)) if v is None]
        if missing:
            rep.skip(f"missing/non-text {','.join(missing)}", row.where, "RewardBench 2 wants a prompt and non-empty lists of text replies")
            continue
        assert chosen is not None and rejected is not None and prompt is not None
        counts = {"num_correct": len(chosen), "num_incorrect": len(rejected), "total_completions": len(chosen) + len(rejected)}
        bad = [f"{k}={r[k]!r} but {v}" for k, v in counts.items() if r.get(k) is not None and r[k] != v]
        if bad:
            rep.skip("counts disagree with chosen/rejected", row.where, "; ".join(bad))
            continue
        subset = str(r.get("subset") or sp or name)
        rid = str(r.get("id", i))
        if is_ties_subset(subset):
            try:
                parse_ties_id(rid)
            except ValueError as e:
                raise DataError(f"{row.where}: {e}") from None
        items.append(BestOfN(prompt, chosen, rejected, source=name, id=rid, subset=subset))
    if not items:
        raise _nothing_usable(path_or_hub, "RewardBench 2 rows (prompt, chosen list, rejected list)", rep)
    return LoadedBestOfN(items, rep.report)


def load_any(path_or_hub: str | Path, fmt: str = "auto", split: str | None = None, strict: bool = False) -> tuple[str, Loaded[PreferencePair] | LoadedBestOfN]:
    """(format, loaded) for a file or Hub name in any of the three formats; ``fmt="auto"``
    detects it (:func:`detect_format`). ``split`` None: the format's default split."""
    if fmt == "auto":
        fmt = detect_format(path_or_hub, split)
    if fmt not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {fmt!r}")
    if fmt == "rewardbench2":
        return fmt, load_rewardbench2(path_or_hub, split if split is not None else "test", strict)
    if fmt == "prior-sets":
        return fmt, load_rewardbench_pairs(path_or_hub, split, strict, prior_sets=True)
    return fmt, load_rewardbench_pairs(path_or_hub, split if split is not None else "filtered", strict, prior_sets=False)
