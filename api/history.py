"""GET /api/jobs: the namespace's recent jobs, newest first, filtered and paginated.

Reads the machines' history ZSETs and job hashes only (core.history.JobHistory.recent). The cursor is
opaque to clients: base64url of "<created ms>:<job id>" of the last job of the previous page.
"""

from __future__ import annotations

import base64
import binascii

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.hub import hub_of
from api.requests import check_owner, json_response
from core.errors import InvalidQuery, MachineNotFound
from core.history import HistoryItem
from core.names import valid_machine_id
from core.schemas import JobKind, JobPage, JobState, JobSummary

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
FILTERED_BATCH = 200


class _Failure(msgspec.Struct):
    error: str | None = None
    code: str | None = None


_failure_decoder = msgspec.json.Decoder(_Failure)


def encode_cursor(created_ms: int, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_ms}:{job_id}".encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> tuple[int, str]:
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        ms, sep, job_id = text.partition(":")
        if not sep or not job_id or not ms.isdigit():
            raise ValueError(text)
        return int(ms), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidQuery("cursor is not a cursor this API returned - at `cursor`") from None


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


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)


def summary(item: HistoryItem) -> JobSummary:
    r = item.record
    created = _int(r.get("createdMs")) or item.created_ms
    finished = _int(r.get("finishedMs"))
    result = r.get("result")
    failure = _Failure()
    if result:
        try:
            failure = _failure_decoder.decode(result)
        except msgspec.DecodeError:
            pass
    return JobSummary(
        id=item.job_id,
        kind=JobKind(r["kind"].decode()),
        machine_id=item.machine_id,
        state=JobState(r["state"].decode()),
        created_at=created,
        claimed_at=_int(r.get("claimedMs")),
        finished_at=finished,
        result=msgspec.Raw(result) if result else None,
        latency_ms=None if finished is None else finished - created,
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
    kind = _choice(q.get("kind"), [k.value for k in JobKind], "kind")
    limit = parse_limit(q.get("limit"))
    cursor = q.get("cursor")
    before = decode_cursor(cursor) if cursor else None
    machine_ids = [machine_id] if machine_id is not None else await hub.registry.machine_ids(ns)
    kinds = {k.value.encode() for k in JobKind}
    states = {s.value.encode() for s in JobState}

    def match(record: dict[str, bytes]) -> bool:
        if record["kind"] not in kinds or record["state"] not in states:
            return False  # written by a newer agent or hub: not listed by this one
        if state is not None and record["state"] != state.encode():
            return False
        return kind is None or record["kind"] == kind.encode()

    filtered = state is not None or kind is not None
    items, more = await hub.history.recent(
        ns,
        machine_ids,
        before=before,
        limit=limit,
        match=match,
        batch=FILTERED_BATCH if filtered else limit + 1,
    )
    next_cursor = encode_cursor(*items[-1].position) if more and items else None
    return json_response(JobPage(jobs=[summary(i) for i in items], next_cursor=next_cursor))
