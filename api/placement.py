"""The fleet-wide routes: POST /api/paths/exists on every online machine, POST /api/spawn anywhere.

Both read the namespace's machines as the listing does (core.listing: one page, at most MAX_PAGE
machines, in id order) and check paths on all of them at once, so a request takes one path-check
deadline however many machines answer; its Redis cost grows with the machines it looks at.
"""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.dispatch import JobSpec, Verdict
from api.hub import Hub, hub_of
from api.requests import decode, encoder, json_response, read_result, submit
from api.routes import (
    decode_cursor,
    encode_cursor,
    idempotency,
    normalize_paths,
    page_limit,
    paths_decoder,
    paths_result_decoder,
    spawn_args,
    spawn_response,
    spawn_spec as machine_spawn_spec,
)
from core.errors import IdempotencyMismatch, InvalidBody, MachineBusy, PathCheckFailed
from core.listing import MAX_PAGE, MachineRow, machine_page, rows
from core.placement import (
    FleetPaths,
    PlacedQueued,
    PlacedSpawnRequest,
    PlacedSpawnResponse,
    Placement,
    check_placement,
    latest_seen,
    no_machine,
    preference,
    refusal,
)
from core.schemas import JobKind, PathsRequest

_placed_decoder = msgspec.json.Decoder(PlacedSpawnRequest)


async def check_paths(
    hub: Hub, ns: str, machine_ids: list[str], paths: list[str]
) -> tuple[dict[str, dict[str, bool]], dict[str, str]]:
    """Per machine, which paths exist; and the machines that gave no answer, with the reason's code."""
    s = hub.settings
    spec = JobSpec(
        JobKind.PATHS, encoder.encode(PathsRequest(paths=paths)), s.paths_timeout_s, s.paths_timeout_s, 0.0, b"null"
    )
    outcomes = await asyncio.gather(*(submit(hub, ns, m, spec) for m in machine_ids), return_exceptions=True)
    found: dict[str, dict[str, bool]] = {}
    unanswered: dict[str, str] = {}
    for machine_id, outcome in zip(machine_ids, outcomes, strict=True):
        if isinstance(outcome, MachineBusy):
            unanswered[machine_id] = "machine_busy"
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            try:
                result = read_result(machine_id, outcome, PathCheckFailed, paths_result_decoder)
            except PathCheckFailed as exc:
                unanswered[machine_id] = exc.code or "job_failed"
                continue
            found[machine_id] = {p: result.exists.get(p, False) for p in paths}
    return found, unanswered


async def paths_everywhere(request: Request) -> Response:
    """POST /api/paths/exists: the paths on every online machine of the namespace (one page)."""
    hub = hub_of(request)
    ns = await hub.authenticate(request)
    q = request.query_params
    limit = page_limit(q.get("limit"))
    after = decode_cursor(q["cursor"]) if q.get("cursor") else None
    paths = normalize_paths(decode(await request.body(), paths_decoder).paths)
    page = await machine_page(hub.registry, ns, after=after, limit=limit, online_only=True)
    found, unanswered = await check_paths(hub, ns, [r.machine_id for r in page.rows], paths)
    cursor = encode_cursor(page.next_after) if page.next_after is not None else None
    return json_response(FleetPaths(machines=found, unanswered=unanswered, next_cursor=cursor))


