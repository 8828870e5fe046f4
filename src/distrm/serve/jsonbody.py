"""Parsing a request's JSON body without stalling the server.

Why not ``json.loads`` on the event loop, or in a thread: CPython's JSON decoder is C code
that holds the GIL for the whole document, so a thread does not help, and a body at the
size limit (128 MiB by default) full of escapes takes well over a second to decode -- during
which ``/health`` and every other client wait. Small bodies (most traffic) are decoded in
place, where a decode costs milliseconds. A large one is decoded by a short-lived child
interpreter (``python -I -S``: the standard library only, started in tens of ms) that
sends the result back in ``marshal`` format: turning that back into objects is a copy,
not a parse, so the event loop is busy for a small fraction of the decode time. The
child's output comes from ``json.loads`` of our own decoder (plain dicts, lists, strings,
numbers), so ``marshal`` only ever reads data this module wrote; no pickle is involved.

Errors read the same either way: a body that is not JSON, not UTF-8, nested too deeply or
holding ``NaN``/``Infinity`` raises :class:`BadJSON` with the reason.
"""

from __future__ import annotations

import asyncio
import json
import marshal
import sys
from typing import Any

IN_PROCESS_MAX_BYTES = 4 * 1024 * 1024  # bodies up to this decode on the event loop

_CHILD = r"""
import json, marshal, sys
def bad(c):
    raise ValueError(f"{c} is not allowed (non-finite number)")
data = sys.stdin.buffer.read()
try:
    out = (0, json.loads(data, parse_constant=bad))
except RecursionError:
    out = (1, "request body is nested too deeply")
except UnicodeDecodeError as e:
    out = (1, f"request body is not valid UTF-8: {e.reason} at byte {e.start}")
except ValueError as e:
    out = (1, f"request body is not valid JSON: {e}")
sys.stdout.buffer.write(marshal.dumps(out))
"""


class BadJSON(ValueError):
    """The body is not a JSON document the server accepts; the message says why."""


def _reject_constant(c: str) -> Any:
    raise ValueError(f"{c} is not allowed (non-finite number)")


def loads(body: bytes) -> Any:
    """Decode ``body`` here (for small bodies); :class:`BadJSON` on any failure."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise BadJSON(f"request body is not valid UTF-8: {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise BadJSON("request body is nested too deeply") from None
    except ValueError as e:
        raise BadJSON(f"request body is not valid JSON: {e}") from None


async def parse(body: bytes, in_process_max: int = IN_PROCESS_MAX_BYTES) -> Any:
    """The JSON document in ``body``, decoded off the event loop when it is large (see the
    module docstring)."""
    if len(body) <= in_process_max:
        return loads(body)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", "-c", _CHILD,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate(body)
    except BaseException:  # the request was cancelled (client gone): do not leave the child running
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0 or not out:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"JSON decoder process failed (exit {proc.returncode}): {tail[0]}")
    status, value = marshal.loads(out)
    if status:
        raise BadJSON(value)
    return value
