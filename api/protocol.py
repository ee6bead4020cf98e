"""The hub's HTTP connections: deadlines for slow clients, a cap on open ones, the open-files limit.

uvicorn bounds the idle time between requests (`timeout_keep_alive`) but not the time a client
takes to send a request: one that connects and sends nothing, or a header line a minute
(slowloris), holds its connection, and a file descriptor, for ever. uvicorn's `limit_concurrency`
does not help: it answers 503 only once a request's headers are in, and counts idle connections,
so slow clients would get every new request refused. This is uvicorn's httptools protocol plus:

- headers: a request's line and headers must arrive within `header_timeout_s` of its first byte
  (of the connection, for the first request) and within `max_header_bytes` (httptools has no
  limit); otherwise 408 or 431 and the connection closes. A connection that never sent a byte is
  closed without an answer.
- body: the application bounds the time it waits for a body it reads (api/limits.py, 408). Here
  a connection is closed when a body nobody reads still trickles in `body_timeout_s` after its
  headers, once the answer went out.
- connections: beyond `max_connections` open ones a new connection gets 503 at once, sent before
  reading anything, then the connection is half-closed and drained briefly so the client reads
  the answer instead of a reset.

All of it runs in the event loop's protocol callbacks: no task per connection, so thousands of
idle connections cost memory only and never delay a request that is ready.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from core.settings import Settings

log = logging.getLogger(__name__)
LINGER_S = 1.0  # how long a refused connection is drained after its 503
FILES_RESERVE = 64  # descriptors beyond sockets: logs, the listener, DNS, imports


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    keep_alive_timeout_s: float
    max_header_bytes: int
    max_connections: int
    refused: Callable[[str], None]  # counts a refusal by the setting's name

    @classmethod
    def from_settings(cls, settings: Settings, max_connections: int, refused: Callable[[str], None]) -> Self:
        return cls(
            settings.header_timeout_s,
            settings.body_timeout_s,
            settings.keep_alive_timeout_s,
            settings.max_header_bytes,
            max_connections,
            refused,
        )


def raw_response(status: int, error: str, detail: str, limit: str) -> bytes:
    """A complete JSON error answer that closes the connection, for use outside the application."""
    body = json.dumps({"error": error, "detail": detail, "limit": limit}).encode()
    head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body)
    if status == 503:
        head += b"retry-after: 1\r\n"
    return STATUS_LINE[status] + head + b"\r\n" + body


class LimitedProtocol(HttpToolsProtocol):
    """One connection. `limits` is set on a subclass made per server (`protocol_class`)."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn types this as int; a float works the same in loop.call_later.
        self.timeout_keep_alive = self.limits.keep_alive_timeout_s  # type: ignore[assignment]
        self._timer: asyncio.TimerHandle | None = None
        self._reading_headers = False
        self._header_bytes = 0
        self._refused = False

    # connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        if len(self.connections) > limits.max_connections:
            self._refuse(transport)
            return
        self._start_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # draining before the close
        if not self._reading_headers and (self.cycle is None or self.cycle.response_complete):
            self._start_headers()  # the first byte of the next request on a kept-alive connection
        if self._reading_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._reading_headers and self._header_bytes > self.limits.max_header_bytes:
            self._close_with(
                431, "Request headers too large", f"at most {self.limits.max_header_bytes} bytes", "max_header_bytes"
            )

    # parser callbacks

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._stop_timer()
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body:
            self._timer = self.loop.call_later(self.limits.body_timeout_s, self._body_late)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if not self._reading_headers:
            self._stop_timer()

    # deadlines

    def _start_headers(self) -> None:
        self._stop_timer()
        self._reading_headers = True
        self._header_bytes = 0
        self._timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_late)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request waits behind one still being answered: its clock starts later.
            self._timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_late)
            return
        if self._header_bytes == 0:
            self.limits.refused("header_timeout_s")
            self.transport.close()  # never said anything: nobody to answer
            return
        detail = f"the request headers did not arrive within {self.limits.header_timeout_s:g} s"
        self._close_with(408, "Request timeout", detail, "header_timeout_s")

    def _body_late(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.cycle is None:
            return
        if self.cycle.response_complete:
            self.limits.refused("body_timeout_s")
            self.transport.close()  # answered already; the rest of the body is not worth reading
            return
        # The application is still at work; it bounds its own body reads (api/limits.py).
        self._timer = self.loop.call_later(self.limits.body_timeout_s, self._body_late)

    def _close_with(self, status: int, error: str, detail: str, limit: str) -> None:
        self._stop_timer()
        self._reading_headers = False
        self.limits.refused(limit)
        self.transport.write(raw_response(status, error, detail, limit))
        self.transport.close()

    def _refuse(self, transport: asyncio.Transport) -> None:
        self._refused = True
        self.limits.refused("max_connections")
        detail = f"this hub holds its limit of {self.limits.max_connections} connections; retry shortly"
        transport.write(raw_response(503, "Too many connections", detail, "max_connections"))
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self.loop.call_later(LINGER_S, transport.close)


def protocol_class(limits: ConnectionLimits) -> type[LimitedProtocol]:
    """A protocol class bound to these limits (uvicorn builds protocols from a class)."""
    return type("HubProtocol", (LimitedProtocol,), {"limits": limits})


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft open-files limit towards `wanted` (never past the hard limit);
    returns the limit now in force. Many hosts start services with a soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft


def connection_budget(settings: Settings) -> int:
    """`max_connections`, lowered to what the open-files limit leaves after Redis connections."""
    others = FILES_RESERVE + settings.max_requests_in_flight + settings.max_event_streams
    limit = raise_open_files_limit(settings.max_connections + others)
    budget = min(settings.max_connections, limit - others)
    if budget < settings.max_connections:
        log.warning(
            "the open-files limit (%d) allows %d connections, not MACHINE_HUB_MAX_CONNECTIONS=%d; "
            "raise it (ulimit -n, LimitNOFILE=) for more",
            limit,
            max(budget, 1),
            settings.max_connections,
        )
    return max(budget, 1)
