"""Reading rows from files, with every problem located (``file:line``) and counted.

Every loader goes through :func:`read_rows` and a :class:`Reporter`, so the rules are the
same everywhere:

* a file that cannot be read at all (missing, empty, a JSON document that does not parse,
  an unknown format) raises :class:`DataError` with the path and the reason;
* a bad *row* (bad JSON, non-UTF-8 bytes, not an object, a missing field, a wrong type, an
  empty response, ...) is skipped and counted by reason in the :class:`LoadReport`, with
  the first few ``file:line: reason`` messages kept as examples. ``strict=True`` raises on
  the first such row instead;
* exclusions by design (ties: a pair that states no preference) are counted in the same
  report but never raise, because they are a property of the data, not damage to it.

Rows are located as ``path:LINE`` (JSONL, CSV: physical line where the row starts) or
``path:#INDEX`` (JSON arrays and Parquet, 0-based item index).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from distrm.data.records import LoadReport, Message, Prompt

# skip reasons (one vocabulary for every loader, so reports can be compared)
BAD_JSON = "bad JSON"
NON_UTF8 = "non-UTF-8 bytes"
NOT_OBJECT = "row is not an object"
MISSING = "missing field"
WRONG_TYPE = "wrong type"
EMPTY_PROMPT = "empty prompt"
EMPTY_RESPONSE = "empty response"
IDENTICAL = "identical chosen and rejected"
BAD_SCORE = "score out of scale"
BAD_LABEL = "unknown label"
TIE = "tie"
UNPARSEABLE = "unparseable text"
PREFIX_DIFFERS = "chosen/rejected prompts differ"

# counted, never raised in strict mode: properties of the data (a tie states no
# preference; ConvAbuse re-asks annotators on purpose), nothing is broken
REPEAT_ANNOTATION = "repeat annotation by the same annotator"
BY_DESIGN = frozenset({TIE, REPEAT_ANNOTATION})


class DataError(ValueError):
    """A data file (or, with ``strict=True``, one row of it) cannot be used; the message
    starts with ``path[:line]`` and says why."""


class Reporter:
    """Collects a :class:`LoadReport` for one source; raises on skips when strict."""

    def __init__(self, source: str, strict: bool = False) -> None:
        self.report = LoadReport(source)
        self.strict = strict
        self._seen: set = set()

    def read(self, n: int = 1) -> None:
        self.report.rows_read += n

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        msg = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        if self.strict and reason not in BY_DESIGN:
            raise DataError(msg + " [strict mode: no row may be skipped]")
        self.report.skip(reason, msg)

    def note(self, what: str, n: int = 1) -> None:
        if n:
            self.report.counts[what] += n

    def duplicate(self, key: Any, what: str = "duplicate rows (kept)") -> None:
        """Count (never drop) a row whose key was seen before in this source."""
        if key in self._seen:
            self.note(what)
        else:
            self._seen.add(key)


# ------------------------------------------------------------------ reading files
@dataclass
class Row:
    where: str  # "path:line" or "path:#index"
    data: Any  # the parsed row (normally a dict) or None when ``error`` is set
    error: tuple[str, str] | None = None  # (reason, detail)


def _open_bytes(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a data file")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable gzip file ({e})") from None
    return raw


def file_format(path: Path) -> str:
    """jsonl | json | csv | tsv | parquet, from the name (``.gz`` allowed for text)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"), (".tsv", "tsv"), (".parquet", "parquet")):
        if name.endswith(ext):
            return fmt
    raise DataError(f"{path}: unknown file type (expected .jsonl, .json, .csv, .tsv or .parquet, optionally .gz)")


def read_rows(path: str | Path) -> Iterator[Row]:
    """Rows of a data file, each with its location; unreadable rows come with ``error``.

    A ``.json`` file that is really JSON Lines (Prometheus' ``autoj_pairwise.json``) is
    read as JSON Lines. Raises :class:`DataError` for an empty or wholly unreadable file.
    """
    path = Path(path)
    fmt = file_format(path)
    if fmt == "parquet":
        yield from _parquet_rows(path)
        return
    raw = _open_bytes(path)
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    if fmt == "json":
        yield from _json_rows(path, raw)
    elif fmt == "jsonl":
        yield from _jsonl_rows(path, raw)
    else:
        yield from _csv_rows(path, raw, "\t" if fmt == "tsv" else None)


def read_rows_or_fail(path: str | Path) -> Iterator[Row]:
    """:func:`read_rows` for callers that must not lose a row (a benchmark file, inputs to
    score): a row that cannot be parsed raises :class:`DataError` naming its ``file:line``
    instead of coming back with ``error`` to be counted as a skip."""
    for row in read_rows(path):
        if row.error:
            reason, detail = row.error
            raise DataError(f"{row.where}: {'not valid JSON' if reason == BAD_JSON else reason} ({detail})")
        yield row


def _jsonl_rows(path: Path, raw: bytes) -> Iterator[Row]:
    for ln, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{ln}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Row(where, None, (NON_UTF8, f"byte 0x{line[e.start]:02x} at column {e.start + 1}"))
            continue
        try:
            yield Row(where, json.loads(text))
        except json.JSONDecodeError as e:
            yield Row(where, None, (BAD_JSON, f"{e.msg} at column {e.colno}"))


def _line_of(raw: bytes, pos: int) -> int:
    return raw.count(b"\n", 0, pos) + 1


