"""Damaged data files, one class at a time: each row-level fault is a counted skip located
as ``file:line`` (an error naming it under --strict), each whole-file fault is one line,
and nothing ever ends in a traceback: through the Python API (generic and registry
loaders) and through ``distrm data inspect``."""

from __future__ import annotations

import codecs
import gzip
import json
import logging
import os
import re
import sys
from dataclasses import dataclass

import pytest

from distrm.data import registry
from distrm.data.generic import OPPOSITE, RESCORED, collect, load_pairs_file, load_rated_file
from distrm.data.io import (
    BAD_JSON,
    DUPLICATE,
    ID_CONFLICT,
    NON_UTF8,
    NUL_BYTES,
    TOO_DEEP,
    TRUNCATED,
    UNUSABLE,
    DataError,
    Reporter,
    Row,
)


def row(i: int, **kw) -> dict:
    return {"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "id": i, **kw}


def jl(*rows: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


DEEP = 100_000  # far deeper than the recursion limit (json.loads raises RecursionError)
deep_value = "[" * DEEP + "]" * DEEP
BIG_CELL = "x" * 200_000  # over the csv module's default field limit (131,072)


def csv_bytes(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Case:
    """name: file name; data: its bytes; kept: records loaded; skip: (reason, location
    suffix) of the one counted skip, None when nothing is skipped; error: regex of the
    one-line error when the whole file is refused."""

    name: str
    data: bytes
    kept: int = 0
    skip: tuple[str, str] | None = None
    error: str | None = None


CASES = {
    # -- row-level: counted skips (or, when now readable, no skip at all)
    "csv cell over the field limit": Case("big.csv", csv_bytes("prompt,chosen,rejected", f"p0,{BIG_CELL},r", "p1,c,r"), kept=2),
    "jsonl row nested too deeply": Case(
        "deep.jsonl", jl(row(0)) + b'{"prompt": "p", "chosen": ' + deep_value.encode() + b', "rejected": "r"}\n' + jl(row(2)), kept=2, skip=(TOO_DEEP, ":2")
    ),
    "json array item nested too deeply": Case(
        "deep.json", b"[" + json.dumps(row(0)).encode() + b",\n" + deep_value.encode() + b",\n" + json.dumps(row(2)).encode() + b"]", kept=2, skip=(TOO_DEEP, ":#1")
    ),
    "json rows-object item nested too deeply": Case(
        "deep_obj.json",
        b'{"meta": {"v": [1, {"a": "]"}]}, "data": [' + json.dumps(row(0)).encode() + b", " + deep_value.encode() + b"]}",
        kept=1,
        skip=(TOO_DEEP, ":#1"),
    ),
    "json lines under a .json name, row too deep": Case(
        "lines.json", b'{"prompt": "p", "chosen": ' + deep_value.encode() + b', "rejected": "r"}\n' + jl(row(1)), kept=1, skip=(TOO_DEEP, ":1")
    ),
    "jsonl integer too long to convert": Case("int.jsonl", jl(row(0)) + b'{"prompt": "p", "n": ' + b"9" * 5000 + b"}\n", kept=1, skip=(BAD_JSON, ":2")),
    "json item with an integer too long": Case(
        "int.json", b"[" + json.dumps(row(0)).encode() + b', {"n": ' + b"9" * 5000 + b"}]", kept=1, skip=(BAD_JSON, ":#1")
    ),
    "jsonl invalid UTF-8": Case("latin.jsonl", jl(row(0)) + b'{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}\n', kept=1, skip=(NON_UTF8, ":2")),
    "csv invalid UTF-8": Case("latin.csv", b"prompt,chosen,rejected\np0,c,r\np1,caf\xe9,r\n", kept=1, skip=(NON_UTF8, ":3")),
    "jsonl UTF-8 BOM": Case("bom.jsonl", codecs.BOM_UTF8 + jl(row(0), row(1)), kept=2),
    "jsonl BOM of a concatenated file": Case("cat.jsonl", codecs.BOM_UTF8 + jl(row(0)) + codecs.BOM_UTF8 + jl(row(1)), kept=2),
    "json UTF-8 BOM": Case("bom.json", codecs.BOM_UTF8 + json.dumps([row(0), row(1)]).encode(), kept=2),
    "csv UTF-8 BOM": Case("bom.csv", codecs.BOM_UTF8 + b"prompt,chosen,rejected\np0,c,r\n", kept=1),
    "jsonl UTF-16 with BOM": Case("u16.jsonl", jl(row(0), row(1)).decode().encode("utf-16"), kept=2),
    "jsonl zero-filled tail (crash)": Case("nul.jsonl", jl(row(0), row(1)) + b"\x00" * 4096, kept=2, skip=(NUL_BYTES, ":3")),
    "jsonl NUL byte inside a row": Case("nul2.jsonl", jl(row(0)) + b'{"prompt": "p\x00", "chosen": "c", "rejected": "r"}\n', kept=1, skip=(NUL_BYTES, ":2")),
    "csv NUL byte in a cell": Case("nul.csv", b"prompt,chosen,rejected\np0,c,r\np1,c\x00,r\n", kept=1, skip=(NUL_BYTES, ":3")),
    "gzip cut off mid-stream": Case("cut.jsonl.gz", b"", kept=-1, skip=(TRUNCATED, "")),  # data built in the fixture
    # -- whole-file faults: one line naming the file
    "not gzip at all": Case("junk.jsonl.gz", b"this is not gzip", error=r"not a readable gzip file"),
    "json document invalid UTF-8": Case("latin.json", b'[{"prompt": "caf\xe9"}]', error=r":1: not UTF-8"),
    "json document cut off": Case("cut.json", json.dumps([row(0), row(1)]).encode()[:-20], error=r":1: bad JSON"),
    "json top level nested too deeply": Case("deep_top.json", b'{"x": ' + deep_value.encode() + b"}", error=r"nested deeper than Python's recursion limit"),
    "utf-16 BOM, broken utf-16": Case("bad16.jsonl", codecs.BOM_UTF16_LE + b"a\x00\x00\xd8", error=r"UTF-16 byte-order mark but is not valid UTF-16"),
    "parquet damaged": Case("bad.parquet", b"PAR1 not really parquet", error=r"not a readable Parquet file"),
    "only NUL bytes, no rows": Case("zeros.csv", b"\x00" * 64, error=r"no rows after the header"),
}


def _write(tmp_path, case: Case):
    path = tmp_path / case.name
    if case.name == "cut.jsonl.gz":
        full = gzip.compress(jl(*[row(i, filler="y" * 200) for i in range(200)]), mtime=0)
        path.write_bytes(full[: len(full) // 2])
    else:
        path.write_bytes(case.data)
    return path


@pytest.fixture
def quiet_root_logger():
    """The CLI adds a stderr handler to the root logger when it has none; keep each test's
    handlers its own (a stale handler from another test would write to a closed stream)."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    yield
    root.handlers = saved


@pytest.mark.parametrize("label", list(CASES))
def test_python_api(tmp_path, label):
    case = CASES[label]
    path = _write(tmp_path, case)
    if case.error:
        with pytest.raises(DataError, match=case.error) as e:
            load_pairs_file(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(DataError, match=case.error):
            registry.load_pairs(str(path))
        return
    got = registry.load_pairs(str(path))  # the registry's file route = the generic loader
    rep = got.report
    if case.kept >= 0:
        assert len(got) == case.kept, rep.summary()
    else:
        assert len(got) > 10  # the readable start of the cut file
    if case.skip is None:
        assert rep.n_skipped == 0, rep.summary()
        return
    reason, where = case.skip
    assert dict(rep.skipped) == {reason: 1}, rep.summary()
    ex = rep.examples[reason][0]
    loc = re.escape(f"{path}{where}") if where else rf"{re.escape(str(path))}:#?\d+"
    assert re.match(rf"{loc}: {re.escape(reason)}", ex), ex
    with pytest.raises(DataError, match=rf"^{loc}: {re.escape(reason)}.*strict"):
        load_pairs_file(path, strict=True)


@pytest.mark.parametrize("label", list(CASES))
def test_cli(tmp_path, label, capsys, quiet_root_logger):
    from distrm.cli import main

    case = CASES[label]
    path = _write(tmp_path, case)
    rc = main(["data", "inspect", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    if case.error:
        assert rc == 2
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and str(path) in lines[0] and re.search(case.error, lines[0]), err
        return
    assert rc == 0, err
    if case.skip:
        reason, where = case.skip
        assert f"skipped {reason}: 1" in out
        rc = main(["data", "inspect", str(path), "--strict"])
        out, err = capsys.readouterr()
        assert rc == 2 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and f"{where}: {reason}" in err and str(path) in err


def test_csv_field_limit_is_restored(tmp_path):
    import csv

    before = csv.field_size_limit()
    path = _write(tmp_path, CASES["csv cell over the field limit"])
    got = load_pairs_file(path)
    assert got.records[0].chosen == BIG_CELL and csv.field_size_limit() == before


def test_truncated_gzip_keeps_the_readable_rows(tmp_path):
    path = _write(tmp_path, CASES["gzip cut off mid-stream"])
    got = load_pairs_file(path)
    n = len(got)
    assert 10 < n < 200 and [p.prompt for p in got] == [f"p{i}" for i in range(n)]
    # one skip: the cut, located at the row it went through
    assert dict(got.report.skipped) == {TRUNCATED: 1}
    assert got.report.examples[TRUNCATED][0].startswith(f"{path}:{n + 1}: file truncated (the compressed stream ends early")
    assert "the row at the cut is incomplete" in got.report.examples[TRUNCATED][0]


def test_unforeseen_value_is_a_counted_skip_not_a_crash():
    def convert(r, where):
        yield len(r["x"]) // r["y"]  # TypeError / ZeroDivisionError for odd values

    rep = Reporter("t")
    rows = [Row("f:1", {"x": "ab", "y": 1}), Row("f:2", {"x": 5, "y": 1}), Row("f:3", {"x": "a", "y": 0})]
    assert collect(rows, rep, convert) == [2]
    assert rep.report.skipped == {UNUSABLE: 2}
    assert rep.report.examples[UNUSABLE][0].startswith("f:2: unusable row (TypeError")
    with pytest.raises(DataError, match="f:2: unusable row"):
        collect(rows, Reporter("t", strict=True), convert)


def test_duplicates_and_conflicts_are_counted_and_reported(tmp_path, caplog):
    f = tmp_path / "dup.jsonl"
    f.write_bytes(
        jl(
            row(1),  # 1
            row(1),  # 2 identical repeat: a duplicate
            row(1, chosen="something else"),  # 3 same id 1, other content: a conflict
            row(4, chosen="bad 1", rejected="good 1", prompt="p1"),  # 4 same texts as 1, preference reversed
            row(5),  # 5 fine
        )
    )
    with caplog.at_level(logging.WARNING, logger="distrm.data"):
        got = load_pairs_file(f)
    assert len(got) == 5 and got.report.n_skipped == 0  # nothing dropped
    c = got.report.counts
    assert c[DUPLICATE] == 1 and c[ID_CONFLICT] == 1 and c[OPPOSITE] == 1
    assert got.report.examples[ID_CONFLICT] == [f"{f}:3: id 'dup:1', differs from the row at {f}:1"]
    assert got.report.examples[OPPOSITE] == [f"{f}:4: differs from the row at {f}:1"]
    assert f"{ID_CONFLICT}: 1" in got.report.summary() and f"{f}:3" in got.report.summary()
    assert any(f"{f}:3" in r.getMessage() for r in caplog.records)
    # strict mode keeps duplicates and conflicts (they are reported, not damage to a row)
    assert len(load_pairs_file(f, strict=True)) == 5

    r = tmp_path / "rated.jsonl"
    r.write_bytes(jl({"prompt": "p", "response": "a", "s": 1}, {"prompt": "p", "response": "a", "s": 1}, {"prompt": "p", "response": "a", "s": 3}))
    got = load_rated_file(r, attributes={"h": "s"}, scale=(0, 4))
    assert got.report.counts[DUPLICATE] == 1 and got.report.counts[RESCORED] == 1
    assert got.report.examples[RESCORED] == [f"{r}:3: differs from the row at {r}:1"]


def test_cli_unreadable_paths_are_one_line(tmp_path, capsys, quiet_root_logger):
    from distrm.cli import main

    cases = [tmp_path / "missing.jsonl", tmp_path]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.jsonl")
        cases.append(tmp_path / "fifo.jsonl")
    if os.geteuid() != 0 if hasattr(os, "geteuid") else False:  # root reads anything
        locked = tmp_path / "locked.jsonl"
        locked.write_bytes(jl(row(0)))
        locked.chmod(0)
        cases.append(locked)
    for p in cases:
        assert main(["data", "inspect", str(p)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and str(p) in err, err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_read_rows_of_a_permission_denied_file_is_one_line(tmp_path, monkeypatch):
    from pathlib import Path

    from distrm.data.io import read_rows

    f = tmp_path / "x.jsonl"
    f.write_bytes(jl(row(0)))

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match=rf"^{re.escape(str(f))}: cannot read \(Permission denied\)$"):
        list(read_rows(f))
