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
  report but never raise, because they are a property of the data, not damage to it;
* repeated rows are kept and counted: an identical repeat as a duplicate, the same key
  (id, or prompt + responses) with different content as a *conflict*, with both
  locations as examples and a logged warning (never raised: nothing is dropped).

No row can end a load: a cell over the csv module's field limit, JSON nested deeper than
the recursion limit, an integer too long to convert, invalid UTF-8, NUL bytes (a
zero-filled tail after a crash) and a truncated ``.gz`` are each a counted skip located as
``file:line``. A UTF-8 byte-order mark is dropped (also at the start of a later JSONL
line, as left by concatenating files); a file with a UTF-16/32 byte-order mark is read as
such.

Rows are located as ``path:LINE`` (JSONL, CSV: physical line where the row starts) or
``path:#INDEX`` (JSON arrays and Parquet, 0-based item index).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
import math
import re
import sys
import zlib
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
NUL_BYTES = "NUL bytes"
TOO_DEEP = "JSON nested too deeply"
BAD_CSV = "unreadable CSV row"
TRUNCATED = "file truncated"
UNUSABLE = "unusable row"

# notes (counted, rows kept)
DUPLICATE = "duplicate rows (kept)"
CONFLICT = "same key with different content (both kept)"
ID_CONFLICT = "same id with different content (both kept)"

# counted, never raised in strict mode: properties of the data (a tie states no
# preference; ConvAbuse re-asks annotators on purpose), nothing is broken
REPEAT_ANNOTATION = "repeat annotation by the same annotator"
BY_DESIGN = frozenset({TIE, REPEAT_ANNOTATION})


_log = logging.getLogger("distrm.data")


class DataError(ValueError):
    """A data file (or, with ``strict=True``, one row of it) cannot be used; the message
    starts with ``path[:line]`` and says why."""


class Reporter:
    """Collects a :class:`LoadReport` for one source; raises on skips when strict."""

    def __init__(self, source: str, strict: bool = False) -> None:
        self.report = LoadReport(source)
        self.strict = strict
        # digest of a key -> (digest of its content, where first seen)
        self._seen: dict[bytes, tuple[bytes | None, str]] = {}
        self._ids: dict[bytes, tuple[bytes, str]] = {}
        self._warned = 0

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

    def duplicate(
        self,
        key: Any,
        what: str = DUPLICATE,
        *,
        content: Any = None,
        where: str = "",
        id: str | None = None,
        conflict: str = CONFLICT,
    ) -> None:
        """Count (never drop) a row whose key was seen before in this source.

        ``content``: what must also be equal for a repeat to be a plain duplicate (the
        scores of a rated response, the direction of a pair); a repeat of ``key`` with other
        content is counted as ``conflict``. ``id``: the row's id; the same id with a
        different key or content is counted as :data:`ID_CONFLICT`. Conflicts keep
        ``file:line`` examples of both rows and are logged; neither ever raises."""
        k, c = _digest(key), (None if content is None else _digest(content))
        prev = self._seen.get(k)
        if prev is None:
            self._seen[k] = (c, where)
        elif prev[0] == c:
            self.note(what)
        else:
            self._conflict(conflict, where, prev[1])
        if id is not None:
            i, kc = _digest(id), _digest((k, c))
            prev_id = self._ids.get(i)
            if prev_id is None:
                self._ids[i] = (kc, where)
            elif prev_id[0] != kc:
                self._conflict(ID_CONFLICT, where, prev_id[1], f"id {id!r}")

    def _conflict(self, what: str, where: str, first: str, detail: str = "") -> None:
        other = "another record from the same row" if where and where == first else f"the row at {first or '?'}"
        ex = f"{where or '?'}: {detail + ', ' if detail else ''}differs from {other}"
        self.report.note(what, example=ex)
        if self._warned < 3:
            self._warned += 1
            _log.warning("%s: %s: %s", self.report.source, what, ex)


