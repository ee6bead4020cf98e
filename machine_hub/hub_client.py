"""A small HTTP client of a hub for the terminal commands (stdlib only): JSON requests and the
event stream, with every failure turned into one readable line."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import click

STREAM_TIMEOUT_S = 60.0  # the hub pings idle streams well within this; silence this long means a dead link


class HubError(click.ClickException):
    """A one-line failure talking to the hub (click prints `Error: <message>`, exit status 1).

    `status` and `body` are the hub's answer when it gave one (the body's JSON object, or {})."""

    def __init__(self, message: str, *, status: int | None = None, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


class RouteMissing(HubError):
    """The hub has no such route (404 without a hub's JSON error, or 405): an older hub, or not one."""


@dataclass
class Event:
    """One server-sent event."""

    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.data)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


def parse_events(lines: Iterable[bytes]) -> Iterator[Event]:
    """Events from a text/event-stream, line by line (the SSE spec's parsing, minus `retry`)."""
    event, event_id = "", None
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data or event:
                yield Event(event or "message", "\n".join(data), event_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


@dataclass
class HubClient:
    url: str
    token: str
    timeout_s: float = 10.0
    _opener: urllib.request.OpenerDirector = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = check_url(self.url)
        # No proxies from the environment: a hub URL means that host, and a token must not detour.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(
        self,
        path: str,
        params: Mapping[str, object] | None,
        accept: str,
        *,
        method: str = "GET",
        body: object = None,
    ) -> urllib.request.Request:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v not in (None, "")})
        headers = {"Authorization": f"Bearer {self.token}", "Accept": accept, "User-Agent": "machine-hub-cli"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return urllib.request.Request(
            f"{self.url}{path}{'?' + query if query else ''}", data=data, headers=headers, method=method
        )

    def _open(self, request: urllib.request.Request, path: str, timeout_s: float) -> http.client.HTTPResponse:
        try:
            response = self._opener.open(request, timeout=timeout_s)
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._http_error(exc.code, exc.read(), path) from None
        except urllib.error.URLError as exc:
            raise HubError(f"cannot reach the hub at {self.url}: {_reason(exc.reason)}") from None
        except TimeoutError:
            raise HubError(f"the hub at {self.url} did not answer within {timeout_s:g}s") from None
        except (http.client.HTTPException, ConnectionError) as exc:
            kind = type(exc).__name__
            raise HubError(f"{self.url} did not answer like an HTTP server ({kind}); check --url") from None
        assert isinstance(response, http.client.HTTPResponse)
        return response

    def get(self, path: str, params: Mapping[str, object] | None = None) -> dict[str, Any]:
        return self.call("GET", path, params=params)[1]

    def post(self, path: str, body: object) -> tuple[int, dict[str, Any]]:
        """The status (200, 202, ...) and JSON object of a POST; an error status raises HubError."""
        return self.call("POST", path, body=body)

    def call(
        self, method: str, path: str, *, params: Mapping[str, object] | None = None, body: object = None
    ) -> tuple[int, dict[str, Any]]:
        request = self._request(path, params, "application/json", method=method, body=body)
        with self._open(request, path, self.timeout_s) as response:
            status = response.status
            try:
                raw = response.read()
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                raise HubError(f"the hub at {self.url} broke off its answer to {path}: {_reason(exc)}") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            raise HubError(f"{self.url}{path} did not answer JSON; is --url a machine-hub hub?") from None
        if not isinstance(answer, dict):
            raise HubError(f"{self.url}{path} answered something other than a JSON object; check --url")
        return status, answer

    def _http_error(self, status: int, raw: bytes, path: str) -> HubError:
        body: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            loaded = json.loads(raw)
            body = loaded if isinstance(loaded, dict) else {}
        message = str(body.get("error") or "")
        if status == 401:
            why = message or "HTTP 401"
            return HubError(
                f"the hub at {self.url} refused the token ({why}); pass --token or set MACHINE_HUB_TOKEN",
                status=status,
                body=body,
            )
        if (status == 404 and not message) or status == 405:  # the hub's own 404s say what was not found
            return RouteMissing(
                f"{self.url} has no {path} (HTTP {status}); is --url a machine-hub hub, and recent enough?",
                status=status,
                body=body,
            )
        if status == 503:
            return HubError(
                f"the hub at {self.url} cannot serve now ({message or 'HTTP 503'})", status=status, body=body
            )
        detail = f": {message}" if message else ""
        return HubError(f"the hub at {self.url} answered {path} with HTTP {status}{detail}", status=status, body=body)

    def events(self, last_event_id: str | None = None) -> Iterator[Event]:
        """Follow /api/events until the stream ends or breaks (then the caller reconnects)."""
        # The Authorization header: hubs refuse a token in the URL (it would end up in logs).
        request = self._request("/api/events", None, "text/event-stream")
        if last_event_id:
            request.add_header("Last-Event-ID", last_event_id)
        response = self._open(request, "/api/events", STREAM_TIMEOUT_S)
        with response:
            content_type = response.headers.get("Content-Type", "")
            if not content_type.startswith("text/event-stream"):
                raise HubError(f"{self.url}/api/events is not an event stream ({content_type or 'no content type'})")
            yield from parse_events(iter(response.readline, b""))


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HubError(f"invalid hub URL {url!r}: use http://HOST:PORT (set --url or MACHINE_HUB_URL)")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise HubError(f"invalid hub URL {url!r}: the port is not a number") from None
    return url.strip().rstrip("/")


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the hub running?)"
    if isinstance(reason, socket.gaierror):
        return "unknown host"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def resolve_token(token: str | None) -> str:
    value = token or os.environ.get("MACHINE_HUB_TOKEN") or os.environ.get("CLI_API_TOKEN")
    if not value:
        raise HubError("no token: pass --token, or set MACHINE_HUB_TOKEN (or CLI_API_TOKEN)")
    return value
