"""The machines routes of HAPI's API: list the online machines, spawn a session, check paths."""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.dispatch import JobSpec, Outcome, Verdict
from api.hub import hub_of
from api.machines import machine, machine_status
from api.requests import decode, encoder, json_response, parse, read_result, submit, target
from core.errors import InvalidBody, InvalidHeader, InvalidQuery, PathCheckFailed
from core.listing import MAX_PAGE, machine_page
from core.machine_schemas import MachineList, MachineStatusList
from core.names import valid_machine_id, worktree_slug
from core.schemas import (
    MAX_PATH_BYTES,
    MAX_PROMPT_BYTES,
    MAX_WAIT_FOR_MACHINE_S,
    JobKind,
    PathsRequest,
    PathsResult,
    Queued,
    SpawnOrder,
    SpawnRecord,
    SpawnRequest,
    SpawnResponse,
    SpawnResult,
)
from core.settings import Settings

_spawn_decoder = msgspec.json.Decoder(SpawnOrder)
paths_decoder = msgspec.json.Decoder(PathsRequest)
_spawn_result_decoder = msgspec.json.Decoder(SpawnResult)
paths_result_decoder = msgspec.json.Decoder(PathsResult)
MAX_IDEMPOTENCY_KEY = 255
S = TypeVar("S", bound=SpawnOrder)


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
    offline = _include_offline(request)
    q = request.query_params
    limit = page_limit(q.get("limit"))
    after = decode_cursor(q["cursor"]) if q.get("cursor") else None
    page = await machine_page(hub.registry, ns, after=after, limit=limit, online_only=not offline)
    cursor = encode_cursor(page.next_after) if page.next_after is not None else None
    if offline:
        return json_response(MachineStatusList(machines=[machine_status(ns, r) for r in page.rows], next_cursor=cursor))
    machines = [m for m in (machine(ns, r) for r in page.rows) if m is not None]
    return json_response(MachineList(machines=machines, next_cursor=cursor))


def page_limit(raw: str | None) -> int:
    if raw is None:
        return MAX_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidQuery(f"limit must be an integer from 1 to {MAX_PAGE} - at `limit`")
    return int(raw)


def encode_cursor(machine_id: str) -> str:
    return base64.urlsafe_b64encode(machine_id.encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> str:
    try:
        machine_id = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        machine_id = ""
    if not valid_machine_id(machine_id):
        raise InvalidQuery("cursor is not a cursor this API returned - at `cursor`")
    return machine_id


def spawn_args(raw: bytes, decoder: msgspec.json.Decoder[S]) -> S:
    """A spawn body (SpawnOrder or a subtype), checked beyond its types."""
    body = decode(raw, decoder)
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
    wait = body.wait_for_machine_s
    if wait is not None and (not wait.is_integer() or not 1 <= wait <= MAX_WAIT_FOR_MACHINE_S):
        raise InvalidBody(
            f"waitForMachineS must be whole seconds from 1 to {MAX_WAIT_FOR_MACHINE_S} - at `$.waitForMachineS`"
        )
    model = body.model.strip() if body.model is not None else None
    if model is not None and (not model or model.startswith("-")):
        # The agent passes it stripped, as one argument of the CLI: a leading '-' would make it an option.
        raise InvalidBody("model must not be empty or start with '-' - at `$.model`")
    # A whole number, so 60 and 60.0 are one body (one Idempotency-Key fingerprint).
    return msgspec.structs.replace(body, directory=directory, wait_for_machine_s=None if wait is None else int(wait))


def record_args(body: SpawnRequest) -> bytes:
    """What the job record keeps: everything but the prompt's text (its size and SHA-256 instead)."""
    fields = msgspec.structs.asdict(body) | {"prompt": None}
    if body.prompt is not None:
        prompt = body.prompt.encode()
        fields |= {"prompt_bytes": len(prompt), "prompt_sha256": hashlib.sha256(prompt).hexdigest()}
    return encoder.encode(SpawnRecord(**fields))


def idempotency(request: Request, args: bytes) -> tuple[str, str]:
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

    def parser(raw: bytes) -> tuple[SpawnOrder, str, str]:
        order = spawn_args(raw, _spawn_decoder)
        return order, *idempotency(request, encoder.encode(order))

    order, digest, fingerprint = await parse(hub, request, ns, machine_id, parser)
    spec = spawn_spec(hub.settings, machine_id, order)
    outcome = await submit(hub, ns, machine_id, spec, digest=digest, fingerprint=fingerprint)
    if outcome.verdict is Verdict.WAITING:
        return json_response(Queued(job_id=outcome.job_id, state="queued"), status_code=202)
    return json_response(spawn_response(outcome, machine_id))


def spawn_spec(settings: Settings, machine_id: str, order: SpawnOrder) -> JobSpec:
    body = order.spawn()
    return JobSpec(
        JobKind.SPAWN,
        encoder.encode(body),
        settings.spawn_claim_timeout_s,
        settings.spawn_timeout_s,
        settings.job_retention_s,
        encoder.encode(_offline(machine_id)),
        record_args=record_args(body),
        wait_s=int(order.wait_for_machine_s or 0),
    )


def _offline(machine_id: str) -> SpawnResult:
    return SpawnResult(success=False, error=f"Machine {machine_id} is offline", code="machine_offline")


def spawn_response(outcome: Outcome, machine_id: str) -> SpawnResponse:
    if outcome.verdict is Verdict.DONE:
        try:
            result = _spawn_result_decoder.decode(outcome.result)
        except msgspec.DecodeError:
            result = SpawnResult(success=False, error="The agent sent a result this hub cannot read", code="bad_result")
    elif outcome.verdict is Verdict.OFFLINE:
        result = _offline(machine_id)
    elif outcome.verdict is Verdict.DRAINING:
        result = SpawnResult(
            success=False, code="machine_draining", error="The machine is drained: it takes no new spawns"
        )
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
    # A drained machine's spawn made no job at all: no id to poll.
    job_id = "" if outcome.verdict is Verdict.DRAINING else outcome.job_id
    return SpawnResponse(**msgspec.structs.asdict(result), job_id=job_id)


def normalize_paths(paths: list[str]) -> list[str]:
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
    paths = await parse(hub, request, ns, machine_id, lambda raw: normalize_paths(decode(raw, paths_decoder).paths))
    settings = hub.settings
    spec = JobSpec(
        JobKind.PATHS,
        encoder.encode(PathsRequest(paths=paths)),
        settings.paths_timeout_s,
        settings.paths_timeout_s,
        0.0,  # read-only: no record to keep
        b"null",
    )
    result = read_result(machine_id, await submit(hub, ns, machine_id, spec), PathCheckFailed, paths_result_decoder)
    return json_response({"exists": {p: result.exists.get(p, False) for p in paths}})
