"""`machine-hub machines` and `jobs`: tables, ages, and one-line errors against a fake stdlib hub."""

from __future__ import annotations

import io
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from click.testing import CliRunner

from machine_hub.cli import main
from machine_hub.hub_client import HubClient, HubError, parse_events
from machine_hub.redis_server import free_port
from machine_hub.tables import format_age, format_latency, jobs_table, machines_table, render_table, short_job_id
from machine_hub.terminal import follow

NOW = 1_764_369_400_000
TOKEN = "tok-123"
MACHINE = "machine_3f2a"
JOB_ID = f"{MACHINE}.4be1c0ffee00112233445566778899aa"


# ---------- a fake hub ----------


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"


@dataclass
class FakeHub:
    url: str
    routes: dict[str, list[Answer]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    bodies: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path, JSON body) of writes

    def answer(self, path: str, *answers: Answer) -> None:
        self.routes[path] = list(answers)

    def json(self, path: str, body: object, status: int = 200) -> None:
        self.answer(path, Answer(status, json.dumps(body).encode()))


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            fake.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            if length := int(self.headers.get("Content-Length") or 0):
                fake.bodies.append((self.command, self.path, json.loads(self.rfile.read(length))))
            queue = fake.routes.get(path)
            answer = (
                (queue.pop(0) if len(queue) > 1 else queue[0]) if queue else Answer(404, b"Not Found", "text/plain")
            )
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(answer.body)

        do_POST = do_PATCH = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


def run(*args: str, **env: str) -> Any:
    environment = {"MACHINE_HUB_URL": None, "MACHINE_HUB_TOKEN": None, "CLI_API_TOKEN": None, **env}
    return CliRunner().invoke(main, list(args), env=environment)


def machine(mid: str, online: bool, **extra: Any) -> dict[str, Any]:
    return {
        "id": mid,
        "namespace": "default",
        "metadata": {"hostname": "box", "platform": "linux", "version": "0.1.0", "launcher": "tmux"},
        "lastSeen": NOW - 3_000,
        "online": online,
        "queueDepth": 0,
        "inFlight": 0,
        **extra,
    }


# ---------- formatting ----------


@pytest.mark.parametrize(
    ("delta_ms", "text"),
    [
        (0, "0s ago"),
        (3_400, "3s ago"),
        (59_999, "59s ago"),
        (60_000, "1m ago"),
        (3_599_000, "59m ago"),
        (3_600_000, "1h ago"),
        (86_400_000 * 3 + 5, "3d ago"),
        (-5_000, "0s ago"),  # a clock slightly ahead of ours
    ],
)
def test_format_age(delta_ms: int, text: str) -> None:
    assert format_age(NOW - delta_ms, NOW) == text


def test_format_age_without_a_time() -> None:
    assert format_age(None, NOW) == "never"


@pytest.mark.parametrize(
    ("ms", "text"), [(None, "-"), (0, "0 ms"), (12.4, "12 ms"), (999, "999 ms"), (1234, "1.23 s"), (45_600, "45.6 s")]
)
def test_format_latency(ms: float | None, text: str) -> None:
    assert format_latency(ms) == text


def test_short_job_id_keeps_the_start_of_the_uuid() -> None:
    assert short_job_id(JOB_ID) == "4be1c0ff"
    assert short_job_id("plain") == "plain"


def test_render_table_aligns_columns_and_right_aligns_numbers() -> None:
    table = render_table(("ID", "N", "NOTE"), [("a", "1", "x"), ("longer-id", "250", "")], right=(1,))
    assert table.splitlines() == [
        "ID           N  NOTE",
        "a            1  x",
        "longer-id  250",
    ]


