"""Feature-store faults, for real where the machine allows: a full disk (a patched write
call, and a real tiny tmpfs when a mount namespace can be made) gives one line naming the
file and leaves no partial shard; files left by killed writers are cleaned on the next
run; a damaged shard is detected, named, removed and recomputed, so the features equal a
clean run's. The backbone is the real MiniLM (``minilm_backbone``)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from distrm.features.store import PARTS, FeatureStore, FeatureStoreError, extract

SRC = str(Path(__file__).parents[1] / "src")
PROMPTS = [f"Question {i}: what is {i} plus {i}?" for i in range(12)]
RESPONSES = [f"It is {2 * i}." for i in range(12)]
SHARD = 4  # 3 shards


def run(bb, store, **kw):
    return extract(bb, PROMPTS, RESPONSES, store=store, batch_size=SHARD, shard_size=SHARD, progress=False, **kw)


@pytest.fixture(scope="module")
def clean(minilm_backbone, tmp_path_factory):
    """Features of an undisturbed run (the reference every fault must end up equal to)."""
    return run(minilm_backbone, tmp_path_factory.mktemp("clean"))


def store_dir(bb, root) -> Path:
    return FeatureStore(root, bb.identity).dir


def shard_files(d: Path) -> dict[str, list[str]]:
    """stem -> parts present; temporary files under the key 'tmp'."""
    out: dict[str, list[str]] = {}
    for f in sorted(d.iterdir()):
        if f.name == "IDENTITY":
            continue
        if ".tmp-" in f.name:
            out.setdefault("tmp", []).append(f.name)
            continue
        stem, _, part = f.name.partition(".")
        out.setdefault(stem, []).append(part)
    return out


def assert_same(f, ref):
    np.testing.assert_allclose(f.reward, ref.reward, rtol=0, atol=1e-6)
    np.testing.assert_allclose(f.prompt, ref.prompt, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ disk full
def _enospc_after(n_ok: int, under: Path, monkeypatch):
    """Patch os.write: writes to files under ``under`` fail with ENOSPC after ``n_ok``
    succeeded (other fds, e.g. pytest's, are untouched)."""
    real = os.write
    calls = {"n": 0}

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(str(under)):
            calls["n"] += 1
            if calls["n"] > n_ok:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to tell the store's writes apart")


@needs_proc
def test_disk_full_is_one_line_and_leaves_no_partial_shard(minilm_backbone, clean, tmp_path, monkeypatch):
    store = tmp_path / "store"
    d = store_dir(minilm_backbone, store)
    # the first shard's 4 files go through, the 2nd shard fails at its prompt features
    _enospc_after(len(PARTS) + 1, d, monkeypatch)
    with pytest.raises(FeatureStoreError) as e:
        run(minilm_backbone, store)
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and e.value.errno == errno.ENOSPC
    assert "\n" not in msg and msg.startswith(f"feature store: cannot write {d}/shard-000-") and ".prompt.npy" in msg
    assert "No space left on device" in msg and "free space" in msg
    files = shard_files(d)
    assert list(files.values()) == [sorted(PARTS)], files  # the finished shard, nothing else
    monkeypatch.undo()
    f = run(minilm_backbone, store)  # space again: resumes after the finished shard
    assert f.n_cached == SHARD and f.n_computed == len(PROMPTS) - SHARD
    assert_same(f, clean)


@needs_proc
def test_disk_full_through_the_cli_is_one_line(minilm_backbone, tmp_path, monkeypatch, capsys):
    from distrm.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": r, "rejected": "no"}) + "\n" for p, r in zip(PROMPTS, RESPONSES)))
    store = tmp_path / "store"
    _enospc_after(0, store, monkeypatch)
    root = logging.getLogger()
    saved, root.handlers = root.handlers[:], []
    try:
        rc = main(["extract", "--data", str(data), "--store", str(store), "--max-length", "64", "--device", "cpu", "--no-progress"])
    finally:
        root.handlers = saved
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line = [ln for ln in err.splitlines() if "error" in ln]
    assert len(line) == 1 and "cannot write" in line[0] and str(store) in line[0] and "No space left on device" in line[0], err
    assert not [p for p in store.rglob("shard-*")], "nothing partial left behind"


TINY_FS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from distrm.features.store import FeatureStore, FeatureStoreError
    fs = FeatureStore(sys.argv[1], "tiny-fs-test")
    rng = np.random.default_rng(0)
    n, err = 0, None
    try:
        while n < 1000:
            keys = [rng.bytes(32) for _ in range(16)]
            fs.write_shard(keys, rng.random((16, 384), dtype=np.float32), rng.random((16, 384), dtype=np.float32))
            n += 1
    except FeatureStoreError as e:
        err = {"msg": str(e), "errno": e.errno, "is_value_error": isinstance(e, ValueError)}
    left = sorted(p.name for p in fs.dir.iterdir())
    print(json.dumps({"shards": n, "err": err, "files": left, "index": len(fs.index())}))
    """
)


def test_disk_full_on_a_real_tiny_filesystem(tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None or sys.platform != "linux":
        pytest.skip("needs util-linux unshare on Linux")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    probe = subprocess.run([unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size=256k tmpfs {mnt}"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.decode(errors='replace').strip()[:200]}")
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = f'mount -t tmpfs -o size=256k tmpfs "{mnt}" && exec "{sys.executable}" -c "$0" "{mnt}/store"'
    out = subprocess.run([unshare, "-rm", "sh", "-c", cmd, TINY_FS_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["err"] is not None, "the 256 KiB filesystem must fill up"
    assert res["err"]["errno"] == errno.ENOSPC and res["err"]["is_value_error"]
    assert "\n" not in res["err"]["msg"] and f"{mnt}/store/" in res["err"]["msg"] and "No space left on device" in res["err"]["msg"]
    assert 1 <= res["shards"] < 1000
    assert not [f for f in res["files"] if ".tmp-" in f], res["files"]
    assert len(res["files"]) == 1 + len(PARTS) * res["shards"]  # IDENTITY + finished shards only
    assert res["index"] == 16 * res["shards"]


# ------------------------------------------------------------------ killed writers
KILLED_WRITER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from distrm.features.store import FeatureStore
    fs = FeatureStore(sys.argv[1], sys.argv[2])
    real, done = os.replace, []
    def replace(a, b):  # SIGKILL-like death after the features are renamed, before sums + keys
        if len(done) == 2:
            os._exit(9)
        done.append(b)
        real(a, b)
    os.replace = replace
    rng = np.random.default_rng(0)
    fs.write_shard([rng.bytes(32) for _ in range(3)], rng.random((3, 8), dtype=np.float32), rng.random((3, 8), dtype=np.float32))
    """
)


