"""GET /api/jobs/:jobId: any job's state and result, from any hub, namespace-checked."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.hub import hub_of
from api.requests import check_owner, json_response
from core.errors import JobNotFound
from core.names import job_machine
from core.schemas import JobKind, JobState, JobView


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)


async def get_job(request: Request) -> Response:
    hub = hub_of(request)
    ns = await hub.authenticate(request)
    job_id: str = request.path_params["job_id"]
    machine_id = job_machine(job_id)  # a job id names its machine, so any hub can find it
    await check_owner(hub, ns, machine_id, JobNotFound)
    assert machine_id is not None
    record = await hub.queue.job(ns, machine_id, job_id)
    if record is None:
        raise JobNotFound()
    return json_response(
        JobView(
            id=job_id,
            kind=JobKind(record["kind"].decode()),
            machine_id=machine_id,
            state=JobState(record["state"].decode()),
            created_at=_int(record.get("createdMs")),
            claimed_at=_int(record.get("claimedMs")),
            finished_at=_int(record.get("finishedMs")),
            result=msgspec.Raw(record["result"]) if record.get("result") else None,
        )
    )
