"""The server's HTTP connection handling: uvicorn's h11 protocol with a deadline for the
request head, and the one place that builds the uvicorn configuration.

Why a subclass: uvicorn arms its keep-alive timer only *after* a response has been sent,
and cancels it on every byte received. So a connection that never sends a request, or one
that sends its request line and headers a byte at a time, is held open for ever -- each one
costs a socket and a protocol object, and a few thousand of them exhaust the process's file
descriptors (the classic slowloris). Bodies are already bounded by
:class:`~distrm.serve.limits.BodySizeLimit` (408 after ``body_timeout_s``); the gap is
everything before the ASGI app sees the request. :class:`BoundedH11Protocol` closes a
connection whose request head is not complete within ``header_timeout_s`` of the
connection opening or of the previous response finishing. A deadline (not an idle timer)
is the point: trickled bytes do not extend it.

Only the h11 implementation is subclassed (``http="h11"``), so behaviour does not depend
on whether ``httptools`` happens to be installed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from distrm.serve.limits import Limits

log = logging.getLogger("distrm.serve")


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request head (see the module docstring).

    ``header_timeout_s`` is a class attribute so that uvicorn, which instantiates the protocol
    itself, needs nothing extra; :func:`uvicorn_config` makes a subclass per server."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_deadline_passed)

    def _cancel_head_deadline(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        super().data_received(data)
        if self.cycle is not before:  # a complete request head arrived: the app has it now
            self._cancel_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # keep-alive: the next request head has its own deadline
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being handled; the body and request timeouts govern it
        log.info("%s: closed a connection that sent no complete request within %g s",
                 "%s:%d" % tuple(self.client) if self.client else "client", self.header_timeout_s)
        self.transport.close()


def uvicorn_config(app: Any, host: str, port: int, limits: Limits, log_level: str = "info", **overrides: Any) -> Any:
    """The uvicorn configuration ``distrm serve`` runs with: keep-alive idle timeout and the
    request-head deadline from ``limits``, the bounded h11 protocol."""
    import uvicorn

    protocol = type("BoundedH11Protocol", (BoundedH11Protocol,), {"header_timeout_s": limits.header_timeout_s})
    kw: dict[str, Any] = dict(host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                              timeout_keep_alive=limits.idle_timeout_s, http=protocol)
    kw.update(overrides)
    return uvicorn.Config(app, **kw)