def test_orphans_and_temporaries_cleaned_on_next_run(minilm_backbone, clean, tmp_path):
    store = tmp_path / "store"
    d = store_dir(minilm_backbone, store)
    run(minilm_backbone, store)
    finished = {k for k in shard_files(d)}
    out = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(store), minilm_backbone.identity], env={**os.environ, "PYTHONPATH": SRC},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 9, out.stderr[-2000:]
    left = shard_files(d)
    (orphan,) = set(left) - finished - {"tmp"}
    assert sorted(left[orphan]) == ["prompt.npy", "reward.npy"] and len(left["tmp"]) == 2  # sums + keys temporaries
    # a live writer's temporary file and a just-renamed part are not touched
    from distrm.features.store import _writer_tag

    live_tmp = d / f"shard-000-live.reward.npy.tmp-{_writer_tag()}"
    live_tmp.write_bytes(b"being written")
    young = d / "shard-000-young.reward.npy"
    young.write_bytes(b"renamed a moment ago")
    old = time.time() - 3600
    for name in left[orphan]:
        os.utime(d / f"{orphan}.{name}", (old, old))  # killed an hour ago
    f = run(minilm_backbone, store)
    assert f.n_computed == 0 and f.n_cached == len(PROMPTS)
    assert_same(f, clean)
    now = shard_files(d)
    assert orphan not in now, "orphaned parts of the killed shard are removed"
    assert now.get("tmp") == [live_tmp.name], "dead writer's temporaries removed, the live one kept"
    assert "shard-000-young" in now
    assert set(now) - {"tmp", "shard-000-young"} == finished


