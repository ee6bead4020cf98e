"""The one table from machine-hub errors to HTTP responses."""

from __future__ import annotations

import logging

from redis import exceptions as redis_errors
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from core import errors

log = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # never sent (nobody listens); it labels the request in the metrics
UNAVAILABLE = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "BUSY", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN")
# What a Sentinel or Cluster client raises while a failover is under way (MasterNotFoundError
# is a ConnectionError already); redis-py strips the reply's code from these messages.
FAILING_OVER = (
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.SlotNotCoveredError,
    redis_errors.MasterDownError,
    redis_errors.ReadOnlyError,
)

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
    errors.WebhookNotFound: 404,
    errors.JobFailed: 500,
    errors.RateLimited: 429,
    errors.TooManyStreams: 429,
    errors.HubStreamsFull: 503,
    errors.HubBusy: 503,
    errors.TooManyWebhooks: 409,
    errors.RequestTimeout: 408,
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
    if isinstance(exc, errors.LimitExceeded):
        body["limit"] = exc.limit
    return body


def error_headers(exc: errors.RequestError) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(exc, errors.LimitExceeded) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, errors.RequestTimeout):
        headers["Connection"] = "close"  # the rest of a slow body is not worth waiting for
    return headers


def error_response(exc: errors.RequestError) -> JSONResponse:
    status = next(code for cls, code in STATUS.items() if isinstance(exc, cls))
    return JSONResponse(error_body(exc), status_code=status, headers=error_headers(exc))


async def request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.RequestError)
    if isinstance(exc, errors.LimitExceeded):  # every refusal counted once, here
        metrics = getattr(request.state, "metrics", None)
        if metrics is not None:
            metrics.refused(exc.limit, getattr(request.state, "namespace", None))
    return error_response(exc)


def unavailable(exc: BaseException) -> bool:
    """Redis is unreachable, stalled, loading, read-only, out of memory or failing over: the hub
    cannot serve right now (rather than: Redis refused what the hub asked)."""
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, *FAILING_OVER)):
        return True
    if isinstance(exc, redis_errors.RedisClusterException):  # no node answered, or a slot has no node
        return "cannot be connected" in str(exc)
    return isinstance(exc, redis_errors.RedisError) and str(exc).startswith(UNAVAILABLE)


async def redis_error(request: Request, exc: Exception) -> Response:
    if unavailable(exc):
        return error_response(errors.HubNotConnected())
    log.error("Redis refused a command: %s", exc, exc_info=exc)
    return JSONResponse({"error": "Internal error"}, status_code=500)


async def client_gone(request: Request, exc: Exception) -> Response:
    # The caller hung up while sending its body: nothing to answer, nothing wrong with the hub.
    log.debug("client disconnected before its request body arrived: %s %s", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED)


EXCEPTION_HANDLERS = {
    errors.RequestError: request_error,
    redis_errors.RedisError: redis_error,
    # Not a RedisError in redis-py: a cluster client that reached no node, or whose map of slots
    # lost one (a node is down); other RedisClusterExceptions are refusals, logged 500s.
    redis_errors.RedisClusterException: redis_error,
    ClientDisconnect: client_gone,
}