def _digest(obj: Any) -> bytes:
    """A short stable digest of a key (texts are not kept in memory for every row)."""
    return hashlib.blake2b(repr(obj).encode("utf-8", "surrogatepass"), digest_size=16).digest()


# ------------------------------------------------------------------ reading files
@dataclass
class Row:
    where: str  # "path:line" or "path:#index"
    data: Any  # the parsed row (normally a dict) or None when ``error`` is set
    error: tuple[str, str] | None = None  # (reason, detail)


def _open_bytes(path: Path) -> tuple[bytes, str | None]:
    """The file's bytes (decompressed for ``.gz``) and, for a truncated or damaged ``.gz``
    whose start is readable, why the rest is missing (else None)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a data file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if path.suffix == ".gz":
        return _gunzip(path, raw)
    return raw, None


_GZ_CHUNK = 1 << 16  # small: damage mid-chunk loses only that chunk's output


def _gunzip(path: Path, raw: bytes) -> tuple[bytes, str | None]:
    """Decompress every gzip member; keep what decompresses before damage or a cut."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        damage = None
        try:
            while pos < len(raw) and not d.eof:
                chunk = raw[pos : pos + _GZ_CHUNK]
                out.append(d.decompress(chunk))
                pos += len(chunk) - len(d.unused_data)
            if not d.eof:
                out.append(d.flush())
                damage = "the compressed stream ends early (file cut off)"
        except zlib.error as e:
            damage = f"damaged compressed data ({e})"
        if damage:
            data = b"".join(out)
            if not data:
                raise DataError(f"{path}: not a readable gzip file ({damage})")
            return data, f"{damage}; nothing after decompressed byte {len(data)} can be read"
        if not raw[pos:].strip(b"\x00"):  # trailing zero padding is allowed after a member
            break
    return b"".join(out), None


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _as_utf8(path: Path, raw: bytes) -> bytes:
    """Drop a UTF-8 byte-order mark; transcode a file that starts with a UTF-16/32 one."""
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8) :]
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(enc).encode("utf-8")
            except UnicodeError as e:
                raise DataError(f"{path}: starts with a {enc.upper()} byte-order mark but is not valid {enc.upper()} ({e.reason}); save it as UTF-8") from None
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
    A truncated ``.jsonl.gz`` / ``.csv.gz`` gives its readable rows, then one row with
    error :data:`TRUNCATED`.
    """
    path = Path(path)
    fmt = file_format(path)
    if fmt == "parquet":
        yield from _parquet_rows(path)
        return
    raw, damage = _open_bytes(path)
    raw = _as_utf8(path, raw)
    if damage and fmt != "json":  # the row the cut went through is part of the damage
        cut = raw.rfind(b"\n") + 1
        if raw[cut:].strip():
            damage = f"{damage}; the row at the cut is incomplete"
        raw = raw[:cut]
    if not raw.strip():
        raise DataError(f"{path}: file is empty" + (f" ({damage})" if damage else ""))
    if fmt == "json":
        if damage:
            raise DataError(f"{path}: {damage}; a JSON document cannot be read in part")
        yield from _json_rows(path, raw)
        return
    if fmt == "jsonl":
        yield from _jsonl_rows(path, raw)
    else:
        yield from _csv_rows(path, raw, "\t" if fmt == "tsv" else None)
    if damage:
        last = raw.count(b"\n") + 1
        yield Row(f"{path}:{last}", None, (TRUNCATED, damage))


def read_rows_or_fail(path: str | Path) -> Iterator[Row]:
    """:func:`read_rows` for callers that must not lose a row (a benchmark file, inputs to
    score): a row that cannot be parsed raises :class:`DataError` naming its ``file:line``
    instead of coming back with ``error`` to be counted as a skip."""
    for row in read_rows(path):
        if row.error:
            reason, detail = row.error
            raise DataError(f"{row.where}: {'not valid JSON' if reason == BAD_JSON else reason} ({detail})")
        yield row


def _loads(text: str) -> tuple[Any, tuple[str, str] | None]:
    """(parsed, None) or (None, (reason, detail)): no JSON text raises."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, (BAD_JSON, f"{e.msg} at column {e.colno}")
    except RecursionError:
        return None, (TOO_DEEP, f"deeper than Python's recursion limit ({sys.getrecursionlimit()})")
    except ValueError as e:  # e.g. an integer with more digits than int() converts
        return None, (BAD_JSON, str(e).split(";")[0][:120])


