"""The feature store: frozen-backbone features computed once, cached on disk.

Layout: ``<root>/<sha(backbone identity)>/`` holds shards; each shard is four files. All
four are written to temporary files first (``<name>.tmp-<host>_<pid>``), then renamed in
this order, the ``.keys.npy`` last, so a shard without its keys file is an unfinished one
and is ignored:

    shard-<rank>-<uuid>.reward.npy   [n, d] float32   reward features (prompt + response)
    shard-<rank>-<uuid>.prompt.npy   [n, d] float32   prompt features of the same rows
    shard-<rank>-<uuid>.sums.json    size and sha256 of the three .npy files
    shard-<rank>-<uuid>.keys.npy     [n, 32] uint8     sha256 of (prompt, response)

Keys hash the canonical prompt and the response text, so identical texts (the same
prompt under chosen and rejected, duplicates across datasets) are computed once. A killed
run resumes: finished shards are found by their keys files and only missing texts are
computed. Reads are memory-mapped. Under ``accelerate launch`` each process computes its
slice of the missing texts into its own shards; after a barrier every process reads all.
On a CPU-only machine launch with ``accelerate launch --multi_gpu --num_processes 2 ...``
(accelerate's ``--cpu`` flag starts a single process); the store then uses gloo.

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
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from distrm.data.records import Prompt, prompt_key

DEFAULT_STORE = Path(".cache/distrm/features")
log = logging.getLogger(__name__)

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


@dataclass
class Features:
    """Features in input order, plus where they came from."""

    reward: np.ndarray  # [n, d]
    prompt: np.ndarray  # [n, d]
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
    """On-disk cache of one backbone's features (see module docstring)."""

    def __init__(self, root: str | Path, identity: str) -> None:
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
                if arr.ndim != 2 or arr.shape[0] != keys.shape[0] or arr.dtype != np.float32:
                    raise _Damaged(f"{part} holds {arr.dtype} {arr.shape}, expected float32 [{keys.shape[0]}, d]")
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
    def write_shard(self, keys: list[bytes], reward: np.ndarray, prompt: np.ndarray, rank: int = 0) -> str:
        """Write one finished shard (see module docstring); returns its stem. Raises
        :class:`FeatureStoreError` (after removing what it wrote) when the disk refuses."""
        n = len(keys)
        if reward.shape[0] != n or prompt.shape[0] != n or any(len(k) != 32 for k in keys):
            raise ValueError(f"write_shard: {n} keys (32 bytes each) for {reward.shape[0]} reward and {prompt.shape[0]} prompt rows")
        stem = f"shard-{rank:03d}-{uuid.uuid4().hex[:12]}"
        # raw digests as uint8 rows ('S32' would strip trailing zero bytes)
        blobs = {
            "reward.npy": _npy_bytes(np.ascontiguousarray(reward, dtype=np.float32)),
            "prompt.npy": _npy_bytes(np.ascontiguousarray(prompt, dtype=np.float32)),
            "keys.npy": _npy_bytes(np.frombuffer(b"".join(keys), np.uint8).reshape(-1, 32)),
        }
        sums = {"format": _SUMS_FORMAT, "rows": n, "files": {p: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for p, b in blobs.items()}}
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

    def gather(self, keys: Sequence[bytes], idx: dict[bytes, tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            stem, row = idx[k]
            by_shard.setdefault(stem, []).append((i, row))
        reward = prompt = None
        for stem, pairs in by_shard.items():
            try:
                r = np.load(self._part(stem, "reward.npy"), mmap_mode="r", allow_pickle=False)
                p = np.load(self._part(stem, "prompt.npy"), mmap_mode="r", allow_pickle=False)
            except (ValueError, EOFError, FileNotFoundError) as e:  # changed since it was checked
                raise _Damaged(stem, f"unreadable ({type(e).__name__})") from None
            except OSError as e:
                raise _io_error("read", self._part(stem, "reward.npy"), e) from None
            if reward is None:
                reward = np.empty((len(keys), r.shape[1]), np.float32)
                prompt = np.empty((len(keys), p.shape[1]), np.float32)
            dst = np.array([a for a, _ in pairs])
            src = np.array([b for _, b in pairs])
            try:
                reward[dst] = r[src]
                prompt[dst] = p[src]
            except (ValueError, IndexError) as e:
                raise _Damaged(stem, f"features do not fit ({e})") from None
        if reward is None:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        return reward, prompt


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
) -> Features:
    """Reward and prompt features for aligned prompts/responses, via the store.

    ``store=None`` computes in memory without caching (used by the server and ``score``)."""
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

    fs = FeatureStore(store, backbone.identity)
    rank, world, barrier = _dist_state()
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
            fs.write_shard(chunk, emb.reward, emb.prompt, rank)
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
            reward, prompt = fs.gather(keys, idx)
        except _Damaged as d:  # changed between the check and the read: compute it again
            stem, why = d.args
            fs._discard(stem, why)
            if world > 1 or attempt == 2:
                raise FeatureStoreError(f"feature store: shard {fs.dir / stem}.* changed while being read ({why}); it was removed, run again") from None
            continue
        return Features(reward, prompt, n_computed, n_cached, n_trunc)
    raise AssertionError("unreachable")
