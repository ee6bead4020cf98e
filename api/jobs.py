"""GET /api/jobs/:jobId: any job's state and result, from any hub, namespace-checked."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.hub import hub_of
from api.requests import check_owner, json_response, raw_json
from core.errors import JobNotFound
from core.names import job_machine
from core.schemas import JobView


async def get_job(request: Request) -> Response:
    hub = hub_of(request)
    ns = await hub.authenticate(request)
    job_id: str = request.path_params["job_id"]
    machine_id = job_machine(job_id)  # a job id names its machine, so any hub can find it
    await check_owner(hub, ns, machine_id, JobNotFound)
    assert machine_id is not None
    record = await hub.queue.record(ns, machine_id, job_id)
    if record is None:
        raise JobNotFound()
    return json_response(
        JobView(
            id=job_id,
            kind=record.kind,
            machine_id=machine_id,
            state=record.state,
            created_at=record.created_ms,
            claimed_at=record.claimed_ms,
            finished_at=record.finished_ms,
            result=raw_json(record.result),
            waiting_until=record.claim_by if record.wait_ms else None,
            args=raw_json(record.args),
        )
    )
