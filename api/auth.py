"""Who is calling: the bearer token of a request and the one namespace it grants."""

from __future__ import annotations

from collections.abc import Collection

from starlette.requests import Request

from core.errors import InvalidToken, MissingToken
from core.tokens import TokenStore, shared_secret_namespace


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if not header.strip() or (scheme.lower() == "bearer" and not token.strip()):
        raise MissingToken()
    if scheme.lower() != "bearer":
        raise InvalidToken()
    return token.strip()


async def namespace_of(token: str, secret: str, tokens: TokenStore, allowed: Collection[str] = ("*",)) -> str:
    """The namespace a token grants; the shared secret (for the namespaces in `allowed`) is
    checked without touching Redis."""
    ns = shared_secret_namespace(token, secret, allowed)
    if ns is None:
        ns = await tokens.namespace_of(token)
    if ns is None:
        raise InvalidToken()
    return ns
