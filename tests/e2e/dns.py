"""A tiny DNS server for tests: answers A queries for one name with a list of addresses that the
test can change, as Docker's DNS does for a scaled compose service (Caddy's `dynamic a` reads it)."""

from __future__ import annotations

import socket
import struct
import threading


class ServiceDns:
    def __init__(self, name: str) -> None:
        self.name = name.rstrip(".").lower()
        self.addresses: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ServiceDns:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, client = self._sock.recvfrom(512)
            except (TimeoutError, OSError):
                continue
            answer = self._answer(query)
            if answer:
                self._sock.sendto(answer, client)

    def _answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        labels, i = [], 12
        while i < len(query) and query[i]:
            labels.append(query[i + 1 : i + 1 + query[i]].decode(errors="replace"))
            i += 1 + query[i]
        question_end = i + 5
        if question_end > len(query):
            return None
        qtype = struct.unpack("!H", query[i + 1 : i + 3])[0]
        matched = ".".join(labels).lower() == self.name
        records = list(self.addresses) if matched and qtype == 1 else []
        rcode = 0 if matched else 3  # NXDOMAIN for any other name
        header = query[:2] + struct.pack("!HHHHH", 0x8180 | rcode, 1, len(records), 0, 0)
        body = query[12:question_end]
        for address in records:
            body += struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(address)
        return header + body