def test_machines_table() -> None:
    rows = [
        machine("m-one", True, queueDepth=2, inFlight=1),
        machine("m-two", False, lastSeen=NOW - 7_200_000),
        {"id": "m-old", "metadata": {"platform": "darwin", "version": "0.0.9"}, "lastSeen": None},
    ]
    assert machines_table(rows, NOW).splitlines() == [
        "ID     STATE    PLATFORM  VERSION  LAST SEEN  QUEUE  IN FLIGHT",
        "m-one  online   linux     0.1.0    3s ago         2          1",
        "m-two  offline  linux     0.1.0    2h ago         0          0",
        "m-old  online   darwin    0.0.9    never          -          -",
    ]
    drained = machines_table([machine("m-one", True, drained=True)], NOW).splitlines()[1]
    assert drained.split()[:3] == ["m-one", "online", "(drained)"]


def test_jobs_table_shows_errors_from_the_job_or_its_result() -> None:
    jobs = [
        {
            "id": JOB_ID,
            "kind": "spawn",
            "machineId": MACHINE,
            "state": "failed",
            "createdAt": NOW - 65_000,
            "latencyMs": 1520,
            "result": {"success": False, "error": "claude is not installed", "code": "agent_not_installed"},
        },
        {
            "id": f"{MACHINE}.ffff0000",
            "kind": "paths",
            "machineId": MACHINE,
            "state": "expired",
            "createdAt": NOW - 2_000,
            "latencyMs": None,
            "code": "not_started",
        },
        {"id": f"{MACHINE}.00aa", "kind": "sessions", "machineId": MACHINE, "state": "running", "createdAt": NOW},
    ]
    assert jobs_table(jobs, NOW).splitlines() == [
        "JOB       KIND      MACHINE       STATE    AGE     LATENCY  ERROR",
        "4be1c0ff  spawn     machine_3f2a  failed   1m ago   1.52 s  agent_not_installed: claude is not installed",
        "ffff0000  paths     machine_3f2a  expired  2s ago        -  not_started",
        "00aa      sessions  machine_3f2a  running  0s ago        -",
    ]


def test_long_errors_are_cut_to_one_line() -> None:
    job = {"id": JOB_ID, "kind": "spawn", "machineId": MACHINE, "state": "failed", "error": "line one\n" + "x" * 200}
    last = jobs_table([job], NOW).splitlines()[1]
    assert "\n" not in last and last.endswith("…") and "line one x" in last


def test_parse_events_follows_the_sse_format() -> None:
    stream = [
        b": ping\r\n",
        b"\r\n",
        b"id: 1-0\r\n",
        b"event: job\r\n",
        b'data: {"type":"job","jobId":"a.b","state":"running"}\r\n',
        b"\r\n",
        b"event: machine\n",
        b"data: line1\n",
        b"data:line2\n",
        b"\n",
    ]
    events = list(parse_events(stream))
    assert [(e.event, e.id) for e in events] == [("job", "1-0"), ("machine", "1-0")]
    assert events[0].json() == {"type": "job", "jobId": "a.b", "state": "running"}
    assert events[1].data == "line1\nline2" and events[1].json() == {}


# ---------- the commands against a fake hub ----------


def test_machines_lists_online_ones_and_sends_the_token(hub: FakeHub) -> None:
    hub.json("/api/machines", {"machines": [machine("m-on", True), machine("m-off", False)]})
    result = run("machines", "--url", hub.url, "--token", TOKEN)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["ID", "STATE", "PLATFORM", "VERSION", "LAST", "SEEN", "QUEUE", "IN", "FLIGHT"]
    assert [line.split()[0] for line in lines[1:]] == ["m-on"]
    path, headers = hub.requests[0]
    assert path == "/api/machines?include=offline"
    assert headers["authorization"] == f"Bearer {TOKEN}"


def test_machines_all_includes_offline_ones(hub: FakeHub) -> None:
    hub.json("/api/machines", {"machines": [machine("m-on", True), machine("m-off", False)]})
    result = run("machines", "--all", MACHINE_HUB_URL=hub.url, MACHINE_HUB_TOKEN=TOKEN)
    assert result.exit_code == 0, result.output
    assert [line.split()[:2] for line in result.output.splitlines()[1:]] == [["m-on", "online"], ["m-off", "offline"]]