def _json_rows(path: Path, raw: bytes) -> Iterator[Row]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{_line_of(raw, e.start)}: not UTF-8 (byte 0x{raw[e.start]:02x}); a JSON document must be UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several documents: JSON Lines under a .json name
            yield from _jsonl_rows(path, raw)
            return
        raise DataError(f"{path}:{e.lineno}: bad JSON ({e.msg} at column {e.colno})") from None
    if isinstance(doc, dict):
        # {"instances": [...]} / {"data": [...]} / {"rows": [...]}: the one list of rows
        lists = [k for k in ("instances", "data", "rows", "examples") if isinstance(doc.get(k), list)]
        if not lists:
            raise DataError(f"{path}: a JSON object without a list of rows (expected a list, or a key instances/data/rows/examples)")
        doc = doc[lists[0]]
    if not isinstance(doc, list):
        raise DataError(f"{path}: JSON top level is {type(doc).__name__}, expected a list of rows")
    if not doc:
        raise DataError(f"{path}: file has no rows")
    for i, item in enumerate(doc):
        yield Row(f"{path}:#{i}", item)


def _csv_rows(path: Path, raw: bytes, delimiter: str | None) -> Iterator[Row]:
    # surrogateescape keeps bad bytes visible per row instead of failing the whole file
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    if delimiter is None:
        head = text[:8192]
        try:
            delimiter = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: file is empty") from None
    start = reader.line_num + 1
    n = 0
    for cells in reader:
        where = f"{path}:{start}"
        start = reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        n += 1
        if any(_has_surrogates(c) for c in cells):
            yield Row(where, None, (NON_UTF8, "invalid UTF-8 in a cell"))
            continue
        if len(cells) != len(header):
            yield Row(where, None, (WRONG_TYPE, f"{len(cells)} cells, header has {len(header)}"))
            continue
        yield Row(where, dict(zip(header, cells)))
    if n == 0:
        raise DataError(f"{path}: no rows after the header")


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: file has no rows")
    for i, item in enumerate(table.to_pylist()):
        yield Row(f"{path}:#{i}", item)


# ------------------------------------------------------------------ field access
_MISSING = object()


def get_field(row: Any, path: str | None) -> Any:
    """``row["a"]["b"][0]`` for ``"a.b.0"``; a sentinel when any step is missing."""
    if path is None:
        return _MISSING
    if isinstance(row, dict) and path in row:  # a literal dotted column name ("is_abuse.1")
        return row[path]
    cur = row
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def is_missing(v: Any) -> bool:
    return v is _MISSING or v is None or (isinstance(v, float) and math.isnan(v))


class RowError(Exception):
    """Raised by field converters; the loader turns it into a counted skip."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def need(row: Any, path: str) -> Any:
    v = get_field(row, path)
    if is_missing(v):
        raise RowError(MISSING, repr(path))
    return v


def as_messages(v: Any, name: str) -> list[Message]:
    if not isinstance(v, list) or not v or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in v):
        raise RowError(WRONG_TYPE, f"{name}: expected a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in v]


def as_prompt(v: Any, name: str = "prompt") -> Prompt:
    """Text, or chat messages (kept as messages)."""
    if isinstance(v, str):
        if not v.strip():
            raise RowError(EMPTY_PROMPT, name)
        return v
    if isinstance(v, list):
        msgs = as_messages(v, name)
        if not any(m["content"].strip() for m in msgs):
            raise RowError(EMPTY_PROMPT, name)
        return msgs
    raise RowError(WRONG_TYPE, f"{name}: expected text or messages, got {type(v).__name__}")


def as_response(v: Any, name: str) -> str:
    """Text, or messages whose last one is the assistant's reply (e.g. Orca's
    ``preferred_output``, ultrafeedback_binarized's ``chosen``)."""
    if isinstance(v, list):
        msgs = as_messages(v, name)
        if msgs[-1]["role"] != "assistant":
            raise RowError(WRONG_TYPE, f"{name}: last message is {msgs[-1]['role']!r}, expected 'assistant'")
        v = msgs[-1]["content"]
    if not isinstance(v, str):
        raise RowError(WRONG_TYPE, f"{name}: expected text, got {type(v).__name__}")
    if not v.strip():
        raise RowError(EMPTY_RESPONSE, name)
    return v


def as_number(v: Any, name: str) -> float:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
        return float(v)
    if isinstance(v, str):
        try:
            x = float(v.strip())
        except ValueError:
            raise RowError(WRONG_TYPE, f"{name}: {v[:30]!r} is not a number") from None
        if not math.isnan(x):
            return x
    raise RowError(WRONG_TYPE, f"{name}: expected a number, got {type(v).__name__}")


def as_scores(v: Any, name: str) -> list[float]:
    """One number, a list of numbers, or the text of one (``"[3, 2, 3]"``)."""
    if isinstance(v, str) and v.strip().startswith("["):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise RowError(WRONG_TYPE, f"{name}: {v[:30]!r} is not a list of numbers") from None
    if isinstance(v, (list, tuple)):
        if not v:
            raise RowError(MISSING, f"{name}: empty list of scores")
        return [as_number(x, name) for x in v]
    return [as_number(v, name)]


def normalise(x: float, scale: tuple[float, float], name: str) -> float:
    """Original scale -> [0, 1]; a score outside the scale is an error, not clipped."""
    lo, hi = scale
    if not lo <= x <= hi:
        raise RowError(BAD_SCORE, f"{name}={x:g} outside [{lo:g}, {hi:g}]")
    return (x - lo) / (hi - lo)


def normalise_all(xs: Sequence[float], scale: tuple[float, float], name: str) -> float | list[float]:
    vals = [normalise(x, scale, name) for x in xs]
    return vals[0] if len(vals) == 1 else vals
