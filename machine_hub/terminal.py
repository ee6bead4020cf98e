"""`machine-hub machines` and `machine-hub jobs`: the dashboard's lists in a terminal.

They talk HTTP to a hub (stdlib urllib only, so they need nothing the hub does not), print
aligned tables, and `jobs --watch` follows the hub's event stream (/api/events, server-sent
events) and prints the table again whenever something changes. Every failure is one line on
stderr and exit status 1.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import click

DEFAULT_URL = "http://127.0.0.1:3006"
JOB_STATES = ("queued", "running", "succeeded", "failed", "expired", "unknown")
JOB_KINDS = ("spawn", "paths", "sessions", "stop")
MAX_ERROR_WIDTH = 72
STREAM_TIMEOUT_S = 60.0  # the hub pings idle streams well within this; silence this long means a dead link


class HubError(click.ClickException):
    """A one-line failure talking to the hub (click prints `Error: <message>`, exit status 1)."""


# ---------- formatting ----------


def format_age(then_ms: int | float | None, now_ms: float | None = None) -> str:
    """`3s ago`, `5m ago`, `2h ago`, `4d ago`; `never` without a time."""
    if then_ms is None:
        return "never"
    now = time.time() * 1000 if now_ms is None else now_ms
    seconds = max(0, int((now - then_ms) // 1000))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def format_latency(ms: int | float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{round(ms)} ms"
    if ms < 10_000:
        return f"{ms / 1000:.2f} s"
    return f"{ms / 1000:.1f} s"


def short_job_id(job_id: str) -> str:
    """A job id is `<machine id>.<32 hex>`; the first 8 hex tell jobs apart in a list."""
    return job_id.rsplit(".", 1)[-1][:8]


def truncate(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell, two spaces apart; `right` columns are right-aligned."""
    body = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right_cols = set(right)

    def line(cells: Sequence[str]) -> str:
        out = [cell.rjust(widths[i]) if i in right_cols else cell.ljust(widths[i]) for i, cell in enumerate(cells)]
        return "  ".join(out).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in body)])


def machines_table(machines: Sequence[Mapping[str, Any]], now_ms: float | None = None) -> str:
    rows = []
    for m in machines:
        meta = m.get("metadata") or {}
        online = m.get("online", True)
        rows.append(
            [
                str(m.get("id", "?")),
                "online" if online else "offline",
                str(meta.get("platform") or "-"),
                str(meta.get("version") or "-"),
                format_age(m.get("lastSeen"), now_ms),
                _count(m.get("queueDepth")),
                _count(m.get("inFlight")),
            ]
        )
    headers = ("ID", "STATE", "PLATFORM", "VERSION", "LAST SEEN", "QUEUE", "IN FLIGHT")
    return render_table(headers, rows, right=(5, 6))


def job_error(job: Mapping[str, Any]) -> str:
    result = job.get("result")
    result = result if isinstance(result, Mapping) else {}
    error = job.get("error") or result.get("error") or ""
    code = job.get("code") or result.get("code") or ""
    if error and code:
        return f"{code}: {error}"
    return str(error or code)


def jobs_table(jobs: Sequence[Mapping[str, Any]], now_ms: float | None = None) -> str:
    rows = [
        [
            short_job_id(str(job.get("id", "?"))),
            str(job.get("kind", "?")),
            str(job.get("machineId", "?")),
            str(job.get("state", "?")),
            format_age(job.get("createdAt"), now_ms),
            format_latency(job.get("latencyMs")),
            truncate(job_error(job), MAX_ERROR_WIDTH),
        ]
        for job in jobs
    ]
    return render_table(("JOB", "KIND", "MACHINE", "STATE", "AGE", "LATENCY", "ERROR"), rows, right=(5,))


def _count(value: object) -> str:
    return "-" if value is None else str(value)


