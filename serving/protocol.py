"""uvicorn's HTTP/1.1 protocol with the limits it lacks: a time limit on request heads, probes that always answer.

uvicorn waits forever for a request head: a client that sends half a request line holds its connection (and one
slot of ``limit_concurrency``) as long as it likes, and enough of them turn every request into a 503, health checks
included. :class:`GuardedHttpToolsProtocol` (uvicorn's "auto" choice when httptools is installed, as it is with
``uvicorn[standard]``)

- closes a connection whose request head is not complete ``header_timeout_s`` after the connection opened or after
  the first byte of its next request (answering 408 when no response is in flight), and one whose head grows past
  ``MAX_HEAD_BYTES`` (431);
- exempts ``/healthz`` and ``/metrics`` from ``limit_concurrency`` (the app bounds streams and uploads itself; the
  connection limit only guards file descriptors), so a saturated server still says how it is;
- closes a connection whose response was sent before its request body was read, when the rest of the body has not
  arrived ``header_timeout_s`` later (uvicorn would otherwise keep reading a trickled body that nothing wants).

Pass the class as ``uvicorn.Config(http=...)`` together with ``header_timeout_s`` via :func:`protocol_class`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

EXEMPT_PATHS = (b"/healthz", b"/metrics")  # answered even when uvicorn's connection limit is reached
MAX_HEAD_BYTES = 64 * 1024
_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE_RESPONSE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
                       b"connection: close\r\n\r\n")


class _HeadGuard:
    """The timer and byte count of the request head being read (mixed into a uvicorn HTTP protocol)."""

    header_timeout_s = 10.0
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    config: Any
    _timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _reading_head = False

    def _start_head_timer(self) -> None:
        self._stop_timer()
        self._head_bytes, self._reading_head = 0, True
        self._timer = self.loop.call_later(self.header_timeout_s, self._expired,
                                           f"request head not complete within {self.header_timeout_s:g} s")

    def _start_drain_timer(self) -> None:
        """After a response sent before its request body was read: the rest of the body gets the same time."""
        self._stop_timer()
        self._timer = self.loop.call_later(self.header_timeout_s, self._expired,
                                           f"request body not complete {self.header_timeout_s:g} s after the response")

    def _stop_timer(self) -> None:
        self._reading_head = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, response: bytes, why: str) -> None:
        reading_head = self._reading_head
        self._stop_timer()
        if self.transport.is_closing():
            return
        peer = self.transport.get_extra_info("peername")
        log.info("closing connection from %s: %s", peer[0] if peer else "?", why)
        if reading_head and (self.cycle is None or self.cycle.response_complete):  # no response of ours pending
            self.transport.write(response)
        self.transport.close()

    def _expired(self, why: str) -> None:
        self._timer = None
        self._refuse(_TIMEOUT_RESPONSE, why)

    def _count_head_bytes(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(_TOO_LARGE_RESPONSE, f"request head larger than {MAX_HEAD_BYTES} bytes")

    def _set_limit_for(self, target: bytes) -> None:
        path = target.split(b"?", 1)[0]
        self.limit_concurrency = None if path in EXEMPT_PATHS else self.config.limit_concurrency


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(_HeadGuard, HttpToolsProtocol):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.parser is not None:
                self._count_head_bytes(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self._reading_head:
                self._start_head_timer()

        def on_headers_complete(self) -> None:
            self._stop_timer()
            self._set_limit_for(self.url)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            if not self._reading_head:  # a drain timer, if any: the body is complete
                self._stop_timer()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
                self._start_drain_timer()


def protocol_class(header_timeout_s: float) -> type[asyncio.Protocol] | str:
    """The guarded protocol with this head time limit; without httptools, uvicorn's own (and a warning)."""
    if HttpToolsProtocol is None:
        log.warning("httptools is not installed: request heads have no time limit (install uvicorn[standard])")
        return "auto"
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"header_timeout_s": header_timeout_s})