# ------------------------------------------------------------------ damaged shards
def _flip(path: Path, at: int) -> None:
    b = bytearray(path.read_bytes())
    b[at] ^= 0xFF
    path.write_bytes(bytes(b))


def _damage(kind: str, d: Path, stem: str) -> None:
    p = lambda part: d / f"{stem}.{part}"  # noqa: E731
    if kind == "flipped feature bytes":
        _flip(p("reward.npy"), p("reward.npy").stat().st_size - 10)
    elif kind == "truncated prompt features":
        p("prompt.npy").write_bytes(p("prompt.npy").read_bytes()[:200])
    elif kind == "flipped key byte":
        _flip(p("keys.npy"), p("keys.npy").stat().st_size - 1)
    elif kind == "garbage checksums file":
        p("sums.json").write_text("{not json")
    elif kind == "missing feature file":
        p("reward.npy").unlink()
    elif kind == "keys file overwritten with junk":
        p("keys.npy").write_bytes(b"\x00" * 50)
    elif kind == "old shard without checksums, truncated":
        p("sums.json").unlink()
        p("reward.npy").write_bytes(p("reward.npy").read_bytes()[:300])
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["flipped feature bytes", "truncated prompt features", "flipped key byte", "garbage checksums file", "missing feature file",
     "keys file overwritten with junk", "old shard without checksums, truncated"],
)  # fmt: skip
def test_damaged_shard_detected_named_and_recomputed(minilm_backbone, clean, tmp_path, caplog, kind):
    store = tmp_path / "store"
    d = store_dir(minilm_backbone, store)
    run(minilm_backbone, store)
    stems = sorted(k for k in shard_files(d) if k != "tmp")
    assert len(stems) == len(PROMPTS) // SHARD
    victim = stems[1]
    _damage(kind, d, victim)
    with caplog.at_level(logging.WARNING, logger="distrm.features.store"):
        f = run(minilm_backbone, store)
    warned = [r.getMessage() for r in caplog.records if "damaged shard" in r.getMessage()]
    assert len(warned) == 1 and str(d / victim) in warned[0], warned
    assert f.n_computed == SHARD and f.n_cached == len(PROMPTS) - SHARD
    assert_same(f, clean)
    assert victim not in shard_files(d), "the damaged shard is removed"
    again = run(minilm_backbone, store)  # the store is whole again
    assert again.n_computed == 0
    assert_same(again, clean)


def test_read_error_is_one_line_and_removes_nothing(minilm_backbone, tmp_path, monkeypatch):
    store = tmp_path / "store"
    d = store_dir(minilm_backbone, store)
    run(minilm_backbone, store)
    before = shard_files(d)
    real = Path.read_bytes

    def read_bytes(self):
        if self.name.endswith(".keys.npy"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(FeatureStoreError, match=rf"^feature store: cannot read {d}/shard-\S+\.keys\.npy: Permission denied$"):
        run(minilm_backbone, store)
    monkeypatch.undo()
    assert shard_files(d) == before, "an unreadable shard is not a damaged one: nothing removed"


def test_store_that_cannot_be_created_is_one_line(minilm_backbone, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(FeatureStoreError, match=rf"^feature store: cannot create {blocker}/\w+: "):
        run(minilm_backbone, blocker)


def test_shards_from_before_checksums_are_still_used(minilm_backbone, clean, tmp_path):
    store = tmp_path / "store"
    d = store_dir(minilm_backbone, store)
    run(minilm_backbone, store)
    for s in d.glob("shard-*.sums.json"):
        s.unlink()  # the layout older versions wrote: reward, prompt, keys
    f = run(minilm_backbone, store)
    assert f.n_computed == 0 and f.n_cached == len(PROMPTS)
    assert_same(f, clean)
