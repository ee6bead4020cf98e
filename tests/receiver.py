"""A webhook receiver for tests: a real HTTP server in a thread that records every request.

It answers the statuses queued in `answers` in turn, then 200; while `hold` is set a request waits
(up to HOLD_MAX_S) before it is answered, as a receiver that hangs would. `successes()` counts the
2xx answers per delivery id: what a receiver that drops repeats would have acted on.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec

from core.signatures import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

HOLD_MAX_S = 30.0
HELD_STATUS = 503  # what a held request gets once let go: its sender has given up on it by then


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0

    @property
    def delivery(self) -> str:
        return self.headers.get(DELIVERY_HEADER.lower(), "")

    @property
    def event(self) -> str:
        return self.headers.get(EVENT_HEADER.lower(), "")

    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    def signed_by(self, secret: str) -> bool:
        h = self.headers
        return verify(secret, h[TIMESTAMP_HEADER.lower()], h[SIGNATURE_HEADER.lower()], self.body, now_s=time.time())


@dataclass
class Receiver:
    port: int = 0
    answers: list[int] = field(default_factory=list)
    hold: threading.Event = field(default_factory=threading.Event)
    received: list[Received] = field(default_factory=list)
    held: int = 0  # requests waiting right now

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                item = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                status = receiver._answer(item)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True)
        self._thread.start()

    def _answer(self, item: Received) -> int:
        with self._lock:
            self.received.append(item)
            status = self.answers.pop(0) if self.answers else 200
            holding = self.hold.is_set()
            if holding:
                self.held += 1
        if holding:
            self._release.wait(HOLD_MAX_S)
            with self._lock:
                self.held -= 1
            status = HELD_STATUS
        item.status = status
        return status

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def let_go(self) -> None:
        self.hold.clear()
        self._release.set()

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path and r.status]

    def successes(self) -> Counter[str]:
        with self._lock:
            return Counter(r.delivery for r in self.received if 200 <= r.status < 300)

    def close(self) -> None:
        self.let_go()
        self.server.shutdown()
        self.server.server_close()