def test_no_machines(hub: FakeHub) -> None:
    hub.json("/api/machines", {"machines": [machine("m-off", False)]})
    result = run("machines", MACHINE_HUB_URL=hub.url, CLI_API_TOKEN=TOKEN)
    assert result.exit_code == 0
    assert result.output == "no machines online (--all lists offline ones too)\n"
    assert hub.requests[0][1]["authorization"] == f"Bearer {TOKEN}"


def test_token_from_machine_hub_token_wins_over_cli_api_token(hub: FakeHub) -> None:
    hub.json("/api/machines", {"machines": []})
    run("machines", MACHINE_HUB_URL=hub.url, MACHINE_HUB_TOKEN="mine", CLI_API_TOKEN="shared")
    assert hub.requests[0][1]["authorization"] == "Bearer mine"


def test_jobs_passes_the_filters_and_prints_a_table(hub: FakeHub) -> None:
    job = {
        "id": JOB_ID,
        "kind": "spawn",
        "machineId": MACHINE,
        "state": "succeeded",
        "createdAt": 1,
        "claimedAt": 2,
        "finishedAt": 3,
        "latencyMs": 2,
        "result": {"success": True},
    }
    hub.json("/api/jobs", {"jobs": [job], "cursor": None})
    args = ["jobs", "--url", hub.url, "--token", TOKEN, "--machine", MACHINE, "--state", "succeeded"]
    result = run(*args, "--kind", "spawn", "--limit", "5")
    assert result.exit_code == 0, result.output
    assert hub.requests[0][0] == f"/api/jobs?machineId={MACHINE}&state=succeeded&kind=spawn&limit=5"
    header, row = result.output.splitlines()
    assert header.split() == ["JOB", "KIND", "MACHINE", "STATE", "AGE", "LATENCY", "ERROR"]
    assert row.split()[:4] == ["4be1c0ff", "spawn", MACHINE, "succeeded"] and row.endswith("2 ms")


def test_jobs_rejects_an_unknown_state() -> None:
    result = run("jobs", "--state", "bogus", "--token", TOKEN)
    assert result.exit_code == 2 and "bogus" in result.output


# ---------- errors: one line, exit status 1, no traceback ----------


def assert_one_line_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_wrong_token(hub: FakeHub) -> None:
    hub.json("/api/machines", {"error": "Invalid token"}, status=401)
    result = run("machines", "--url", hub.url, "--token", "nope")
    assert_one_line_error(result, "refused the token (Invalid token)", "MACHINE_HUB_TOKEN")


def test_missing_token() -> None:
    result = run("jobs", "--url", "http://127.0.0.1:9")
    assert_one_line_error(result, "no token", "--token", "MACHINE_HUB_TOKEN", "CLI_API_TOKEN")


def test_hub_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run("machines", "--url", url, "--token", TOKEN)
    assert_one_line_error(result, f"cannot reach the hub at {url}", "connection refused")


def test_unknown_host() -> None:
    result = run("machines", "--url", "http://no-such-host.invalid:3006", "--token", TOKEN)
    assert_one_line_error(result, "cannot reach the hub at http://no-such-host.invalid:3006")


@pytest.mark.parametrize("url", ["127.0.0.1:3006", "ftp://hub", "http://", "http://host:port"])
def test_invalid_url(url: str) -> None:
    result = run("machines", "--url", url, "--token", TOKEN)
    assert_one_line_error(result, "invalid hub URL")


def test_url_of_something_else_gives_404(hub: FakeHub) -> None:
    result = run("jobs", "--url", hub.url, "--token", TOKEN)
    assert_one_line_error(result, f"{hub.url} has no /api/jobs (HTTP 404)", "--url")


