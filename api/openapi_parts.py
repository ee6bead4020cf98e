"""The building blocks of the API description (api/openapi.py and its parts).

References to the schemas, JSON answers, and error answers with one example per body the route
can send for that status, made by `api.errors.error_body` from the exceptions the routes raise,
so they show the bodies the hub really sends (a limit's `limit` and Retry-After included); and the
answers many routes share: authentication, bodies, a machine of another namespace.
"""

from __future__ import annotations

import re
from typing import Any

from api.errors import error_body
from api.limits import BUSY_RETRY_AFTER_S
from core import errors
from core.listing import MAX_PAGE
from core.settings import Settings

SECURED: list[dict[str, list[str]]] = [{"bearer": []}]
REF = "#/components/schemas/{name}"
# The examples show what a hub with the default settings says.
DEFAULTS = Settings()
MACHINE_EXAMPLE = "machine_3f2a"


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def json_answer(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(name)}}}


def object_answer(description: str, properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "required": list(properties), "properties": properties}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


Answer = errors.RequestError | dict[str, str]


def _example_name(body: dict[str, str]) -> str:
    """A readable, unique key: the limit or the error, the job's code, the field at fault."""
    field = re.search(r"at `([^`]+)`$", body.get("detail", ""))
    parts = [body.get("limit") or body["error"].partition(": ")[0], body.get("code", ""), field[1] if field else ""]
    return re.sub(r"[^a-z0-9]+", "_", " ".join(parts).lower()).strip("_")


def error_answer(description: str, *answers: Answer) -> dict[str, Any]:
    """An error response with one example per body the route can send for this status, and
    Retry-After when a limit's answer carries one (required when every answer does)."""
    response = json_answer("Error", description)
    bodies = [error_body(a) if isinstance(a, errors.RequestError) else a for a in answers]
    examples = {_example_name(body): {"value": body} for body in bodies}
    if len(examples) != len(bodies):
        raise ValueError(f"two examples of {description!r} share a name: {sorted(examples)}")
    response["content"]["application/json"]["examples"] = examples
    retrying = [a for a in answers if isinstance(a, errors.LimitExceeded) and a.retry_after_s is not None]
    if retrying:
        response["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before trying again",
                "required": len(retrying) == len(answers),
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response


HUB_BUSY = errors.HubBusy(
    f"this hub is answering its limit of {DEFAULTS.max_requests_in_flight} requests at once; retry shortly",
    limit="max_requests_in_flight",
    retry_after_s=BUSY_RETRY_AFTER_S,
)
MACHINE_BUSY = errors.MachineBusy(
    f"machine {MACHINE_EXAMPLE} has {DEFAULTS.max_queued_jobs} jobs waiting", limit="max_queued_jobs", retry_after_s=1
)
AUTH = {
    "401": error_answer(
        "No token, or one that grants no namespace (Missing authorization token / Invalid token)",
        errors.MissingToken(),
        errors.InvalidToken(),
    ),
    "503": error_answer(
        "Redis unreachable, stalled, loading or read-only (Hub not connected), or this hub answers its limit of "
        "requests at once (`limit` max_requests_in_flight)",
        errors.HubNotConnected(),
        HUB_BUSY,
    ),
}
BODY = {
    "408": error_answer(
        "The body did not arrive within MACHINE_HUB_BODY_TIMEOUT_S (`limit` body_timeout_s); the connection closes",
        errors.RequestTimeout(
            f"the request body did not arrive within {DEFAULTS.body_timeout_s:g} s", limit="body_timeout_s"
        ),
    ),
    "413": error_answer(
        "The body is over MACHINE_HUB_MAX_BODY_BYTES",
        errors.BodyTooLarge(f"the limit is {DEFAULTS.max_body_bytes} bytes"),
    ),
}
MACHINE = {
    "403": error_answer("The machine belongs to another namespace", errors.AccessDenied()),
    "404": error_answer("No machine with this id was ever registered", errors.MachineNotFound()),
}
# The machine's mailbox already holds MACHINE_HUB_MAX_QUEUED_JOBS envelopes: nothing was queued.
MAILBOX_FULL = error_answer(
    "The machine's mailbox is full (`limit` max_queued_jobs): nothing was queued; retry after Retry-After",
    MACHINE_BUSY,
)


def job_failed(failure: type[errors.JobFailed], *, claimed: bool = False) -> dict[str, Any]:
    """The 500 of a path check, session list or stop (api/requests.py, read_result). Only a
    claimed job (a stop) has a claim deadline, so only it can be not_started."""
    answers = [failure(f"machine {MACHINE_EXAMPLE} is offline", code="machine_offline")]
    if claimed:
        answers.append(failure("the machine did not take the job in time", code="not_started"))
    answers.append(failure("the machine did not answer in time", code="timeout"))
    return error_answer(
        "No usable answer: code machine_offline (nothing queued), "
        + ("not_started (not taken in time), " if claimed else "")
        + "timeout (no answer in time), or the failure the machine reported",
        *answers,
    )


def param(name: str, where: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema}


MACHINE_ID = param("machine_id", "path", "Machine id", {"type": "string"}, True)
STRING = {"type": "string"}
BAD_LIMIT = errors.InvalidQuery(f"limit must be an integer from 1 to {MAX_PAGE} - at `limit`")


def paging(limit: str, cursor: str) -> list[dict[str, Any]]:
    """The `limit` and `cursor` query parameters of a paged route (core.listing), described."""
    page = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": MAX_PAGE}
    return [param("limit", "query", limit, page), param("cursor", "query", cursor, STRING)]


def json_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref(name)}}}