def _nul_detail(line: bytes) -> str:
    if not line.strip(b"\x00 \t\r\n"):
        return "only NUL bytes (a zero-filled region, e.g. after a crash)"
    col = line.index(b"\x00") + 1
    return f"at column {col}"


def _jsonl_rows(path: Path, raw: bytes) -> Iterator[Row]:
    for ln, line in enumerate(raw.split(b"\n"), 1):
        if line.startswith(codecs.BOM_UTF8):  # files concatenated after the first
            line = line[len(codecs.BOM_UTF8) :]
        if not line.strip():
            continue
        where = f"{path}:{ln}"
        if b"\x00" in line:
            yield Row(where, None, (NUL_BYTES, _nul_detail(line)))
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Row(where, None, (NON_UTF8, f"byte 0x{line[e.start]:02x} at column {e.start + 1}"))
            continue
        data, err = _loads(text)
        yield Row(where, data, err)


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
    except (RecursionError, ValueError):  # one item too deep (or a huge integer): item by item
        toks = _json_tokens(text)
        if _several_documents(text, toks):  # JSON Lines under a .json name
            yield from _jsonl_rows(path, raw)
        else:
            yield from _json_items_one_by_one(path, text, toks)
        return
    if isinstance(doc, dict):
        key = _rows_key(doc)
        if key is None:
            raise DataError(f"{path}: a JSON object without a list of rows (expected a list, or a key instances/data/rows/examples)")
        doc = doc[key]
    if not isinstance(doc, list):
        raise DataError(f"{path}: JSON top level is {type(doc).__name__}, expected a list of rows")
    if not doc:
        raise DataError(f"{path}: file has no rows")
    for i, item in enumerate(doc):
        yield Row(f"{path}:#{i}", item)


_ROW_KEYS = ("instances", "data", "rows", "examples")


def _rows_key(doc: dict) -> str | None:
    """{"instances": [...]} / {"data": [...]} / ...: the key of the one list of rows."""
    return next((k for k in _ROW_KEYS if isinstance(doc.get(k), list)), None)


# strings (with escapes) and the structural characters of JSON, for splitting a document
# into its rows without parsing it whole
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]', re.S)


def _json_tokens(text: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group()) for m in _JSON_TOKEN.finditer(text)]


def _several_documents(text: str, toks: list[tuple[int, str]]) -> bool:
    """Whether something follows the first top-level ``[...]`` / ``{...}``."""
    if not toks or toks[0][1] not in ("[", "{"):
        return False
    end = _skip_value(toks, 0)
    return 0 < end < len(toks) or (0 < end and bool(text[toks[end - 1][0] + 1 :].strip()))


def _json_items_one_by_one(path: Path, text: str, toks: list[tuple[int, str]]) -> Iterator[Row]:
    """A JSON document that ``json.loads`` cannot take whole (an item nested deeper than
    the recursion limit): split the list of rows by its structure, parse each item alone,
    so only the items that fail are skipped (as ``path:#index``)."""
    spans = _row_spans(text, toks)
    if spans is None:
        raise DataError(f"{path}: JSON nested deeper than Python's recursion limit ({sys.getrecursionlimit()}), and not a complete list of rows to read one by one")
    if not spans:
        raise DataError(f"{path}: file has no rows")
    for i, (a, b) in enumerate(spans):
        data, err = _loads(text[a:b])
        yield Row(f"{path}:#{i}", data, err)


