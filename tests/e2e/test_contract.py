"""The OpenAPI contract, fuzzed: schemathesis against a live hub, agent and worker.

Every check schemathesis has is on (server errors, status codes, content types, headers and
bodies against the spec, schema-valid requests accepted, schema-invalid ones refused, auth not
ignored, ...), with a fixed seed and a bounded number of examples per operation, so a run is
repeatable and takes about a minute. The machine, a job and a session are real, so spawns, path
checks and session routes reach the agent instead of stopping at a 404; so is a machine list
cursor, which is opaque and cannot be guessed either.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from machine_hub.redis_server import RedisServer
from tests.e2e.harness import SECRET, Stack, fast_settings

pytestmark = [pytest.mark.contract, pytest.mark.timeout(240)]

SEED = 20240611
MAX_EXAMPLES = 12
MACHINE = "m-contract"
OTHER_MACHINE = "m-contract-offline"  # registered, never started: the machine list gets a second page
STREAM_READ_S = 0.5  # an event stream is read this long (or until one event), then closed


@pytest.fixture(scope="module")
def live(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("contract")
    root = tmp / "root"
    root.mkdir()
    settings = fast_settings(
        redis_server.url,
        roots=(str(root),),
        # The fuzzer opens streams back to back (spawn rates are off in every e2e stack).
        max_event_streams_per_token=0,
        max_event_streams_per_namespace=0,
        # No webhook is ever stored (409), so the worker never calls a URL the fuzzer made up.
        max_webhooks_per_namespace=0,
    )
    stack = Stack(tmp, redis_server, settings)
    try:
        stack.hubs = [stack.start_hub()]
        stack.start_worker()
        stack.start_agent(MACHINE)
        yield stack
    finally:
        stack.close()


def config(stack: Stack, folder: Path) -> Path:
    """`<folder>/schemathesis.toml`: the real ids, short stream reads, and nothing else changed."""
    hub = stack.hubs[0].url
    auth = {"Authorization": f"Bearer {SECRET}"}
    directory = Path(stack.settings.roots[0]) / "session"
    spawned = httpx2.post(f"{hub}/api/machines/{MACHINE}/spawn", headers=auth, json={"directory": str(directory)})
    assert spawned.json()["success"] is True, spawned.text
    stack.machine_url("default", OTHER_MACHINE)
    first_page = httpx2.get(f"{hub}/api/machines", headers=auth, params={"include": "offline", "limit": "1"}).json()
    assert [m["id"] for m in first_page["machines"]] == [MACHINE], first_page
    path = folder / "schemathesis.toml"
    path.write_text(
        f"""
[parameters]
"path.machine_id" = "{MACHINE}"
"path.session_id" = "{spawned.json()["sessionId"]}"
"path.job_id" = "{spawned.json()["jobId"]}"

[[operations]]
include-path = "/api/machines"
parameters = {{ "query.cursor" = "{first_page["nextCursor"]}" }}

[[operations]]
include-path = "/api/paths/exists"
parameters = {{ "query.cursor" = "{first_page["nextCursor"]}" }}

[[operations]]
include-path = "/api/events"
request-timeout = {STREAM_READ_S}
max-stream-events = 1

# An Idempotency-Key reused with another body is 422, as the IETF Idempotency-Key draft says: a
# conflict with an earlier request, not a rejection of this one's data.
[[operations]]
include-path = "/api/machines/{{machine_id}}/spawn"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

[[operations]]
include-path = "/api/spawn"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

# A folder the agent cannot list (outside its roots, missing, a file) is a 500 with a code, by
# contract, like a failed path check: most generated paths are such folders.
[[operations]]
include-path = "/api/machines/{{machine_id}}/directory"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "500"]

# A schema-valid URL can still break the address rules (a private address, localhost: 400), which
# no schema can say; and this stack allows no webhooks (409), so the routes that take a webhook id
# can only answer 404, as they should. (tests/e2e/test_webhooks.py runs them with real webhooks.)
[[operations]]
include-name = "POST /api/webhooks"
checks.positive_data_acceptance.expected-statuses = ["400", "401", "409"]
warnings = false

[[operations]]
include-path-regex = "^/api/webhooks/"
warnings = false
"""
    )
    return path


def test_the_api_keeps_its_contract(live: Stack, tmp_path: Path) -> None:
    toml = config(live, tmp_path)
    report = tmp_path / "report"
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(toml),
            "run",
            f"{live.hubs[0].url}/openapi.json",
            "--checks",
            "all",
            "--seed",
            str(SEED),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--header",
            f"Authorization: Bearer {SECRET}",
            "--request-timeout",
            "10",
            "--no-shrink",
            "--report",
            "junit",
            "--report-dir",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=200,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
        cwd=tmp_path,
    )
    output = run.stdout[-20000:] + run.stderr[-5000:]
    assert run.returncode == 0, output
    assert "No issues found" in run.stdout.splitlines()[-1], output
    tested = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert tested and int(tested.group(1)) == int(tested.group(2)) > 300, output
    for process in live.processes:
        assert "Traceback" not in process.log_text(), f"{process.name}:\n{process.log_text()[-4000:]}"
