"""What every machine route does: find the caller and the machine, read the body, run a job.

The checks run in the contract's order: 401, 503, 404/403, 400, then the work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.dispatch import JobSpec, Outcome, Verdict
from api.hub import Hub
from api.metrics import observe_job
from core.errors import (
    AccessDenied,
    HubNotConnected,
    InvalidBody,
    InvalidHeader,
    JobFailed,
    MachineNotFound,
    RequestError,
)
from core.names import valid_machine_id
from core.registry import Ownership
from core.schemas import JobState

T = TypeVar("T")
encoder = msgspec.json.Encoder()


def json_response(value: object, status_code: int = 200) -> Response:
    return Response(encoder.encode(value), status_code=status_code, media_type="application/json")


def raw_json(text: str) -> msgspec.Raw | None:
    """A JSON text stored by a machine, to embed as is, or None when it is not valid JSON."""
    if not text:
        return None
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None
    return msgspec.Raw(text.encode())


def decode(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """A request body, or InvalidBody saying which field is wrong and how."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidBody(str(exc)) from None
    except msgspec.DecodeError:
        raise InvalidBody("the body is not valid JSON") from None


async def target(hub: Hub, request: Request) -> tuple[str, str]:
    """The caller's namespace and the machine the path names (its existence is checked later)."""
    ns = await hub.authenticate(request)
    machine_id: str = request.path_params["machine_id"]
    if not valid_machine_id(machine_id):
        raise MachineNotFound()
    return ns, machine_id


async def check_owner(hub: Hub, ns: str, machine_id: str | None, missing: type[RequestError]) -> None:
    ownership = Ownership.UNKNOWN if machine_id is None else await hub.registry.ownership(ns, machine_id)
    if ownership is Ownership.UNKNOWN:
        raise missing()
    if ownership is Ownership.FOREIGN:
        raise AccessDenied()


async def parse(hub: Hub, request: Request, ns: str, machine_id: str, parser: Callable[[bytes], T]) -> T:
    """Decode and check the body; a 404 or 403 for the machine comes before any 400."""
    try:
        return parser(await request.body())
    except (InvalidBody, InvalidHeader):
        await check_owner(hub, ns, machine_id, MachineNotFound)
        raise


async def submit(
    hub: Hub, ns: str, machine_id: str, spec: JobSpec, *, digest: str = "", fingerprint: str = ""
) -> Outcome:
    # The scripts themselves find the machine (its heartbeat, its registration); only when they
    # queued nothing does the hub look further, to tell 403 and 404 from "offline".
    started = time.perf_counter()
    outcome = await hub.dispatcher.submit(ns, machine_id, spec, idempotency_digest=digest, fingerprint=fingerprint)
    if outcome.verdict is Verdict.UNAVAILABLE:
        await check_owner(hub, ns, machine_id, MachineNotFound)
        outcome = Outcome(outcome.job_id, Verdict.OFFLINE)
    if outcome.verdict is Verdict.OFFLINE and hub.inbox.outages.remaining_s() > 0:
        # Redis failed this hub less than a heartbeat TTL ago: the heartbeat may have been lost
        # with it (a failover), not the machine, whose agent beats again within that time.
        raise HubNotConnected()
    label = outcome.state.value if outcome.verdict is Verdict.DONE and outcome.state else outcome.verdict.value
    observe_job(hub, spec.kind.value, label, time.perf_counter() - started)
    return outcome


class Reported(Protocol):
    """A job result that can say why it failed."""

    error: str | None
    code: str | None


R = TypeVar("R", bound=Reported)


def read_result(machine_id: str, outcome: Outcome, failure: type[JobFailed], decoder: msgspec.json.Decoder[R]) -> R:
    """The result of a read or stop job that succeeded; anything else raises `failure` (500)."""
    if outcome.verdict is Verdict.OFFLINE:
        raise failure(f"machine {machine_id} is offline", code="machine_offline")
    if outcome.verdict is Verdict.NOT_STARTED:
        raise failure("the machine did not take the job in time", code="not_started")
    if outcome.verdict is Verdict.UNKNOWN:
        raise failure("the machine did not answer in time", code="timeout")
    try:
        result = decoder.decode(outcome.result)
    except msgspec.DecodeError:
        raise failure("the machine sent an answer this hub cannot read", code="bad_result") from None
    if outcome.state is not JobState.SUCCEEDED:
        raise failure(result.error or "the job failed on the machine", code=result.code or "job_failed")
    return result
