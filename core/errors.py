"""The one exception hierarchy of machine-hub; the hub maps it to HTTP in one table.

    MachineHubError
    ├── SettingsError          bad configuration; stops a process at start
    ├── RegistrationError      a machine id already belongs to another namespace
    ├── ScriptsNotLoaded       Redis lacks a script this client may not load (a machine's user)
    ├── AdminError             an operator command cannot be carried out (machine add, setup)
    └── RequestError           raised while answering an HTTP request
        ├── MissingToken       401
        ├── InvalidToken       401
        ├── HubNotConnected    503 (Redis unreachable)
        ├── MachineNotFound    404
        ├── JobNotFound        404
        ├── AccessDenied       403
        ├── InvalidBody        400
        ├── InvalidHeader      400
        ├── InvalidQuery       400
        ├── SessionNotFound    404
        ├── WebhookNotFound    404
        ├── IdempotencyMismatch 422
        ├── LimitExceeded      a limit of the hub; the body names it (`limit`)
        │   ├── RateLimited        429 + Retry-After (spawns per minute)
        │   │   └── MachineBusy    429 + Retry-After (the machine's mailbox is full)
        │   ├── TooManyStreams     429 + Retry-After (event streams of a namespace or token)
        │   ├── HubStreamsFull     503 + Retry-After (event streams of the hub process)
        │   ├── HubBusy            503 + Retry-After (requests in flight)
        │   ├── TooManyWebhooks    409 (the namespace has max_webhooks_per_namespace)
        │   ├── BodyTooLarge       413
        │   └── RequestTimeout     408 (the body did not arrive in time)
        └── JobFailed          500: offline, no answer in time, or failed on the machine
            ├── PathCheckFailed
            ├── SessionsFailed
            ├── StopFailed
            └── DirectoryFailed

Failures of a job itself (a spawn that could not start) are data on the wire, not exceptions.
"""

from __future__ import annotations


class MachineHubError(Exception):
    """Base of every error machine-hub raises on purpose."""


class SettingsError(MachineHubError):
    """The configuration cannot be used."""


class RegistrationError(MachineHubError):
    """This machine id is registered in another namespace."""


class ScriptsNotLoaded(MachineHubError):
    """Redis restarted and nobody allowed to load scripts has done so yet; try again shortly."""


class AdminError(MachineHubError):
    """An operator command failed in a way the operator can fix (e.g. the URL lacks admin rights)."""


class RequestError(MachineHubError):
    """An HTTP request cannot be answered with success; `message` is the body's `error`."""

    message = "Request failed"

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        super().__init__(detail or self.message)
        self.detail = detail
        self.code = code


class MissingToken(RequestError):
    message = "Missing authorization token"


class InvalidToken(RequestError):
    message = "Invalid token"


class HubNotConnected(RequestError):
    message = "Hub not connected"


class MachineNotFound(RequestError):
    message = "Machine not found"


class JobNotFound(RequestError):
    message = "Job not found"


class AccessDenied(RequestError):
    message = "Access denied"


class InvalidBody(RequestError):
    message = "Invalid body"


class InvalidHeader(RequestError):
    message = "Invalid header"


class InvalidQuery(RequestError):
    message = "Invalid query"


class IdempotencyMismatch(RequestError):
    message = "Idempotency-Key was already used with a different body"


class SessionNotFound(RequestError):
    message = "Session not found"


class WebhookNotFound(RequestError):
    message = "Webhook not found"


class JobFailed(RequestError):
    """A read or stop job got no usable answer; the body's error is `<message>: <detail>`."""

    message = "Failed"


class PathCheckFailed(JobFailed):
    message = "Failed to check paths"


class SessionsFailed(JobFailed):
    message = "Failed to list sessions"


class StopFailed(JobFailed):
    message = "Failed to stop session"


class DirectoryFailed(JobFailed):
    message = "Failed to list directory"


class LimitExceeded(RequestError):
    """A limit of the hub refused the request: `limit` is the setting's name, so the caller (and
    the operator reading the body) knows which one; `retry_after_s` becomes a Retry-After header."""

    message = "Limit exceeded"

    def __init__(self, detail: str, *, limit: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.limit = limit
        self.retry_after_s = retry_after_s


class BodyTooLarge(LimitExceeded):
    message = "Request body too large"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, limit="max_body_bytes")


class RateLimited(LimitExceeded):
    message = "Too many requests"


class TooManyStreams(LimitExceeded):
    message = "Too many event streams"


class HubStreamsFull(LimitExceeded):
    message = "Too many event streams"


class HubBusy(LimitExceeded):
    message = "Too many requests in flight"


class TooManyWebhooks(LimitExceeded):
    """The namespace already has as many webhooks as it may: remove one first."""

    message = "Too many webhooks"


class RequestTimeout(LimitExceeded):
    message = "Request timeout"


class MachineBusy(RateLimited):
    """The machine already has `max_queued_jobs` jobs waiting in its mailbox."""
