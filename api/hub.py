"""What one hub process holds while it runs: its Redis clients and the services built on them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from redis.asyncio import Redis
from starlette.requests import Request

from api.auth import bearer_token, namespace_of
from api.dispatch import Dispatcher
from api.inbox import Inbox
from core.history import JobHistory
from core.keys import Keys
from core.lua import Scripts
from core.queue import JobQueue
from core.registry import Registry
from core.settings import Settings
from core.tokens import TokenStore
from core.webhooks import WebhookStore


@dataclass
class Hub:
    settings: Settings
    redis: Redis
    blocking: Redis
    hub_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    def __post_init__(self) -> None:
        keys = Keys(self.settings.key_prefix)
        scripts = Scripts(self.redis, can_load=True)
        self.registry = Registry(self.redis, keys, scripts, max_events=self.settings.max_events)
        self.history = JobHistory(self.redis, keys)
        self.tokens = TokenStore(self.redis, keys)
        self.webhooks = WebhookStore(self.redis, keys, scripts)
        self.queue = JobQueue(
            self.redis,
            keys,
            scripts,
            max_events=self.settings.max_events,
            wait_replicas=self.settings.redis_wait_replicas,
            wait_timeout_ms=int(self.settings.redis_wait_timeout_s * 1000),
        )
        self.inbox = Inbox(
            self.queue,
            self.blocking,
            self.hub_id,
            block_s=self.settings.block_s,
            reconnect_max_s=self.settings.reconnect_max_s,
            outage_grace_s=self.settings.heartbeat_ttl_s,
        )
        self.dispatcher = Dispatcher(self.queue, self.inbox, self.settings)

    async def authenticate(self, request: Request, token: str | None = None) -> str:
        """The caller's namespace, from its Authorization header (or a token found elsewhere).

        Kept on the request for its lifetime, so a route behind the spawn limit (which needs the
        namespace first) does not look the token up twice; an explicit `token` is always looked up.
        """
        if token is None and (known := getattr(request.state, "namespace", None)) is not None:
            return str(known)
        s = self.settings
        ns = await namespace_of(
            token or bearer_token(request), s.cli_api_token, self.tokens, s.shared_secret_namespaces
        )
        if token is None:
            request.state.namespace = ns
        return ns


def hub_of(request: Request) -> Hub:
    hub = request.state.hub
    assert isinstance(hub, Hub)
    return hub
