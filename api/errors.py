"""The one table from machine-hub errors to HTTP responses."""

from __future__ import annotations

import logging

from redis import exceptions as redis_errors
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core import errors

log = logging.getLogger(__name__)
UNAVAILABLE = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "BUSY", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN")

STATUS: dict[type[errors.RequestError], int] = {
    errors.MissingToken: 401,
    errors.InvalidToken: 401,
    errors.HubNotConnected: 503,
    errors.MachineNotFound: 404,
    errors.JobNotFound: 404,
    errors.AccessDenied: 403,
    errors.InvalidBody: 400,
    errors.InvalidHeader: 400,
    errors.InvalidQuery: 400,
    errors.BodyTooLarge: 413,
    errors.IdempotencyMismatch: 422,
    errors.SessionNotFound: 404,
    errors.JobFailed: 500,
}


def error_body(exc: errors.RequestError) -> dict[str, str]:
    if isinstance(exc, errors.JobFailed):
        body = {"error": f"{exc.message}: {exc.detail}" if exc.detail else exc.message}
    else:
        body = {"error": exc.message}
        if exc.detail:
            body["detail"] = exc.detail
    if exc.code:
        body["code"] = exc.code
    return body


def error_response(exc: errors.RequestError) -> JSONResponse:
    status = next(code for cls, code in STATUS.items() if isinstance(exc, cls))
    return JSONResponse(error_body(exc), status_code=status)


async def request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.RequestError)
    return error_response(exc)


async def redis_error(request: Request, exc: Exception) -> Response:
    # Unreachable, stalled, loading, read-only or out of memory: the hub cannot serve right now.
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError) or str(exc).startswith(UNAVAILABLE):
        return error_response(errors.HubNotConnected())
    log.error("Redis refused a command: %s", exc, exc_info=exc)
    return JSONResponse({"error": "Internal error"}, status_code=500)


EXCEPTION_HANDLERS = {errors.RequestError: request_error, redis_errors.RedisError: redis_error}
