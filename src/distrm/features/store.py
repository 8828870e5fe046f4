"""The feature store: frozen-backbone features computed once, cached on disk.

Layout: ``<root>/<sha(backbone identity)>/`` holds shards; each shard is four files. All
four are written to temporary files first (``<name>.tmp-<host>_<pid>``), then renamed in
this order, the ``.keys.npy`` last, so a shard without its keys file is an unfinished one
and is ignored:

    shard-<rank>-<uuid>.reward.npy   [n, d] float32   reward features (prompt + response)
    shard-<rank>-<uuid>.prompt.npy   [n, d] float32   prompt features of the same rows
                                     (float16, or bfloat16 kept as its raw uint16 bits: see below)
    shard-<rank>-<uuid>.sums.json    size and sha256 of the three .npy files
                                     and who wrote it (rank, world size, host, device)
    shard-<rank>-<uuid>.keys.npy     [n, 32] uint8     sha256 of (prompt, response)

Keys hash the canonical prompt and the response text, so identical texts (the same
prompt under chosen and rejected, duplicates across datasets) are computed once. A killed
run resumes: finished shards are found by their keys files and only missing texts are
computed. Reads are memory-mapped. Under ``accelerate launch`` each process computes its
slice of the missing texts into its own shards; after a barrier every process reads all.
On a CPU-only machine launch with ``accelerate launch --multi_gpu --num_processes 2 ...``
(accelerate's ``--cpu`` flag starts a single process); the store then uses gloo.

Storage dtype. At paper scale (600k pairs, d = 4096) float32 features are ~30 GB, so a store
can keep them in float16 or bfloat16 instead (``store_dtype``, chosen at extraction). numpy
has no bfloat16: its raw bits are stored as uint16 and widened to float32 (a 16-bit shift,
exact) when read. The storage dtype is part of the store's key (a bf16 store never serves
an fp32 request) except for float32, whose key is the backbone identity alone, so stores
written before the choice existed stay valid; it is also recorded in each ``sums.json``.
``extract(..., stream=True)`` returns :class:`StoredFeatures` views instead of arrays: rows
are read from the memory-mapped shards per request and the mapping is closed after each
read, so trainers that iterate blocks (:mod:`distrm.training.gate`, ``QuantileHeads`` with
``block_rows``) keep their memory flat however large the store.

Faults: a write that fails (disk full, permissions, I/O error) removes what it wrote of
its shard and raises :class:`FeatureStoreError`, one line naming the file (a ``ValueError``,
so the CLI prints it as such). Each run first removes what killed runs left behind:
temporary files of writers no longer running (or untouched for 10 minutes) and parts of
shards that never got their keys file (after a minute). A finished shard is checked
before use (sizes and the keys' checksum for every shard, the features' checksums for the
shards a call reads, once per process and file version); a damaged one is named in a
warning, removed, and its texts are computed again, so the result equals a clean run. Shards written before checksums were
recorded (no ``.sums.json``) are checked for shape only.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from distrm.data.records import Prompt, prompt_key

DEFAULT_STORE = Path(".cache/distrm/features")
log = logging.getLogger(__name__)

# storage dtypes: name -> the numpy dtype on disk (bfloat16 as its raw bits)
STORE_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16)}
# the parts of a shard, in the order they are committed (keys last = the shard is finished)
PARTS = ("reward.npy", "prompt.npy", "sums.json", "keys.npy")
_TMP = ".tmp-"
STALE_TMP_S = 600.0  # a temporary file untouched this long belongs to no live writer
STALE_ORPHAN_S = 60.0  # parts are renamed within milliseconds of each other
_SUMS_FORMAT = 1
# (path, size, mtime, inode) of feature files whose checksum this process has verified, so
# repeated calls (chosen, then rejected, ...) do not hash the same shards again
_verified: set[tuple[str, int, int, int]] = set()


class FeatureStoreError(OSError, ValueError):
    """The feature store cannot be written or read (disk full, permissions, I/O error).
    The message is one line naming the path; ``errno`` is the underlying error's."""


