"""Refuse request bodies over the configured size before they are read whole (Starlette has no limit)."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from core.errors import BodyTooLarge


class BodyLimit:
    """A declared Content-Length over the limit is answered 413 at once; a body that grows past
    it while streaming raises BodyTooLarge inside the route, which the error table maps to 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(BodyTooLarge(f"the limit is {self.max_bytes} bytes"))(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(f"the limit is {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)
