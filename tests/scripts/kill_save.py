"""Kill ``save_pretrained`` (SIGKILL) at every step of a save into an existing model folder.

Usage: ``python kill_save.py OLD_FOLDER NEW_FOLDER WORKDIR [--include-backbone]``

Loads the model saved in NEW_FOLDER, then for k = 1, 2, ...: copies OLD_FOLDER to
``WORKDIR/k/model`` and forks a child that saves the new model into that copy with every
filesystem mutation instrumented; the child SIGKILLs itself at the k-th kill point. Each
mutation (open for writing, safetensors write, replace/rename, unlink/remove, mkdir/rmdir)
gives two kill points: just before it, and just after it -- for a file write, with the file
truncated to half its length first (what a kill in the middle of the write leaves). It
stops at the first k the save completes without reaching, and prints one JSON object:
``{"points": N, "runs": [{"k": k, "folder": ..., "killed": bool, "at": "what"}, ...]}``.
The caller loads and judges each folder.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from distrm.models.base import RewardModel  # noqa: E402
import distrm.models.base as base  # noqa: E402

_kill = os.kill


class Points:
    def __init__(self, kill_at: int, report: Path) -> None:
        self.kill_at, self.n, self.report = kill_at, 0, report

    def hit(self, what: str, truncate: str | os.PathLike | int | None = None) -> None:
        self.n += 1
        if self.n == self.kill_at:
            if truncate is not None:
                try:
                    size = os.stat(truncate).st_size
                    os.truncate(truncate, size // 2)
                except OSError:
                    pass
            _raw_write(self.report, what)  # os.open/os.write: not instrumented
            _kill(os.getpid(), signal.SIGKILL)


class WriteProxy:
    """A file opened for writing; closing it is a kill point (with the file half-truncated)."""

    def __init__(self, f, path, points: Points) -> None:
        self._f, self._path, self._points = f, path, points

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __iter__(self):
        return iter(self._f)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
            self._points.hit(f"after writing {self._path}", truncate=self._path)


def instrument(points: Points) -> None:
    real_open = io.open

    def open_(file, mode="r", *a, **kw):
        if isinstance(file, int) or not any(c in mode for c in "wax+"):
            return real_open(file, mode, *a, **kw)
        points.hit(f"before opening {file} for writing")
        return WriteProxy(real_open(file, mode, *a, **kw), file, points)

    io.open = open_
    builtins.open = open_

    def wrap(mod, name):
        real = getattr(mod, name)

        def f(*a, **kw):
            points.hit(f"before {name}{a[:2]}")
            out = real(*a, **kw)
            points.hit(f"after {name}{a[:2]}")
            return out

        setattr(mod, name, f)

    for name in ("replace", "rename", "unlink", "remove", "rmdir", "mkdir"):
        wrap(os, name)
    real_save = base.save_file

    def save_file(tensors, filename, *a, **kw):
        points.hit(f"before save_file {filename}")
        real_save(tensors, filename, *a, **kw)
        points.hit(f"after save_file {filename} (half-written)", truncate=filename)

    base.save_file = save_file


def _raw_write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def main() -> None:
    old, new, work = (Path(a) for a in sys.argv[1:4])
    include_backbone = "--include-backbone" in sys.argv
    model = RewardModel.from_pretrained(new)
    runs = []
    k = 0
    while True:
        k += 1
        folder = work / str(k) / "model"
        shutil.copytree(old, folder, symlinks=True)
        report = work / str(k) / "killed_at.txt"
        pid = os.fork()
        if pid == 0:  # the child: save with every mutation a kill point
            code = 0
            try:
                instrument(Points(k, report))
                model.save_pretrained(folder, include_backbone=include_backbone)
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if not killed and not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            raise SystemExit(f"save at k={k} failed without being killed (status {status})")
        runs.append({"k": k, "folder": str(folder), "killed": killed,
                     "at": report.read_text() if killed and report.exists() else None})
        if not killed:
            break
        if k > 500:
            raise SystemExit("more than 500 kill points: runaway")
    print(json.dumps({"points": k - 1, "runs": runs}))


if __name__ == "__main__":
    main()