def _row_spans(text: str, toks: list[tuple[int, str]]) -> list[tuple[int, int]] | None:
    """(start, end) of each item of the document's list of rows (top-level list, or the
    list under instances/data/rows/examples); None when the structure is not that."""
    start = len(text) - len(text.lstrip())
    if not toks or toks[0][0] != start:
        return None
    if toks[0][1] == "[":
        got = _list_items(text, toks, 0)
        return got[0] if got else None
    if toks[0][1] != "{":
        return None
    lists: dict[str, list[tuple[int, int]]] = {}
    j = 1
    while j < len(toks) and toks[j][1] != "}":
        if not (toks[j][1].startswith('"') and j + 1 < len(toks) and toks[j + 1][1] == ":"):
            return None
        key, j = _loads(toks[j][1])[0], j + 2
        if j < len(toks) and toks[j][1] == "[" and not text[toks[j - 1][0] + 1 : toks[j][0]].strip():
            got = _list_items(text, toks, j)
            if got is None:
                return None
            if isinstance(key, str):
                lists.setdefault(key, got[0])
            j = got[1]
        else:
            j = _skip_value(toks, j)
        if j < len(toks) and toks[j][1] == ",":
            j += 1
    return next((lists[k] for k in _ROW_KEYS if k in lists), None)


def _list_items(text: str, toks: list[tuple[int, str]], i: int) -> tuple[list[tuple[int, int]], int] | None:
    """Items of the list opening at ``toks[i]``, and the token index after its ``]``."""
    depth, spans, start = 0, [], toks[i][0] + 1
    for j in range(i, len(toks)):
        pos, t = toks[j]
        if t == "[" or t == "{":
            depth += 1
        elif t == "]" or t == "}":
            depth -= 1
            if depth == 0:
                if text[start:pos].strip() or spans:
                    spans.append((start, pos))
                return spans, j + 1
        elif t == "," and depth == 1:
            spans.append((start, pos))
            start = pos + 1
    return None


def _skip_value(toks: list[tuple[int, str]], j: int) -> int:
    """Token index after the value starting at ``toks[j]`` (a scalar has no token)."""
    if j >= len(toks):
        return j
    t = toks[j][1]
    if t.startswith('"'):
        return j + 1
    if t not in ("[", "{"):
        return j
    depth = 0
    for k in range(j, len(toks)):
        if toks[k][1] in ("[", "{"):
            depth += 1
        elif toks[k][1] in ("]", "}"):
            depth -= 1
            if depth == 0:
                return k + 1
    return len(toks)


# a cell can never be longer than its file: the csv module's field limit (128 KiB by
# default) is raised to the file's size while reading it (and put back after each row)
_CSV_LIMIT_MAX = 2**31 - 1  # a C long everywhere


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
    limit = min(max(len(text) + 1, csv.field_size_limit()), _CSV_LIMIT_MAX)

    def next_cells() -> list[str] | None:
        old = csv.field_size_limit(limit)
        try:
            return next(reader)
        except StopIteration:
            return None
        finally:
            csv.field_size_limit(old)

    try:
        header = next_cells()
    except csv.Error as e:
        raise DataError(f"{path}:1: unreadable CSV header ({e})") from None
    if header is None:
        raise DataError(f"{path}: file is empty")
    start = reader.line_num + 1
    n = 0
    while True:
        where = f"{path}:{start}"
        try:
            cells = next_cells()
        except csv.Error as e:  # a cell longer than the field limit, ...
            start = reader.line_num + 1
            n += 1
            yield Row(where, None, (BAD_CSV, str(e)))
            continue
        if cells is None:
            break
        start = reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        n += 1
        if any("\x00" in c for c in cells):
            nul = next(c for c in cells if "\x00" in c)
            yield Row(where, None, (NUL_BYTES, "only NUL bytes (a zero-filled region, e.g. after a crash)" if not nul.strip("\x00 \t\r\n") else "in a cell"))
            continue
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
        items = table.to_pylist()
    except Exception as e:  # pyarrow raises several types for damaged files
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not items:
        raise DataError(f"{path}: file has no rows")
    for i, item in enumerate(items):
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