async def spawn_anywhere(request: Request) -> Response:
    """POST /api/spawn: the spawn on the machine that fits best, or why none does."""
    hub = hub_of(request)
    ns = await hub.authenticate(request)
    order = spawn_args(await request.body(), _placed_decoder)
    placement = order.placement or Placement()
    try:
        named = check_placement(placement)
    except ValueError as exc:
        raise InvalidBody(str(exc)) from None
    digest, fingerprint = idempotency(request, encoder.encode(order))
    if digest and (earlier := await _placed(hub, ns, digest, fingerprint)) is not None:
        return await _spawn_on(hub, ns, earlier, order, digest, fingerprint)
    waits = order.wait_for_machine_s is not None
    considered = await _considered(hub, ns, named, include_offline=waits)
    refused: dict[str, str] = {}
    fits: list[MachineRow] = []
    asleep: list[MachineRow] = []  # offline machines that would fit: a waiting spawn may go to one
    for row, registered in considered:
        reason = refusal(row, order.agent, placement.labels) if registered else "not_found"
        if reason == "offline" and refusal(row, order.agent, placement.labels, offline_ok=True) is None:
            asleep.append(row)
        if reason is None:
            fits.append(row)
        else:
            refused[row.machine_id] = reason
    chosen = await _with_directory(hub, ns, fits, order.directory, refused)
    if chosen is None and waits:
        chosen = latest_seen(asleep)
    if chosen is None:
        return json_response(no_machine(refused, len(considered)))
    machine_id = chosen.machine_id
    if digest:
        machine_id = await _place(hub, ns, digest, fingerprint, machine_id)
    return await _spawn_on(hub, ns, machine_id, order, digest, fingerprint)


async def _considered(
    hub: Hub, ns: str, named: list[str] | None, *, include_offline: bool
) -> list[tuple[MachineRow, bool]]:
    """The machines to judge, each with whether it is this namespace's."""
    if named is None:
        page = await machine_page(hub.registry, ns, after=None, limit=MAX_PAGE, online_only=not include_offline)
        return [(row, True) for row in page.rows]
    async with hub.redis.pipeline(transaction=False) as pipe:
        for machine_id in named:
            pipe.exists(hub.registry.keys.reg(ns, machine_id))
        registered = await pipe.execute()
    return list(zip(await rows(hub.registry, ns, named), (bool(r) for r in registered), strict=True))


async def _with_directory(
    hub: Hub, ns: str, fits: list[MachineRow], directory: str, refused: dict[str, str]
) -> MachineRow | None:
    """The preferred machine of `fits` where the directory exists; the others join `refused`."""
    if not fits:
        return None
    found, unanswered = await check_paths(hub, ns, [r.machine_id for r in fits], [directory])
    ok = []
    for row in fits:
        if row.machine_id in unanswered:
            refused[row.machine_id] = "no_answer"
        elif not found[row.machine_id][directory]:
            refused[row.machine_id] = "directory_not_found"
        else:
            ok.append(row)
    return min(ok, key=preference, default=None)


async def _placed(hub: Hub, ns: str, digest: str, fingerprint: str) -> str | None:
    """The machine an earlier request with this Idempotency-Key was placed on, if any."""
    raw = await hub.redis.get(hub.registry.keys.placed(ns, digest))
    if raw is None:
        return None
    machine_id, _, earlier = bytes(raw).decode().partition(" ")
    if earlier != fingerprint:
        raise IdempotencyMismatch()
    return machine_id


async def _place(hub: Hub, ns: str, digest: str, fingerprint: str, machine_id: str) -> str:
    """Record the choice for this Idempotency-Key; a concurrent request's earlier choice wins."""
    key = hub.registry.keys.placed(ns, digest)
    ttl_ms = int(hub.settings.idempotency_ttl_s * 1000)
    if await hub.redis.set(key, f"{machine_id} {fingerprint}", nx=True, px=ttl_ms):
        return machine_id
    return await _placed(hub, ns, digest, fingerprint) or machine_id


async def _spawn_on(
    hub: Hub, ns: str, machine_id: str, order: PlacedSpawnRequest, digest: str, fingerprint: str
) -> Response:
    spec = machine_spawn_spec(hub.settings, machine_id, order)
    outcome = await submit(hub, ns, machine_id, spec, digest=digest, fingerprint=fingerprint)
    if outcome.verdict is Verdict.WAITING:
        return json_response(
            PlacedQueued(job_id=outcome.job_id, state="queued", machine_id=machine_id), status_code=202
        )
    answer = spawn_response(outcome, machine_id)
    return json_response(PlacedSpawnResponse(**msgspec.structs.asdict(answer), machine_id=machine_id))