def test_url_of_a_page_that_is_not_json(hub: FakeHub) -> None:
    hub.answer("/api/machines", Answer(200, b"<html>hello</html>", "text/html"))
    result = run("machines", "--url", hub.url, "--token", TOKEN)
    assert_one_line_error(result, "did not answer JSON")


def test_hub_without_redis(hub: FakeHub) -> None:
    hub.json("/api/jobs", {"error": "Hub not connected"}, status=503)
    result = run("jobs", "--url", hub.url, "--token", TOKEN)
    assert_one_line_error(result, "cannot serve now (Hub not connected)")


def test_other_http_errors_carry_the_hubs_message(hub: FakeHub) -> None:
    hub.json("/api/jobs", {"error": "Invalid query", "detail": "limit"}, status=400)
    result = run("jobs", "--url", hub.url, "--token", TOKEN)
    assert_one_line_error(result, "answered /api/jobs with HTTP 400: Invalid query")


def test_a_server_that_does_not_speak_http() -> None:
    class Garbage(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(1024)
            self.request.sendall(b"\x00\x01 this is not http\r\n\r\n")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Garbage) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        thread.start()
        try:
            result = run("machines", "--url", f"http://127.0.0.1:{server.server_address[1]}", "--token", TOKEN)
        finally:
            server.shutdown()
            thread.join()
    assert_one_line_error(result, "did not answer like an HTTP server")


# ---------- --watch ----------


def sse(*events: tuple[str, str, dict[str, Any]]) -> bytes:
    return b"".join(f"id: {i}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode() for i, name, data in events)


def test_follow_reprints_on_events_and_resumes_with_last_event_id(hub: FakeHub) -> None:
    job_event = {"type": "job", "jobId": JOB_ID, "machineId": MACHINE, "kind": "spawn", "state": "succeeded"}
    machine_event = {"type": "machine", "machineId": MACHINE, "state": "offline"}
    hub.answer(
        "/api/events",
        Answer(200, sse(("5-0", "job", job_event), ("6-0", "machine", machine_event)), "text/event-stream"),
        Answer(401, b'{"error":"Invalid token"}'),
    )
    out = io.StringIO()
    shown: list[int] = []
    naps: list[float] = []
    client = HubClient(hub.url, TOKEN)
    with pytest.raises(HubError, match="refused the token"):
        follow(client, lambda: shown.append(1), out, sleep=naps.append)
    notes = [line.split("  ", 1)[1] for line in out.getvalue().splitlines() if line]
    assert notes == [
        f"watching {hub.url}  (Ctrl-C to stop)",
        f"job 4be1c0ff spawn on {MACHINE}: succeeded  (Ctrl-C to stop)",
        f"machine {MACHINE}: offline  (Ctrl-C to stop)",
    ]
    assert len(shown) == 3 and len(naps) == 1
    (first, first_headers), (second, second_headers) = hub.requests
    assert first == second == "/api/events"
    assert first_headers["authorization"] == f"Bearer {TOKEN}" and "last-event-id" not in first_headers
    assert second_headers["last-event-id"] == "6-0"


def test_follow_gives_up_after_repeated_failures() -> None:
    client = HubClient(f"http://127.0.0.1:{free_port()}", TOKEN)
    naps: list[float] = []
    with pytest.raises(HubError, match="gave up following"):
        follow(client, lambda: None, io.StringIO(), max_reconnects=3, sleep=naps.append)
    assert naps == [1.0, 2.0, 4.0]


def test_follow_refuses_a_route_that_is_not_an_event_stream(hub: FakeHub) -> None:
    hub.json("/api/events", {"hello": 1})
    with pytest.raises(HubError, match="not an event stream"):
        follow(HubClient(hub.url, TOKEN), lambda: None, io.StringIO(), sleep=lambda s: None)


def test_free_port_has_nothing_listening() -> None:
    # The unreachable-hub tests rely on this: connecting to a fresh free port is refused.
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", free_port()), timeout=1):
        pass
