"""The HTTP routes of the machines API. Checks run in the contract's order: 401, 503, 404/403, 400."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.dispatch import JobSpec, Outcome, Verdict
from api.hub import Hub, hub_of
from core.errors import (
    AccessDenied,
    InvalidBody,
    InvalidHeader,
    JobNotFound,
    MachineNotFound,
    PathCheckFailed,
    RequestError,
)
from core.names import job_machine, valid_machine_id, worktree_slug
from core.registry import Ownership
from core.schemas import (
    MAX_PATH_BYTES,
    MAX_PROMPT_BYTES,
    JobKind,
    JobState,
    JobView,
    MachineList,
    PathsRequest,
    PathsResult,
    SpawnRequest,
    SpawnResponse,
    SpawnResult,
)

T = TypeVar("T")
_encoder = msgspec.json.Encoder()
_spawn_decoder = msgspec.json.Decoder(SpawnRequest)
_paths_decoder = msgspec.json.Decoder(PathsRequest)
_spawn_result_decoder = msgspec.json.Decoder(SpawnResult)
_paths_result_decoder = msgspec.json.Decoder(PathsResult)
MAX_IDEMPOTENCY_KEY = 255


def json_response(value: object, status_code: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status_code, media_type="application/json")


async def list_machines(request: Request) -> Response:
    hub = hub_of(request)
    ns = await hub.authenticate(request)
    return json_response(MachineList(machines=await hub.registry.online(ns)))


async def _target(hub: Hub, request: Request) -> tuple[str, str]:
    """The caller's namespace and the machine the path names (its existence is checked later)."""
    ns = await hub.authenticate(request)
    machine_id: str = request.path_params["machine_id"]
    if not valid_machine_id(machine_id):
        raise MachineNotFound()
    return ns, machine_id


async def _parse(hub: Hub, request: Request, ns: str, machine_id: str, parse: Callable[[bytes], T]) -> T:
    """Decode and check the body; a 404 or 403 for the machine comes before any 400."""
    try:
        return parse(await request.body())
    except (InvalidBody, InvalidHeader):
        await _check_owner(hub, ns, machine_id, MachineNotFound)
        raise


async def _submit(
    hub: Hub, ns: str, machine_id: str, spec: JobSpec, *, digest: str = "", fingerprint: str = ""
) -> Outcome:
    # The enqueue script itself checks that the namespace has this machine; only on a miss does
    # the hub look further, to tell 403 from 404.
    outcome = await hub.dispatcher.submit(ns, machine_id, spec, idempotency_digest=digest, fingerprint=fingerprint)
    if outcome.verdict is Verdict.UNREGISTERED:
        await _check_owner(hub, ns, machine_id, MachineNotFound)
        return Outcome(outcome.job_id, Verdict.OFFLINE)  # it registered meanwhile, so it was not online
    return outcome


async def _check_owner(hub: Hub, ns: str, machine_id: str | None, missing: type[RequestError]) -> None:
    ownership = Ownership.UNKNOWN if machine_id is None else await hub.registry.ownership(ns, machine_id)
    if ownership is Ownership.UNKNOWN:
        raise missing()
    if ownership is Ownership.FOREIGN:
        raise AccessDenied()


async def get_job(request: Request) -> Response:
    hub = hub_of(request)
    ns = await hub.authenticate(request)
    job_id: str = request.path_params["job_id"]
    machine_id = job_machine(job_id)
    await _check_owner(hub, ns, machine_id, JobNotFound)
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


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)


