"""The sessions a machine's agent started: list them and stop one, through the machine's queue."""

from __future__ import annotations

import re

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.dispatch import JobSpec
from api.hub import hub_of
from api.requests import check_owner, encoder, json_response, read_result, submit, target
from core.errors import MachineNotFound, SessionNotFound, SessionsFailed, StopFailed
from core.schemas import JobKind, SessionsResult, StopRequest, StopResult

_sessions = msgspec.json.Decoder(SessionsResult)
_stopped = msgspec.json.Decoder(StopResult)
SESSION_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


async def list_sessions(request: Request) -> Response:
    hub = hub_of(request)
    ns, machine_id = await target(hub, request)
    settings = hub.settings
    spec = JobSpec(
        JobKind.SESSIONS,
        b"{}",
        settings.paths_timeout_s,
        settings.paths_timeout_s,
        0.0,  # read-only: no record to keep
        b"null",
    )
    outcome = await submit(hub, ns, machine_id, spec)
    return json_response({"sessions": read_result(machine_id, outcome, SessionsFailed, _sessions).sessions})


async def stop_session(request: Request) -> Response:
    hub = hub_of(request)
    ns, machine_id = await target(hub, request)
    session_id: str = request.path_params["session_id"]
    if not SESSION_ID_RE.fullmatch(session_id):
        await check_owner(hub, ns, machine_id, MachineNotFound)  # a 404/403 for the machine comes first
        raise SessionNotFound()
    settings = hub.settings
    # Stopping may wait out the grace period on the machine, so the job gets that much longer.
    timeout = settings.paths_timeout_s + settings.session_stop_grace_s
    args = encoder.encode(StopRequest(session_id=session_id))
    spec = JobSpec(JobKind.STOP, args, settings.paths_timeout_s, timeout, settings.job_retention_s, b"null")
    outcome = await submit(hub, ns, machine_id, spec)
    if not read_result(machine_id, outcome, StopFailed, _stopped).stopped:
        raise SessionNotFound()
    return json_response({"stopped": True, "sessionId": session_id, "jobId": outcome.job_id})
