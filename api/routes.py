"""The machines routes of HAPI's API: list the online machines, spawn a session, check paths."""

from __future__ import annotations

import hashlib

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.dispatch import JobSpec, Outcome, Verdict
from api.hub import hub_of
from api.requests import decode, encoder, json_response, parse, read_result, submit, target
from core.errors import InvalidBody, InvalidHeader, InvalidQuery, PathCheckFailed
from core.names import worktree_slug
from core.schemas import (
    MAX_PATH_BYTES,
    MAX_PROMPT_BYTES,
    JobKind,
    MachineList,
    MachineStatusList,
    PathsRequest,
    PathsResult,
    SpawnRequest,
    SpawnResponse,
    SpawnResult,
)

_spawn_decoder = msgspec.json.Decoder(SpawnRequest)
_paths_decoder = msgspec.json.Decoder(PathsRequest)
_spawn_result_decoder = msgspec.json.Decoder(SpawnResult)
_paths_result_decoder = msgspec.json.Decoder(PathsResult)
MAX_IDEMPOTENCY_KEY = 255


INCLUDE_VALUES = ("offline",)


def _include_offline(request: Request) -> bool:
    """`?include=offline` (repeatable or comma-separated); any other value is a 400."""
    values = [v.strip() for raw in request.query_params.getlist("include") for v in raw.split(",")]
    for value in values:
        if value not in INCLUDE_VALUES:
            raise InvalidQuery(f"include must be one of {', '.join(INCLUDE_VALUES)}, not {value!r} - at `include`")
    return bool(values)


async def list_machines(request: Request) -> Response:
    hub = hub_of(request)
    ns = await hub.authenticate(request)
    if _include_offline(request):
        return json_response(MachineStatusList(machines=await hub.registry.statuses(ns)))
    return json_response(MachineList(machines=await hub.registry.online(ns)))


def _spawn_args(raw: bytes) -> bytes:
    body = decode(raw, _spawn_decoder)
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
    return encoder.encode(msgspec.structs.replace(body, directory=directory))


def _idempotency(request: Request, args: bytes) -> tuple[str, str]:
    """SHA-256 of the Idempotency-Key and of the normalized body, or two empty strings."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return "", ""
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        raise InvalidHeader(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return hashlib.sha256(key.encode()).hexdigest(), hashlib.sha256(args).hexdigest()


async def spawn(request: Request) -> Response:
    hub = hub_of(request)
    ns, machine_id = await target(hub, request)

    def parser(raw: bytes) -> tuple[bytes, str, str]:
        args = _spawn_args(raw)
        return args, *_idempotency(request, args)

    args, digest, fingerprint = await parse(hub, request, ns, machine_id, parser)
    settings = hub.settings
    offline = SpawnResult(success=False, error=f"Machine {machine_id} is offline", code="machine_offline")
    spec = JobSpec(
        JobKind.SPAWN,
        args,
        settings.spawn_claim_timeout_s,
        settings.spawn_timeout_s,
        settings.job_retention_s,
        encoder.encode(offline),
    )
    outcome = await submit(hub, ns, machine_id, spec, digest=digest, fingerprint=fingerprint)
    return json_response(_spawn_response(outcome, offline))


def _spawn_response(outcome: Outcome, offline: SpawnResult) -> SpawnResponse:
    if outcome.verdict is Verdict.DONE:
        try:
            result = _spawn_result_decoder.decode(outcome.result)
        except msgspec.DecodeError:
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


def _normalize_paths(paths: list[str]) -> list[str]:
    """Trimmed, in first-seen order, duplicates collapsed."""
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
    ns, machine_id = await target(hub, request)
    paths = await parse(hub, request, ns, machine_id, lambda raw: _normalize_paths(decode(raw, _paths_decoder).paths))
    settings = hub.settings
    spec = JobSpec(
        JobKind.PATHS,
        encoder.encode(PathsRequest(paths=paths)),
        settings.paths_timeout_s,
        settings.paths_timeout_s,
        settings.paths_job_retention_s,
        b"null",
    )
    result = read_result(machine_id, await submit(hub, ns, machine_id, spec), PathCheckFailed, _paths_result_decoder)
    return json_response({"exists": {p: result.exists.get(p, False) for p in paths}})