# ---------- HTTP ----------


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

    def _request(self, path: str, params: Mapping[str, object] | None, accept: str) -> urllib.request.Request:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v not in (None, "")})
        return urllib.request.Request(
            f"{self.url}{path}{'?' + query if query else ''}",
            headers={"Authorization": f"Bearer {self.token}", "Accept": accept, "User-Agent": "machine-hub-cli"},
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
        request = self._request(path, params, "application/json")
        with self._open(request, path, self.timeout_s) as response:
            try:
                raw = response.read()
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                raise HubError(f"the hub at {self.url} broke off its answer to {path}: {_reason(exc)}") from None
        try:
            body = json.loads(raw)
        except ValueError:
            raise HubError(f"{self.url}{path} did not answer JSON; is --url a machine-hub hub?") from None
        if not isinstance(body, dict):
            raise HubError(f"{self.url}{path} answered something other than a JSON object; check --url")
        return body

    def _http_error(self, status: int, raw: bytes, path: str) -> HubError:
        message = ""
        with contextlib.suppress(ValueError, AttributeError):
            message = str(json.loads(raw).get("error") or "")
        if status == 401:
            why = message or "HTTP 401"
            return HubError(f"the hub at {self.url} refused the token ({why}); pass --token or set MACHINE_HUB_TOKEN")
        if status == 404 and not message:  # the hub's own 404s say what was not found, in JSON
            return HubError(f"{self.url} has no {path} (HTTP 404); is --url a machine-hub hub, and recent enough?")
        if status == 503:
            return HubError(f"the hub at {self.url} cannot serve now ({message or 'HTTP 503'})")
        detail = f": {message}" if message else ""
        return HubError(f"the hub at {self.url} answered {path} with HTTP {status}{detail}")

    def events(self, last_event_id: str | None = None) -> Iterator[Event]:
        """Follow /api/events until the stream ends or breaks (then the caller reconnects)."""
        # The Authorization header, not `?token=` (that is for browsers, which cannot set headers).
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


# ---------- commands ----------


def _hub_options(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option(
        "--token",
        envvar="MACHINE_HUB_TOKEN",
        show_envvar=True,
        help="Bearer token (falls back to CLI_API_TOKEN).",
    )(fn)
    fn = click.option(
        "--url",
        envvar="MACHINE_HUB_URL",
        show_envvar=True,
        default=DEFAULT_URL,
        show_default=True,
        help="The hub's base URL.",
    )(fn)
    return fn


@click.command("machines")
@click.option("--all", "show_all", is_flag=True, help="Also list machines that are offline.")
@_hub_options
def machines(show_all: bool, url: str, token: str | None) -> None:
    """List the machines of your namespace: state, platform, version, last seen, queue."""
    client = HubClient(url, resolve_token(token))
    listed = client.get("/api/machines", {"include": "offline"}).get("machines")
    if not isinstance(listed, list):
        raise HubError(f"{client.url}/api/machines answered without a machines list; check --url")
    rows = [m for m in listed if isinstance(m, dict) and (show_all or m.get("online", True))]
    if not rows:
        click.echo("no machines" if show_all else "no machines online (--all lists offline ones too)")
        return
    click.echo(machines_table(rows))


@click.command("jobs")
@click.option("--machine", "machine_id", help="Only jobs of this machine id.")
@click.option("--state", type=click.Choice(JOB_STATES), help="Only jobs in this state.")
@click.option("--kind", type=click.Choice(JOB_KINDS), help="Only jobs of this kind.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many jobs.")
@click.option("--watch", is_flag=True, help="Follow the hub's events and print the list again on every change.")
@_hub_options
def jobs(
    machine_id: str | None,
    state: str | None,
    kind: str | None,
    limit: int,
    watch: bool,
    url: str,
    token: str | None,
) -> None:
    """List recent jobs, newest first: kind, machine, state, age, latency, error."""
    client = HubClient(url, resolve_token(token))
    params = {"machineId": machine_id, "state": state, "kind": kind, "limit": limit}

    def show() -> None:
        listed = client.get("/api/jobs", params).get("jobs")
        if not isinstance(listed, list):
            raise HubError(f"{client.url}/api/jobs answered without a jobs list; check --url")
        click.echo(jobs_table([j for j in listed if isinstance(j, dict)]) if listed else "no jobs")

    if not watch:
        show()
        return
    try:
        follow(client, show, sys.stdout)
    except KeyboardInterrupt:
        pass


def follow(
    client: HubClient,
    show: Callable[[], None],
    out: IO[str],
    *,
    max_reconnects: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Print the list, then again after every job or machine event; reconnect with Last-Event-ID."""
    clear = out.isatty()
    last_id: str | None = None
    failures = 0

    def redraw(note: str) -> None:
        if clear:
            out.write("\x1b[H\x1b[2J")
        else:
            out.write("\n")
        out.write(f"{time.strftime('%H:%M:%S')}  {note}  (Ctrl-C to stop)\n")
        out.flush()
        show()

    redraw(f"watching {client.url}")
    while True:
        try:
            for event in client.events(last_id):
                failures = 0
                if event.id:
                    last_id = event.id
                if event.event in ("job", "machine"):
                    redraw(_describe(event))
        except HubError as exc:
            # A refused token or a wrong URL will not heal by waiting; a dropped link might.
            if "refused the token" in exc.message or "has no" in exc.message or "not an event stream" in exc.message:
                raise
            failures += 1
            click.echo(f"{exc.message}; reconnecting", err=True)
        except (OSError, http.client.HTTPException):
            failures += 1
            click.echo(f"lost the event stream of {client.url}; reconnecting", err=True)
        if max_reconnects is not None and failures > max_reconnects:
            raise HubError(f"gave up following {client.url}/api/events after {failures} failed attempts")
        sleep(min(5.0, 0.5 * 2 ** min(failures, 4)))


def _describe(event: Event) -> str:
    data = event.json()
    if event.event == "job":
        code = f" ({data['code']})" if data.get("code") else ""
        job = short_job_id(str(data.get("jobId", "?")))
        return f"job {job} {data.get('kind', '?')} on {data.get('machineId', '?')}: {data.get('state', '?')}{code}"
    return f"machine {data.get('machineId', '?')}: {data.get('state', '?')}"
