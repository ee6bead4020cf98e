"""The one exception hierarchy of machine-hub; the hub maps it to HTTP in one table.

    MachineHubError
    ├── SettingsError          bad configuration; stops a process at start
    ├── RegistrationError      a machine id already belongs to another namespace
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
        ├── BodyTooLarge       413
        ├── SessionNotFound    404
        ├── IdempotencyMismatch 422
        └── JobFailed          500: offline, no answer in time, or failed on the machine
            ├── PathCheckFailed
            ├── SessionsFailed
            └── StopFailed

Failures of a job itself (a spawn that could not start) are data on the wire, not exceptions.
"""

from __future__ import annotations


class MachineHubError(Exception):
    """Base of every error machine-hub raises on purpose."""


class SettingsError(MachineHubError):
    """The configuration cannot be used."""


class RegistrationError(MachineHubError):
    """This machine id is registered in another namespace."""


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


class BodyTooLarge(RequestError):
    message = "Request body too large"


class IdempotencyMismatch(RequestError):
    message = "Idempotency-Key was already used with a different body"


class SessionNotFound(RequestError):
    message = "Session not found"


class JobFailed(RequestError):
    """A read or stop job got no usable answer; the body's error is `<message>: <detail>`."""

    message = "Failed"


class PathCheckFailed(JobFailed):
    message = "Failed to check paths"


class SessionsFailed(JobFailed):
    message = "Failed to list sessions"


class StopFailed(JobFailed):
    message = "Failed to stop session"