class _Damaged(Exception):
    """A finished shard whose files do not match what was written (internal)."""


def _io_error(action: str, path: Path, e: OSError) -> FeatureStoreError:
    why = e.strerror or str(e) or type(e).__name__
    hint = "; free space on that disk or use another store folder" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    err = FeatureStoreError(f"feature store: cannot {action} {path}: {why}{hint}")
    err.errno = e.errno
    return err


def text_key(prompt: Prompt, response: str) -> bytes:
    h = hashlib.sha256()
    h.update(prompt_key(prompt).encode("utf-8"))
    h.update(b"\x00")
    h.update(response.encode("utf-8", errors="surrogatepass"))
    return h.digest()


def _check_store_dtype(store_dtype: str) -> np.dtype:
    if store_dtype not in STORE_DTYPES:
        raise ValueError(f"store_dtype must be one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
    return STORE_DTYPES[store_dtype]


def encode_features(x: np.ndarray, store_dtype: str) -> np.ndarray:
    """float32 features in the storage dtype (bfloat16: round to nearest even, as raw uint16 bits)."""
    _check_store_dtype(store_dtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if store_dtype == "bfloat16":
        import torch  # numpy has no bfloat16; torch rounds (to nearest even) and handles NaN/inf

        return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return x.astype(STORE_DTYPES[store_dtype], copy=False)


def decode_features(a: np.ndarray, store_dtype: str) -> np.ndarray:
    """Stored rows back to float32 (a new array; exact for every storage dtype)."""
    if store_dtype == "bfloat16":
        return (np.asarray(a, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.array(a, dtype=np.float32)


class StoredFeatures:
    """[n, d] float32 features of one part (``reward`` or ``prompt``) in input order, read from
    the store's shards when asked: indexing (an int, a slice, an index or boolean array)
    returns a float32 array of just those rows; :meth:`blocks` iterates the rows in blocks;
    ``np.asarray`` materialises everything. Each read maps the shards it needs and unmaps them
    afterwards, so resident memory is the rows requested, not the store (a long-lived
    ``np.memmap`` would keep every page it ever touched resident)."""

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, store: "FeatureStore", part: str, stems: list[str], shard: np.ndarray, row: np.ndarray, d: int) -> None:
        self._store, self._part_name, self._stems = store, part, stems
        self._shard, self._row = shard, row  # per output row: index into stems, row in that shard
        self.shape = (len(shard), int(d))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"StoredFeatures({self._part_name}, shape={self.shape}, {self._store.store_dtype} in {len(self._stems)} "
                f"shard(s) of {self._store.dir})")

    def _take(self, sel: np.ndarray) -> np.ndarray:
        """Rows ``sel`` (output positions), one mapping per shard touched; raises ``_Damaged``."""
        out = np.empty((len(sel), self.shape[1]), np.float32)
        if not len(sel):
            return out
        sh, rw = self._shard[sel], self._row[sel]
        order = np.lexsort((rw, sh))  # by shard, then by row: sequential reads
        cuts = np.flatnonzero(np.diff(sh[order])) + 1
        for grp in np.split(order, cuts):
            stem = self._stems[sh[grp[0]]]
            src = rw[grp]
            out[grp] = self._rows_of(stem, src)
        return out

    def _rows_of(self, stem: str, src: np.ndarray) -> np.ndarray:
        """Rows ``src`` (ascending) of one shard as float32; the mapping ends with the call."""
        mm = self._store.open(stem, self._part_name)
        try:
            if src[-1] - src[0] + 1 == len(src):  # a run of consecutive rows: one slice
                return decode_features(mm[src[0] : src[-1] + 1], self._store.store_dtype)
            return decode_features(mm[src], self._store.store_dtype)
        except (ValueError, IndexError) as e:
            raise _Damaged(stem, f"features do not fit ({e})") from None

    def _read(self, sel: np.ndarray) -> np.ndarray:
        try:
            return self._take(sel)
        except _Damaged as d:
            stem, why = d.args
            raise FeatureStoreError(f"feature store: shard {self._store.dir / stem}.* changed while being read ({why})") from None

    def __getitem__(self, key) -> np.ndarray:
        n = self.shape[0]
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            return self._read(np.array([i]))[0]
        if isinstance(key, slice):
            return self._read(np.arange(n)[key])
        if isinstance(key, tuple):
            raise TypeError("StoredFeatures takes row selections only (an int, a slice or an index array)")
        sel = np.asarray(key.numpy() if hasattr(key, "numpy") else key)
        if sel.dtype == bool:
            if sel.shape != (n,):
                raise IndexError(f"boolean row mask of shape {sel.shape} for {n} rows")
            sel = np.flatnonzero(sel)
        elif sel.ndim != 1 or not np.issubdtype(sel.dtype, np.integer):
            raise IndexError(f"row selection must be a 1-d integer or boolean array, got {sel.dtype} {sel.shape}")
        sel = np.where(sel < 0, sel + n, sel)
        if len(sel) and (sel.min() < 0 or sel.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        return self._read(sel.astype(np.int64, copy=False))

    def blocks(self, block_rows: int = 8192):
        """Yield ``(start, rows)`` over consecutive blocks of at most ``block_rows`` rows."""
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        for s in range(0, self.shape[0], block_rows):
            yield s, self._read(np.arange(s, min(s + block_rows, self.shape[0])))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._read(np.arange(self.shape[0]))
        return out if dtype is None else out.astype(dtype, copy=False)


@dataclass
class Features:
    """Features in input order, plus where they came from. ``reward`` and ``prompt`` are
    float32 arrays, or :class:`StoredFeatures` views with ``extract(..., stream=True)``."""

    reward: np.ndarray | StoredFeatures  # [n, d]
    prompt: np.ndarray | StoredFeatures  # [n, d]
    n_computed: int  # unique texts run through the backbone now
    n_cached: int  # unique texts served from the store
    n_truncated: int


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname())[:40] or "host"


_token: tuple[int, str] | None = None


def _writer_tag() -> str:
    """``host_pid_token`` of this process (the token tells a reused pid apart)."""
    global _token
    if _token is None or _token[0] != os.getpid():
        _token = (os.getpid(), uuid.uuid4().hex[:8])
    return f"{_host()}_{_token[0]}_{_token[1]}"


def _writer_gone(tag: str) -> bool:
    """Whether the process that owns a temporary file (``host_pid_token``, or a bare pid
    from older versions) has ended; False when that cannot be known (another host, not
    POSIX): such files are removed by age only."""
    parts = tag.split("_")
    if len(parts) == 3:
        host, pid, token = parts
    elif len(parts) == 1:
        host, pid, token = _host(), parts[0], None
    else:
        return False
    if host != _host() or not pid.isdigit() or os.name != "posix":
        return False
    if int(pid) == os.getpid():  # this process, or an earlier one that had its pid
        return token is not None and token != _writer_tag().rsplit("_", 1)[1]
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: running, under another user
        return False
    return False


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (shard checksums; model manifests use it too)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_file_manifest(folder: Path, files: Sequence[str], name: str, **fields: Any) -> None:
    """Seal ``folder``: ``name`` (JSON: ``fields`` + sha256 of each of ``files``), written last
    and atomically. Model folders and reward-tuned backbones use it: a save removes the
    manifest first and writes it after every file is in place, so a folder with a manifest
    whose hashes match is one whole save."""
    manifest = {**fields, "sha256": {n: sha256_file(folder / n) for n in files}}
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / name)


def verify_file_manifest(folder: Path, name: str, missing_hint: str) -> None:
    """Refuse ``folder`` when ``name`` is missing (a save did not finish: ``missing_hint`` says
    what to do) or when a listed file is absent or does not match its hash."""
    man = folder / name
    if not man.is_file():
        raise ValueError(f"{folder}: {name} missing: {missing_hint}")
    try:
        files = json.loads(man.read_text(encoding="utf-8"))["sha256"]
        items = list(files.items())
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise ValueError(f"{man}: damaged manifest") from None
    for fname, digest in items:
        f = folder / fname
        if not f.is_file() or sha256_file(f) != digest:
            raise ValueError(f"{f}: does not match {name} (changed or half-written since it was saved)")


def _write_tmp(path: Path, data: bytes) -> Path:
    """``data`` into a temporary sibling of ``path`` (written and fsynced); OSError passes."""
    tmp = path.with_name(path.name + _TMP + _writer_tag())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("feature store: could not remove %s (%s)", path, e.strerror or e)


class FeatureStore:
    """On-disk cache of one backbone's features (see module docstring); ``store_dtype`` is
    the dtype the features are kept in (float32, float16 or bfloat16)."""

    def __init__(self, root: str | Path, identity: str, store_dtype: str = "float32") -> None:
        self.np_dtype = _check_store_dtype(store_dtype)
        self.store_dtype = store_dtype
        if store_dtype != "float32":  # float32 keys are the identity alone: older stores stay valid
            identity = f"{identity}\nstore_dtype={store_dtype}"
        self.dir = Path(root) / hashlib.sha256(identity.encode()).hexdigest()[:24]
        self._bad: set[str] = set()  # damaged shards found by this instance (skipped even if not removable)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _io_error("create", self.dir, e) from None
        ident = self.dir / "IDENTITY"
        if not ident.exists():
            try:
                ident.write_text(identity + "\n", encoding="utf-8")
            except OSError as e:
                _remove(ident)
                raise _io_error("write", ident, e) from None

    def _part(self, stem: str, part: str) -> Path:
        return self.dir / f"{stem}.{part}"

    # ------------------------------------------------------------------ hygiene
    def clean(self) -> list[Path]:
        """Remove temporary files of writers that are gone (or untouched for
        :data:`STALE_TMP_S`) and parts of shards without a keys file older than
        :data:`STALE_ORPHAN_S`; return what was removed."""
        now = time.time()
        removed: list[Path] = []
        try:
            entries = list(self.dir.iterdir())
        except OSError as e:
            raise _io_error("read", self.dir, e) from None
        finished = {f.name[: -len(".keys.npy")] for f in entries if f.name.startswith("shard-") and f.name.endswith(".keys.npy")}
        for f in entries:
            name = f.name
            if not name.startswith("shard-"):
                continue
            try:
                age = now - f.stat().st_mtime
            except OSError:
                continue
            if _TMP in name:
                stale = _writer_gone(name.rsplit(_TMP, 1)[1]) or age > STALE_TMP_S
            else:
                stem, _, part = name.partition(".")
                stale = part in PARTS and stem not in finished and age > STALE_ORPHAN_S
            if stale:
                _remove(f)
                if not f.exists():
                    removed.append(f)
        if removed:
            log.info("feature store: removed %d temporary/unfinished shard file(s) left by earlier runs in %s", len(removed), self.dir)
        return removed

    def _discard(self, stem: str, why: str) -> None:
        """A damaged shard: warn (naming it), remove it (keys file first), never use it."""
        self._bad.add(stem)
        log.warning("feature store: damaged shard %s.* (%s); removed, its features will be computed again", self.dir / stem, why)
        for part in reversed(PARTS):  # keys first: an interrupted removal leaves an unfinished shard
            _remove(self._part(stem, part))

    # ------------------------------------------------------------------ reading
    def _sums(self, stem: str) -> dict | None:
        path = self._part(stem, "sums.json")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None  # a shard from before checksums were recorded
        except OSError as e:
            raise _io_error("read", path, e) from None
        try:
            sums = json.loads(raw)
            files = sums["files"]
            for part in ("reward.npy", "prompt.npy", "keys.npy"):
                int(files[part]["size"]), str(files[part]["sha256"])
            int(sums["rows"])
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise _Damaged(f"unreadable {path.name} ({type(e).__name__})") from None
        return sums

    def _keys(self, stem: str) -> np.ndarray | None:
        """The keys of a finished shard after the cheap checks; None if it vanished."""
        kf = self._part(stem, "keys.npy")
        try:
            data = kf.read_bytes()
        except FileNotFoundError:
            return None  # removed meanwhile (by another process)
        except OSError as e:
            raise _io_error("read", kf, e) from None
        sums = self._sums(stem)
        if sums is not None:
            files = sums["files"]
            if len(data) != files["keys.npy"]["size"] or hashlib.sha256(data).hexdigest() != files["keys.npy"]["sha256"]:
                raise _Damaged("keys.npy does not match its recorded checksum")
            for part in ("reward.npy", "prompt.npy"):
                p = self._part(stem, part)
                try:
                    size = p.stat().st_size
                except FileNotFoundError:
                    raise _Damaged(f"{part} is missing") from None
                if size != files[part]["size"]:
                    raise _Damaged(f"{part} is {size} bytes, {files[part]['size']} were written")
        try:
            keys = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - numpy raises several types for damaged files
            raise _Damaged(f"keys.npy unreadable ({type(e).__name__})") from None
        if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != 32:
            raise _Damaged(f"keys.npy holds {keys.dtype} {keys.shape}, expected uint8 [n, 32]")
        if sums is not None:
            if keys.shape[0] != sums["rows"]:
                raise _Damaged(f"keys.npy has {keys.shape[0]} rows, {sums['rows']} were written")
        else:  # no checksums: check that the features have the shape the keys promise
            for part in ("reward.npy", "prompt.npy"):
                try:
                    arr = np.load(self._part(stem, part), mmap_mode="r", allow_pickle=False)
                except FileNotFoundError:
                    raise _Damaged(f"{part} is missing") from None
                except Exception as e:  # noqa: BLE001
                    raise _Damaged(f"{part} unreadable ({type(e).__name__})") from None
                if arr.ndim != 2 or arr.shape[0] != keys.shape[0] or arr.dtype != self.np_dtype:
                    raise _Damaged(f"{part} holds {arr.dtype} {arr.shape}, expected {self.np_dtype} [{keys.shape[0]}, d]")
        return keys

    def index(self) -> dict[bytes, tuple[str, int]]:
        """key -> (shard stem, row) over finished shards that pass the cheap checks
        (damaged ones are discarded: see :meth:`_discard`)."""
        idx: dict[bytes, tuple[str, int]] = {}
        try:
            keyfiles = sorted(self.dir.glob("shard-*.keys.npy"))
        except OSError as e:
            raise _io_error("read", self.dir, e) from None
        for kf in keyfiles:
            stem = kf.name[: -len(".keys.npy")]
            if stem in self._bad:
                continue
            try:
                keys = self._keys(stem)
            except _Damaged as d:
                self._discard(stem, str(d))
                continue
            if keys is None:
                continue
            for row, k in enumerate(keys):
                idx.setdefault(k.tobytes(), (stem, row))
        return idx

    def verify(self, stems: Iterable[str]) -> set[str]:
        """Check the features of ``stems`` against their recorded checksums; damaged
        shards are discarded and returned."""
        bad: set[str] = set()
        for stem in sorted(set(stems)):
            if stem in self._bad:
                bad.add(stem)
                continue
            try:
                sums = self._sums(stem)
                if sums is None:
                    continue
                for part in ("reward.npy", "prompt.npy"):
                    path = self._part(stem, part)
                    try:
                        st = path.stat()
                        seen = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
                        if seen in _verified:
                            continue
                        digest = sha256_file(path)
                    except FileNotFoundError:
                        raise _Damaged(f"{part} is missing") from None
                    except OSError as e:
                        raise _io_error("read", path, e) from None
                    if digest != sums["files"][part]["sha256"]:
                        raise _Damaged(f"{part} does not match its recorded checksum")
                    _verified.add(seen)
            except _Damaged as d:
                self._discard(stem, str(d))
                bad.add(stem)
        return bad

    # ------------------------------------------------------------------ writing
    def write_shard(self, keys: list[bytes], reward: np.ndarray, prompt: np.ndarray, rank: int = 0,
                    writer: dict | None = None) -> str:
        """Write one finished shard (see module docstring); returns its stem. ``writer`` (rank,
        world size, host, device of the process that computed it) is recorded in its
        ``sums.json``, so a multi-process store says who wrote what. Raises
        :class:`FeatureStoreError` (after removing what it wrote) when the disk refuses."""
        n = len(keys)
        if reward.shape[0] != n or prompt.shape[0] != n or any(len(k) != 32 for k in keys):
            raise ValueError(f"write_shard: {n} keys (32 bytes each) for {reward.shape[0]} reward and {prompt.shape[0]} prompt rows")
        stem = f"shard-{rank:03d}-{uuid.uuid4().hex[:12]}"
        # raw digests as uint8 rows ('S32' would strip trailing zero bytes)
        blobs = {
            "reward.npy": _npy_bytes(encode_features(reward, self.store_dtype)),
            "prompt.npy": _npy_bytes(encode_features(prompt, self.store_dtype)),
            "keys.npy": _npy_bytes(np.frombuffer(b"".join(keys), np.uint8).reshape(-1, 32)),
        }
        sums = {"format": _SUMS_FORMAT, "rows": n, "dtype": self.store_dtype,
                "files": {p: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for p, b in blobs.items()}}
        if writer is not None:
            sums["writer"] = writer
        blobs["sums.json"] = json.dumps(sums, indent=1).encode()
        tmps: list[tuple[Path, Path]] = []
        current = self.dir
        try:
            for part in PARTS:
                current = self._part(stem, part)
                tmps.append((_write_tmp(current, blobs[part]), current))
            for tmp, final in tmps:  # keys last: the commit
                current = final
                os.replace(tmp, final)
        except OSError as e:
            for part in reversed(PARTS):
                final = self._part(stem, part)
                _remove(final)
                _remove(final.with_name(final.name + _TMP + _writer_tag()))
            raise _io_error("write", current, e) from None
        _fsync_dir(self.dir)
        return stem

    def open(self, stem: str, part: str) -> np.memmap:
        """One feature file of a finished shard, memory-mapped read-only, in the storage dtype
        (:func:`decode_features` gives float32). Raises ``_Damaged`` when it no longer reads as
        the ``[rows, d]`` array of this store's dtype that was checked."""
        path = self._part(stem, f"{part}.npy")
        try:
            mm = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, EOFError, FileNotFoundError) as e:  # changed since it was checked
            raise _Damaged(stem, f"unreadable ({type(e).__name__})") from None
        except OSError as e:
            raise _io_error("read", path, e) from None
        if mm.ndim != 2 or mm.dtype != self.np_dtype:
            raise _Damaged(stem, f"{part}.npy holds {mm.dtype} {mm.shape}, expected {self.np_dtype} [n, d]")
        return mm

    def gather(self, keys: Sequence[bytes], idx: dict[bytes, tuple[str, int]], stream: bool = False):
        """(reward, prompt) features of ``keys`` in order: float32 arrays, or with ``stream``
        :class:`StoredFeatures` views that read rows on demand. Every shard involved is opened
        and its shape checked here (``_Damaged`` if it changed since :meth:`index`)."""
        stems: list[str] = []
        pos: dict[str, int] = {}
        shard = np.empty(len(keys), np.int32)
        row = np.empty(len(keys), np.int64)
        for i, k in enumerate(keys):
            stem, r = idx[k]
            j = pos.get(stem)
            if j is None:
                j = pos[stem] = len(stems)
                stems.append(stem)
            shard[i], row[i] = j, r
        if not stems:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        last = np.full(len(stems), -1, np.int64)
        np.maximum.at(last, shard, row)  # the highest row each shard must have
        d = {}
        for j, stem in enumerate(stems):
            for part in ("reward", "prompt"):
                mm = self.open(stem, part)
                rows, dim = mm.shape
                del mm
                if d.setdefault(part, dim) != dim or last[j] >= rows:
                    raise _Damaged(stem, f"{part} features of shape {(rows, dim)} do not fit")
        views = tuple(StoredFeatures(self, part, stems, shard, row, d[part]) for part in ("reward", "prompt"))
        if stream:
            return views
        return tuple(v._take(np.arange(len(keys))) for v in views)


