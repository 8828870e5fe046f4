"""Request limits for the reward server, and the ASGI guard that enforces the body size.

Why a separate module: every limit is one number in :class:`Limits` (CLI flags map onto
it one to one), and the body-size guard has to sit *below* FastAPI -- a route handler only
sees the body after it was read whole, which is exactly what a size limit must prevent.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal

from starlette.exceptions import HTTPException

OnTooLong = Literal["truncate", "reject"]


@dataclass(frozen=True)
class Limits:
    """Everything a client can make the server spend, bounded.

    Attributes:
        max_body_bytes: request body size; larger bodies get 413 before they are read whole.
            The default, 128 MiB, takes a whole OpenRLHF rollout in one request (releases up
            to 0.8 post ``rollout_batch_size x n_samples_per_prompt`` queries at once, each
            with the prompt twice: 8192 rollouts of 1024 + 1024 tokens are ~100 MB of JSON;
            0.9 and later post one rollout per request). Lower it on a shared machine.
        max_items: pairs (``/score`` items, ``/get_reward`` queries) per request; more gets
            413. The default, 8192, is a whole OpenRLHF 0.8 rollout of 1024 prompts x 8
            samples; larger rollouts: raise it, or give OpenRLHF several server URLs (it
            splits the rollout between them).
        max_text_chars: characters per text field (a prompt counts all its messages, a
            response counts itself). The backbone truncates to its own token limit anyway;
            this bounds tokenizer work and memory per item.
        on_too_long: "truncate" (score the first ``max_text_chars`` characters and mark the
            item ``truncated``) or "reject" (a 413 item error; the whole request in strict mode).
        max_messages: chat messages per prompt.
        max_risks: risk measures per request.
        request_timeout_s: a request still waiting for the model after this long gets 503
            (its queued items are dropped, so a slow client cannot pile up work).
        max_queue_items: items waiting for the model across all requests; beyond it new
            requests get 503 with Retry-After instead of growing the queue without bound.
            At least ``max_items`` (a request of the largest size must fit); the default
            also holds the one-rollout requests of a whole OpenRLHF 0.9+ rollout in flight.
        body_timeout_s: the whole request body must arrive within this many seconds of the
            handler starting to read it, else 408 and the connection is closed (a slow or
            stalled upload cannot hold a connection and a handler open).
        idle_timeout_s: a keep-alive connection with no request in flight is closed after
            this long (uvicorn's ``timeout_keep_alive``).
        header_timeout_s: a connection must deliver a complete request line and headers
            within this many seconds of opening (or of its previous response); else it is
            closed. A deadline, not an idle timer: bytes trickled one at a time do not
            extend it (see :mod:`distrm.serve.protocol`).
    """

    max_body_bytes: int = 128 * 1024 * 1024
    max_items: int = 8192
    max_text_chars: int = 32_768
    on_too_long: OnTooLong = "truncate"
    max_messages: int = 256
    max_risks: int = 16
    request_timeout_s: float = field(default=60.0, metadata={"flag": "--timeout"})
    max_queue_items: int = 16384
    body_timeout_s: float = field(default=30.0, metadata={"flag": "--body-timeout"})
    idle_timeout_s: float = field(default=5.0, metadata={"flag": "--idle-timeout"})
    header_timeout_s: float = field(default=10.0, metadata={"flag": "--header-timeout"})

    def __post_init__(self) -> None:
        if self.on_too_long not in ("truncate", "reject"):
            raise ValueError(f"on_too_long must be 'truncate' or 'reject', got {self.on_too_long!r}")
        for name in ("max_body_bytes", "max_items", "max_text_chars", "max_messages", "max_risks", "max_queue_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("request_timeout_s", "body_timeout_s", "idle_timeout_s", "header_timeout_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if self.max_queue_items < self.max_items:
            raise ValueError(f"max_queue_items ({self.max_queue_items}) must be >= max_items ({self.max_items}): "
                             "a request of max_items could never be queued")


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class BodySizeLimit:
    """Pure ASGI middleware: 413 for bodies over ``max_bytes``, 408 for bodies that do not
    arrive within ``timeout_s``.

    Checks Content-Length up front, and counts the bytes of chunked / lying bodies as they
    stream in, so an oversized body is never buffered whole. The read timeout runs from the
    first read of the body to its last chunk; once the body is complete, ``receive`` is
    passed through untouched (it then only reports a disconnect)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                    return
                if n > self.max_bytes:
                    await _send_json(send, 413, {"detail": f"request body of {n} bytes exceeds the limit of {self.max_bytes}"})
                    return
        seen = 0
        body_done = False
        deadline: float | None = None

        async def counting_receive() -> dict:
            nonlocal seen, body_done, deadline
            if body_done or self.timeout_s is None:
                message = await receive()
            else:
                if deadline is None:
                    deadline = time.monotonic() + self.timeout_s
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    body_done = True
                    raise HTTPException(408, f"request body not received within {self.timeout_s:g} s",
                                        headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                if not message.get("more_body", False):
                    body_done = True
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # raised inside the route's body read: Starlette's exception layer turns
                    # it into a 413 response (no 500, nothing buffered beyond the limit)
                    raise HTTPException(413, f"request body exceeds the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, counting_receive, send)


async def _send_json(send: Callable[[dict], Awaitable[None]], status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})