def _decode(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidBody(str(exc)) from None
    except msgspec.DecodeError:
        raise InvalidBody("the body is not valid JSON") from None


def _idempotency(request: Request, body: bytes) -> tuple[str, str]:
    key = request.headers.get("idempotency-key")
    if key is None:
        return "", ""
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        raise InvalidHeader(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return hashlib.sha256(key.encode()).hexdigest(), hashlib.sha256(body).hexdigest()


def _spawn_args(raw: bytes) -> tuple[SpawnRequest, bytes]:
    body = _decode(raw, _spawn_decoder)
    directory = body.directory.strip()
    if not directory:
        raise InvalidBody("directory must not be empty - at `$.directory`")
    if body.session_type == "worktree":
        if body.worktree_name is None or not body.worktree_name.strip():
            raise InvalidBody("worktreeName is required when sessionType is worktree - at `$.worktreeName`")
        if not worktree_slug(body.worktree_name):
            raise InvalidBody("worktreeName yields no usable branch name (use letters or digits) - at `$.worktreeName`")
    if body.prompt is not None and len(body.prompt.encode()) > MAX_PROMPT_BYTES:
        raise InvalidBody(f"prompt is longer than {MAX_PROMPT_BYTES} bytes - at `$.prompt`")
    body = msgspec.structs.replace(body, directory=directory)
    return body, _encoder.encode(body)


async def spawn(request: Request) -> Response:
    hub = hub_of(request)
    ns, machine_id = await _target(hub, request)

    def parse(raw: bytes) -> tuple[bytes, str, str]:
        _, args = _spawn_args(raw)
        return args, *_idempotency(request, args)

    args, digest, fingerprint = await _parse(hub, request, ns, machine_id, parse)
    settings = hub.settings
    offline = SpawnResult(success=False, error=f"Machine {machine_id} is offline", code="machine_offline")
    spec = JobSpec(
        JobKind.SPAWN,
        args,
        settings.spawn_claim_timeout_s,
        settings.spawn_timeout_s,
        settings.job_retention_s,
        _encoder.encode(offline),
    )
    outcome = await _submit(hub, ns, machine_id, spec, digest=digest, fingerprint=fingerprint)
    return json_response(_spawn_response(outcome, offline))


def _spawn_response(outcome: Outcome, offline: SpawnResult) -> SpawnResponse:
    if outcome.verdict is Verdict.DONE:
        result = _decode_result(outcome.result, _spawn_result_decoder)
        if result is None:
            result = SpawnResult(success=False, error="The agent sent a result this hub cannot read", code="bad_result")
    elif outcome.verdict is Verdict.OFFLINE:
        result = offline
    elif outcome.verdict is Verdict.NOT_STARTED:
        result = SpawnResult(
            success=False,
            code="not_started",
            error="The machine did not take the job before its deadline; it will never run",
        )
    else:
        result = SpawnResult(
            success=False,
            code="outcome_unknown",
            error="The machine took the job but did not answer in time; poll the job to learn its outcome",
        )
    return SpawnResponse(**msgspec.structs.asdict(result), job_id=outcome.job_id)


def _decode_result(raw: bytes, decoder: msgspec.json.Decoder[T]) -> T | None:
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def _normalize_paths(paths: list[str]) -> list[str]:
    out: dict[str, None] = {}
    for i, raw in enumerate(paths):
        path = raw.strip()
        if not path:
            raise InvalidBody(f"path must not be empty - at `$.paths[{i}]`")
        if len(path.encode()) > MAX_PATH_BYTES:
            raise InvalidBody(f"path is longer than {MAX_PATH_BYTES} bytes - at `$.paths[{i}]`")
        out[path] = None
    return list(out)


async def paths_exists(request: Request) -> Response:
    hub = hub_of(request)
    ns, machine_id = await _target(hub, request)
    paths = await _parse(hub, request, ns, machine_id, lambda raw: _normalize_paths(_decode(raw, _paths_decoder).paths))
    settings = hub.settings
    spec = JobSpec(
        JobKind.PATHS,
        _encoder.encode(PathsRequest(paths=paths)),
        settings.paths_timeout_s,
        settings.paths_timeout_s,
        settings.paths_job_retention_s,
        b"null",
    )
    outcome = await _submit(hub, ns, machine_id, spec)
    if outcome.verdict is Verdict.OFFLINE:
        raise PathCheckFailed(f"machine {machine_id} is offline", code="machine_offline")
    if outcome.verdict is Verdict.NOT_STARTED:
        raise PathCheckFailed("the machine did not take the check in time", code="not_started")
    if outcome.verdict is Verdict.UNKNOWN:
        raise PathCheckFailed("the machine did not answer in time", code="timeout")
    result = _decode_result(outcome.result, _paths_result_decoder)
    if result is None or outcome.state is not JobState.SUCCEEDED:
        reason = result.error if result and result.error else "the check failed on the machine"
        raise PathCheckFailed(reason, code=result.code if result and result.code else "check_failed")
    return json_response({"exists": {p: result.exists.get(p, False) for p in paths}})
