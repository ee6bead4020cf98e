"""Reading GET /api/events in tests: an open stream, event by event, each read bounded in time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2


class EventStream:
    """An open GET /api/events, read event by event; every read is bounded by the client's timeout."""

    def __init__(self, response: httpx2.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()
        self.seen: list[dict[str, Any]] = []

    def next(self) -> dict[str, Any]:
        event: dict[str, Any] = {}
        for line in self.lines:
            if line == "":
                if "data" in event:
                    self.seen.append(event)
                    return event
                event = {}
            elif line.startswith(":"):
                continue  # keep-alive
            else:
                name, _, value = line.partition(":")
                event[name] = value[1:] if value.startswith(" ") else value
        raise AssertionError("the event stream ended")

    def until(self, done: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        got = []
        while time.monotonic() < deadline:
            event = self.next()
            got.append(event)
            if done(event):
                return got
        raise AssertionError(f"no matching event within {timeout_s}s; got {got}")


@contextmanager
def events(url: str, headers: dict[str, str] | None = None) -> Iterator[EventStream]:
    with (
        httpx2.Client(timeout=httpx2.Timeout(10.0)) as client,
        client.stream("GET", f"{url}/api/events", headers=headers or {}) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventStream(response)


def data(event: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(event["data"])
    return decoded


def about(machine_id: str, **fields: str) -> Callable[[dict[str, Any]], bool]:
    def check(event: dict[str, Any]) -> bool:
        d = data(event)
        return d.get("machineId") == machine_id and all(d.get(k) == v for k, v in fields.items())

    return check
