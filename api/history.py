"""GET /api/jobs: the namespace's recent jobs, newest first, filtered and paginated.

Walks the namespace's job index and reads job records only (core.history.JobHistory.recent): a
page costs O(its limit). The cursor is "<created ms>:<job id>" of where the previous page stopped
walking: plain, so the API description can say exactly which strings are cursors
(CURSOR_PATTERN) and every one of them is served. Path checks and session lists are not recorded.
"""

from __future__ import annotations

import re

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.hub import hub_of
from api.requests import check_owner, json_response, raw_json
from core.errors import InvalidQuery, MachineNotFound
from core.history import HistoryItem
from core.names import valid_machine_id
from core.schemas import CLAIMED_KINDS, JobKind, JobPage, JobRecord, JobState, JobSummary

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class _Failure(msgspec.Struct):
    error: str | None = None
    code: str | None = None


_failure_decoder = msgspec.json.Decoder(_Failure)


CURSOR_PATTERN = r"^[0-9]{1,15}:[A-Za-z0-9._-]{1,200}$"
_cursor = re.compile(CURSOR_PATTERN)


def encode_cursor(created_ms: int, job_id: str) -> str:
    return f"{created_ms}:{job_id}"


def decode_cursor(raw: str) -> tuple[int, str]:
    if not _cursor.fullmatch(raw):
        raise InvalidQuery("cursor is not a cursor this API returned - at `cursor`")
    ms, _, job_id = raw.partition(":")
    return int(ms), job_id


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidQuery(f"limit must be an integer from 1 to {MAX_LIMIT} - at `limit`")
    return int(raw)


def _choice(raw: str | None, values: list[str], name: str) -> str | None:
    if raw is None:
        return None
    if raw not in values:
        raise InvalidQuery(f"{name} must be one of {', '.join(values)} - at `{name}`")
    return raw


def summary(item: HistoryItem) -> JobSummary:
    r = item.record
    created = r.created_ms or item.created_ms
    failure = _Failure()
    if r.result:
        try:
            failure = _failure_decoder.decode(r.result)
        except msgspec.DecodeError:
            pass
    return JobSummary(
        id=item.job_id,
        kind=r.kind,
        machine_id=item.machine_id,
        state=r.state,
        created_at=created,
        claimed_at=r.claimed_ms,
        finished_at=r.finished_ms,
        result=raw_json(r.result),
        waiting_until=r.claim_by if r.wait_ms else None,
        latency_ms=None if r.finished_ms is None else r.finished_ms - created,
        error=failure.error,
        code=failure.code,
    )


async def list_jobs(request: Request) -> Response:
    hub = hub_of(request)
    ns = await hub.authenticate(request)
    q = request.query_params
    machine_id = q.get("machineId")
    if machine_id is not None:
        if not machine_id:
            raise InvalidQuery("machineId must not be empty - at `machineId`")
        if not valid_machine_id(machine_id):
            raise MachineNotFound()
        await check_owner(hub, ns, machine_id, MachineNotFound)
    state = _choice(q.get("state"), [s.value for s in JobState], "state")
    # Path checks and session lists are answered, not recorded: only these kinds are listed.
    kind = _choice(q.get("kind"), [k.value for k in JobKind if k in CLAIMED_KINDS], "kind")
    limit = parse_limit(q.get("limit"))
    cursor = q.get("cursor")
    before = decode_cursor(cursor) if cursor else None

    def match(record: JobRecord) -> bool:
        return (state is None or record.state == state) and (kind is None or record.kind == kind)

    page = await hub.history.recent(ns, before=before, limit=limit, machine_id=machine_id, match=match)
    next_cursor = encode_cursor(*page.next_position) if page.next_position else None
    return json_response(JobPage(jobs=[summary(i) for i in page.items], next_cursor=next_cursor))