def _dist_state():
    """(rank, world, barrier) from accelerate when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    import torch
    from accelerate import PartialState

    st = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU-only machines
    return st.process_index, st.num_processes, st.wait_for_everyone


def extract(
    backbone,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    store: str | Path | None = DEFAULT_STORE,
    batch_size: int = 32,
    shard_size: int = 1024,
    progress: bool = True,
    store_dtype: str = "float32",
    stream: bool = False,
) -> Features:
    """Reward and prompt features for aligned prompts/responses, via the store.

    ``store=None`` computes in memory without caching (used by the server and ``score``).
    ``store_dtype`` (float32, float16, bfloat16) is the dtype the store keeps; features come
    back as float32 either way. ``stream=True`` returns :class:`StoredFeatures` views (rows
    read on demand) instead of arrays, what trainers at scale iterate in blocks (without a
    store there is nothing to stream from: arrays)."""
    _check_store_dtype(store_dtype)
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise ValueError(f"response {i} is {type(r).__name__}, expected str")
    keys = [text_key(p, r) for p, r in zip(prompts, responses)]
    first: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    if store is None:
        uniq = list(first.values())
        emb = backbone.embed([prompts[i] for i in uniq], [responses[i] for i in uniq], batch_size)
        pos = {k: j for j, k in enumerate(first)}
        sel = np.array([pos[k] for k in keys], dtype=np.int64)
        return Features(emb.reward[sel], emb.prompt[sel], len(uniq), 0, emb.n_truncated)

    fs = FeatureStore(store, backbone.identity, store_dtype)
    rank, world, barrier = _dist_state()
    writer = {"rank": rank, "world_size": world, "host": _host(), "device": str(getattr(backbone, "device", "?"))}
    fs.clean()
    n_computed = n_trunc = 0
    n_cached = None
    for attempt in range(3):
        idx = fs.index()
        bad = fs.verify({idx[k][0] for k in first if k in idx})
        if bad:
            idx = {k: v for k, v in idx.items() if v[0] not in bad}
        missing = [k for k in first if k not in idx]
        if n_cached is None:
            n_cached = len(first) - len(missing)
        if world > 1:
            barrier()  # every process has its view of the store before any writes to it
        mine = missing[rank::world]
        bar = tqdm(total=len(mine), desc=f"features[{backbone.name}]", unit="text", disable=not progress or not mine)
        for s in range(0, len(mine), shard_size):
            chunk = mine[s : s + shard_size]
            rows = [first[k] for k in chunk]
            emb = backbone.embed([prompts[i] for i in rows], [responses[i] for i in rows], batch_size, bar=bar)
            n_trunc += emb.n_truncated
            fs.write_shard(chunk, emb.reward, emb.prompt, rank, writer=writer)
        bar.close()
        n_computed += len(missing)
        if world > 1:
            barrier()
        if missing:
            idx = fs.index()
        lost = [k for k in first if k not in idx]
        if lost:
            raise RuntimeError(f"{len(lost)} texts missing from the feature store after extraction: {fs.dir}")
        try:
            reward, prompt = fs.gather(keys, idx, stream=stream)
        except _Damaged as d:  # changed between the check and the read: compute it again
            stem, why = d.args
            fs._discard(stem, why)
            if world > 1 or attempt == 2:
                raise FeatureStoreError(f"feature store: shard {fs.dir / stem}.* changed while being read ({why}); it was removed, run again") from None
            continue
        return Features(reward, prompt, n_computed, n_cached, n_trunc)
    raise AssertionError("unreachable")
