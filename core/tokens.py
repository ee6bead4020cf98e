"""Bearer tokens: the HAPI-style shared secret and issued tokens, each granting one namespace.

An issued token is `mh_<random>.<namespace>`: the namespace it names tells a hub which one hash to
read, `<prefix>:tokens:{<namespace>}`, field sha256(token). That hash is the only copy, so a
token works exactly while `token list` shows it and `token revoke` removes it for every hub at
once. Redis keeps only the SHA-256, so a copy of the database grants nothing; machines' Redis
users cannot read or write it, hubs can only read it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis

from core.keys import Keys
from core.names import valid_namespace

DEFAULT_NAMESPACE = "default"
TOKEN_PREFIX = "mh_"
ID_LENGTH = 12


class IssuedToken(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: str
    namespace: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class NewToken:
    token: str
    record: IssuedToken


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_namespace(token: str) -> str | None:
    """The namespace an issued token names (`mh_<random>.<namespace>`), or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    _, dot, ns = token[len(TOKEN_PREFIX) :].partition(".")
    return ns if dot and valid_namespace(ns) else None


def shared_secret_namespace(bearer: str, secret: str, allowed: Collection[str] = ("*",)) -> str | None:
    """`S` grants `default`, `S:team` grants `team` (split on the last ':'); else None.

    Only namespaces in `allowed` are granted ("*" allows any): whoever holds S holds all of them.
    """
    if not secret:
        return None
    if hmac.compare_digest(bearer.encode(), secret.encode()):
        ns = DEFAULT_NAMESPACE
    else:
        base, sep, ns = bearer.rpartition(":")
        if not (sep and hmac.compare_digest(base.encode(), secret.encode()) and valid_namespace(ns)):
            return None
    return ns if "*" in allowed or ns in allowed else None


class TokenStore:
    """Issued tokens of one key prefix."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._decoder = msgspec.json.Decoder(IssuedToken)

    async def lookup(self, bearer: str) -> IssuedToken | None:
        """The record of a working issued token (one HGET), or None."""
        ns = token_namespace(bearer)
        if ns is None:
            return None
        key_digest = digest(bearer)
        return self._valid(ns, key_digest, await self.redis.hget(self.keys.tokens(ns), key_digest))

    async def namespace_of(self, bearer: str) -> str | None:
        record = await self.lookup(bearer)
        return None if record is None else record.namespace

    async def create(self, ns: str) -> NewToken:
        if not valid_namespace(ns):
            raise ValueError(f"not a namespace name: {ns!r}")
        token = f"{TOKEN_PREFIX}{secrets.token_urlsafe(32).replace('.', '')}.{ns}"
        key_digest = digest(token)
        record = IssuedToken(id=key_digest[:ID_LENGTH], namespace=ns, created_ms=int(time.time() * 1000))
        await self.redis.hset(self.keys.tokens(ns), key_digest, msgspec.json.encode(record))
        return NewToken(token, record)

    async def issued(self, ns: str) -> list[IssuedToken]:
        """Every token that works for `ns`: what `lookup` would accept, oldest first."""
        found = await self._entries(ns)
        return sorted((record for _, record in found), key=lambda r: r.created_ms)

    async def revoke(self, ns: str, token_or_id: str) -> bool:
        """Revoke by the id `token list` shows, or by the token itself."""
        if token_or_id.startswith(TOKEN_PREFIX):
            return bool(await self.redis.hdel(self.keys.tokens(ns), digest(token_or_id)))
        doomed = [d for d, record in await self._entries(ns) if record.id == token_or_id]
        return bool(doomed) and bool(await self.redis.hdel(self.keys.tokens(ns), *doomed))

    async def _entries(self, ns: str) -> list[tuple[str, IssuedToken]]:
        raw = await self.redis.hgetall(self.keys.tokens(ns))
        out = []
        for field, value in raw.items():
            key_digest = field.decode() if isinstance(field, bytes) else str(field)
            record = self._valid(ns, key_digest, value)
            if record is not None:
                out.append((key_digest, record))
        return out

    def _valid(self, ns: str, key_digest: str, raw: bytes | None) -> IssuedToken | None:
        """The record, when it is one that `create` could have written for this digest and `ns`.

        `lookup` and `issued` share this test, so what works and what is listed cannot differ.
        """
        if raw is None:
            return None
        try:
            record = self._decoder.decode(raw)
        except msgspec.DecodeError:
            return None
        return record if record.namespace == ns and record.id == key_digest[:ID_LENGTH] else None
