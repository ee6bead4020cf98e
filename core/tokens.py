"""Bearer tokens: the HAPI-style shared secret and issued tokens, each granting one namespace.

Issued tokens are random and shown once; Redis keeps only their SHA-256, so a copy of the
database grants nothing. The shared secret is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis

from core.keys import Keys
from core.names import valid_namespace

DEFAULT_NAMESPACE = "default"
TOKEN_PREFIX = "mh_"


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


def shared_secret_namespace(bearer: str, secret: str) -> str | None:
    """`S` grants `default`, `S:team` grants `team` (split on the last ':'); else None."""
    if not secret:
        return None
    if hmac.compare_digest(bearer.encode(), secret.encode()):
        return DEFAULT_NAMESPACE
    base, sep, ns = bearer.rpartition(":")
    if sep and hmac.compare_digest(base.encode(), secret.encode()) and valid_namespace(ns):
        return ns
    return None


class TokenStore:
    """Issued tokens in Redis: `<prefix>:token:<sha256>` -> record, indexed per namespace."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._decoder = msgspec.json.Decoder(IssuedToken)

    async def namespace_of(self, bearer: str) -> str | None:
        raw = await self.redis.get(self.keys.token(digest(bearer)))
        return None if raw is None else self._decoder.decode(raw).namespace

    async def create(self, ns: str) -> NewToken:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key_digest = digest(token)
        record = IssuedToken(id=key_digest[:12], namespace=ns, created_ms=int(time.time() * 1000))
        encoded = msgspec.json.encode(record)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.token(key_digest), encoded)
            pipe.hset(self.keys.tokens(ns), record.id, key_digest)
            await pipe.execute()
        return NewToken(token, record)

    async def issued(self, ns: str) -> list[IssuedToken]:
        digests = await self.redis.hvals(self.keys.tokens(ns))
        if not digests:
            return []
        raws = await self.redis.mget([self.keys.token(d.decode()) for d in digests])
        records = [self._decoder.decode(r) for r in raws if r is not None]
        return sorted(records, key=lambda r: r.created_ms)

    async def revoke(self, ns: str, token_or_id: str) -> bool:
        """Revoke by the id `token list` shows, or by the token itself."""
        token_id = digest(token_or_id)[:12] if token_or_id.startswith(TOKEN_PREFIX) else token_or_id
        key_digest = await self.redis.hget(self.keys.tokens(ns), token_id)
        if key_digest is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.token(key_digest.decode()))
            pipe.hdel(self.keys.tokens(ns), token_id)
            await pipe.execute()
        return True
